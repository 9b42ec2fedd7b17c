"""The identities the console acts as, spelt as the page sends them, and how each reaches Postgres.

  {"kind": "owner"}                                   the owner role, with its password (as the app's DATABASE_URL)
  {"kind": "user", "name": "alice"}                   a test user of neon_local.toml, role authenticated
  {"kind": "anonymous"}                               Neon's anonymous role, a token without sub
  {"kind": "claims", "role": "authenticated", "claims": {...}}   any JWT role with ad-hoc claims

A JWT identity gets a token from the built-in issuer, so every statement goes through the verifier and
the session set-up of the real paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

from neon_local.auth.issuer import Issuer, IssuerError
from neon_local.errors import NeonLocalError
from neon_local.settings import Settings
from neon_local.testing.tokens import TokenFactory, claims_of

__all__ = ["ConsoleIdentity", "IdentityError", "resolve"]


class IdentityError(NeonLocalError, ValueError):
    """The page asked for an identity that cannot be made; the message says why."""


@dataclass(frozen=True)
class ConsoleIdentity:
    label: str
    role: str
    token: str | None  # None: the owner, by password
    claims: Mapping[str, Any] | None

    def sql_headers(self, settings: Settings, database: str) -> dict[str, str]:
        """What a driver sends to POST /sql as this identity."""
        if self.token is None:
            credentials = f"{quote(settings.owner, safe='')}:{quote(settings.owner_password, safe='')}"
            return {"Neon-Connection-String": f"postgresql://{credentials}@localhost/{quote(database, safe='')}"}
        return {"Neon-Connection-String": f"postgresql://{quote(self.role, safe='')}@localhost/{quote(database, safe='')}",
                "Authorization": f"Bearer {self.token}"}

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "role": self.role, "claims": self.claims}


def token_factory(issuer: Issuer) -> TokenFactory:
    return TokenFactory(issuer.mint, lambda claims, alg: issuer.sign(claims, alg=alg))


def resolve(spec: Any, settings: Settings, tokens: TokenFactory) -> ConsoleIdentity:
    if not isinstance(spec, dict):
        raise IdentityError('identity must be an object such as {"kind": "user", "name": "alice"}')
    kind = spec.get("kind")
    try:
        if kind == "owner":
            return ConsoleIdentity("owner", settings.owner, None, None)
        if kind == "user":
            name = spec.get("name")
            if name not in settings.users:
                raise IdentityError(f"no test user {name!r} in neon_local.toml (known: {', '.join(settings.users) or 'none'})")
            token = tokens(name)
            return ConsoleIdentity(cast(str, name), "authenticated", token, claims_of(token))  # a user's name, as checked
        if kind == "anonymous":
            token = tokens()
            return ConsoleIdentity("anonymous", "anonymous", token, claims_of(token))
        if kind == "claims":
            role = spec.get("role") or "authenticated"
            claims = spec.get("claims") or {}
            if role not in settings.jwt_roles:
                raise IdentityError(f"role {role!r} takes no JWT; JWT roles are {', '.join(settings.jwt_roles)}")
            if not isinstance(claims, dict):
                raise IdentityError("claims must be a JSON object")
            rest = {k: v for k, v in claims.items() if k != "sub"}
            token = tokens(sub=str(claims["sub"]), claims=rest) if claims.get("sub") else tokens(claims=rest)
            return ConsoleIdentity(str(claims.get("sub") or role), role, token, claims_of(token))
    except IssuerError as exc:
        raise IdentityError(str(exc)) from None
    raise IdentityError('identity kind must be "owner", "user", "anonymous" or "claims"')


def defined(settings: Settings) -> list[dict[str, Any]]:
    """Every identity the picker offers by name."""
    return ([{"kind": "owner", "label": f"owner ({settings.owner})"}]
            + [{"kind": "user", "name": name, "label": name, "claims": dict(claims)} for name, claims in settings.users.items()]
            + [{"kind": "anonymous", "label": "anonymous"}])
