"""The built-in issuer's signing keys, kept in <data_dir>/keys, and public keys ready for verification.

`KeyRing` owns the private keys: one active key per algorithm (ES256, RS256, EdDSA) plus the retired
ones that stay in the JWKS until removed, so tokens signed before a rotation keep verifying.
`VerifyKey` is a public key from any JWKS (ours or a provider's) turned into a `cryptography` object
once, so the hot path never parses a JWK again.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwk
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

from neon_local.errors import NeonLocalError

__all__ = ["ALGORITHMS", "KeyRing", "KeyRingError", "PublicKeySet", "SigningKey", "VerifyKey", "verify_key_from_jwk"]

log = logging.getLogger(__name__)

ALGORITHMS = ("ES256", "RS256", "EdDSA")
KEYRING_FILE = "keyring.json"

_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class KeyRingError(NeonLocalError):
    """The key file is unreadable, or a key operation is not allowed; the message says which and why."""


def _generate(alg: str) -> ECKey | RSAKey | OKPKey:
    if alg == "ES256":
        key: ECKey | RSAKey | OKPKey = ECKey.generate_key("P-256")
    elif alg == "RS256":
        key = RSAKey.generate_key(2048)
    else:
        key = OKPKey.generate_key("Ed25519")
    # The RFC 7638 thumbprint makes the kid stable for the key and unique across rotations.
    return cast(ECKey | RSAKey | OKPKey, jwk.import_key(key.as_dict(private=True) | {"kid": f"{alg.lower()}-{key.thumbprint()[:12]}"}))


@dataclass(frozen=True)
class SigningKey:
    """A private key of the ring with its kid, algorithm and creation time (Unix seconds)."""

    kid: str
    alg: str
    created: int
    key: ECKey | RSAKey | OKPKey

    def public_jwk(self) -> dict[str, Any]:
        return self.key.as_dict(private=False) | {"kid": self.kid, "alg": self.alg, "use": "sig"}


class KeyRing:
    """Private signing keys in one JSON file (mode 0600); `version` changes whenever the set changes."""

    def __init__(self, path: Path, keys: list[SigningKey], active: dict[str, str]):
        self.path = path
        self._keys = keys
        self._active = active
        self._mtime_ns = path.stat().st_mtime_ns if path.exists() else 0
        self.version = 0

    @classmethod
    def load_or_create(cls, directory: Path) -> KeyRing:
        """Read the key file in `directory`, creating the directory (0700) and missing active keys (0600)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / KEYRING_FILE
        keys, active = _read(path) if path.exists() else ([], {})
        ring = cls(path, keys, active)
        missing = [alg for alg in ALGORITHMS if alg not in active]
        if missing:
            ring.rotate(missing)
        return ring

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys)

    def active(self, alg: str) -> SigningKey:
        """The key that signs new tokens for `alg`."""
        if alg not in self._active:
            raise KeyRingError(f"no signing key for {alg!r}; the built-in issuer signs with {', '.join(ALGORITHMS)}.")
        return self._by_kid(self._active[alg])

    def is_active(self, kid: str) -> bool:
        return kid in self._active.values()

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWKS, active keys first, then retired ones newest first."""
        ordered = sorted(self._keys, key=lambda k: (not self.is_active(k.kid), -k.created))
        return {"keys": [k.public_jwk() for k in ordered]}

    def public_keys(self) -> PublicKeySet:
        """Every published key, converted for verification."""
        return PublicKeySet.from_jwks(self.jwks())

    def rotate(self, algs: tuple[str, ...] | list[str] = ALGORITHMS) -> list[SigningKey]:
        """Make a new active key for each of `algs`; the old ones stay published until removed."""
        new = []
        for alg in algs:
            if alg not in ALGORITHMS:
                raise KeyRingError(f"cannot make a {alg!r} key; choose from {', '.join(ALGORITHMS)}.")
            key = _generate(alg)
            new.append(SigningKey(cast(str, key.kid), alg, int(time.time()), key))  # _generate sets it
        self._keys.extend(new)
        self._active.update({k.alg: k.kid for k in new})
        self._save()
        return new

    def remove(self, kid: str) -> SigningKey:
        """Drop a retired key; tokens it signed stop verifying. Active keys must be rotated out first."""
        key = self._by_kid(kid)
        if self.is_active(kid):
            raise KeyRingError(f"{kid} is the active {key.alg} key; run `neon-local keys rotate` first, then remove it.")
        self._keys.remove(key)
        self._save()
        return key

    def reload(self) -> bool:
        """Re-read the file if another process (the CLI) changed it; True when the keys changed."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime_ns:
            return False
        self._keys, self._active = _read(self.path)
        self._mtime_ns = mtime
        self.version += 1
        return True

    def _by_kid(self, kid: str) -> SigningKey:
        for key in self._keys:
            if key.kid == kid:
                return key
        raise KeyRingError(f"no key with kid {kid!r}; `neon-local keys list` shows the kids.")

    def _save(self) -> None:
        document = {
            "active": self._active,
            "keys": [{"alg": k.alg, "created": k.created, "jwk": k.key.as_dict(private=True)} for k in self._keys],
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1)
        os.replace(tmp, self.path)
        self._mtime_ns = self.path.stat().st_mtime_ns
        self.version += 1


def _read(path: Path) -> tuple[list[SigningKey], dict[str, str]]:
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by other users; restricting it to mode 0600", path)
        path.chmod(0o600)
    try:
        document = json.loads(path.read_text())
        keys = [SigningKey(e["jwk"]["kid"], e["alg"], int(e["created"]), cast(ECKey | RSAKey | OKPKey, jwk.import_key(e["jwk"])))
                for e in document["keys"]]
        active = {alg: kid for alg, kid in document["active"].items() if any(k.kid == kid for k in keys)}
    except (ValueError, KeyError, TypeError, JoseError) as exc:
        raise KeyRingError(f"{path} is damaged ({exc!r}); move it away and a new key ring is made on the next start.") from None
    return keys, active


@dataclass(frozen=True)
class VerifyKey:
    """A public JWK as the verifier needs it: its type for Neon's checks and a ready `cryptography` key."""

    kid: str | None
    kty: str
    crv: str | None
    jwk_alg: str | None
    public: Any

    def verify(self, alg: str, signature: bytes, data: bytes) -> bool:
        """True if `signature` over `data` is valid for `alg` (RS256, ES256 or EdDSA) with this key."""
        try:
            if alg == "RS256":
                self.public.verify(signature, data, _PKCS1, _SHA256)
            elif alg == "ES256":
                if len(signature) != 64:
                    return False
                r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                self.public.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
            else:
                self.public.verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


def verify_key_from_jwk(data: Any) -> VerifyKey | None:
    """Convert one JWKS entry, or None when it is unparseable or not for signing (Neon skips those too)."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig":
        return None
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    public = {k: v for k, v in data.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth", "k")}
    try:
        with warnings.catch_warnings():
            # joserfc warns about short keys; the verifier refuses them itself, as jose-jwk's strength rule does.
            warnings.simplefilter("ignore", SecurityWarning)
            key = jwk.import_key(public if data.get("kty") != "oct" else data)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    crv = data.get("crv") if isinstance(data.get("crv"), str) else None
    alg = data.get("alg") if isinstance(data.get("alg"), str) else None
    return VerifyKey(kid, data["kty"], crv, alg, None if data["kty"] == "oct" else key.public_key)


@dataclass(frozen=True)
class PublicKeySet:
    """The usable signing keys of one JWKS, by kid; entries that do not parse are skipped, as Neon does."""

    keys: tuple[VerifyKey, ...]
    by_kid: Mapping[str, VerifyKey]

    @classmethod
    def from_jwks(cls, document: Any) -> PublicKeySet:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError('a JWKS must be a JSON object with a "keys" list')
        keys = tuple(k for k in map(verify_key_from_jwk, entries) if k is not None)
        # The first key wins a kid collision, matching Neon's linear search.
        by_kid: dict[str, VerifyKey] = {}
        for key in keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, key)
        return cls(keys, by_kid)
