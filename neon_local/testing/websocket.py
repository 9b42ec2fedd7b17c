"""Postgres over WebSocket (`/v2`, the path @neondatabase/serverless's Pool and Client take) for Python tests.

psycopg cannot speak through a WebSocket, so a local TCP port carries each connection over one: every
byte psycopg writes goes out as a binary frame, every frame's payload comes back as bytes, as Neon's
own websocket_tunnel does. The driver stays psycopg (real protocol code, real errors); what is tested
is the emulator's WebSocket path. The bridge runs on its own thread and event loop, like the emulator.
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp

BRIDGE_START_TIMEOUT = 10.0
CHUNK = 65536


class WebSocketBridge:
    """127.0.0.1:`port` forwards each TCP connection to `ws_url` as a WebSocket of binary frames."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="neon-local-ws-bridge", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> WebSocketBridge:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(BRIDGE_START_TIMEOUT)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(BRIDGE_START_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _listen(self) -> None:
        self._session = aiohttp.ClientSession()
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None and self._session is not None  # _listen ran
        self._server.close()
        await self._session.close()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._session is not None  # _listen ran
        try:
            async with self._session.ws_connect(self.ws_url, max_msg_size=0, autoping=True) as ws:
                upstream = asyncio.create_task(self._upstream(reader, ws))
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.BINARY:
                        break
                    writer.write(frame.data)
                    await writer.drain()
                upstream.cancel()
        except (aiohttp.ClientError, ConnectionError, OSError):
            pass  # the client sees its connection end, as with a dropped WebSocket
        finally:
            writer.close()

    @staticmethod
    async def _upstream(reader: asyncio.StreamReader, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while data := await reader.read(CHUNK):
                await ws.send_bytes(data)
        except (ConnectionError, OSError):
            pass
        await ws.close()
