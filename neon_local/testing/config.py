"""The pytest plugin's settings, one row each: flag `--neon-local-X`, ini `neon_local_X`, env `NEON_LOCAL_X`.

Resolved like neon-local's own settings: default < ini (the project file) < environment < flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    kind: type = str

    @property
    def flag(self) -> str:
        return "--neon-local-" + self.name

    @property
    def ini(self) -> str:
        return "neon_local_" + self.name

    @property
    def env(self) -> str:
        return "NEON_LOCAL_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("config", "neon_local.toml to use (default: the nearest one from pytest's rootdir)."),
    Option("migrations", "How to build the template database: a folder of .sql files, one .sql file, "
                         "a module:function called with the database URL, or a shell command given DATABASE_URL."),
    Option("seed", "Seed data, loaded after the migrations, in the same forms."),
    Option("reuse", "Use the neon-local already running for this project (`neon-local up`) instead of starting one.", bool),
    Option("isolation", "How neon_db isolates tests: `clone` (a fresh database each, the default) or `rollback` "
                        "(one shared database, each test in a transaction rolled back at its end)."),
)
ISOLATIONS = ("clone", "rollback")


@dataclass(frozen=True)
class PluginConfig:
    """The resolved settings; the factories' arguments win over them."""

    config: Path | None = None
    migrations: str | None = None  # paths are absolute here; anything else is a callable or a command
    seed: str | None = None
    reuse: bool = False
    isolation: str = "clone"
    rootdir: Path = Path(".")  # where commands run


def _raw(pytestconfig: pytest.Config, option: Option, environ: Mapping[str, str]) -> tuple[str | None, Path]:
    """The value and the directory it is relative to: flags and env the invocation dir, ini the rootdir."""
    invocation = pytestconfig.invocation_params.dir
    flag = pytestconfig.getoption(option.ini)
    if flag not in (None, False):
        return str(flag), invocation
    if environ.get(option.env):
        return environ[option.env], invocation
    ini = pytestconfig.getini(option.ini)
    return (str(ini) if ini else None), pytestconfig.rootpath


def _resolve(raw: str, base: Path) -> str:
    """A path that exists becomes absolute; a module:function or a command stays as written."""
    candidate = base / raw
    return str(candidate.resolve()) if candidate.exists() else raw


def get_config(pytestconfig: pytest.Config, environ: Mapping[str, str]) -> PluginConfig:
    values: dict[str, Any] = {"rootdir": pytestconfig.rootpath}
    for option in OPTIONS:
        raw, base = _raw(pytestconfig, option, environ)
        if raw is None:
            continue
        if option.kind is bool:
            values[option.name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif option.name == "config":
            values["config"] = (base / raw).resolve()
        elif option.name == "isolation":
            if raw not in ISOLATIONS:
                raise pytest.UsageError(f"{option.flag} / {option.ini} / {option.env} is one of "
                                        f"{', '.join(ISOLATIONS)}, not {raw!r}")
            values["isolation"] = raw
        else:
            values[option.name] = _resolve(raw, base)
    return PluginConfig(**values)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("neon-local", "neon-local: Neon's RLS stack, offline")
    for option in OPTIONS:
        if option.kind is bool:
            group.addoption(option.flag, action="store_true", dest=option.ini, default=False,
                            help=f"{option.help} [{option.env}]")
            parser.addini(option.ini, option.help, type="bool", default=False)
        else:
            group.addoption(option.flag, dest=option.ini, default=None, metavar=option.name.upper(),
                            help=f"{option.help} [{option.env}]")
            parser.addini(option.ini, option.help, type="string", default="")
