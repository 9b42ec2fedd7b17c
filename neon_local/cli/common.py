"""What every command shares: the settings flags (one per row of settings.SCALARS) and error reporting."""

from __future__ import annotations

import functools
import glob
import inspect
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from neon_local.settings import CONFIG_FILENAME, SCALARS, ConfigError, Settings, find_config_file, load_settings
from neon_local.state import read_state

_CLICK_TYPES = {int: int, str: str, tuple: str, Path: click.Path(path_type=Path)}


def _with_settings(command, scalars, tolerate_bad_file: bool = False):
    """Add --config and a flag for each of `scalars`; the command receives the resolved `settings`."""

    @functools.wraps(command)
    def wrapper(*args, config: Path | None, **kwargs):
        flags = {s.name: kwargs.pop(s.name) for s in scalars}
        try:
            settings = load_settings(flags, config_file=config)
        except ConfigError as exc:
            if not tolerate_bad_file:
                fail(str(exc))
            settings = _despite_bad_file(flags, config, exc)
        click.get_current_context().obj = settings
        configure_logging(settings)
        if "settings" in inspect.signature(command).parameters:
            kwargs["settings"] = settings
        return command(*args, **kwargs)

    for scalar in reversed(scalars):
        default = f"; default {scalar.default_text}" if scalar.default_text else ""
        if scalar.type is bool:
            option = click.option(scalar.flag, scalar.name, is_flag=True, default=None, help=f"{scalar.help} [env {scalar.env}{default}]")
        else:
            kind = click.Choice(scalar.choices) if scalar.choices else _CLICK_TYPES[scalar.type]
            option = click.option(scalar.flag, scalar.name, type=kind, default=None, help=f"{scalar.help} [env {scalar.env}{default}]")
        wrapper = option(wrapper)
    return click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help="Path to neon_local.toml (default: the nearest one up from here) [env NEON_LOCAL_CONFIG].")(wrapper)


def settings_options(command):
    """Every setting as a flag: for `up`, which runs the emulator."""
    return _with_settings(command, SCALARS)


def project_options(command):
    """Only what finds the project (--config, --data-dir): for commands that use a running emulator or its files.
    The other settings still come from neon_local.toml and NEON_LOCAL_* variables."""
    return _with_settings(command, tuple(s for s in SCALARS if s.name == "data_dir"))


def status_options(command):
    """project_options for `status`, which must answer while neon_local.toml is broken if an emulator
    runs (it keeps its last good configuration and reports the error): defaults stand in for the file."""
    return _with_settings(command, tuple(s for s in SCALARS if s.name == "data_dir"), tolerate_bad_file=True)


def _despite_bad_file(flags: dict, config: Path | None, error: ConfigError) -> Settings:
    """Settings without the broken file, when an emulator runs in the default data directory; else the error."""
    from neon_local.state import read_state

    path = config or find_config_file(Path.cwd()) or Path.cwd() / CONFIG_FILENAME
    settings = Settings(project_dir=path.parent.resolve(), **{k: v for k, v in flags.items() if v is not None})
    if not read_state(settings.resolved_data_dir):
        fail(str(error))
    click.secho(f"warning: {error}", fg="yellow", err=True)
    return settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def admin_connect(settings: Settings, dbname: str | None):
    """A superuser connection to the running emulator's Postgres over its Unix socket."""
    import psycopg

    return psycopg.connect(socket_conninfo(settings, dbname), autocommit=True)


def socket_conninfo(settings: Settings, dbname: str | None, user: str = "cloud_admin") -> str:
    """libpq parameters for `user` on the running emulator's Postgres, over its Unix socket (which trusts)."""
    from psycopg.conninfo import make_conninfo

    state = read_state(settings.resolved_data_dir)
    if not state:
        fail("neon-local is not running; start it with `neon-local up -d` first.")
    socket_dir = state["postgres"]["socket_dir"]
    sockets = glob.glob(os.path.join(socket_dir, ".s.PGSQL.*"))
    if not sockets:
        fail(f"no Postgres socket in {socket_dir}; is neon-local still starting?")
    port = sockets[0].rsplit(".", 1)[1]
    return make_conninfo(host=socket_dir, port=port, user=user, dbname=dbname or state["database"])


def fail(message: str, code: int = 1) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def process_age() -> float:
    """Seconds since this process started (what "ready in" counts), from /proc at the kernel's tick resolution."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED_AT


_IMPORTED_AT = time.perf_counter()


def banner(state: dict, headline: str | None = None, ready_in: float | None = None) -> str:
    """What `up` and `status` print; `ready_in` counts from the start of the command the user ran."""
    urls = state["urls"]
    pg = state["postgres"]
    headline = headline or f"neon-local {state['version']} is ready in {ready_in:.2f} s"
    return "\n".join([
        f"{headline} (PostgreSQL {pg['version']} from {pg['source']})",
        "",
        f"  Owner URL          {urls['owner']}",
        f"  Authenticated URL  {urls['authenticated']}   (a JWT is the password)",
        f"  SQL over HTTP      {urls['sql']}",
        f"  WebSocket          {urls['websocket']}",
        *([f"  Data API           {urls['data_api']}   (PostgREST-compatible REST)"] if urls.get("data_api") else []),
        f"  Issuer             {urls['issuer']}   (JWKS at /.well-known/jwks.json)",
        f"  Console            {urls['console']}",
        f"  Data               {state['data_dir']}",
        "",
        "  Get a token        neon-local token alice",
        "  Connect as alice   neon-local psql --as alice",
    ])
