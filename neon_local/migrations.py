"""SQL migration files applied as the owner, each once per database, recorded in neon_local.migrations.

One way for `up --migrations DIR [--watch]` and `neon-local tenants migrate`: each file runs in a transaction of its
own (drizzle-kit's `--> statement-breakpoint` markers are comments to Postgres) and is recorded with its SHA-256,
as drizzle records its files in __drizzle_migrations. A file that fails is rolled back and reported with its
line:column; the files after it wait until it is fixed. A recorded file whose content changed is warned about,
never run again. With [tenancy] the template and every tenant database take the files too, so new tenants start
migrated and existing ones catch up.

The pytest plugin's template build (neon_local/testing/migrations.py) finds failing lines the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from neon_local.errors import NeonLocalError
from neon_local.settings import SPARE_TENANT_DATABASE, ConfigError, Settings

if TYPE_CHECKING:
    from neon_local.watch import FolderWatch

__all__ = ["Migration", "MigrationFailed", "MigrationWatcher", "apply_migrations", "read_folder", "split_statements",
           "target_databases"]

log = logging.getLogger(__name__)

RECORD_TABLE = """
create schema if not exists neon_local;
create table if not exists neon_local.migrations (
    name text primary key, hash text not null, applied_at timestamptz not null default now())
"""
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_TRANSACTION_CONTROL = re.compile(r"^(begin|start|commit|end|rollback|abort)\b", re.I)


@dataclass(frozen=True)
class Migration:
    path: Path
    sql: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @classmethod
    def read(cls, path: Path) -> Migration:
        return cls(path, path.read_text())


class MigrationFailed(NeonLocalError):
    """A file failed in a database and was rolled back; the message names the file, its line:column and Postgres's words."""

    def __init__(self, dbname: str, migration: Migration, location: tuple[int, int] | None, error: psycopg.Error) -> None:
        self.dbname, self.migration, self.location = dbname, migration, location
        where = f"{migration.path}:{location[0]}:{location[1]}" if location else str(migration.path)
        self.message = error.diag.message_primary or str(error).splitlines()[0]
        super().__init__(f"{where}: {self.message} (database {dbname}; the file was rolled back)")


@dataclass
class Applied:
    """What `apply_migrations` did in one database."""

    applied: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # recorded earlier with other content: not run again


def read_folder(folder: Path) -> list[Migration]:
    """The folder's *.sql files in file-name order (drizzle-kit's 0000_name.sql, sqitch-like numbering)."""
    if not folder.is_dir():
        raise ConfigError(f"the migrations folder {folder} does not exist; point migrations (--migrations) at the folder "
                          "that holds your .sql files (drizzle-kit's `out`, e.g. drizzle/).")
    return [Migration.read(path) for path in sorted(folder.glob("*.sql"), key=lambda p: p.name)]


def apply_migrations(conninfo: str, migrations: Sequence[Migration], dbname: str) -> Applied:
    """Apply the files not yet recorded in the database `conninfo` reaches, in order, each in its own transaction;
    the first that fails raises MigrationFailed and the ones after it are not tried."""
    outcome = Applied()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(RECORD_TABLE)
        recorded: dict[str, str] = dict(conn.execute("select name, hash from neon_local.migrations").fetchall())
        for migration in migrations:
            if migration.name in recorded:
                if recorded[migration.name] != migration.hash:
                    outcome.changed.append(migration.name)
                continue
            try:
                with conn.transaction():
                    # One simple-protocol call per file: migration files hold many statements.
                    conn.execute(migration.sql.encode())
                    conn.execute("insert into neon_local.migrations (name, hash) values (%s, %s)",
                                 [migration.name, migration.hash])
            except psycopg.Error as exc:
                raise MigrationFailed(dbname, migration, locate(conninfo, migration.sql, exc), exc) from None
            outcome.applied.append(migration.name)
    return outcome


def target_databases(admin_conninfo: str, settings: Settings) -> list[str]:
    """The app's database, and with [tenancy] mode "database" the template and every tenant database: the ones
    migrations go to (mode "upstream" tenants live on their own servers: `neon-local tenants migrate` reaches them)."""
    names = [settings.database]
    if settings.tenancy is not None and settings.tenancy.mode == "database":
        names.append(settings.tenancy.template or settings.database)
        with psycopg.connect(admin_conninfo, autocommit=True) as conn:
            names += [name for (name,) in conn.execute(
                "select datname from pg_database where starts_with(datname, %s) and datname <> %s order by datname",
                [settings.tenancy.prefix, SPARE_TENANT_DATABASE]).fetchall()]
    return list(dict.fromkeys(names))


# --- where a failing file failed --------------------------------------------------------------------------------

def locate(conninfo: str, text: str, error: psycopg.Error) -> tuple[int, int] | None:
    """(line, column) in `text` of what failed: Postgres's character position when it gives one, else the start
    of the statement that fails when the file is replayed one statement at a time (and rolled back)."""
    if error.diag.statement_position:
        return line_and_column(text, int(error.diag.statement_position))
    return failing_statement(conninfo, text, error.sqlstate)


def line_and_column(text: str, position: int) -> tuple[int, int]:
    """Postgres's 1-based character position as 1-based line and column."""
    before = text[: position - 1]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1)


def failing_statement(conninfo: str, text: str, sqlstate: str | None) -> tuple[int, int] | None:
    """Where the statement is that fails, for an error Postgres gave no position (a bad column in an index or
    policy, say): replay the file one statement at a time in a transaction that is rolled back, until one fails
    with the same SQLSTATE. None when none does (the file controls transactions, or needs to run outside one)."""
    with psycopg.connect(conninfo) as conn:
        try:
            for offset, statement in split_statements(text):
                if _TRANSACTION_CONTROL.match(statement):
                    continue
                try:
                    conn.execute(statement.encode())
                except psycopg.Error as exc:
                    if exc.sqlstate != sqlstate:
                        return None
                    return line_and_column(text, offset + int(exc.diag.statement_position or 1))
            return None
        finally:
            conn.rollback()


def split_statements(text: str) -> list[tuple[int, str]]:
    """(offset, text) of each statement in an SQL script, split at semicolons outside quotes, dollar quotes and
    comments; the offset is that of the statement's first token."""
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
            found.append((start, text[start:i]))
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
        found.append((start, text[start:]))
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


# --- in the running emulator ------------------------------------------------------------------------------------

class MigrationWatcher:
    """`up --migrations DIR`: applies the folder's files at start and, with `watch`, whenever a .sql file in it
    changes. `error` is the failing file's report (None when all applied); `runs` counts finished passes."""

    def __init__(self, emulator, folder: Path, watch: bool) -> None:  # a started neon_local.app.Emulator
        self._emulator = emulator
        self.folder = folder
        self.watch = watch
        self.error: str | None = None
        self.runs = 0
        self._warned: set[tuple[str, str, str]] = set()  # (database, file, hash): each changed content warned once
        self._pass = asyncio.Lock()  # one pass at a time: a change during the first one waits for it
        self._watch: FolderWatch | None = None

    async def start(self) -> None:
        read_folder(self.folder)  # a missing folder stops `up` with the message, before anything runs
        if self.watch:
            from neon_local.watch import FolderWatch  # watchdog's thread only when asked to watch

            self._watch = FolderWatch(self.folder, lambda path: path.endswith(".sql"), self.apply,
                                      f"applying the migrations in {self.folder} failed")
            self._watch.start()
        await self.apply()

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()

    async def apply(self) -> None:
        """One pass: every database takes the files it has not recorded; a failure is logged and kept in `error`."""
        async with self._pass:
            await self._apply()

    async def _apply(self) -> None:
        try:
            migrations, outcomes = await asyncio.to_thread(self._apply_everywhere)
        except (MigrationFailed, ConfigError) as exc:
            self._report(str(exc))
            return
        except (psycopg.Error, OSError) as exc:
            self._report(f"applying the migrations in {self.folder} failed: {exc}")
            return
        tenancy = self._emulator.settings.tenancy
        for dbname, outcome in outcomes.items():
            if outcome.applied:
                log.info("migrations applied to %s: %s", dbname, ", ".join(outcome.applied))
                if tenancy is not None and dbname == (tenancy.template or self._emulator.settings.database):
                    self._emulator.services.control_plane.template_changed()  # the spare tenant database is older
            for name in outcome.changed:
                if (dbname, name, migrations[name].hash) not in self._warned:
                    self._warned.add((dbname, name, migrations[name].hash))
                    log.warning("%s changed after it was applied to %s; it is not run again: write a new migration "
                                "for the change (or `neon-local reset` to start over)", self.folder / name, dbname)
        if self.error is not None:
            log.info("migrations in %s apply again", self.folder)
            self.error = None
            self._emulator.config_changed()
        self.runs += 1

    def _report(self, message: str) -> None:
        if message != self.error:
            log.error("migration failed: %s; the files after it wait until it is fixed", message)
            self.error = message
            self._emulator.config_changed()
        self.runs += 1

    def _apply_everywhere(self) -> tuple[dict[str, Migration], dict[str, Applied]]:
        settings, cluster = self._emulator.settings, self._emulator.cluster  # the live ones: [tenancy] reloads
        migrations = read_folder(self.folder)
        return {m.name: m for m in migrations}, {
            dbname: apply_migrations(cluster.conninfo(user=settings.owner, dbname=dbname), migrations, dbname)
            for dbname in target_databases(cluster.conninfo(dbname="postgres"), settings)}
