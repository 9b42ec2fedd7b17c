"""Which web pages may act with a password role: loopback origins, plus the `allowed_origins` setting.

Neon's `/sql` answers every Origin because its owner password is secret. neon-local's owner password
is public (`npg_neonlocal`), so any page the developer opens could otherwise run owner SQL on their
machine. JWT requests stay open to every origin (a page needs a token anyway); password requests,
WebSocket password sessions, token minting and Private Network Access preflights are allowed only
for the origins this policy admits. A request without an Origin header comes from no web page.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["PNA_ALLOW", "PNA_REQUEST", "OriginPolicy"]

PNA_REQUEST = "Access-Control-Request-Private-Network"
PNA_ALLOW = "Access-Control-Allow-Private-Network"


def _is_loopback_origin(origin: str) -> bool:
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginPolicy:
    """`OriginPolicy(settings.allowed_origins)`; `allows(origin)` for an Origin header value (or None)."""

    def __init__(self, allowed_origins: tuple[str, ...] | list[str] = ()) -> None:
        self._any = "*" in allowed_origins
        self._allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    def allows(self, origin: str | None) -> bool:
        if origin is None or self._any:
            return True
        origin = origin.strip().rstrip("/").lower()
        return origin in self._allowed or _is_loopback_origin(origin)

    @staticmethod
    def refusal(origin: str, what: str) -> str:
        """The error text for a refused origin: what was refused and the setting that allows it."""
        return (f"neon-local refuses {what} from the web page at {origin}, as any site could use the public owner "
                f"password: add the origin to allowed_origins (neon_local.toml, NEON_LOCAL_ALLOWED_ORIGINS or "
                f"--allowed-origins) to allow it, or use a JWT role")
