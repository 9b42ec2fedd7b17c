"""Mint JWTs for the named test users of neon_local.toml, or for ad-hoc claims, from the emulator's issuer."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from neon_local.errors import NeonLocalError

MINTED_KEPT = 100_000  # tokens whose claims the factory vouches for; a session mints far fewer


class NotAJwt(NeonLocalError, ValueError):
    """The text is not a compact JWT with a JSON payload: the proxy will refuse it, as Neon's does."""


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWT, unverified: what the proxy hands to pg_session_jwt once it verified it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NotAJwt(f"a JWT has 3 dot-separated parts, this has {len(parts)}")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise NotAJwt(f"the payload is not base64url JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise NotAJwt("the payload is not a JSON object")
    return payload


class TokenFactory:
    """`neon_token("alice")`, `neon_token("alice", org_id="org_x")`, `neon_token(sub="user_42")`,
    `neon_token("bob", expired=True)`: keyword arguments other than the mint options become claims;
    `claims={...}` sets any claim, also one named like a mint option (`claims={"lifetime": "gold"}`).

    `sub=None` with no user makes a token without a `sub` (as for `anonymous`), where `sign` is available.
    """

    def __init__(self, mint: Callable[..., str], sign: Callable[[dict[str, Any], str], str] | None = None) -> None:
        self._mint = mint
        self._sign = sign
        self._minted: dict[str, dict[str, Any]] = {}

    def __call__(self, user: str | None = None, *, sub: str | None = None, claims: Mapping[str, Any] | None = None,
                 lifetime: int = 3600, expired: bool = False, audience: str | None = None,
                 not_before: int | None = None, alg: str = "ES256", **extra: Any) -> str:
        merged = {**extra, **(claims or {})}
        if user is None and sub is None and "sub" not in merged:
            token = self._without_sub(merged, lifetime, expired, audience, not_before, alg)
        else:
            token = self._mint(user, sub=sub, claims=merged or None, lifetime=lifetime, expired=expired,
                               audience=audience, not_before=not_before, alg=alg)
        if len(self._minted) >= MINTED_KEPT:
            self._minted.clear()
        self._minted[token] = claims_of(token)
        return token

    def claims(self, user: str | None = None, **options: Any) -> dict[str, Any]:
        """The claims such a token carries, e.g. to act as the same user at SQL level."""
        return claims_of(self(user, **options))

    def vouched(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this factory minted; None for any other (its payload is unverified)."""
        return self._minted.get(token)

    def _without_sub(self, claims: dict[str, Any], lifetime: int, expired: bool, audience: str | None, not_before: int | None,
                     alg: str) -> str:
        if self._sign is None:
            raise ValueError("a token without a sub needs the plugin's own emulator (not --neon-local-reuse): "
                             "give a sub=, or name a user")
        # Mint with a placeholder and sign the same claims without it: one source of the time claims.
        template = claims_of(self._mint(None, sub="-", claims=claims or None, lifetime=lifetime, expired=expired,
                                        audience=audience, not_before=not_before, alg=alg))
        del template["sub"]
        return self._sign(template, alg)


class User:
    """An identity for any client: a user of neon_local.toml (`name`) or an ad-hoc `sub`, extra `claims`, and the
    Postgres `role` the JWT is for. `User(role="anonymous")` has no `sub` at all."""

    def __init__(self, name: str | None = None, *, sub: str | None = None, claims: Mapping[str, Any] | None = None,
                 role: str = "authenticated") -> None:
        self.name, self.sub, self.claims, self.role = name, sub, dict(claims or {}), role

    def __repr__(self) -> str:
        return f"<User {self.label}>"

    @property
    def label(self) -> str:
        """How reports name it: the toml name, else the sub, else the role."""
        return self.name or self.sub or self.role

    def token(self, tokens: TokenFactory, **claims: Any) -> str:
        return tokens(self.name, sub=self.sub, claims={**self.claims, **claims})
