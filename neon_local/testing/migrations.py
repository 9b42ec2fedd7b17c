"""The app's migrations and seed as steps that build the template: SQL files, a Python callable, or a command."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import psycopg

from neon_local.errors import NeonLocalError
from neon_local.migrations import locate

Spec = str | os.PathLike[str] | Callable[[str], None]
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
OUTPUT_TAIL = 30  # lines of a failed command's output worth showing


class MigrationError(NeonLocalError):
    """A migration or seed step failed; the message names the step (file and line) and what Postgres said."""


@dataclass(frozen=True)
class Target:
    """The template database being built, as the owner: over the Unix socket, and through the TCP proxy."""

    dbname: str
    direct_url: str
    proxy_url: str = field(repr=False)  # holds the owner's password
    tls_ca: Path
    cwd: Path


@dataclass(frozen=True)
class SqlFile:
    path: Path

    def apply(self, target: Target) -> None:
        text = self.path.read_text()
        # One simple-protocol call per file: drizzle-kit and hand-written files alike may hold many statements.
        with psycopg.connect(target.direct_url, autocommit=True) as conn:
            try:
                conn.execute(text.encode())
            except psycopg.Error as exc:
                error = exc
            else:
                return
        location = locate(target.direct_url, text, error)
        raise MigrationError(f"{self.path}:{location[0]}: {error}" if location else f"{self.path}: {error}")

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PythonCallable:
    func: Callable[[str], None]

    def apply(self, target: Target) -> None:
        self.func(target.direct_url)

    def __str__(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"


@dataclass(frozen=True)
class ShellCommand:
    command: str

    def apply(self, target: Target) -> None:
        # What Node tools (drizzle-kit, prisma) and libpq need to reach the template through the TLS proxy.
        env = os.environ | {"DATABASE_URL": target.proxy_url, "DATABASE_URL_UNPOOLED": target.proxy_url,
                            "PGSSLROOTCERT": str(target.tls_ca), "NODE_EXTRA_CA_CERTS": str(target.tls_ca)}
        result = subprocess.run(self.command, shell=True, cwd=target.cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-OUTPUT_TAIL:])
            raise MigrationError(f"`{self.command}` exited with code {result.returncode} (in {target.cwd}):\n{tail}")

    def __str__(self) -> str:
        return self.command


Step = SqlFile | PythonCallable | ShellCommand


def steps_from(spec: Spec | list[Spec] | tuple[Spec, ...] | None) -> list[Step]:
    """A folder gives its *.sql files in name order; `module:function` a callable; other text a command."""
    if spec is None:
        return []
    if callable(spec):
        return [PythonCallable(spec)]
    if isinstance(spec, (list, tuple)):
        return [step for item in spec for step in steps_from(item)]
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.sql"))
        if not files:
            raise MigrationError(f"{path} holds no .sql files; point the migrations at the folder that does.")
        return [SqlFile(f) for f in files]
    if path.is_file():
        return [SqlFile(path)]
    if isinstance(spec, os.PathLike):
        raise MigrationError(f"{path} does not exist.")
    if _CALLABLE.match(spec):
        return [PythonCallable(_import(spec))]
    return [ShellCommand(spec)]


def _import(spec: str) -> Callable[[str], None]:
    module_name, _, name = spec.partition(":")
    try:
        return cast(Callable[[str], None], getattr(importlib.import_module(module_name), name))
    except (ImportError, AttributeError) as exc:
        raise MigrationError(f"cannot load the migration function {spec}: {exc}. "
                             f"Check the module is importable (pytest's `pythonpath` setting adds the rootdir).") from None


def apply(steps: list[Step], target: Target) -> None:
    for step in steps:
        try:
            step.apply(target)
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"migration step {step} failed on {target.dbname}: {exc!r}") from exc
