"""The one base of neon-local's own errors, and the Postgres error every client path passes on.

What each family means to a user (the message always says what to do next):
- `ConfigError` (settings): a setting is missing, malformed or contradictory; it names the file, env var or flag.
- `PortInUse` (ports), `AlreadyRunning` (app): something else holds the port or the data directory.
- `BinariesNotFound`, `PostgresError` (postgres): no usable Postgres, or it would not start.
- `KeyRingError`, `IssuerError` (auth): the signing keys or a token request are unusable.
- `PostgresErrorResponse`: Postgres refused something; `fields` carry its SQLSTATE and texts for the client.
- `PostgresUnavailable`: Postgres cannot be reached (restarting, out of connections, gone).
- `JwtError`, `SqlOverHttpError`, `ClientError`: refusals shaped for one client protocol.
- `Refused`, `RateLimited`, `TooManySessions` (limits): the allow-list, a rate or a session cap said no.
- `ClientGone`: the client hung up; nobody is left to answer.
- `CodegenError`, `ListFileError`, `MatrixError`, `IdentityError`: a file, table or identity the user named
  cannot be used; the text names it.
- `QueryError`, `MigrationError`, `NotRunning`, `NotAJwt` (neon_local.testing): a test's query, migration,
  emulator or token went wrong.
Names with a leading underscore are signals inside one module; they never reach a user.
Every exception class in the package derives from `NeonLocalError` (tests/test_layout.py holds this).

The CLI catches `NeonLocalError` and prints its message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ClientGone", "NeonLocalError", "PostgresErrorResponse", "PostgresUnavailable", "UpstreamChangesNeeded",
           "UpstreamError"]


class NeonLocalError(Exception):
    """Base of every error neon-local raises on purpose; its text is fit to show a user."""


class ClientGone(NeonLocalError):
    """The client hung up (a TCP or WebSocket session before its relay began, an HTTP request while it ran):
    nobody is left to answer."""


class PostgresErrorResponse(NeonLocalError):
    """Postgres answered with an ErrorResponse; `fields` maps its field codes (C, M, S, D, H, …) to text."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "error from Postgres"))
        self.fields = fields

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")


class PostgresUnavailable(NeonLocalError):
    """Postgres could not be reached or dropped the connection; the text says how."""


class UpstreamError(NeonLocalError):
    """The upstream Postgres cannot be fronted as it is; the message says why and what to do."""


class UpstreamChangesNeeded(UpstreamError):
    """The upstream needs changes and `upstream_yes` is off: nothing was changed; `changes` says what would be."""

    def __init__(self, display: str, changes: list[str]) -> None:
        self.changes = changes
        self.listing = (f"the upstream {display} needs these changes before neon-local can front it:\n"
                        + "".join(f"  - {change}\n" for change in changes))
        super().__init__(self.listing + "Nothing was changed. Run again with --upstream-yes (NEON_LOCAL_UPSTREAM_YES=true, or "
                           "upstream_yes = true in neon_local.toml) to make them, or make them yourself.")
