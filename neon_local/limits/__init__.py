"""Limits on what clients may send: Neon's rate limits (`rate`) and the query allow-list (`allowlist`).

`ClientLimits.of(settings)` is the one instance a process shares between /sql, TCP and WebSocket, so
per-identity limits and the allow-list's counters see every path.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from neon_local.limits.allowlist import AllowList, Refused, default_path
from neon_local.limits.rate import RateLimited, RateLimiter
from neon_local.limits.store import ListFile
from neon_local.settings import ConfigError

__all__ = ["ClientLimits", "RateLimited", "Refused"]

log = logging.getLogger(__name__)


class ClientLimits:
    """The allow-list and the rate limiter of one configuration."""

    _shared: ClassVar[dict[tuple, ClientLimits]] = {}

    def __init__(self, settings) -> None:
        self._defaults = {"rate_limit": settings.rate_limit, "rate_limit_identity": settings.rate_limit_identity}
        try:
            self.rate = RateLimiter(settings.rate_limit, settings.rate_limit_identity)
        except ValueError as exc:
            raise ConfigError(f"{exc} (rate_limit, rate_limit_identity)") from None
        self.allowlist = AllowList(default_path(settings), settings.allowlist, self._apply_file)

    def _apply_file(self, content: ListFile) -> None:
        """The list file's [limits] win over the settings; a bad one keeps the limits in force."""
        wanted = {**self._defaults, **content.limits}
        spec = (wanted["rate_limit"], wanted["rate_limit_identity"])
        if spec == self.rate.spec:
            return
        try:
            self.rate = RateLimiter(*spec)
        except ValueError as exc:
            log.error("rate limits in %s not applied: %s", self.allowlist.path, exc)
            return
        log.info("rate limits now: %s per protocol, %s per identity", spec[0] or "none", spec[1] or "none")

    @classmethod
    def of(cls, settings) -> ClientLimits:
        key = (str(default_path(settings)), settings.allowlist, settings.rate_limit, settings.rate_limit_identity)
        if key not in cls._shared:
            cls._shared[key] = cls(settings)
        return cls._shared[key]

    def admit(self, protocol: str, role: str, sub: str | None, jwt: bool) -> None:
        """One connection attempt (or /sql request) of `role`: raises RateLimited past a limit."""
        if self.rate.enabled:
            self.rate.check_endpoint(protocol)
            if jwt:
                self.rate.check_identity(role, sub)

    def check_statements(self, role: str, jwt: bool, texts, path: str) -> None:
        """Every text's statements before any runs: raises Refused for the first one the allow-list refuses."""
        if self.allowlist.mode_for(role, jwt) != "off":
            for text in texts:
                self.allowlist.check(role, jwt, text, path)
