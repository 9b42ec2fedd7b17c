"""Pooled connections for SQL over HTTP: a pool per (database, role), Neon's reset between requests.

Also the catalog work Neon's proxy and compute_ctl do as the superuser: reading a role's SCRAM
verifier for the password path, installing pg_session_jwt for a JWT role, and telling array types
from the rest for the JSON encoding.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import psycopg

from neon_local.postgres import session_jwt
from neon_local.postgres.bootstrap import prepare_jwt_role
from neon_local.proxy.scram import Verifier as ScramVerifier
from neon_local.serverless.pg_conn import Backend, ConnectionLost, connect

__all__ = ["ConnPool", "ExtensionSetupError", "MAX_PER_POOL"]

IDLE_TIMEOUT = 300.0  # Neon closes pooled connections idle for 5 minutes
MAX_PER_POOL = 64  # the cluster allows 200 connections
ADMIN_USER = "cloud_admin"
PASSWORD_CACHE_SIZE = 1024


class ExtensionSetupError(Exception):
    """pg_session_jwt could not be installed or granted for a (database, role)."""


class Pool:
    """Connections for one (database, role): idle ones most recently used first, at most `size` in all."""

    def __init__(self, opener: Callable[["Pool"], Awaitable[Backend]], size: int) -> None:
        self._opener = opener
        self._idle: list[Backend] = []
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> Backend:
        await self._slots.acquire()
        try:
            while self._idle:
                backend = self._idle.pop()
                if await self._usable(backend):
                    return backend
            return await self._opener(self)
        except BaseException:
            self._slots.release()
            raise

    async def _usable(self, backend: Backend) -> bool:
        usable = not backend.broken and time.monotonic() - backend.idle_since < IDLE_TIMEOUT
        if usable:
            try:
                usable = await backend.finish_reset()
            except ConnectionLost:
                usable = False
        if not usable:
            await backend.close()
        return usable

    def release(self, backend: Backend) -> asyncio.Future | None:
        """Back to the pool behind the reset; a connection that broke is closed instead."""
        self._slots.release()
        if not backend.broken and not backend.reset_pending:
            backend.queue_reset()
        if backend.broken:
            return asyncio.ensure_future(backend.close())
        backend.idle_since = time.monotonic()
        self._idle.append(backend)
        return None

    def discard(self, backend: Backend) -> asyncio.Future:
        """Drop a connection after an error or a cancel (close() cancels what it still runs)."""
        self._slots.release()
        return asyncio.ensure_future(backend.close())

    async def close_idle(self, older_than: float = 0.0) -> None:
        now = time.monotonic()
        stale = [b for b in self._idle if now - b.idle_since >= older_than]
        self._idle = [b for b in self._idle if b not in stale]
        for backend in stale:
            await backend.close()


@dataclass
class _Admin:
    """One cloud_admin connection per database, for the proxy's own catalog queries."""

    backend: Backend | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ConnPool:
    """All pools, plus the catalog work the proxy does as the superuser (passwords, types, the extension)."""

    def __init__(self, cluster, max_per_pool: int = MAX_PER_POOL) -> None:
        self._cluster = cluster
        self._max_per_pool = max_per_pool
        self._pools: dict[tuple[str, str, bool], Pool] = {}
        self._prepared_roles: dict[tuple[str, str], asyncio.Future] = {}
        self._install_lock = asyncio.Lock()
        self._admins: dict[str, _Admin] = {}
        self._good_passwords: OrderedDict[bytes, None] = OrderedDict()
        self._array_elements: dict[str, dict[int, int]] = {}
        self._tasks: set[asyncio.Future] = set()
        self._sweeper: asyncio.Task | None = None

    def _conninfo(self, user: str, dbname: str, options: str = "") -> str:
        # An explicit empty `options` keeps PGOPTIONS from the environment out of the session.
        return self._cluster.conninfo(user=user, dbname=dbname, options=options, client_encoding="UTF8")

    async def acquire(self, dbname: str, role: str, jwt: bool) -> Backend:
        """A connection as `role` to `dbname`; JWT roles' connections carry the session-JWT key."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        key = (dbname, role, jwt)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(lambda p: self._open(p, dbname, role, jwt), self._max_per_pool)
        return await pool.acquire()

    async def _open(self, pool: Pool, dbname: str, role: str, jwt: bool) -> Backend:
        if not jwt:
            return await connect(self._conninfo(role, dbname), pool)
        await self._prepare_jwt_role(dbname, role)
        backend = await connect(self._conninfo(role, dbname, session_jwt.startup_options()), pool)
        try:
            pid, backend_start = await backend.first_row(session_jwt.BIND_QUERY)
        except BaseException:
            await backend.close()
            raise
        backend.signer = session_jwt.SessionSigner(self._cluster.session_secret, int(pid), backend_start)
        return backend

    async def _prepare_jwt_role(self, dbname: str, role: str) -> None:
        """What local_proxy asks compute_ctl for the first time it sees a (database, role); once, even when raced."""
        prepared = self._prepared_roles.get((dbname, role))
        if prepared is None or (prepared.done() and prepared.exception() is not None):
            prepared = self._prepared_roles[(dbname, role)] = asyncio.ensure_future(self._install(dbname, role))
        await asyncio.shield(prepared)

    async def _install(self, dbname: str, role: str) -> None:
        # One at a time: two roles' GRANTs on schema auth at once fail with "tuple concurrently updated".
        async with self._install_lock:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo(ADMIN_USER, dbname), autocommit=True)
                async with conn:
                    await prepare_jwt_role(conn, role)
            except psycopg.Error as exc:
                raise ExtensionSetupError(str(exc)) from exc

    def release(self, backend: Backend) -> None:
        self._track(backend.pool.release(backend))

    def discard(self, backend: Backend) -> None:
        self._track(backend.pool.discard(backend))

    def _track(self, task: asyncio.Future | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _admin_row(self, dbname: str, sql: str, params: Sequence[str | None]) -> tuple | None:
        admin = self._admins.setdefault(dbname, _Admin())
        async with admin.lock:
            if admin.backend is None or admin.backend.broken:
                admin.backend = await connect(self._conninfo(ADMIN_USER, dbname))
            return await admin.backend.first_row(sql, params)

    async def check_password(self, role: str, password: bytes) -> bool:
        """Neon's password check: the role's SCRAM verifier from pg_authid, read on every request."""
        row = await self._admin_row(
            "postgres",
            "select rolpassword from pg_catalog.pg_authid where rolname = $1 and rolcanlogin"
            " and (rolvaliduntil is null or rolvaliduntil > now())", [role])
        verifier = ScramVerifier.parse(row[0]) if row else None
        if verifier is None:
            return False
        # PBKDF2 costs milliseconds: remember the (verifier, password) pairs that matched.
        key = hashlib.sha256(row[0].encode() + b"\0" + password).digest()
        if key in self._good_passwords:
            self._good_passwords.move_to_end(key)
            return True
        if not await asyncio.to_thread(verifier.check_password, password):
            return False
        self._good_passwords[key] = None
        if len(self._good_passwords) > PASSWORD_CACHE_SIZE:
            self._good_passwords.popitem(last=False)
        return True

    async def array_elements(self, dbname: str, oids: Sequence[int]) -> dict[int, int]:
        """Array type OID → element OID for `dbname`, as tokio-postgres classifies types (domains are not arrays)."""
        known = self._array_elements.get(dbname)
        if known is None:
            row = await self._admin_row(dbname, _ARRAYS_SQL.format("t.oid < 16384"), [])
            known = self._array_elements[dbname] = _pairs(row[0])
        missing = [oid for oid in oids if oid not in known and oid >= 16384]
        if missing:
            row = await self._admin_row(dbname, _ARRAYS_SQL.format("t.oid = any($1::oid[])"),
                                        ["{" + ",".join(map(str, missing)) + "}"])
            known.update({oid: 0 for oid in missing})
            known.update(_pairs(row[0]))
        return known

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(60)
            for pool in list(self._pools.values()):
                await pool.close_idle(IDLE_TIMEOUT)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pool in self._pools.values():
            await pool.close_idle()
        for admin in self._admins.values():
            if admin.backend is not None:
                await admin.backend.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# Pairs "oid:elem" of array types; 0 marks a looked-up type that is not an array.
_ARRAYS_SQL = ("select coalesce(string_agg(t.oid || ':' || t.typelem, ','), '') from pg_catalog.pg_type t"
               " where t.typelem <> 0 and t.typtype not in ('d', 'e', 'p')"
               " and (t.typcategory = 'A' or t.oid >= 16384) and {}")


def _pairs(text: str) -> dict[int, int]:
    return {int(a): int(b) for a, b in (pair.split(":") for pair in text.split(",") if pair)}
