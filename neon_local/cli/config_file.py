"""Editing neon_local.toml from commands: find it, check a candidate text as `up` would read it, write it whole.

A change is validated before anything is written (settings.read_config_file on the new text), and the
file is replaced atomically, so a refused or interrupted edit leaves the old file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from neon_local.settings import CONFIG_FILENAME, ConfigError, Settings, read_config_file
from neon_local.state import read_state


def config_path(settings: Settings) -> Path:
    """The file commands edit: the one in use, or a new neon_local.toml in the project directory."""
    return settings.config_file or settings.project_dir / CONFIG_FILENAME


def write_config(path: Path, text: str) -> None:
    """Write `text` to `path` if it is a valid config; else a ClickException naming the key, nothing written."""
    try:
        read_config_file(path, text)
    except ConfigError as exc:
        raise click.ClickException(f"{exc} Nothing was written.") from None
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def restart_hint(settings: Settings) -> None:
    # Keys are re-read by a running emulator; the config file too with live_reload (neon_local/reload.py).
    if not read_state(settings.resolved_data_dir):
        return
    if settings.live_reload:
        click.echo("neon-local is running and applies this change now (`neon-local status` shows an edit it refused).")
    else:
        click.echo("neon-local is running: restart it (`neon-local down`, then `neon-local up`) to use this change.")


def parse_claims(claims_json: str | None, pairs: tuple[str, ...]) -> dict:
    """--claims JSON merged with --claim NAME=VALUE pairs (VALUE is JSON if it parses, else a string)."""
    claims = {}
    if claims_json:
        try:
            claims = json.loads(claims_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--claims") from None
        if not isinstance(claims, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--claims")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--claim")
        try:
            claims[name] = json.loads(value)
        except ValueError:
            claims[name] = value
    return claims
