"""Mint the per-request tokens that neon-local's pg_session_jwt stub accepts, bound to one backend connection.

The stub has two builds that accept the same tokens: the SQL one (extension/extension) and the C one
(contrib/src/session_jwt.c, offered when its module was built for the server; see extension_path)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

__all__ = [
    "BIND_QUERY",
    "EXTENSION_VERSIONS",
    "INIT_QUERY",
    "SECRET_FILENAME",
    "SessionSigner",
    "install_statement",
    "install_statements",
    "new_secret",
    "read_secret",
    "startup_options",
    "write_secret",
]

# The versions the stub packages (the session_jwt_version setting's choices).
EXTENSION_VERSIONS = ("0.3.1", "0.4.0", "0.5.0")
DEFAULT_VERSION = "0.4.0"  # what Neon's current docs describe: auth.uid() and auth.jwt()

# The stub reads it with pg_read_file(), which resolves relative paths in the data directory.
SECRET_FILENAME = "neon_local_session.key"

# Run once per connection as the JWT role: auth.init() checks the startup JWK (as Neon's local_proxy
# runs it), and the row is the backend identity the stub derives this connection's key from. The
# backend_start expression must stay byte-for-byte the one in the SQL stub's _pg_session_jwt.current_backend()
# and what the C build's backend_identity() computes (extract(epoch ...) of the same timestamp, as text).
BIND_QUERY = (
    "select a.pid, extract(epoch from a.backend_start)::text as backend_start"
    " from auth.init(), pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) as a"
)

# The token goes in as a bind parameter so that it never shows in pg_stat_activity.
INIT_QUERY = "select auth.jwt_session_init($1)"

# Honest about the algorithm: the stub checks HMAC-SHA256, not Neon's EdDSA. Never decoded by the stub.
_HEADER_B64 = "eyJhbGciOiJIUzI1NiJ9"  # base64url of {"alg":"HS256"}


def install_statements(version: str, owner: str) -> list[str]:
    """SQL, for the superuser to run inside one transaction in one database, that installs pg_session_jwt at
    `version` unless the database has it already (an existing install keeps its version).

    It is created by `owner` (the database's owner), as a trusted extension, so that the owner can
    `ALTER EXTENSION pg_session_jwt UPDATE TO ...` as on Neon; its objects still belong to the superuser.
    SET LOCAL ROLE lasts until the transaction ends; RESET ROLE gives the superuser back.
    """
    if version not in EXTENSION_VERSIONS:
        raise ValueError(f"pg_session_jwt {version} is not packaged; choose one of {', '.join(EXTENSION_VERSIONS)}")
    from psycopg import sql  # imported on use: starting Postgres needs this module, not psycopg

    return [sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)).as_string(),
            sql.SQL("CREATE EXTENSION IF NOT EXISTS pg_session_jwt VERSION {}").format(sql.Literal(version)).as_string(),
            "RESET ROLE"]


def install_statement(version: str, owner: str) -> str:
    """`install_statements` as one message: its implicit transaction holds the SET LOCAL."""
    return "; ".join(install_statements(version, owner))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def write_secret(data_dir: Path, secret: bytes) -> None:
    """Write the secret as hex, readable by its owner only (the caller makes the Postgres user that owner)."""
    path = Path(data_dir) / SECRET_FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed


def read_secret(data_dir: Path) -> bytes:
    return bytes.fromhex((Path(data_dir) / SECRET_FILENAME).read_text().strip())


def startup_options() -> str:
    """libpq `options` carrying a fresh Ed25519 public JWK, as Neon's local_proxy sends per connection.

    The stub only checks its shape, but a real key keeps the value acceptable to the real extension.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": _b64url(public)}, separators=(",", ":"))
    # libpq splits `options` on spaces; a backslash escapes the next character.
    return "-c pg_session_jwt.jwk=" + jwk.replace("\\", "\\\\").replace(" ", "\\ ")


class SessionSigner:
    """Signs the tokens for one backend connection, numbering them as Neon's proxy does (jti 1, 2, ...)."""

    def __init__(self, secret: bytes, pid: int, backend_start: str):
        # K_conn = HMAC(secret, "<pid>:<backend_start>"): the same derivation as the stub's new_state().
        conn_key = hmac.new(secret, f"{pid}:{backend_start}".encode(), hashlib.sha256).digest()
        # Keyed once here; token_for() copies it, which skips re-deriving the pads per request.
        self._mac = hmac.new(conn_key, digestmod=hashlib.sha256)
        self._jti = 0

    def __repr__(self) -> str:
        return f"SessionSigner(jti={self._jti}, key=[secure])"

    def sign(self, signing_input: str) -> str:
        """The base64url MAC of `header.payload`, the third segment of a token."""
        mac = self._mac.copy()
        mac.update(signing_input.encode())
        return _b64url(mac.digest())

    def token_for(self, payload: bytes) -> str:
        """A token for this connection carrying `payload` (a verified JSON object) with the next jti.

        Neon overwrites jti in place, so an existing key keeps its position and a missing one goes last.
        """
        before, after = _payload_template(bytes(payload))
        self._jti += 1
        body = _b64url(f"{before}{self._jti}{after}".encode())
        signing_input = f"{_HEADER_B64}.{body}"
        return f"{signing_input}.{self.sign(signing_input)}"


@functools.lru_cache(maxsize=1024)
def _payload_template(payload: bytes) -> tuple[str, str]:
    """`payload` re-serialized compactly, as the text before and after the value of jti.

    Clients send the same claims request after request, so each distinct payload is parsed once. Joined
    around n, the halves are exactly json.dumps(claims, separators=(",", ":"), ensure_ascii=False) after
    claims["jti"] = n: jti keeps its position (dict order) or goes last.
    """
    claims = json.loads(payload)
    if not isinstance(claims, dict):
        raise ValueError("the JWT payload must be a JSON object")
    claims["jti"] = None  # only its position matters
    before: list[str] = []
    after: list[str] = []
    members = before
    for key, value in claims.items():
        if key == "jti":
            members = after
        else:
            members.append(f"{_dump(key)}:{_dump(value)}")
    return "{" + "".join(m + "," for m in before) + '"jti":', "".join("," + m for m in after) + "}"


def _dump(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
