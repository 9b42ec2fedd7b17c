"""Mint JWTs for the named test users of neon_local.toml, or for ad-hoc claims, from the emulator's issuer."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWT, unverified: what the proxy hands to pg_session_jwt once it verified it."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class TokenFactory:
    """`neon_token("alice")`, `neon_token("alice", org_id="org_x")`, `neon_token(sub="user_42")`,
    `neon_token("bob", expired=True)`: keyword arguments other than the mint options become claims."""

    def __init__(self, mint: Callable[..., str]) -> None:
        self._mint = mint

    def __call__(self, user: str | None = None, *, sub: str | None = None, lifetime: int = 3600, expired: bool = False,
                 audience: str | None = None, not_before: int | None = None, alg: str = "ES256", **claims: Any) -> str:
        return self._mint(user, sub=sub, claims=claims or None, lifetime=lifetime, expired=expired,
                          audience=audience, not_before=not_before, alg=alg)

    def claims(self, user: str | None = None, **options: Any) -> dict[str, Any]:
        """The claims such a token carries, e.g. to act as the same user at SQL level."""
        return claims_of(self(user, **options))
