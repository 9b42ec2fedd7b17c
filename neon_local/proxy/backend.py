"""The proxy's own connections to Postgres over its private Unix socket: startup, a few queries, cancel.

Postgres trusts every connection on that socket, so the proxy authenticates clients first and
then opens a backend as the client's role. The conversation runs over a `Conduit` from the
server module (the only place that opens sockets); once ReadyForQuery arrives the conduit is
handed to the relay untouched.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from neon_local.proxy.cancellation import CancelKey
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder, ProtocolViolation

MAX_BACKEND_MESSAGE = 1 << 30
CANCEL_TIMEOUT = 5.0


class BackendError(Exception):
    """Postgres answered with an ErrorResponse; `raw` is that message, to pass on to the client as is."""

    def __init__(self, raw: bytes, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "error from Postgres"))
        self.raw = raw
        self.fields = fields


class BackendUnavailable(Exception):
    """The Unix socket could not be reached or closed early: Postgres is down or restarting."""


class Backend:
    """One Postgres connection driven by the proxy until it is handed to the relay."""

    def __init__(self, conduit) -> None:
        self.conduit = conduit
        self.parameters: dict[str, str] = {}
        self.key: CancelKey | None = None
        self._decoder = FrameDecoder()

    async def startup(self, params: dict[str, str]) -> None:
        """Send the StartupMessage and read up to ReadyForQuery, keeping ParameterStatus and the key."""
        self.conduit.write(m.startup_message(params))
        while True:
            message = await self.read_message()
            if message.type == b"R" and m.int32(message.body) != m.AUTH_OK:
                raise BackendUnavailable("it asked the proxy for a password, but its private socket must use trust auth")
            if message.type == b"K":
                self.key = CancelKey(m.int32(message.body), m.int32(message.body, 4))
            elif message.type == b"Z":
                return
            self._note(message)

    async def query_row(self, sql: str, params: list[str | None]) -> list[bytes | None] | None:
        """Run one statement with the extended protocol (params bound, never spliced); its first row."""
        self.conduit.write(m.parse(sql) + m.bind(params) + m.execute() + m.sync())
        row, error = None, None
        while True:
            message = await self.read_message()
            if message.type == b"D" and row is None:
                row = m.data_row(message.body)
            elif message.type == b"E":
                error = BackendError(message.encode(), m.error_fields(message.body))
            elif message.type == b"Z":
                if error is not None:
                    raise error
                return row
            else:
                self._note(message)

    async def read_message(self) -> m.Message:
        while True:
            try:
                message = self._decoder.next_message(MAX_BACKEND_MESSAGE)
            except ProtocolViolation:
                raise BackendUnavailable("it sent a malformed message") from None
            if message is not None:
                return message
            data = await self.conduit.read()
            if not data:
                raise BackendUnavailable("it closed the connection")
            self._decoder.feed(data)

    def take_rest(self) -> bytes:
        return self._decoder.take_rest()

    def _note(self, message: m.Message) -> None:
        if message.type == b"S":
            name, value = m.cstrings(message.body)[:2]
            self.parameters[name] = value
        elif message.type == b"E":
            raise BackendError(message.encode(), m.error_fields(message.body))

    def close(self) -> None:
        self.conduit.write(m.terminate())
        self.conduit.close()


Opener = Callable[[], Awaitable[object]]


async def open_backend(opener: Opener, params: dict[str, str]) -> Backend:
    """Open a socket with `opener` and run the startup; errors close the socket."""
    try:
        conduit = await opener()
    except OSError as exc:
        raise BackendUnavailable(f"its socket refused the connection ({exc.strerror or exc})") from None
    backend = Backend(conduit)
    try:
        await backend.startup(params)
    except BaseException:
        conduit.close()
        raise
    return backend


async def send_cancel(opener: Opener, key: CancelKey) -> None:
    """Forward a CancelRequest to Postgres and wait until it has read it (it then closes the socket)."""
    try:
        conduit = await opener()
    except OSError:
        return
    try:
        conduit.write(m.cancel_request(key.pid, key.key))
        async with asyncio.timeout(CANCEL_TIMEOUT):
            while await conduit.read():
                pass
    except TimeoutError:
        pass
    finally:
        conduit.close()


class Catalog:
    """A superuser connection kept open to read roles' SCRAM verifiers; reopened after any failure."""

    QUERY = (
        "select rolpassword from pg_catalog.pg_authid where rolname = $1 and rolcanlogin"
        " and (rolvaliduntil is null or rolvaliduntil > now())"
    )

    def __init__(self, opener: Opener, superuser: str, database: str) -> None:
        self._opener = opener
        self._params = {"user": superuser, "database": database, "application_name": "neon-local proxy"}
        self._backend: Backend | None = None
        self._lock = asyncio.Lock()

    async def scram_secret(self, role: str) -> str | None:
        """The role's rolpassword if it may log in now, else None."""
        async with self._lock:
            for attempt in range(2):
                try:
                    if self._backend is None:
                        self._backend = await open_backend(self._opener, self._params)
                    row = await self._backend.query_row(self.QUERY, [role])
                    return row[0].decode() if row and row[0] is not None else None
                except (BackendUnavailable, BackendError):
                    self.close()
                    if attempt:
                        raise
        return None

    def close(self) -> None:
        if self._backend is not None:
            self._backend.conduit.close()
            self._backend = None
