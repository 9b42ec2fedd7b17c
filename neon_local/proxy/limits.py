"""Limits that keep one client from starving the others: sessions per role, silent sessions, dead peers.

Postgres has 1,000 connection slots. Without a cap, one JWT user opening ~1,000 sessions locks out
everyone, the owner included (53300). `RoleSlots` caps the TCP and WebSocket sessions of each role
but the owner's; `idle_close` ends sessions silent past `client_idle_timeout`; `tune_keepalive`
lets the kernel notice a client that vanished without a FIN.
"""

from __future__ import annotations

import collections
import socket

from neon_local.errors import NeonLocalError
from neon_local.wire import messages as m

__all__ = ["RoleSlots", "TooManySessions", "at_message_boundary", "idle_close_message", "tune_keepalive"]

# Probe after 60 s of silence, every 10 s, give up after 6 misses; unacknowledged data gives up after 2 min.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, USER_TIMEOUT_MS = 60, 10, 6, 120_000
_READY_FOR_QUERY_HEAD = b"Z\0\0\0\x05"


class TooManySessions(NeonLocalError):
    """A role is at its session cap; `message` and `hint` are for the client."""

    def __init__(self, role: str, limit: int) -> None:
        self.message = (f'too many connections for role "{role}": neon-local allows {limit} TCP and WebSocket '
                        f"sessions per role (role_connection_limit)")
        self.hint = ("Close idle connections, or raise role_connection_limit (NEON_LOCAL_ROLE_CONNECTION_LIMIT, "
                     "--role-connection-limit); the owner role is never limited.")
        super().__init__(self.message)


class RoleSlots:
    """`take(role)` before opening a backend (raises TooManySessions), `give(role)` when the session ends."""

    def __init__(self, limit: int = 0, exempt: str | None = None) -> None:
        self.limit = limit
        self.exempt = exempt
        self.counts: collections.Counter[str] = collections.Counter()

    def take(self, role: str) -> None:
        if self.limit and role != self.exempt and self.counts[role] >= self.limit:
            raise TooManySessions(role, self.limit)
        self.counts[role] += 1

    def give(self, role: str) -> None:
        self.counts[role] -= 1
        if self.counts[role] <= 0:
            del self.counts[role]


def tune_keepalive(sock: socket.socket | None) -> None:
    """TCP keepalive and a user timeout on a client socket, where the platform has them."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def at_message_boundary(last_sent: bytes) -> bool:
    """Whether the last bytes sent to a client ended with ReadyForQuery, so a message may follow."""
    return last_sent[-6:-1] == _READY_FOR_QUERY_HEAD


def idle_close_message(limit: int) -> bytes:
    """Postgres's own idle-session FATAL (57P05), with the setting that sets the limit."""
    return m.error_response(
        "FATAL", "57P05", "terminating connection due to idle-session timeout",
        hint=f"neon-local closes TCP and WebSocket sessions silent for {limit} s (client_idle_timeout).")
