"""`NOTIFY pgrst, 'reload schema'` (or 'reload config'): one LISTEN connection per database in use.

PostgREST listens on channel `pgrst`; Neon's 2025-09 docs told users to send this NOTIFY. The listener
opens with a database's schema cache and closes after IDLE_SECONDS without a Data API request there
(dropping the cache too, since a NOTIFY sent while nobody listened would be lost), so an unused
database is not held open (an open session makes a plain DROP DATABASE wait and fail).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import psycopg

__all__ = ["Listeners"]

log = logging.getLogger(__name__)

CHANNEL = "pgrst"
IDLE_SECONDS = 300.0
POLL_SECONDS = 10.0
RELOADS = frozenset(("", "reload schema", "reload config"))


class Listeners:
    """`Listeners(conninfo_for, on_reload)`: `conninfo_for(dbname)` is a superuser conninfo; `on_reload(dbname)`
    drops that database's cache."""

    def __init__(self, conninfo_for: Callable[[str], str], on_reload: Callable[[str], None]) -> None:
        self._conninfo_for = conninfo_for
        self._on_reload = on_reload
        self._tasks: dict[str, asyncio.Task] = {}
        self._used: dict[str, float] = {}

    def touch(self, dbname: str) -> None:
        """A request for `dbname`: keep (or start) its listener."""
        self._used[dbname] = time.monotonic()
        task = self._tasks.get(dbname)
        if task is None or task.done():
            self._tasks[dbname] = asyncio.ensure_future(self._listen(dbname))

    async def _listen(self, dbname: str) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(self._conninfo_for(dbname), autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                while time.monotonic() - self._used.get(dbname, 0.0) < IDLE_SECONDS:
                    async for notify in conn.notifies(timeout=POLL_SECONDS):
                        if notify.payload.strip() in RELOADS:
                            log.info("NOTIFY %s, %r in database %s: the Data API reloads its schema cache",
                                     CHANNEL, notify.payload, dbname)
                            self._on_reload(dbname)
        except psycopg.Error as exc:  # the database went away or Postgres restarted: the next request retries
            log.debug("Data API listener for %s stopped: %s", dbname, exc)
        self._on_reload(dbname)  # nobody listens any more: the next request reads the schema again

    async def stop(self, dbname: str | None = None) -> None:
        names = [dbname] if dbname else list(self._tasks)
        for name in names:
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
