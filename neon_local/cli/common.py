"""What every command shares: the settings flags (one per row of settings.SCALARS) and error reporting."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from pathlib import Path

import click

from neon_local.settings import SCALARS, ConfigError, Settings, load_settings

_CLICK_TYPES = {int: int, str: str, Path: click.Path(path_type=Path)}


def settings_options(command):
    """Add --config and one flag per setting; the command receives the resolved `settings`."""

    @functools.wraps(command)
    def wrapper(*args, config: Path | None, **kwargs):
        flags = {s.name: kwargs.pop(s.name) for s in SCALARS}
        try:
            settings = load_settings(flags, config_file=config)
        except ConfigError as exc:
            fail(str(exc))
        click.get_current_context().obj = settings
        configure_logging(settings)
        if "settings" in inspect.signature(command).parameters:
            kwargs["settings"] = settings
        return command(*args, **kwargs)

    for scalar in reversed(SCALARS):
        if scalar.type is bool:
            option = click.option(scalar.flag, scalar.name, is_flag=True, default=None, help=scalar.help + f" [env {scalar.env}]")
        else:
            kind = click.Choice(scalar.choices) if scalar.choices else _CLICK_TYPES[scalar.type]
            option = click.option(scalar.flag, scalar.name, type=kind, default=None,
                                  help=scalar.help + f" [env {scalar.env}; default {scalar.default}]")
        wrapper = option(wrapper)
    return click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help="Path to neon_local.toml (default: the nearest one up from here) [env NEON_LOCAL_CONFIG].")(wrapper)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def fail(message: str, code: int = 1):
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)
