"""Limits on what clients may send: Neon's rate limits (`rate`) and the query allow-list (`allowlist`).

`ClientLimits.of(settings)` is the one instance a process shares between /sql, TCP, WebSocket and the
Data API, so per-identity limits and the counters (`summary()`, shown by `neon-local status` and the
console) see every path.
"""

from __future__ import annotations

import collections
import logging
from typing import ClassVar

from neon_local.limits.allowlist import AllowList, Refused, default_path
from neon_local.limits.rate import RateLimited, RateLimiter
from neon_local.limits.store import ListFile
from neon_local.settings import ConfigError

__all__ = ["PATHS", "ClientLimits", "RateLimited", "Refused"]

log = logging.getLogger(__name__)
# The paths limits apply to, as the counters name them, and as people read them.
PATHS = {"http": "/sql", "tcp": "TCP", "ws": "WebSocket", "data_api": "Data API"}


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
        self.rate_limited: collections.Counter[str] = collections.Counter()  # per path (a key of PATHS)

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
            self.admit_endpoint(protocol)
            if jwt:
                self.admit_identity(protocol, role, sub)

    def admit_endpoint(self, protocol: str, path: str | None = None) -> None:
        """Count one attempt on Neon's per-protocol limit; `path` names the counter when it is not the protocol."""
        try:
            self.rate.check_endpoint(protocol)
        except RateLimited:
            self.rate_limited[path or protocol] += 1
            raise

    def admit_identity(self, path: str, role: str, sub: object) -> None:
        """Count one attempt of a JWT role (and its `sub`) on neon-local's per-identity limit."""
        try:
            self.rate.check_identity(role, sub)
        except RateLimited:
            self.rate_limited[path] += 1
            raise

    def check_statements(self, role: str, jwt: bool, texts, path: str) -> None:
        """Every text's statements before any runs: raises Refused for the first one the allow-list refuses."""
        if self.allowlist.mode_for(role, jwt) != "off":
            for text in texts:
                self.allowlist.check(role, jwt, text, path)

    def check_strings(self, role: str, jwt: bool, on: bool, texts, path: str) -> None:
        """/sql's texts on a connection whose standard_conforming_strings Postgres last reported `on` or off (see
        limits.relay): raises Refused while it is off. A batch runs as one pipeline, which Postgres answers only at its
        end, so a text with a backslash after the first may follow one that turned it off."""
        if self.allowlist.mode_for(role, jwt) in ("enforce", "warn"):
            for index, text in enumerate(texts):
                if not on or (index and "\\" in text):
                    self.allowlist.check_strings(role, jwt, path, text.encode("utf-8", "surrogatepass"), on)

    def summary(self) -> dict:
        """What `neon-local status --json` and the console show: modes, limits, counts per path since start."""
        counts = self.allowlist.counts
        paths = {path: {"label": label, "rate_limited": self.rate_limited[path],
                        **{event: counts[event, path] for event in ("refused", "warned", "learned", "allowed")}}
                 for path, label in PATHS.items()}
        return {
            "allowlist": self.allowlist.describe(),
            "rate_limit": self.rate.spec[0] or "off", "rate_limit_identity": self.rate.spec[1] or "off",
            "paths": paths,
        }
