"""The proxy's connections to the compute (Postgres over its private Unix socket): startup, a few queries, cancel.

Postgres trusts every connection on that socket, so the proxy authenticates clients first and
then opens a backend as the client's role. An upstream Postgres (`--upstream`) is reached over TCP
and asks for a password: the proxy answers with the role's credential (SCRAM or cleartext). The
conversation runs over a `Conduit` from the server module (the only place that opens sockets);
once ReadyForQuery arrives the conduit is handed to the relay untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from neon_local.auth import scram
from neon_local.auth.scram import ClientCredential
from neon_local.errors import PostgresErrorResponse, PostgresUnavailable
from neon_local.proxy.cancellation import CancelKey
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder, ProtocolViolation

MAX_BACKEND_MESSAGE = 1 << 30
CANCEL_TIMEOUT = 5.0


class BackendError(PostgresErrorResponse):
    """Postgres answered with an ErrorResponse; `raw` is that message, to pass on to the client as is."""

    def __init__(self, raw: bytes, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.raw = raw


class BackendUnavailable(PostgresUnavailable):
    """The Unix socket could not be reached or closed early: Postgres is down or restarting."""


class BackendChannel(Protocol):
    """A connection to the compute as the proxy drives it before the relay (`server.Conduit`; a scripted one in tests)."""

    async def read(self) -> bytes: ...  # b"" once the compute has closed

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class ComputeConnection:
    """One Postgres connection driven by the proxy until it is handed to the relay."""

    def __init__(self, conduit: BackendChannel) -> None:
        self.conduit = conduit
        self.parameters: dict[str, str] = {}
        self.key: CancelKey | None = None
        self._decoder = FrameDecoder()

    async def startup(self, params: dict[str, str], credential: ClientCredential | None = None) -> None:
        """Send the StartupMessage and read up to ReadyForQuery, keeping ParameterStatus and the key.
        `credential` answers a password request: an upstream Postgres asks for one, our private socket never does."""
        self.conduit.write(m.startup_message(params))
        scram_client: scram.ScramClient | None = None
        while True:
            message = await self.read_message()
            code = m.int32(message.body) if message.type == b"R" else None
            if code not in (None, m.AUTH_OK):
                reply, scram_client = scram.answer_authentication(code, message.body[4:], credential, scram_client)
                self.conduit.write(reply)
                continue
            if message.type == b"K":
                self.key = CancelKey(m.int32(message.body), m.int32(message.body, 4))
            elif message.type == b"Z":
                return
            self._note(message)

    async def first_row(self, sql: str, params: Sequence[str | None] = ()) -> tuple[str | None, ...] | None:
        """Run one statement with the extended protocol (params bound, never spliced); its first row, as text."""
        self.conduit.write(m.parse(sql) + m.bind(params) + m.execute() + m.sync())
        row, error = None, None
        while True:
            message = await self.read_message()
            if message.type == b"D" and row is None:
                row = tuple(None if value is None else value.decode() for value in m.data_row(message.body))
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


Opener = Callable[[], Awaitable[BackendChannel]]  # opens a new connection to the compute


async def open_compute(opener: Opener, params: dict[str, str],
                       credential: ClientCredential | None = None) -> ComputeConnection:
    """Open a socket with `opener` and run the startup (logging in with `credential` if asked); errors close the socket."""
    try:
        conduit = await opener()
    except OSError as exc:
        raise BackendUnavailable(f"its socket refused the connection ({exc.strerror or exc})") from None
    backend = ComputeConnection(conduit)
    try:
        await backend.startup(params, credential)
    except scram.ScramError as exc:
        conduit.close()
        raise BackendUnavailable(str(exc)) from None
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
