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

Spec = str | os.PathLike[str] | Callable[[str], None]
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
OUTPUT_TAIL = 30  # lines of a failed command's output worth showing
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_TRANSACTION_CONTROL = re.compile(r"^(begin|start|commit|end|rollback|abort)\b", re.I)


class MigrationError(Exception):
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
        line: int | None
        if error.diag.statement_position:
            line = text[: int(error.diag.statement_position) - 1].count("\n") + 1
        else:
            line = failing_line(target.direct_url, text, error.sqlstate)
        raise MigrationError(f"{self.path}:{line}: {error}" if line else f"{self.path}: {error}")

    def __str__(self) -> str:
        return str(self.path)


def failing_line(url: str, text: str, sqlstate: str | None) -> int | None:
    """The line of the statement that fails, for an error Postgres gave no position (a bad column in an index or
    policy, say): replay the file one statement at a time in a transaction that is rolled back, until one fails
    with the same SQLSTATE. None when none does (the file controls transactions, or needs to run outside one)."""
    with psycopg.connect(url) as conn:
        try:
            for line, statement in split_statements(text):
                if _TRANSACTION_CONTROL.match(statement):
                    continue
                try:
                    conn.execute(statement.encode())
                except psycopg.Error as exc:
                    if exc.sqlstate != sqlstate:
                        return None
                    offset = int(exc.diag.statement_position or 1) - 1
                    return line + statement[:offset].count("\n")
            return None
        finally:
            conn.rollback()


def split_statements(text: str) -> list[tuple[int, str]]:
    """(line, text) of each statement in an SQL script, split at semicolons outside quotes, dollar quotes and
    comments; the line is where the statement's first token is."""
    found: list[tuple[int, str]] = []
    start = None  # offset of the current statement's first token
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            i = _end_of(text, "\n", i + 2)
            continue
        if text.startswith("/*", i):
            i = _end_of_block_comment(text, i)
            continue
        if c.isspace():
            i += 1
            continue
        if start is None:
            start = i
        if c == ";":
            found.append((text.count("\n", 0, start) + 1, text[start:i]))
            start = None
            i += 1
        elif c == "'":
            escapes = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            i = _end_of_quoted(text, i, "'", escapes)
        elif c == '"':
            i = _end_of_quoted(text, i, '"', False)
        elif c == "$" and (dollar := _DOLLAR_TAG.match(text, i)) and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            i = _end_of(text, dollar[0], dollar.end())
        else:
            i += 1
    if start is not None:
        found.append((text.count("\n", 0, start) + 1, text[start:]))
    return found


def _end_of(text: str, closing: str, i: int) -> int:
    at = text.find(closing, i)
    return len(text) if at < 0 else at + len(closing)


def _end_of_block_comment(text: str, i: int) -> int:
    depth, i = 1, i + 2
    while i < len(text) and depth:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _end_of_quoted(text: str, i: int, quote: str, backslash_escapes: bool) -> int:
    i += 1
    while i < len(text):
        if backslash_escapes and text[i] == "\\":
            i += 2
        elif text[i] == quote:
            if text.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


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
