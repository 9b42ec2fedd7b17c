"""Postgres over WebSocket: Neon's own WebSocket tests, a tunnelled asyncpg, and @neondatabase/serverless."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from neon_local.serverless.websocket import WebSocketAdapter
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder
from proxy_support import proxy, run_node, todos  # noqa: F401 (fixtures)

SELECT_1_REPLY = [  # Neon's test_websockets, byte for byte
    m.Message(b"T", b"\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"),
    m.Message(b"D", b"\0\x01\0\0\0\x011"),
    m.Message(b"C", b"SELECT 1\0"),
    m.Message(b"Z", b"I"),
]


@pytest.fixture(scope="module")
async def ws_port(proxy):
    """An HTTP server that hands every WebSocket upgrade, on any path, to the proxy's adapter."""
    adapter = WebSocketAdapter(proxy.server)
    app = web.Application()
    app.router.add_get("/{tail:.*}", adapter.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]
    await runner.cleanup()


class WsClient:
    """Raw frames in, Postgres messages out."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session, self.ws, self.decoder = session, ws, FrameDecoder()

    @classmethod
    async def connect(cls, port: int, path: str = "/v2") -> WsClient:
        session = aiohttp.ClientSession()
        return cls(session, await session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0))

    async def read_message(self) -> m.Message | None:
        while (message := self.decoder.next_message(1 << 30)) is None:
            frame = await asyncio.wait_for(self.ws.receive(), 10)
            if frame.type != aiohttp.WSMsgType.BINARY:
                return None
            self.decoder.feed(frame.data)
        return message

    async def read_until_ready(self) -> list[m.Message]:
        out = [await self.read_message()]
        while out[-1] is not None and out[-1].type != b"Z":
            out.append(await self.read_message())
        return out

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def login_reply_types(messages: list[m.Message]) -> list[bytes]:
    return [msg.type for msg in messages if msg.type != b"S"]


async def test_websockets_fragmented_startup(proxy, ws_port):
    client = await WsClient.connect(ws_port, "/sql")
    startup = m.startup_message({"user": proxy.settings.owner, "database": "neondb", "client_encoding": "UTF8"})
    await client.ws.send_bytes(startup[:10])
    await client.ws.send_bytes(startup[10:])
    assert await client.read_message() == m.Message(b"R", b"\0\0\0\x03")
    await client.ws.send_bytes(m.password_message(proxy.settings.owner_password))
    assert login_reply_types(await client.read_until_ready()) == [b"R", b"K", b"Z"]
    await client.ws.send_bytes(m.query("SELECT 1"))
    assert await client.read_until_ready() == SELECT_1_REPLY
    await client.ws.send_bytes(m.terminate())
    assert await client.read_message() is None
    await client.close()


async def test_websockets_pipelined(proxy, ws_port):
    client = await WsClient.connect(ws_port)
    await client.ws.send_bytes(
        m.startup_message({"user": proxy.settings.owner, "database": "neondb"})
        + m.password_message(proxy.settings.owner_password) + m.query("SELECT 1")
    )
    login = await client.read_until_ready()
    assert login[0] == m.Message(b"R", b"\0\0\0\x03") and login_reply_types(login[1:]) == [b"R", b"K", b"Z"]
    assert await client.read_until_ready() == SELECT_1_REPLY
    await client.close()


async def test_neon_password_hack_in_the_password(proxy, ws_port):
    client = await WsClient.connect(ws_port)
    await client.ws.send_bytes(m.startup_message({"user": proxy.settings.owner, "database": "neondb"})
                               + m.password_message(f"endpoint=ep-foo-bar-1234;{proxy.settings.owner_password}"))
    assert login_reply_types(await client.read_until_ready()) == [b"R", b"R", b"K", b"Z"]
    await client.close()


async def test_jwt_role_pipelined_connect(proxy, ws_port, todos):
    client = await WsClient.connect(ws_port)
    await client.ws.send_bytes(
        m.startup_message({"user": "authenticated", "database": "neondb"})
        + m.password_message(proxy.token("user_bob")) + m.query("select auth.user_id(), count(*) from todos")
    )
    await client.read_until_ready()
    reply = await client.read_until_ready()
    row = next(msg for msg in reply if msg.type == b"D")
    assert m.data_row(row.body) == [b"user_bob", b"1"]
    await client.close()


async def test_wrong_password_and_token_get_neons_messages(proxy, ws_port):
    for user, password, text in [(proxy.settings.owner, "nope", f"password authentication failed for user '{proxy.settings.owner}'"),
                                 ("authenticated", "nope", "Provided authentication token is not a valid JWT encoding")]:
        client = await WsClient.connect(ws_port)
        await client.ws.send_bytes(m.startup_message({"user": user, "database": "neondb"}) + m.password_message(password))
        await client.read_message()
        error = await client.read_message()
        assert error.type == b"E" and m.error_fields(error.body)["M"] == text
        assert await client.read_message() is None
        await client.close()


async def test_text_frame_is_fatal(proxy, ws_port):
    client = await WsClient.connect(ws_port)
    await client.ws.send_str("hello")
    error = await client.read_message()
    assert m.error_fields(error.body)["M"] == "unexpected text message in the websocket"
    assert await client.read_message() is None
    await client.close()


async def test_text_frame_during_relay_is_fatal(proxy, ws_port):
    client = await WsClient.connect(ws_port)
    await client.ws.send_bytes(m.startup_message({"user": "authenticated", "database": "neondb"}) + m.password_message(proxy.token()))
    await client.read_until_ready()
    await client.ws.send_str("select 1")
    error = await client.read_message()
    assert m.error_fields(error.body)["M"] == "unexpected text message in the websocket"
    await client.close()


async def test_ssl_request_is_answered_no_inside_the_tunnel(proxy, ws_port):
    client = await WsClient.connect(ws_port)
    await client.ws.send_bytes(m.ssl_request())
    frame = await client.ws.receive()
    assert frame.data == b"N"
    await client.ws.send_bytes(m.startup_message({"user": "authenticated", "database": "neondb"}))
    assert await client.read_message() == m.Message(b"R", b"\0\0\0\x03")
    await client.close()


async def test_large_results_stream_through_flow_control(proxy, ws_port):
    client = await WsClient.connect(ws_port)
    await client.ws.send_bytes(m.startup_message({"user": "authenticated", "database": "neondb"}) + m.password_message(proxy.token()))
    await client.read_until_ready()
    await client.ws.send_bytes(m.query("select repeat('x', 1000000) from generate_series(1, 40)"))
    reply = await client.read_until_ready()
    assert sum(msg.type == b"D" for msg in reply) == 40 and reply[-2] == m.Message(b"C", b"SELECT 40\0")
    await client.close()


async def tunnel(ws_port: int) -> tuple[asyncio.AbstractServer, int]:
    """A local TCP port whose connections are carried over WebSocket, like Neon's websocket_tunnel.py."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://127.0.0.1:{ws_port}/v2") as ws:
            async def upstream() -> None:
                while data := await reader.read(65536):
                    await ws.send_bytes(data)
                await ws.close()

            task = asyncio.create_task(upstream())
            async for frame in ws:
                writer.write(frame.data)
                await writer.drain()
            task.cancel()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_asyncpg_tunnelled(proxy, ws_port):
    server, port = await tunnel(ws_port)
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="authenticated", password=proxy.token("user_x"),
                                     database="neondb", ssl=False)
        assert await conn.fetchval("select 123") == 123
        assert await conn.fetchval("select auth.user_id()") == "user_x"
        await conn.close()
    finally:
        server.close()


async def test_neon_serverless_pool_and_client(proxy, ws_port, todos):
    result = await run_node("neon_ws.mjs", {
        "WS_PROXY": f"127.0.0.1:{ws_port}/v2",
        "JWT_URL": f"postgresql://authenticated:{proxy.token('user_alice')}@localhost/neondb",
        "OWNER_URL": f"postgresql://{proxy.settings.owner}:{proxy.settings.owner_password}@localhost/neondb",
        "BAD_URL": f"postgresql://authenticated:{proxy.token(expired=True)}@localhost/neondb",
    })
    assert result["pipelineConnect"] == "password"
    assert result["pool_jwt"] == {"uid": "user_alice", "n": 2}
    assert result["client_jwt"] == {"uid": "user_alice", "n": 2}
    assert result["pool_owner"] == {"uid": proxy.settings.owner, "n": 3}
    assert result["client_owner"] == {"uid": proxy.settings.owner, "n": 3}
    assert result["bad"].startswith("JWT token has expired (exp=")
