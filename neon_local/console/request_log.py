"""The live request log: the last requests of every client path, in memory, bounded, with subscribers.

Recording is on the hot path of every request, so it only appends a tuple-like dict to a deque and
hands it to the (few) subscribers' queues; the token's `sub` is decoded only when someone reads the
entry. Nothing here blocks or imports the server's libraries (the /sql path imports this module).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["DEFAULT_SIZE", "RequestLog"]

DEFAULT_SIZE = 1000  # entries kept; the oldest go first
STATEMENT_CHARS = 2000  # a statement is cut here in the log
SUBSCRIBER_BACKLOG = 1000  # entries a slow subscriber may fall behind before it misses some
_ROW_COUNT = b'"rowCount":'


def _claims(token: str | None) -> dict[str, Any] | None:
    """The token's payload, unverified: the log shows who a request claimed to be, refused or not."""
    if not token:
        return None
    try:
        segment = token.split(".")[1]
        payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _row_count(body: bytes | None) -> int | None:
    """The last result's rowCount, read from the end of Neon's JSON answer without parsing it."""
    if not body:
        return None
    at = body.rfind(_ROW_COUNT)
    if at < 0:
        return None
    digits = bytes(itertools.takewhile(lambda b: 48 <= b <= 57, body[at + len(_ROW_COUNT):at + len(_ROW_COUNT) + 20]))  # type: ignore[operator]  # b: int
    return int(digits) if digits else None


class RequestLog:
    """`record(...)` from the request paths; `entries()` and `subscribe()` for the console."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._subscribers: set[asyncio.Queue] = set()
        self._ids = itertools.count(1)

    def record(self, path: str, role: str | None, *, token: str | None = None, statement: str = "",
               began: float | None = None, rows: int | None = None, error: str | None = None,
               method: str | None = None, status: int | None = None) -> None:
        """One finished request or session. `token`: the JWT it came with (decoded lazily); `began`: its
        time.perf_counter() at the start; `method` and `status`: an HTTP request's (the Data API's)."""
        entry = {"id": next(self._ids), "time": time.time(), "path": path, "role": role, "_token": token,
                 "statement": statement[:STATEMENT_CHARS],
                 "duration_ms": round((time.perf_counter() - began) * 1000, 2) if began is not None else None,
                 "rows": rows, "error": error, "method": method, "status": status}
        self._entries.append(entry)
        for queue in self._subscribers:
            if queue.qsize() < SUBSCRIBER_BACKLOG:
                queue.put_nowait(entry)

    def record_sql(self, role: str, token: str | None, statements: Sequence[str], began: float, *,
                   body: bytes | None = None, error: str | None = None) -> None:
        """A /sql request: its statements (a batch shows them joined), rows of the last result, or the error."""
        self.record("/sql", role, token=token, statement=";\n".join(statements), began=began,
                    rows=_row_count(body), error=error)

    def entries(self, after: int = 0) -> list[dict[str, Any]]:
        return [self.shown(e) for e in self._entries if e["id"] > after]

    @staticmethod
    def shown(entry: dict[str, Any]) -> dict[str, Any]:
        """The entry as the console shows it: with the token's claims (and sub) instead of the token."""
        claims = _claims(entry["_token"])
        public = {k: v for k, v in entry.items() if k != "_token"}
        return public | {"sub": claims.get("sub") if claims else None, "claims": claims}

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue]:
        """A queue that receives each new entry (raw: pass it through `shown`) while the block runs."""
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
