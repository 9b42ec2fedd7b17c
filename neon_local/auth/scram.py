"""Server-side SCRAM-SHA-256 (RFC 5802, 7677), checked against the verifier Postgres keeps in pg_authid.

The proxy plays Postgres's part of the exchange itself, so a password role's credentials never
reach Postgres (which trusts the proxy on its private socket). An upstream Postgres (`--upstream`)
does not trust the proxy: `ScramClient` logs in there with a password, or with the ClientKey the
client proved in its own exchange with the proxy. With TLS the proxy also offers SCRAM-SHA-256-PLUS
with tls-server-end-point channel binding, as Postgres and Neon do.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import cast

from neon_local.errors import NeonLocalError
from neon_local.wire import messages

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING = "tls-server-end-point"
MOCK_ITERATIONS = 4096


class ScramError(NeonLocalError):
    """The client broke the SCRAM exchange (malformed message, binding mismatch); the text is Postgres's."""


class AuthenticationFailed(NeonLocalError):
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
        if text is None:
            return None
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
        self.client_key = b""  # once the proof checked out: what the proxy needs to log in upstream as the client

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
        if _b64d(attrs["c"]) != self._gs2_header + (cast(bytes, self._binding_data) if self._gs2_header.startswith(b"p=") else b""):
            raise ScramError("SCRAM channel binding check failed")
        if attrs["r"] != self._nonce:
            raise ScramError("invalid SCRAM response (nonce does not match)")
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        client_key = bytes(a ^ b for a, b in zip(_b64d(proof_part), _hmac(self._verifier.stored_key, auth_message)))
        if not self._real or not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._verifier.stored_key):
            raise AuthenticationFailed()
        self.client_key = client_key
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


@dataclass(frozen=True)
class ClientCredential:
    """What the proxy logs in to an upstream Postgres with: a password, or a SCRAM ClientKey recovered from the
    client's own exchange with the proxy (as Neon's proxy passes SCRAM through to its computes)."""

    password: bytes | None = None
    client_key: bytes | None = None

    def __repr__(self) -> str:
        return "ClientCredential([secure])"


class ScramClient:
    """The client side of SCRAM-SHA-256 without channel binding: `first()`, `final(server_first)`,
    `check(server_final)`; no I/O. With a password the salted keys are derived once per (password, salt, iterations)."""

    def __init__(self, credential: ClientCredential) -> None:
        self._credential = credential
        self._bare = b"n=,r=" + base64.b64encode(secrets.token_bytes(18))
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        return b"n,," + self._bare

    def final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        if not attrs.get("r", b"").startswith(self._bare[5:]) or "s" not in attrs or not attrs.get("i", b"").isdigit():
            raise ScramError("the server sent a malformed SCRAM message")
        without_proof = b"c=biws,r=" + attrs["r"]
        auth_message = b",".join((self._bare, server_first, without_proof))
        if self._credential.password is not None:
            client_key, server_key = _salted_keys(self._credential.password, _b64d(attrs["s"]), int(attrs["i"]))
            self._server_signature = _hmac(server_key, auth_message)
        elif self._credential.client_key is not None:
            client_key = self._credential.client_key
        else:
            raise ScramError("the proxy holds no password or key for this role")
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        return without_proof + b",p=" + base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature)))

    def check(self, server_final: bytes) -> None:
        """The server proved it knows the verifier (checked when we hold the password; a ClientKey alone cannot)."""
        verifier = _attributes(server_final).get("v")
        if verifier is None or (self._server_signature is not None and _b64d(verifier) != self._server_signature):
            raise ScramError("the server's SCRAM signature does not match")


def answer_authentication(code: int, data: bytes, credential: ClientCredential | None,
                          client: ScramClient | None) -> tuple[bytes, ScramClient | None]:
    """The reply to one AuthenticationRequest (`code`, `data` after it) as the frontend, and the SCRAM exchange in
    progress; `credential` is the role's (None on our private socket, which never asks)."""
    if credential is None:
        raise ScramError("it asked the proxy for a password, but its private socket must use trust auth")
    if code == messages.AUTH_CLEARTEXT and credential.password is not None:
        return messages.password_message(credential.password), None
    if code == messages.AUTH_SASL and MECHANISM in messages.cstrings(data):
        client = ScramClient(credential)
        return messages.sasl_initial_response(MECHANISM, client.first()), client
    if code == messages.AUTH_SASL_CONTINUE and client is not None:
        return messages.sasl_response(client.final(data)), client
    if code == messages.AUTH_SASL_FINAL and client is not None:
        client.check(data)
        return b"", None
    raise ScramError(f"it asked for an authentication method the proxy cannot answer (code {code}); "
                     "allow scram-sha-256 or password for the proxy's host in its pg_hba.conf")


@functools.lru_cache(maxsize=64)
def _salted_keys(password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """ClientKey and ServerKey: PBKDF2 costs milliseconds, and the proxy logs in with the same few passwords."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


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
