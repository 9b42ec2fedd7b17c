"""The `neon-local` command: parse flags into Settings, call the library, print for people.

Each command is imported when it runs, from the module `COMMAND_MODULES` names, and command
modules import the server, psycopg or joserfc inside the commands that use them: so `status`,
`down`, `token` and `--version` answer at once (tests/test_cli_imports.py holds this).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import click

from neon_local.cli.version import print_version

# command name -> module in neon_local/cli holding a click command of that name ("-" spelled "_")
COMMAND_MODULES = {
    "up": "server", "down": "server", "status": "server", "reset": "server", "psql": "server",
    "token": "auth", "keys": "auth", "providers": "auth", "roles": "roles",
    "config": "config", "users": "config", "doctor": "doctor",
    "lint": "lint", "tenants": "tenants", "data-api": "data_api", "allowlist": "allowlist", "codegen": "codegen",
}


class _Commands(MutableMapping):
    """click.Group's command table, importing a command's module on first use (`--help` imports them all)."""

    def __init__(self, modules: dict[str, str]) -> None:
        self._modules = modules
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module = importlib.import_module(f"neon_local.cli.{self._modules[name]}")
            self._loaded[name] = getattr(module, name.replace("-", "_"))
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._modules.pop(name, None)
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._modules, *self._loaded]))

    def __len__(self) -> int:
        return len(set(self._modules) | set(self._loaded))


@click.group(commands=_Commands(dict(COMMAND_MODULES)), context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="Show neon-local's version and the Postgres it would run, and exit.")
def main() -> None:
    """Neon's RLS stack on your laptop: Postgres with pg_session_jwt, a JWT issuer, and Neon's proxy."""
