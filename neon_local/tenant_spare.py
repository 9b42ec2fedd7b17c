"""The spare tenant database ([tenancy] mode "database", neon-local only): a copy of the template made ahead of time,
so that a new tenant's first request renames it (ALTER DATABASE ... RENAME, about a millisecond) instead of copying
the template then (CREATE DATABASE ... TEMPLATE, 50-300 ms).

One spare at a time, named SPARE_TENANT_DATABASE (neon_local.next_tenant), made in the background when tenancy
starts, after each use and when neon-local changes the template (migrations, a [tenancy] reload). It is made as a
tenant's database is (owned as the template is) and prepared for the JWT roles as their first session would
prepare it, which also leaves the relation cache's init file that a fresh database's first connection writes.

A spare is a faithful copy only while no session has been on the template since it was copied, whoever changed
the template (psql, `neon-local tenants migrate`) and whether or not neon-local knows. So before the copy the
template must be quiet (no session but autovacuum), and its stamp is taken: oid, owner, Postgres's count of
sessions ever opened on it and when its statistics were last reset. A session's count reaches the statistics at
the latest when it exits, before it leaves pg_stat_activity, so "the stamp is unchanged and no session is on the
template" means nobody has been there since. The spare's own stamp guards it the same way. Otherwise the spare is
stale: the tenant's database is copied from the template as without a spare, and a new spare is made.

Crash safety: the rename (and the removal of the spare's comment) is one transaction, so a database either is the
spare or the tenant's, complete; a spare left over by a stop or a crash is dropped before the next one is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from psycopg import sql

from neon_local.errors import PostgresErrorResponse
from neon_local.serverless.pg_conn import PgConnection, Statement, connect
from neon_local.settings import SPARE_TENANT_DATABASE

__all__ = ["TEMPLATE_OWNER_SQL", "SpareDatabase", "copy_database_sql"]

log = logging.getLogger(__name__)

_SPARE = sql.Identifier(SPARE_TENANT_DATABASE).as_string()

QUIET_SECONDS = 2.0  # how long making a spare waits for sessions on the template (or the spare) to end
QUIET_POLL_SECONDS = 0.02
MAKE_ATTEMPTS = 3  # copies tried while sessions keep changing the template (the owner migrating it right after start)
COMMENT = ("neon-local: a copy of the [tenancy] template {}, ready to become the next new tenant's database "
           "(renamed on its first request; do not connect to it)")

# One row: the stamps of databases $1 and $2 ("oid:owner:sessions:stats reset", null when absent), whether a session
# other than this one and autovacuum is on either, and whether Postgres counts sessions at all.
_STAMPS_SQL = (
    "select string_agg(case d.datname when $1 then 't' else 's' end || d.oid || ':' || d.datdba || ':'"
    " || pg_catalog.pg_stat_get_db_sessions(d.oid) || ':'"
    " || coalesce(pg_catalog.pg_stat_get_db_stat_reset_time(d.oid)::text, ''), ' ' order by d.datname <> $1),"
    " exists (select from pg_catalog.pg_stat_activity a join pg_catalog.pg_database b on b.oid = a.datid"
    " where b.datname in ($1, $2) and a.pid <> pg_catalog.pg_backend_pid() and a.backend_type <> 'autovacuum worker'),"
    " pg_catalog.current_setting('track_counts')::bool"
    " from pg_catalog.pg_database d where d.datname in ($1, $2)")


# A tenant's database is owned as its template is (the owner's), so that the owner's migrations reach the copy too.
TEMPLATE_OWNER_SQL = "select pg_catalog.pg_get_userbyid(datdba) from pg_catalog.pg_database where datname = $1"


def copy_database_sql(dbname: str, template: str, owner: str | None) -> str:
    """CREATE DATABASE `dbname` as a copy of `template`, owned by `owner` (the template's, TEMPLATE_OWNER_SQL)."""
    owned_by = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
    return sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(sql.Identifier(dbname), sql.Identifier(template), owned_by).as_string()


@dataclass(frozen=True)
class Spare:
    template: str
    stamps: str  # _STAMPS_SQL's first column once the spare was ready: the template's then the spare's
    roles: frozenset[str]  # prepared for these: their first sessions in the tenant's database need not prepare it


class SpareDatabase:
    """`SpareDatabase(conninfo, close_idle, install)`: `conninfo(dbname)` is the superuser's, `close_idle(dbname)`
    closes the paths' idle pooled connections to a database, `install(admin, dbname, roles)` prepares a database
    for JWT roles on `admin`, a superuser connection to it."""

    def __init__(self, conninfo: Callable[[str], str], close_idle: Callable[[str], Awaitable[None]],
                 install: Callable[[PgConnection, str, Sequence[str]], Awaitable[None]]) -> None:
        self._conninfo = conninfo
        self._close_idle = close_idle
        self._install = install
        self._ready: asyncio.Future[Spare | None] | None = None  # the spare, ready or being made (None: none)

    def keep(self, template: str, roles: Sequence[str]) -> None:
        """Have a spare of `template` ready or being made (after one was used)."""
        if self._ready is None:
            self._chain(template, roles)

    def renew(self, template: str, roles: Sequence[str]) -> None:
        """The template (or which database it is) changed: replace the spare, ready or being made, by a new copy."""
        self._chain(template, roles)

    def retire(self) -> None:
        """No spare from now on ([tenancy] mode "database" ended): drop the one there is."""
        self._chain(None, ())

    def _chain(self, template: str | None, roles: Sequence[str]) -> None:
        self._ready = asyncio.ensure_future(self._after(self._ready, template, frozenset(roles)))

    async def _after(self, before: asyncio.Future | None, template: str | None, roles: frozenset[str]) -> Spare | None:
        if before is not None:
            await asyncio.wait([before])
        try:
            return await self._make(template, roles)
        except Exception as exc:  # without a spare, a new tenant's database is copied as before
            log.info("no spare tenant database for now (%s): a new tenant's first request copies the template",
                     getattr(exc, "fields", {}).get("M") or exc)
            return None

    async def ready(self) -> bool:
        """Wait for the spare being made; whether one is ready."""
        while self._ready is not None:
            ready = self._ready
            await asyncio.wait([ready])
            if ready is self._ready:
                return not ready.cancelled() and ready.result() is not None
        return False

    async def take(self, admin: PgConnection, template: str, dbname: str) -> frozenset[str] | None:
        """Rename the spare to `dbname` (waiting for one being made) when it is a faithful copy of `template` now;
        the roles it was prepared for, or None: copy the template. `admin` is a superuser connection to postgres."""
        if not await self.ready():
            self._ready = None
            return None
        ready, self._ready = self._ready, None
        assert ready is not None  # ready() said so
        spare = ready.result()
        if spare is None or spare.template != template:
            return None
        stamps, busy, counted = await _stamps(admin, template)
        if busy or not counted or stamps != spare.stamps:
            log.info("the spare tenant database is older than the template %s (a session was on it since): "
                     "copying the template for %s", template, dbname)
            return None
        try:
            # One pipeline, so one implicit transaction: both or neither, and a failure leaves no transaction open.
            await admin.run([Statement(f"ALTER DATABASE {_SPARE} RENAME TO {sql.Identifier(dbname).as_string()}"),
                             Statement(f"COMMENT ON DATABASE {sql.Identifier(dbname).as_string()} IS NULL")])
        except PostgresErrorResponse as exc:
            if exc.sqlstate == "42P04":  # made meanwhile (`neon-local tenants create`): the spare stays one
                self._ready = ready
                raise
            log.info("could not use the spare tenant database for %s (%s): copying the template",
                     dbname, exc.fields.get("M", exc.sqlstate))
            return None
        log.info("tenant database %s: the spare copy of %s, renamed", dbname, template)
        return spare.roles

    async def _make(self, template: str | None, roles: frozenset[str]) -> Spare | None:
        admin = await connect(self._conninfo("postgres"))
        try:
            for _ in range(MAKE_ATTEMPTS):
                await admin.run([Statement(f"DROP DATABASE IF EXISTS {_SPARE} WITH (FORCE)")])
                if template is None:
                    return None
                spare = await self._copy(admin, template, roles)
                if spare is not None:
                    return spare
            log.info("no spare tenant database for now: the template %s keeps changing (or has sessions)", template)
            return None
        finally:
            await admin.close()

    async def _copy(self, admin: PgConnection, template: str, roles: frozenset[str]) -> Spare | None:
        """Copy the template into the spare and prepare it; None when a session was on the template meanwhile."""
        await self._close_idle(template)
        stamps = await _quiet_stamps(admin, template)
        if stamps is None:
            return None
        (owner,) = await admin.first_row(TEMPLATE_OWNER_SQL, [template]) or (None,)
        await admin.run([Statement(copy_database_sql(SPARE_TENANT_DATABASE, template, owner))])
        await admin.run([Statement(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(SPARE_TENANT_DATABASE), sql.Literal(COMMENT.format(template))).as_string())])
        spare = await connect(self._conninfo(SPARE_TENANT_DATABASE))
        try:
            await self._install(spare, SPARE_TENANT_DATABASE, sorted(roles))
        finally:
            await spare.close()
        ready = await _quiet_stamps(admin, template)  # with the spare's own session counted, as at its exit
        return Spare(template, ready, roles) if ready is not None and ready.startswith(stamps + " ") else None

    async def close(self) -> None:
        if self._ready is not None:
            self._ready.cancel()
            await asyncio.wait([self._ready])


async def _stamps(admin: PgConnection, template: str) -> tuple[str, bool, bool]:
    stamps, busy, counted = await admin.first_row(_STAMPS_SQL, [template, SPARE_TENANT_DATABASE]) or ("", "t", "f")
    return stamps or "", busy in ("t", True), counted in ("t", True)


async def _quiet_stamps(admin: PgConnection, template: str) -> str | None:
    """The stamps once no session is on the template or the spare; None if sessions stay QUIET_SECONDS."""
    deadline = time.monotonic() + QUIET_SECONDS
    while True:
        stamps, busy, counted = await _stamps(admin, template)
        if not counted:
            return None
        if not busy:
            return stamps
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(QUIET_POLL_SECONDS)

