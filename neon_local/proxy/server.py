"""The asyncio side of the proxy: the TCP listener, the Unix-socket connections to Postgres, the byte relay.

This is the only module that opens sockets. Each connection is a `Conduit` (an asyncio Protocol):
during the handshake the session pulls bytes from it with `read()`; in the relay, bytes go
straight from one transport to the other in `data_received`, and a full write buffer on one side
pauses reading on the other (pause_writing/resume_writing), the shape PgBouncer-class relays need.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol, cast

from neon_local.auth.scram import ClientCredential
from neon_local.auth.verifier import Verifier
from neon_local.console.request_log import RequestLog
from neon_local.control_plane import ControlPlane
from neon_local.limits import ClientLimits
from neon_local.proxy import tls
from neon_local.proxy.compute import Opener
from neon_local.proxy.limits import RoleSlots, at_message_boundary, idle_close_message, tune_keepalive
from neon_local.proxy.session import MITM_DETAIL, UNENCRYPTED_DATA, ProxyContext, Session
from neon_local.settings import Settings
from neon_local.wire.codec import ProtocolViolation

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096  # asyncio's default (100) resets bursts of new clients


class Peer(Protocol):
    """The other side of a relay: a Conduit, or a WebSocket client channel."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class IdleClient(Protocol):
    """A client channel the idle limit watches (TCP or WebSocket)."""

    last_active: float

    def close_idle(self, limit: int) -> None: ...


class Conduit(asyncio.Protocol):
    """One socket of a proxied session: read in the handshake, joined to a peer for the relay."""

    def __init__(self) -> None:
        # None only until connection_made, which asyncio calls before any other method.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport: this is a stream protocol

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.write(data)
            return
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._peer is not None:
            self._peer.close()

    # A full outgoing buffer here means the peer is sending faster than we can deliver: hold it back.
    def pause_writing(self) -> None:
        if self._peer is not None:
            self._peer.pause_reading()

    def resume_writing(self) -> None:
        if self._peer is not None:
            self._peer.resume_reading()

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    async def read(self) -> bytes:
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def join(self, peer: Peer, pending: bytes = b"") -> None:
        """From now on relay to `peer`: first `pending` (already parsed past), then anything buffered."""
        if pending:
            peer.write(pending)
        if self._buffer:
            peer.write(bytes(self._buffer))
            self._buffer.clear()
        self._peer = peer
        if self._eof:
            peer.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class BioTls:
    """A client's TLS, run over memory buffers: received bytes in, plaintext out; plaintext in, bytes to send out.

    Both ways of starting TLS use it: after an SSLRequest's "S", and direct TLS (libpq 17+
    `sslnegotiation=direct`, a ClientHello first), where asyncio could not start TLS over bytes it
    has already delivered anyway. In the relay it costs less CPU per message than asyncio's TLS
    transport (uvloop's): one decrypt or encrypt call, no protocol state machine.
    """

    def __init__(self, context: ssl.SSLContext, direct: bool) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._direct = direct
        self._ready = False

    def unwrap(self, data: bytes) -> bytes:
        """Feed received bytes; return the plaintext they complete. Raises ssl.SSLError on a bad peer."""
        self._incoming.write(data)
        if not self._ready:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            if self._direct and self._tls.selected_alpn_protocol() != "postgresql":  # Postgres refuses it without
                raise ssl.SSLError("direct TLS without the postgresql ALPN protocol")
            self._ready = True
        chunks = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not (self._incoming.pending or self._tls.pending()):  # all read: spare the SSLWantReadError
                break
        return b"".join(chunks)

    def wrap(self, data: bytes) -> bytes:
        if not self._ready:  # only an error can come before the handshake's end, and the client cannot read it
            return b""
        self._tls.write(data)
        return self.pending()

    def pending(self) -> bytes:
        return self._outgoing.read()

    def goodbye(self) -> bytes:
        """The close_notify alert to send before closing, as a TLS transport sends it."""
        if self._ready:
            try:
                self._tls.unwrap()
            except ssl.SSLError:  # it then waits for the client's close_notify, which does not matter
                pass
        return self.pending()


class ClientConduit(Conduit):
    """A TCP client: it starts its own session and can switch to TLS in place (or start with it)."""

    can_tls = True
    password_refusal: str | None = None  # no web origin over TCP

    def __init__(self, server: PgProxyServer) -> None:
        super().__init__()
        self._server = server
        self._tls: BioTls | None = None
        self._first = True
        self.is_tls = False
        self.is_loopback = False
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()
        self._last_sent = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tune_keepalive(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        self.is_loopback = is_loopback(peer)
        self._server.track(self)
        self._server.spawn(Session(self._server.context, self).run())

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.untrack(self)
        super().connection_lost(exc)

    def close_idle(self, limit: int) -> None:
        """End a session silent past the limit, with Postgres's idle FATAL when it may be sent."""
        if at_message_boundary(self._last_sent):
            self.write(idle_close_message(limit))
        self.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._first:
            self._first = False
            # A TLS handshake record where a startup packet's length would be: direct TLS.
            if data[:1] == b"\x16" and self._server.context.tls_context is not None:
                self._tls, self.is_tls = BioTls(self._server.context.tls_context, direct=True), True
        if self._tls is not None:
            try:
                data = self._tls.unwrap(data)
            except ssl.SSLError as exc:
                log.info("TLS with a client failed: %s", exc)
                self.transport.abort()
                return
            handshake = self._tls.pending()
            if handshake:
                self.transport.write(handshake)
            if not data:
                return
        super().data_received(data)

    def write(self, data: bytes) -> None:  # once per message the client gets: Conduit.write inlined
        self.last_active = self._loop.time()
        self._last_sent = data[-6:]
        if self._tls is not None:
            data = self._tls.wrap(data)
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self._tls is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._tls.goodbye())
        super().close()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        if self._buffer:  # plaintext that arrived before the handshake
            raise ProtocolViolation(UNENCRYPTED_DATA, detail=MITM_DETAIL)
        # The handshake runs in data_received as its bytes arrive; a failed one closes the connection.
        self._tls, self.is_tls = BioTls(context, direct=False), True

    async def relay(self, backend: Conduit, pending: bytes, backend_pending: bytes) -> None:
        backend.join(self, backend_pending)
        self.join(backend, pending)
        try:
            await asyncio.wait([self.closed, backend.closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            backend.close()


def is_loopback(peer: Any) -> bool:
    """Whether a peer address is this machine: where a JWT may travel as a cleartext password."""
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return isinstance(peer, str)  # a Unix socket peer is local


class PgProxyServer:
    """Postgres over TCP (TLS offered) and, through `serverless.websocket`, over WebSocket.

    `PgProxyServer(settings, control_plane, verifier, tls_files)`: `settings.jwt_roles` take JWTs as
    their password, every other role authenticates with its Postgres password; `control_plane` does
    the Postgres-side work (credentials, JWT sessions) on the running Postgres; `verifier` is the
    auth module's JWT verifier; `tls_files` is `tls.ensure_tls(dir)` (or the directory itself).
    Then `port = await server.start(host, port)` (or `start(bound_socket)`) and `await server.close()`.
    """

    def __init__(self, settings: Settings, control_plane: ControlPlane, verifier: Verifier, tls_files: tls.TlsFiles | Path,
                 request_log: RequestLog | None = None) -> None:
        self.settings = settings
        self.cluster, self.control_plane = control_plane.cluster, control_plane
        self.tls_files = tls_files if isinstance(tls_files, tls.TlsFiles) else tls.ensure_tls(Path(tls_files))
        self.context = ProxyContext(
            jwt_roles=settings.jwt_roles,
            verifier=verifier,
            open_backend_socket=self.open_backend_socket,
            backend_credential=self.cluster.credential,
            tenant_compute=self.tenant_compute,
            control_plane=control_plane,
            tls_context=tls.server_context(self.tls_files),
            channel_binding=tls.channel_binding_data(self.tls_files),
            mock_secret=secrets.token_bytes(32),
            role_slots=RoleSlots(settings.role_connection_limit, exempt=settings.owner),
            request_log=request_log or RequestLog(),
            limits=ClientLimits.of(settings),
        )
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.clients: set[IdleClient] = set()  # TCP and WebSocket client channels, for the idle limit
        self._idle_sweeper: asyncio.Task | None = None

    def use_settings(self, settings: Settings, limits: ClientLimits) -> None:
        """New sessions use the JWT roles and limits of `settings` (live reload); open ones carry on."""
        self.settings = settings
        self.context.jwt_roles = settings.jwt_roles
        self.context.limits = limits

    async def open_backend_socket(self) -> Conduit:
        """The private Unix socket of our Postgres, or TCP to an upstream one (`--upstream`)."""
        _, conduit = await self.cluster.open_connection(Conduit)
        return cast(Conduit, conduit)

    def tenant_compute(self, dbname: str, role: str) -> tuple[Opener, str, ClientCredential | None] | None:
        """A tenant's upstream ([tenancy] mode "upstream"): how to open a socket there, the database, the role's login."""
        postgres, database = self.control_plane.compute_of(dbname)
        if postgres is self.cluster:
            return None

        async def open_socket() -> Conduit:
            _, conduit = await postgres.open_connection(Conduit)
            return cast(Conduit, conduit)
        return open_socket, database, postgres.credential(role)

    async def start(self, host: str | socket.socket, port: int = 0) -> int:
        """Listen on host:port (port 0 picks one) or on an already bound socket; returns the port."""
        loop = asyncio.get_running_loop()
        if isinstance(host, socket.socket):
            server = await loop.create_server(lambda: ClientConduit(self), sock=host, backlog=LISTEN_BACKLOG)
        else:
            server = await loop.create_server(lambda: ClientConduit(self), host, port, reuse_address=True,
                                              backlog=LISTEN_BACKLOG)
        self._servers.append(server)
        if self.settings.client_idle_timeout and self._idle_sweeper is None:
            self._idle_sweeper = loop.create_task(self._close_idle_clients(self.settings.client_idle_timeout))
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def track(self, channel: IdleClient) -> None:
        """Count a client channel (it has `last_active` and `close_idle(limit)`) for the idle limit."""
        self.clients.add(channel)

    def untrack(self, channel: IdleClient) -> None:
        self.clients.discard(channel)

    async def _close_idle_clients(self, limit: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(limit / 4, 5.0))
            deadline = loop.time() - limit
            for channel in [c for c in self.clients if c.last_active < deadline]:
                log.info("closing a Postgres client session silent for over %s s (client_idle_timeout)", limit)
                self.clients.discard(channel)
                channel.close_idle(limit)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a session as its own task, so one client's failure never reaches another."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        if self._idle_sweeper is not None:
            self._idle_sweeper.cancel()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

