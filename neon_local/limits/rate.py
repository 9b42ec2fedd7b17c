"""Rate limits with Neon's semantics: windowed buckets per endpoint and protocol, and (beyond Neon) per identity.

Neon's proxy limits connection attempts per endpoint with a set of buckets written `rps@interval`
(default `500@1s,300@1m,200@10m`): a bucket allows `rps * interval` attempts per window of
`interval`, a window past its interval starts again from zero, an attempt is allowed only if every
bucket allows it and is counted in every bucket only when allowed. The refusal text is Neon's
(AuthError::TooManyConnections). Per-identity limits (per JWT `sub` and per role) are neon-local's own.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from neon_local.errors import NeonLocalError

__all__ = ["NEON_PRESET", "TOO_MANY", "RateBucket", "RateLimited", "RateLimiter", "WindowedLimiter", "parse_spec"]

TOO_MANY = "Too many connections to this endpoint. Please try again later."
NEON_PRESET = "500@1s,300@1m,200@10m"  # Neon proxy's DEFAULT_ENDPOINT_RPS_SET
PROTOCOLS = ("tcp", "ws", "http")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BUCKET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*@\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
MAX_KEYS = 10_000  # identities remembered per limiter; the oldest windows go first


@dataclass(frozen=True)
class RateBucket:
    rps: float
    interval: float  # seconds

    @property
    def max_requests(self) -> float:
        return self.rps * self.interval


class RateLimited(NeonLocalError):
    """Refused by a limiter: `message` for the client, `retry_after` seconds until the fullest window restarts."""

    def __init__(self, message: str, retry_after: float, endpoint: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.endpoint = endpoint  # Neon's endpoint limit, else neon-local's per-identity one


def parse_spec(text: str) -> tuple[RateBucket, ...]:
    """`"neon"`, `"500@1s,300@1m"` or `""`/`"off"` (no buckets); ValueError names the part that is wrong."""
    text = text.strip()
    if text.lower() in ("", "off"):
        return ()
    if text.lower() == "neon":
        text = NEON_PRESET
    buckets = []
    for part in text.split(","):
        match = _BUCKET.match(part)
        if not match:
            raise ValueError(f'rate limit {part.strip()!r} is not "rps@interval" (e.g. "500@1s,300@1m" or "neon")')
        bucket = RateBucket(float(match[1]), float(match[2]) * _UNITS[match[3]])
        if bucket.max_requests < 1:
            raise ValueError(f"rate limit {part.strip()!r} allows less than one request per window")
        buckets.append(bucket)
    return tuple(buckets)


def parse_protocols(text: str) -> dict[str, tuple[RateBucket, ...]]:
    """One spec for every protocol (`"neon"`), or one per protocol (`"tcp=neon; http=100@1s"`; unnamed: no limit)."""
    if "=" not in text:
        buckets = parse_spec(text)
        return dict.fromkeys(PROTOCOLS, buckets)
    found: dict[str, tuple[RateBucket, ...]] = dict.fromkeys(PROTOCOLS, ())
    for part in filter(str.strip, text.split(";")):
        protocol, _, spec = part.partition("=")
        if protocol.strip() not in PROTOCOLS:
            raise ValueError(f"rate limit {part.strip()!r}: the protocol must be one of {', '.join(PROTOCOLS)}")
        found[protocol.strip()] = parse_spec(spec)
    return found


class WindowedLimiter:
    """Neon's bucket set, one state per key: `check(key)` returns None (allowed, counted) or seconds to wait."""

    def __init__(self, buckets: tuple[RateBucket, ...], clock=time.monotonic) -> None:
        self.buckets = buckets
        self._clock = clock
        self._state: dict[object, list[list[float]]] = {}  # key -> per bucket [window start, count]

    def check(self, key: object) -> float | None:
        if not self.buckets:
            return None
        now = self._clock()
        windows = self._state.get(key)
        if windows is None:
            if len(self._state) >= MAX_KEYS:
                self._state.pop(next(iter(self._state)))
            windows = self._state[key] = [[now, 0.0] for _ in self.buckets]
        wait = 0.0
        for bucket, window in zip(self.buckets, windows):
            if now - window[0] > bucket.interval:
                window[0], window[1] = now, 0.0
            if window[1] + 1 > bucket.max_requests:
                wait = max(wait, window[0] + bucket.interval - now)
        if wait:
            return wait
        for window in windows:
            window[1] += 1
        return None


class RateLimiter:
    """The endpoint's limiters per protocol (Neon's), and per `sub` and per role (neon-local's)."""

    def __init__(self, endpoint: str = "", identity: str = "", clock=time.monotonic) -> None:
        self.spec = (endpoint, identity)
        per_protocol = parse_protocols(endpoint)
        self._endpoint = {protocol: WindowedLimiter(per_protocol[protocol], clock) for protocol in PROTOCOLS}
        self._identity = WindowedLimiter(parse_spec(identity), clock)
        self.enabled = any(per_protocol.values()) or bool(self._identity.buckets)

    def check_endpoint(self, protocol: str) -> None:
        """Count one connection attempt (or /sql request) on `protocol`; raise RateLimited past Neon's limit."""
        wait = self._endpoint[protocol].check(None)
        if wait is not None:
            raise RateLimited(TOO_MANY, wait)

    def check_identity(self, role: str, sub: object) -> None:
        """Count one for a JWT role and its `sub`; raise RateLimited past either's limit."""
        if not self._identity.buckets:
            return
        for kind, key in (("role", role), ("sub", sub)):
            if key is None:
                continue
            wait = self._identity.check((kind, str(key)))
            if wait is not None:
                raise RateLimited(f'Too many connections for {kind} "{key}". Please try again later.', wait, False)
