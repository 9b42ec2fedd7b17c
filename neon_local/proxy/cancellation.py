"""Cancel keys of our own: the BackendKeyData a client sees, mapped to the Postgres backend serving it.

Clients never learn a real backend pid or key, so a cancel can only reach the backend of the
session that was handed the key, and only while that session lives.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CancelKey:
    """A (pid, secret key) pair as carried by BackendKeyData and CancelRequest; a backend's may carry the opener
    of its server when that is not the proxy's own (a tenant's upstream)."""

    pid: int
    key: int
    opener: Callable[[], Awaitable[Any]] | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        return f"CancelKey(pid={self.pid}, key=[secure])"


class CancelMap:
    """The live sessions' keys: ours → the backend's."""

    def __init__(self) -> None:
        self._by_pid: dict[int, tuple[CancelKey, CancelKey]] = {}

    def register(self, backend: CancelKey) -> CancelKey:
        while True:
            pid = secrets.randbelow(2**31 - 1) + 1  # positive, like a real pid, so clients print it sanely
            if pid not in self._by_pid:
                break
        ours = CancelKey(pid, struct.unpack("!i", secrets.token_bytes(4))[0])
        self._by_pid[pid] = (ours, backend)
        return ours

    def unregister(self, ours: CancelKey) -> None:
        self._by_pid.pop(ours.pid, None)

    def lookup(self, pid: int, key: int) -> CancelKey | None:
        """The backend for a CancelRequest, or None; the key is compared in constant time."""
        entry = self._by_pid.get(pid)
        if entry is None:
            return None
        ours, backend = entry
        if not hmac.compare_digest(struct.pack("!i", ours.key), struct.pack("!i", key)):
            return None
        return backend
