"""JWT verification for every listener: Neon's `check_jwt` rules and error texts, plus our hardening.

Neon's order is kept (decode, kid, key lookup by role, algorithm, signature, aud, exp, nbf) so that a
token Neon refuses is refused here with the same client-facing text. Rules Neon lacks (length cap,
duplicate JSON keys, jku/x5u/jwk/x5c, crit, nested JWTs, iat in the future) run before or after those
checks with their own short messages. `compat = "extended"` admits EdDSA keys and tokens without a
kid, logging each use with the Neon rule it breaks. Verified tokens are cached by token string.
"""

from __future__ import annotations

import binascii
import json
import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from neon_local.auth.keys import KeyRing, PublicKeySet, VerifyKey
from neon_local.auth.providers import ProviderCache
from neon_local.errors import NeonLocalError
from neon_local.settings import Provider, Settings

__all__ = ["LEEWAY_SECONDS", "MAX_TOKEN_BYTES", "JwtError", "VerifiedToken", "Verifier"]

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 30  # Neon's CLOCK_SKEW_LEEWAY
MAX_TOKEN_BYTES = 16 * 1024
CACHE_SIZE = 32_768  # a 20k-user working set stays hot; ~1.5 KiB an entry, so ~50 MiB at the most
SOURCE_RECHECK_SECONDS = 1.0

# Neon's client-facing texts (proxy/src/auth/backend/jwt.rs).
ENCODING = "Provided authentication token is not a valid JWT encoding"
MISSING_KID = "missing key id"
JWK_NOT_FOUND = "jwk not found"
ALG_NOT_SUPPORTED = "signature algorithm not supported"
INVALID_RSA_ALG = "invalid RSA signing algorithm"
INVALID_AUDIENCE = "invalid JWT token audience"
NOT_CONFIGURED = "failed to fetch auth rules: JWKs settings for this role were not configured"
# `signature::Error` prints "signature error"; the rsa crate adds its own "verification error" source.
EC_SIGNATURE = "signature error: signature error"
RSA_SIGNATURE = "signature error: signature error: verification error"

# The `alg` values jose-jwa knows; any other value fails Neon's header parsing.
JWA_ALGS = frozenset(
    ["none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"]
)
# What jose-jwk's `is_supported` accepts per key type; "Ed25519" is RFC 9864's name for EdDSA.
RSA_ALGS = frozenset(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
RSA_MIN_BITS = {"256": 2048, "384": 3072, "512": 4096}
EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
EC_NAMES = {"P-256": "P256", "P-384": "P384", "P-521": "P521", "secp256k1": "P256K"}
OKP_ALGS = frozenset({"EdDSA", "Ed25519"})
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
STRING_CLAIMS = ("iss", "sub", "jti", "sid")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwtError(NeonLocalError):
    """A refused token; `message` is the client-facing text (Neon's where Neon has one), `detail` is for logs."""

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint  # the next step, where the client's protocol has room for one (a Postgres HINT)


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed; `claims` is shared with the cache, so treat it as read-only."""

    payload: bytes
    claims: dict
    provider_id: str
    expires_at: float | None


class _Token(NamedTuple):
    """A decoded token; a NamedTuple because it is built on every cold verify and is cheaper than a dataclass."""

    signing_input: bytes
    header: dict[str, Any]
    payload: bytes
    claims: dict[str, Any]
    signature: bytes
    audience: tuple[str, ...]


class _DuplicateKey(NeonLocalError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads would build a new decoder per call when given hooks.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_VALUES = {c: i for i, c in enumerate(_B64_ALPHABET)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")  # bytes.translate is ten times faster than str.translate
# The bits of the last character that fall outside the data when a segment's length is 2 or 3 mod 4.
_UNUSED_BITS = {2: 0b1111, 3: 0b11}


def _b64decode(segment: str, part: str) -> bytes:
    """Strict base64url without padding, canonical trailing bits, like Neon's BASE64_URL_SAFE_NO_PAD."""
    remainder = len(segment) % 4
    if remainder == 1 or not _B64URL.fullmatch(segment):
        raise JwtError(ENCODING, f"the {part} is not base64url without padding")
    if remainder and _B64_VALUES[segment[-1]] & _UNUSED_BITS[remainder]:
        raise JwtError(ENCODING, f"the {part} has non-zero trailing bits in its base64url")
    return binascii.a2b_base64(segment.encode("ascii").translate(_TO_STANDARD) + b"=" * (-len(segment) % 4))


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except _DuplicateKey as exc:
        raise JwtError(f'duplicate key "{exc.args[0]}" in the JWT {part}', "RFC 7519 allows refusing these") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JwtError(ENCODING, f"the {part} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JwtError(ENCODING, f"the {part} is not a JSON object")
    return value


def _numeric_date(claims: dict[str, Any], name: str) -> int | None:
    """Neon reads exp and nbf as u64 seconds: integers only, null meaning absent."""
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < 2**64:
        raise JwtError(ENCODING, f"{name} must be a whole number of seconds, got {value!r}")
    return value


def _audience(claims: dict[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud", [])
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise JwtError(ENCODING, f"aud must be a string or a list of strings, got {aud!r}")


def _check_header(header: dict[str, Any], extended: bool) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str) or not (alg in JWA_ALGS or (extended and alg == "Ed25519")):
        raise JwtError(ENCODING, f"unknown or missing alg {alg!r}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtError(ENCODING, f"kid must be a string, got {kid!r}")


def _harden_header(header: dict[str, Any]) -> None:
    for name in FORBIDDEN_HEADERS:
        if name in header:
            raise JwtError(f'JWT header parameter "{name}" is not allowed: keys come only from the configured JWKS')
    if "crit" in header:
        raise JwtError(f"JWT header marks extensions {header['crit']!r} as critical; none are supported")
    cty = header.get("cty")
    if isinstance(cty, str) and cty.upper() == "JWT":
        raise JwtError('nested JWTs (cty "JWT") are not supported')


def parse_token(token: str, extended: bool = False) -> _Token:
    """Decode a compact JWS strictly; raises JwtError. Nothing here depends on keys or the clock."""
    if len(token) > MAX_TOKEN_BYTES:
        raise JwtError(f"JWT is too long: {len(token)} bytes, the limit is {MAX_TOKEN_BYTES}")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError(ENCODING, f"a JWT has 3 dot-separated segments, this has {len(parts)}")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    _check_header(header, extended)
    payload = _b64decode(parts[1], "payload")
    claims = _json_object(payload, "payload")
    audience = _audience(claims)
    _numeric_date(claims, "exp")
    _numeric_date(claims, "nbf")
    for name in STRING_CLAIMS:
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise JwtError(ENCODING, f"{name} must be a string, got {claims[name]!r}")
    signature = _b64decode(parts[2], "signature")
    _harden_header(header)
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return _Token(signing_input, header, payload, claims, signature, audience)


def _supported(key: VerifyKey, alg: str) -> bool:
    """jose-jwk's `is_supported`: the key type must fit the alg, and a JWK that names its alg only verifies that alg."""
    if key.jwk_alg is not None and key.jwk_alg != alg and not {key.jwk_alg, alg} <= OKP_ALGS:
        return False
    if key.kty == "RSA":
        # jose-jwk wants 2048-bit moduli for the *256 algorithms, 3072 for *384, 4096 for *512.
        return alg in RSA_ALGS and key.public.key_size >= RSA_MIN_BITS[alg[2:]]
    if key.kty == "EC":
        return EC_ALGS.get(key.crv or "") == alg
    if key.kty == "OKP":
        return key.crv in ("Ed25519", "Ed448") and alg in OKP_ALGS
    return key.kty == "oct" and alg in ("HS256", "HS384", "HS512")


def _key_type_name(key: VerifyKey) -> str:
    """The Rust Debug form Neon prints in "unsupported key type ...", e.g. Okp(Ed25519) or Oct."""
    if key.kty == "OKP":
        return f"Okp({key.crv})"
    return {"oct": "Oct", "RSA": "Rsa"}.get(key.kty, "Unknown")


def _check_signature(token: _Token, key: VerifyKey, extended: bool) -> str | None:
    """Neon's algorithm and signature checks; returns a warning when only `extended` admits the key."""
    alg = token.header["alg"]
    if not _supported(key, alg):
        raise JwtError(ALG_NOT_SUPPORTED, f"a {key.kty} key cannot verify {alg}")
    if key.kty == "RSA":
        if alg != "RS256":
            raise JwtError(INVALID_RSA_ALG, f"{alg} is not RS256")
        if not key.verify("RS256", token.signature, token.signing_input):
            raise JwtError(RSA_SIGNATURE)
        return None
    if key.kty == "EC":
        if key.crv != "P-256":
            raise JwtError(f"unsupported EC key type {EC_NAMES.get(key.crv or '', key.crv)}")
        if not key.verify("ES256", token.signature, token.signing_input):
            raise JwtError(EC_SIGNATURE)
        return None
    if not (extended and key.kty == "OKP" and key.crv == "Ed25519"):
        raise JwtError(f"unsupported key type {_key_type_name(key)}")
    if not key.verify("EdDSA", token.signature, token.signing_input):
        raise JwtError("signature error: EdDSA signature does not verify")
    return f'an {alg} signature (Neon allows only RS256 and ES256 and answers "unsupported key type Okp(Ed25519)")'


def _check_claims(token: _Token, provider: Provider, now: float) -> None:
    """Neon's aud, exp and nbf checks, then our iss (only when configured) and iat rules."""
    if provider.jwt_audience is not None and provider.jwt_audience not in token.audience:
        raise JwtError(INVALID_AUDIENCE, f"expected {provider.jwt_audience!r}, got {list(token.audience)!r}")
    if provider.jwt_issuer is not None and token.claims.get("iss") != provider.jwt_issuer:
        # Exact match: a prefix or a lookalike must not pass (the CVE-2024-53861 pattern).
        raise JwtError(f"JWT token issuer {token.claims.get('iss')!r} is not the provider's jwt_issuer {provider.jwt_issuer!r}")
    exp = token.claims.get("exp")
    if exp is not None and now >= exp + LEEWAY_SECONDS:
        raise JwtError(f"JWT token has expired (exp={exp})")
    nbf = token.claims.get("nbf")
    if nbf is not None and nbf >= now + LEEWAY_SECONDS:
        raise JwtError(f"JWT token is not yet ready to use (nbf={nbf})")
    iat = token.claims.get("iat")
    if iat is None:
        return
    if type(iat) not in (int, float) or not math.isfinite(iat):
        raise JwtError(f"iat must be a NumericDate (seconds since 1970), got {iat!r}")
    if iat >= now + LEEWAY_SECONDS:
        raise JwtError(f"JWT was issued in the future (iat={iat})")


class Verifier:
    """Verifies JWTs for a Postgres role against the providers that list that role."""

    def __init__(self, settings: Settings, keyring: KeyRing, jwks_cache: ProviderCache, *, cache_size: int = CACHE_SIZE):
        self._settings = settings
        self._keyring = keyring
        self._jwks = jwks_cache
        self._extended = settings.compat == "extended"
        self._roles = {p.id: frozenset(p.role_names) for p in settings.providers}
        self._cache: OrderedDict[str, tuple[VerifiedToken, float, str | None]] = OrderedDict()  # least recently used first
        self._cache_size = cache_size
        self._builtin = keyring.public_keys()
        self._versions = (keyring.version, jwks_cache.version)
        self._recheck_at = time.monotonic() + SOURCE_RECHECK_SECONDS

    def verify_cached(self, token: str, role: str) -> VerifiedToken | None:
        """The cached result for `token`, if still unexpired and `role` is allowed by its provider."""
        if (self._keyring.version, self._jwks.version) != self._versions or time.monotonic() >= self._recheck_at:
            self._sync_sources()
        entry = self._cache.get(token)
        if entry is None:
            return None
        verified, deadline, warning = entry
        if time.time() >= deadline:
            del self._cache[token]
            return None
        if role not in self._roles[verified.provider_id]:
            return None
        self._cache.move_to_end(token)
        if warning is not None:
            log.warning("accepted a JWT that Neon would refuse (compat = \"extended\"): %s", warning)
        return verified

    async def verify(self, token: str, role: str) -> VerifiedToken:
        """Verify `token` for Postgres role `role`; raises JwtError with Neon's text."""
        cached = self.verify_cached(token, role)
        if cached is not None:
            return cached
        parsed = parse_token(token, self._extended)
        warnings = []
        if parsed.header.get("kid") is None:
            if not self._extended:
                raise JwtError(MISSING_KID)
            warnings.append('a token without kid (Neon answers "missing key id")')
        if not self._settings.providers:
            raise JwtError(NOT_CONFIGURED)
        provider, warning = await self._verify_signature(parsed, role)
        _check_claims(parsed, provider, time.time())
        warnings += [warning] if warning else []
        return self._remember(token, parsed, provider, "; ".join(warnings) or None)

    def clear_cache(self) -> None:
        self._cache.clear()

    def use_settings(self, settings: Settings) -> None:
        """Verify with new providers and roles from now on (live reload); tokens verified before are checked again."""
        self._settings = settings
        self._extended = settings.compat == "extended"
        self._roles = {p.id: frozenset(p.role_names) for p in settings.providers}
        self._cache.clear()

    async def _verify_signature(self, token: _Token, role: str) -> tuple[Provider, str | None]:
        candidates = await self._candidates(token, role)
        if not candidates:
            await self._refresh(role)
            candidates = await self._candidates(token, role)
        if not candidates:
            raise self._not_found(token, role)
        first_error = None
        for provider, key in candidates:
            try:
                return provider, _check_signature(token, key, self._extended)
            except JwtError as exc:
                first_error = first_error or exc
        raise cast(JwtError, first_error)  # candidates is not empty

    def _not_found(self, token: _Token, role: str) -> JwtError:
        """Neon's "jwk not found", which it also answers for a role the token's provider does not allow;
        the detail and hint say which of the two it is."""
        kid = token.header.get("kid")
        for provider in self._settings.providers:
            keys = self._builtin if provider.builtin else self._jwks.cached(provider)
            if role not in provider.role_names and kid is not None and kid in keys.by_kid:
                allowed = ", ".join(provider.role_names)
                return JwtError(JWK_NOT_FOUND,
                                f"role {role!r} is not allowed for provider {provider.id!r}, which signed this token (roles: {allowed})",
                                f"Provider {provider.id} allows the roles {allowed}, not {role}: connect as one of those, "
                                f"or add {role} to its roles in neon_local.toml.")
        return JwtError(JWK_NOT_FOUND, f"no key with kid {kid!r} for role {role!r}")

    async def _candidates(self, token: _Token, role: str) -> list[tuple[Provider, VerifyKey]]:
        """Keys of the role's providers matching the kid, or in extended mode without a kid, the alg."""
        kid, alg = token.header.get("kid"), token.header["alg"]
        found = []
        for provider in self._settings.providers:
            if role not in provider.role_names:
                continue
            keys = await self._keys(provider)
            if kid is not None and kid in keys.by_kid:
                return [(provider, keys.by_kid[kid])]
            if kid is None:
                found += [(provider, key) for key in keys.keys if _supported(key, alg)]
        return found

    async def _keys(self, provider: Provider) -> PublicKeySet:
        if provider.builtin:
            return self._builtin
        return await self._jwks.keys(provider)

    async def _refresh(self, role: str) -> None:
        """Neon refetches on an unknown kid (at most every 30 s per provider); so do we, and re-read our keys."""
        for provider in self._settings.providers:
            if role in provider.role_names and not provider.builtin:
                await self._jwks.refresh_unknown_kid(provider)
        self._sync_sources()

    def _sync_sources(self) -> None:
        """Pick up rotated or removed keys; cached tokens are dropped since their key may be gone."""
        self._recheck_at = time.monotonic() + SOURCE_RECHECK_SECONDS
        self._keyring.reload()
        versions = (self._keyring.version, self._jwks.version)
        if versions != self._versions:
            self._builtin = self._keyring.public_keys()
            self._versions = versions
            self._cache.clear()

    def _remember(self, token: str, parsed: _Token, provider: Provider, warning: str | None) -> VerifiedToken:
        exp = parsed.claims.get("exp")
        verified = VerifiedToken(parsed.payload, parsed.claims, provider.id, float(exp) if exp is not None else None)
        if warning is not None:
            log.warning("accepted a JWT that Neon would refuse (compat = \"extended\"): %s", warning)
        if len(self._cache) >= self._cache_size:
            self._cache.popitem(last=False)  # the least recently used
        deadline = exp + LEEWAY_SECONDS if exp is not None else math.inf
        self._cache[token] = (verified, deadline, warning)
        return verified
