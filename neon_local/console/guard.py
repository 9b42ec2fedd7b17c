"""Who may use the console: it runs SQL as the owner, so only the developer, from the console's own page.

Four checks on every /console request, in this order:
  1. the peer is a loopback address (even when `host` makes the listeners bind wider);
  2. the Host header names loopback (localhost, *.localhost or a loopback IP): a DNS-rebinding page
     reaches 127.0.0.1 under its own name, and is refused here;
  3. a browser request comes from the console's own origin: an Origin header, when sent, must be
     http://<the Host>, and Sec-Fetch-Site, when sent, must be same-origin or none (a page on another
     localhost port is "same-site" and gets SameSite cookies, so the origin check is what stops it);
  4. the per-instance secret, made at start and printed in the console URL (?key=...), is then kept in an
     HttpOnly SameSite=Strict cookie named per port (two instances on one machine do not overwrite each other).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from aiohttp import web

__all__ = ["ConsoleGuard"]

_SAFE_FETCH_SITES = ("same-origin", "none")


def _loopback_ip(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def loopback_host(host_header: str | None) -> bool:
    """Whether a Host header (name[:port]) names this machine's loopback."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name == "localhost" or name.endswith(".localhost") or _loopback_ip(name)


class ConsoleGuard:
    """`refusal(request)` is None when the request may use the console, else the response that refuses it."""

    def __init__(self, port: int, secret: str | None = None) -> None:
        self.secret = secret or secrets.token_urlsafe(24)
        self.cookie = f"neon_local_console_{port}"

    def refusal(self, request: web.Request, *, need_secret: bool = True) -> web.Response | None:
        """`need_secret=False` for the page's own address, which trades the ?key= for the cookie."""
        if not _loopback_ip(request.remote):
            return _refuse(403, "the console answers only on this machine (loopback)")
        if not loopback_host(request.headers.get("Host")):
            return _refuse(403, "the console answers only to a loopback Host (localhost or 127.0.0.1); "
                                "a page reaching it under another name is refused (DNS rebinding)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{request.host}".lower():
            return _refuse(403, f"the console's API answers only its own page, not one from {origin}")
        # The page itself may be opened from anywhere (a link in another app): it holds no data, and without
        # the key or the cookie it answers 401; its API calls are what must come from itself.
        if need_secret and request.headers.get("Sec-Fetch-Site", "same-origin") not in _SAFE_FETCH_SITES:
            return _refuse(403, "the console's API answers only its own page (cross-site request refused)")
        if request.method not in ("GET", "HEAD") and origin is None:
            return _refuse(403, "the console's API needs the Origin header its own page sends")
        if need_secret and not self.has_secret(request):
            return _refuse(401, "open the console with the URL `neon-local up` printed (it carries ?key=...); "
                                "`neon-local status` shows it again")
        return None

    def has_secret(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.cookies.get(self.cookie, ""), self.secret)

    def key_matches(self, key: str) -> bool:
        return hmac.compare_digest(key, self.secret)

    def set_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(self.cookie, self.secret, path="/console", httponly=True, samesite="Strict")


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
