"""Postgres over WebSocket, as Neon's proxy serves it: binary frames carry the raw v3 byte stream.

This is only an adapter: frames become bytes for the same `Session` the TCP listener runs. Frames
are concatenated regardless of message boundaries, a text frame is fatal, closing is EOF, and
each write the session or relay makes goes out as one binary frame. There is no TLS inside the
tunnel (the HTTP server's own TLS, if any, counts as the connection's security).

A frame goes straight onto the HTTP connection's transport when nothing is queued before it (a
whole frame per write, so aiohttp's own close frame never interleaves with one); only a full
transport buffer queues frames for a task that waits on aiohttp's drain. A query's answer thus
costs no task of its own.
"""

from __future__ import annotations

import asyncio
import collections
import ssl

from aiohttp import WSMsgType, web

from neon_local.origins import OriginPolicy
from neon_local.proxy.limits import at_message_boundary, idle_close_message, tune_keepalive
from neon_local.proxy.server import Conduit, PgProxyServer, is_loopback
from neon_local.proxy.session import Session
from neon_local.wire.codec import ProtocolViolation

MAX_FRAME = 64 * 1024 * 1024  # tungstenite's default message cap, which Neon's proxy keeps
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
TEXT_FRAME = "unexpected text message in the websocket"


def binary_frame_header(length: int) -> bytes:
    """RFC 6455's header of one unmasked, final binary frame (a server's) carrying `length` bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return bytes((0x82, 126)) + length.to_bytes(2, "big")
    return bytes((0x82, 127)) + length.to_bytes(8, "big")


class WebSocketChannel:
    """A `ClientChannel` over an aiohttp WebSocket."""

    can_tls = False

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, password_refusal: str | None = None) -> None:
        self._ws = ws
        self.password_refusal = password_refusal
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()
        self._last_sent = b""
        transport = self._transport = request.transport
        self.is_tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        self.is_loopback = is_loopback(transport.get_extra_info("peername") if transport else None)
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._backend: Conduit | None = None
        self._readable = asyncio.Event()
        self._readable.set()
        self._sender: asyncio.Task | None = None
        self._finisher: asyncio.Task | None = None
        self._closing = False
        self.done = self._loop.create_future()

    async def read(self) -> bytes:
        message = await self._ws.receive()
        self.last_active = self._loop.time()
        if message.type == WSMsgType.BINARY:
            data: bytes = message.data
            return data
        if message.type == WSMsgType.TEXT:
            raise ProtocolViolation(TEXT_FRAME)
        return b""  # close, error: the client is gone

    def write(self, data: bytes) -> None:
        if self._closing or self._ws.closed:
            return
        self.last_active = self._loop.time()
        self._last_sent = data[-6:]
        transport = self._transport
        if not self._outgoing and transport is not None and transport.get_write_buffer_size() < HIGH_WATER:
            if not transport.is_closing():
                transport.write(binary_frame_header(len(data)) + data)
            return
        self._outgoing.append(data)
        self._queued += len(data)
        if self._queued > HIGH_WATER and self._backend is not None:
            self._backend.pause_reading()
        if self._sender is None:
            self._sender = self._loop.create_task(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._outgoing:
                data = self._outgoing.popleft()
                await self._ws.send_bytes(data)
                self._queued -= len(data)
                if self._queued < LOW_WATER and self._backend is not None:
                    self._backend.resume_reading()
        except (ConnectionError, RuntimeError):
            self._outgoing.clear()
        finally:
            self._sender = None
            if self._closing:
                await self._finish()

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        raise ProtocolViolation("TLS is not available inside the WebSocket tunnel")

    async def relay(self, backend: Conduit, pending: bytes, backend_pending: bytes) -> None:
        self._backend = backend
        backend.join(self, backend_pending)
        if pending:
            backend.write(pending)
        pump = asyncio.get_running_loop().create_task(self._pump(backend))
        try:
            await asyncio.wait([pump, backend.closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            backend.close()
        if pump.done() and not pump.cancelled() and (error := pump.exception()) is not None:
            raise error

    async def _pump(self, backend: Conduit) -> None:
        while data := await self.read():
            backend.write(data)
            await self._readable.wait()

    def close_idle(self, limit: int) -> None:
        """End a session silent past the limit, with Postgres's idle FATAL when it may be sent."""
        if at_message_boundary(self._last_sent):
            self.write(idle_close_message(limit))
        self.close()

    def close(self) -> None:
        """Close once every queued frame is sent."""
        self._closing = True
        if self._sender is None and self._finisher is None:
            self._finisher = asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        try:
            await self._ws.close()
        finally:
            if not self.done.done():
                self.done.set_result(None)


class WebSocketAdapter:
    """Serves WebSocket upgrades (on any path) for a `PgProxyServer`: route them to `handle`."""

    def __init__(self, proxy: PgProxyServer) -> None:
        self.proxy = proxy
        self._origins = OriginPolicy(proxy.settings.allowed_origins)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, compress=False)
        await ws.prepare(request)
        origin = request.headers.get("Origin")
        refusal = None if origin is None or self._origins.allows(origin) else OriginPolicy.refusal(origin, "WebSocket password sessions")
        channel = WebSocketChannel(ws, request, refusal)
        if request.transport is not None:  # a tunnel to a backend: notice a client that vanished, as over TCP
            tune_keepalive(request.transport.get_extra_info("socket"))
        self.proxy.track(channel)
        try:
            await self.proxy.spawn(Session(self.proxy.context, channel).run())
            await channel.done
        finally:
            self.proxy.untrack(channel)
        return ws
