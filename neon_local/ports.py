"""Bind listening sockets up front, so a taken port fails fast with the flag that changes it."""

from __future__ import annotations

import errno
import socket

from neon_local.errors import NeonLocalError
from neon_local.settings import SCALARS


class PortInUse(NeonLocalError):
    """The port is taken; the message names it, the flag and the env var that change it."""


def bind(host: str, port: int, setting: str) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; port 0 picks a free one."""
    scalar = next(s for s in SCALARS if s.name == setting)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use. "
                f"Stop what uses it, or choose another with {scalar.flag} PORT (or {scalar.env}=PORT); "
                f"{scalar.flag} 0 picks a free port and `neon-local status` shows it."
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PortInUse(f"cannot listen on {host}: no such local address. Fix --host.") from None
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock
