"""Pooled connections for SQL over HTTP and the Data API: a pool per (database, role), Neon's reset between requests.

The Postgres-side preparation (credentials, JWT sessions, catalog lookups) is the control plane's.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import cast

from neon_local.control_plane import TEMPLATE_DATABASES, ControlPlane
from neon_local.serverless.pg_conn import ConnectionLost, PgConnection, connect

__all__ = ["MAX_PER_POOL", "ConnPool"]

IDLE_TIMEOUT = 300.0  # Neon closes pooled connections idle for 5 minutes
MAX_PER_POOL = 64  # the cluster allows 1,000 connections


class Pool:
    """Connections for one (database, role): idle ones most recently used first, at most `size` in all."""

    def __init__(self, opener: Callable[[], Awaitable[PgConnection]], size: int, keep_idle: bool = True) -> None:
        self._opener = opener
        self._keep_idle = keep_idle
        self._idle: list[PgConnection] = []
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> PgConnection:
        await self._slots.acquire()
        try:
            while self._idle:
                backend = self._idle.pop(self._settled())
                if await self._usable(backend):
                    return backend
            return await self._opener()
        except BaseException:
            self._slots.release()
            raise

    def _settled(self) -> int:
        """The most recently used idle connection whose reset has come back, else the most recent: one
        still resetting would cost the request a round trip."""
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index].reset_settled:
                return index
        return -1

    async def _usable(self, backend: PgConnection) -> bool:
        usable = not backend.broken and time.monotonic() - backend.idle_since < IDLE_TIMEOUT
        if usable:
            try:
                usable = await backend.finish_reset()
            except ConnectionLost:
                usable = False
        if not usable:
            await backend.close()
        return usable

    def release(self, backend: PgConnection) -> asyncio.Future | None:
        """Back to the pool behind the reset; a connection that broke is closed instead."""
        self._slots.release()
        if not backend.broken and not backend.reset_pending:
            backend.queue_reset()
        if backend.broken or not self._keep_idle:
            return asyncio.ensure_future(backend.close())
        backend.idle_since = time.monotonic()
        self._idle.append(backend)
        return None

    def discard(self, backend: PgConnection) -> asyncio.Future:
        """Drop a connection after an error or a cancel (close() cancels what it still runs)."""
        self._slots.release()
        return asyncio.ensure_future(backend.close())

    async def close_idle(self, older_than: float = 0.0) -> None:
        now = time.monotonic()
        stale = [b for b in self._idle if now - b.idle_since >= older_than]
        self._idle = [b for b in self._idle if b not in stale]
        for backend in stale:
            await backend.close()



class ConnPool:
    """All pools, keyed by (database, role, JWT or password); JWT sessions are set up by the control plane."""

    def __init__(self, control_plane: ControlPlane, max_per_pool: int = MAX_PER_POOL) -> None:
        self.control_plane = control_plane
        control_plane.pools.append(self)
        self._max_per_pool = max_per_pool
        self._pools: dict[tuple[str, str, bool], Pool] = {}
        # Which pool a connection came from; an entry goes with its connection.
        self._pool_of: weakref.WeakKeyDictionary[PgConnection, Pool] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Future] = set()
        self._sweeper: asyncio.Task | None = None

    async def acquire(self, dbname: str, role: str, jwt: bool) -> PgConnection:
        """A connection as `role` to `dbname`; a JWT role's carries its session signer (`.signer`)."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        key = (dbname, role, jwt)
        pool = self._pools.get(key)
        if pool is None:
            # An idle connection to a template database would make CREATE DATABASE fail: none are kept.
            pool = self._pools[key] = Pool(lambda: self._open(cast(Pool, pool), dbname, role, jwt), self._max_per_pool,
                                           keep_idle=dbname not in TEMPLATE_DATABASES)
        return await pool.acquire()

    async def _open(self, pool: Pool, dbname: str, role: str, jwt: bool) -> PgConnection:
        conninfo = self.control_plane.conninfo
        if jwt:
            backend, signer = await self.control_plane.start_jwt_session(
                dbname, role, lambda options: connect(conninfo(role, dbname, options)))
            backend.signer = signer
        else:
            backend = await connect(conninfo(role, dbname))
        self._pool_of[backend] = pool
        return backend

    async def repair(self, dbname: str, role: str) -> None:
        """A pooled JWT session could not be set up: the database lost what preparing it put there.
        Its idle connections go (they were bound before the reset) and the database is prepared again."""
        pool = self._pools.get((dbname, role, True))
        if pool is not None:
            await pool.close_idle()
        await self.control_plane.repair_jwt_role(dbname, role)

    async def close_idle(self, dbname: str) -> None:
        """Close the idle connections to `dbname` (a template about to be copied); its pools stay."""
        for key in [k for k in self._pools if k[0] == dbname]:
            await self._pools[key].close_idle()

    async def forget_database(self, dbname: str) -> None:
        """`dbname` was dropped (or never existed): its pools and what the control plane knew of it go."""
        for key in [k for k in self._pools if k[0] == dbname]:
            await self._pools.pop(key).close_idle()
        self.control_plane.forget_database(dbname)

    def release(self, backend: PgConnection) -> None:
        self._track(self._pool_of[backend].release(backend))

    def discard(self, backend: PgConnection) -> None:
        self._track(self._pool_of[backend].discard(backend))

    def _track(self, task: asyncio.Future | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
