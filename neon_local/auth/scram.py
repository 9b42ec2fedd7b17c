"""Server-side SCRAM-SHA-256 (RFC 5802, 7677), checked against the verifier Postgres keeps in pg_authid.

The proxy plays Postgres's part of the exchange itself, so a password role's credentials never
reach Postgres (which trusts the proxy on its private socket). With TLS it also offers
SCRAM-SHA-256-PLUS with tls-server-end-point channel binding, as Postgres and Neon do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from neon_local.errors import NeonLocalError

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING = "tls-server-end-point"
MOCK_ITERATIONS = 4096


class ScramError(NeonLocalError):
    """The client broke the SCRAM exchange (malformed message, binding mismatch); the text is Postgres's."""


class AuthenticationFailed(Exception):
    """The password (or SCRAM proof) did not match the role's verifier, or the role has none."""


@dataclass(frozen=True)
class ScramVerifier:
    """A parsed `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` secret."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:
        return "ScramVerifier([secure])"

    @classmethod
    def parse(cls, text: str | None) -> ScramVerifier | None:
        """None for roles without a SCRAM secret (no password, or an old md5 one)."""
        try:
            scheme, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            if scheme != MECHANISM:
                return None
            return cls(int(iterations), _b64d(salt), _b64d(stored), _b64d(server))
        except (AttributeError, ValueError, ScramError):
            return None

    @classmethod
    def mock(cls, user: str, secret: bytes) -> ScramVerifier:
        """A stable fake for unknown roles, so a failed login looks the same whether or not the role exists."""
        salt = hashlib.sha256(secret + user.encode()).digest()[:16]
        return cls(MOCK_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32))

    def check_password(self, password: bytes) -> bool:
        salted = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        client_key = _hmac(salted, b"Client Key")
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)


class ScramExchange:
    """One server-side SCRAM exchange: `server_first()`, then `server_final()`; no I/O."""

    def __init__(self, verifier: ScramVerifier, binding_data: bytes | None, real: bool) -> None:
        self._verifier = verifier
        self._binding_data = binding_data
        self._real = real  # False for the mock verifier: the exchange runs to the end and then fails
        self._gs2_header = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""

    @property
    def mechanisms(self) -> list[str]:
        return [MECHANISM_PLUS, MECHANISM] if self._binding_data is not None else [MECHANISM]

    def server_first(self, mechanism: str, client_first: bytes) -> bytes:
        if mechanism not in self.mechanisms:
            raise ScramError("client selected an invalid SASL authentication mechanism")
        gs2_header, bare = _split_gs2(client_first)
        self._check_binding_flag(mechanism, gs2_header)
        attrs = _attributes(bare)
        if "r" not in attrs or not attrs["r"]:
            raise ScramError("malformed SCRAM message")
        self._gs2_header, self._client_first_bare = gs2_header, bare
        self._nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18))
        salt = base64.b64encode(self._verifier.salt)
        self._server_first = b"r=%s,s=%s,i=%d" % (self._nonce, salt, self._verifier.iterations)
        return self._server_first

    def server_final(self, client_final: bytes) -> bytes:
        without_proof, _, proof_part = client_final.rpartition(b",p=")
        attrs = _attributes(without_proof)
        if not proof_part or "c" not in attrs or "r" not in attrs:
            raise ScramError("malformed SCRAM message")
        if _b64d(attrs["c"]) != self._gs2_header + (self._binding_data if self._gs2_header.startswith(b"p=") else b""):
            raise ScramError("SCRAM channel binding check failed")
        if attrs["r"] != self._nonce:
            raise ScramError("invalid SCRAM response (nonce does not match)")
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        client_key = bytes(a ^ b for a, b in zip(_b64d(proof_part), _hmac(self._verifier.stored_key, auth_message)))
        if not self._real or not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._verifier.stored_key):
            raise AuthenticationFailed()
        return b"v=" + base64.b64encode(_hmac(self._verifier.server_key, auth_message))

    def _check_binding_flag(self, mechanism: str, gs2_header: bytes) -> None:
        flag = gs2_header.split(b",")[0]
        if mechanism == MECHANISM_PLUS:
            if flag != b"p=" + CHANNEL_BINDING.encode():
                raise ScramError("channel binding is required, but client does not support it")
        elif flag.startswith(b"p="):
            raise ScramError("channel binding was requested, but the mechanism does not support it")
        elif flag == b"y" and self._binding_data is not None:
            # The client could bind but thinks we cannot: someone stripped -PLUS from our offer.
            raise ScramError("SCRAM channel binding negotiation error")
        elif flag not in (b"n", b"y"):
            raise ScramError("malformed SCRAM message")


def _split_gs2(message: bytes) -> tuple[bytes, bytes]:
    parts = message.split(b",", 2)
    if len(parts) != 3 or parts[1]:  # Postgres refuses an authzid
        raise ScramError("malformed SCRAM message")
    return parts[0] + b"," + parts[1] + b",", parts[2]


def _attributes(message: bytes) -> dict[str, bytes]:
    attrs = {}
    for part in message.split(b","):
        if len(part) < 2 or part[1:2] != b"=":
            raise ScramError("malformed SCRAM message")
        attrs[chr(part[0])] = part[2:]
    return attrs


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _b64d(data: str | bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise ScramError("malformed SCRAM message") from None
