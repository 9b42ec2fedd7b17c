"""Resource limits (issue 9, item 10) against a whole emulator: slowloris and slow bodies over HTTP, a JWT user
holding many sessions, silent and half-open Postgres clients, TCP keepalive on client sockets."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import httpx
import psycopg
import pytest

from hardening_support import WsPg, error_of, neon_error, post_sql, running_emulator

HTTP_IDLE, CLIENT_IDLE = 2, 3
WAIT = 60  # a bound on waiting for the emulator to act, never an expectation of its speed


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    async with running_emulator(tmp_path_factory.mktemp("hardening-limits"),
                                http_idle_timeout=HTTP_IDLE, client_idle_timeout=CLIENT_IDLE,
                                role_connection_limit=50, max_connections=120) as started:
        yield started


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes this connection (EOF or reset) before WAIT runs out."""
    try:
        async with asyncio.timeout(WAIT):
            while await reader.read(65536):
                pass
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_slowloris_connections_are_closed_and_others_still_served(emulator):
    port = emulator.endpoints.http_port
    held = []
    for _ in range(2000):  # each sends part of its headers and then nothing
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /sql HTTP/1.1\r\nHost: 127.0.0.1\r\nNeon-Connection-String: ")
        held.append((reader, writer))
    async with httpx.AsyncClient() as client:
        response = await post_sql(client, emulator, {"query": "select 1 as one"})
        assert response.json()["rows"] == [{"one": 1}]
    closed = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in held))
    for _, writer in held:
        writer.close()
    assert sum(closed) == len(held)


async def test_a_body_that_never_arrives_gets_neons_json_error(emulator):
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.endpoints.http_port)
    s = emulator.settings
    writer.write(f"POST /sql HTTP/1.1\r\nHost: 127.0.0.1\r\nNeon-Connection-String: postgresql://{s.owner}:{s.owner_password}"
                 f"@localhost/neondb\r\nContent-Length: 1000\r\n\r\n{{\"query\":".encode())
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    response = httpx.Response(408, headers={"content-type": "application/json"}, content=body)
    assert "http_idle_timeout" in neon_error(response)["message"]


async def test_one_jwt_user_cannot_lock_the_owner_out(emulator):
    token = emulator.services.issuer.mint(sub="user_mallory")
    port, limit = emulator.endpoints.pg_port, emulator.settings.role_connection_limit

    async def attempt():
        try:
            return await asyncpg.connect(host="127.0.0.1", port=port, user="authenticated", password=token,
                                         database="neondb", ssl=False)
        except asyncpg.exceptions.TooManyConnectionsError as exc:
            return exc

    outcomes = await asyncio.gather(*(attempt() for _ in range(200)))
    held = [o for o in outcomes if isinstance(o, asyncpg.Connection)]
    refused = [o for o in outcomes if not isinstance(o, asyncpg.Connection)]
    try:
        assert len(held) == limit and len(refused) == 200 - limit
        assert all("role_connection_limit" in str(exc) and exc.sqlstate == "53300" for exc in refused)
        s = emulator.settings
        async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=port, user=s.owner, password=s.owner_password,
                                                         dbname="neondb", sslmode="require") as owner:
            assert await (await owner.execute("select current_user")).fetchone() == (s.owner,)
        async with httpx.AsyncClient() as client:
            assert (await post_sql(client, emulator, {"query": "select 1 as one"})).json()["rows"] == [{"one": 1}]
    finally:
        await asyncio.gather(*(conn.close() for conn in held))


async def test_postgres_keeps_slots_for_the_owner_whatever_ordinary_roles_hold(emulator):
    """However the JWT roles' connections pile up (pools in many databases, say), Postgres keeps some for the owner."""
    fillers = []
    try:
        while True:
            try:
                fillers.append(await psycopg.AsyncConnection.connect(
                    emulator.cluster.conninfo(user="authenticated", dbname="neondb")))
            except psycopg.OperationalError as exc:
                assert "reserved for roles with privileges of the \"pg_use_reserved_connections\" role" in str(exc)
                break
            assert len(fillers) < 400
        s = emulator.settings
        async with await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=emulator.endpoints.pg_port, user=s.owner, password=s.owner_password,
                dbname="neondb", sslmode="require") as owner:
            assert await (await owner.execute("select current_user")).fetchone() == (s.owner,)
        async with httpx.AsyncClient() as client:
            assert (await post_sql(client, emulator, {"query": "select 1 as one"})).json()["rows"] == [{"one": 1}]
    finally:
        await asyncio.gather(*(conn.close() for conn in fillers))


async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter, cut: asyncio.Event) -> None:
    while not cut.is_set() and (data := await src.read(65536)):
        if cut.is_set():
            return
        dst.write(data)


async def test_a_half_open_tcp_client_loses_its_backend(emulator):
    """A forwarder that goes silent after login stands for a client that vanished without a FIN."""
    cut = asyncio.Event()
    sockets = []

    async def forward(client_reader, client_writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", emulator.endpoints.pg_port)
        sockets.extend([client_writer, up_writer])
        await asyncio.gather(_relay(client_reader, up_writer, cut), _relay(up_reader, client_writer, cut))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=server.sockets[0].getsockname()[1], user="authenticated",
                                     password=emulator.services.issuer.mint(sub="user_gone"), database="neondb", ssl=False,
                                     server_settings={"application_name": "half-open"})
        pid = await conn.fetchval("select pg_backend_pid()")
        cut.set()
        async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="neondb"), autocommit=True) as admin:
            async with asyncio.timeout(WAIT):
                while await (await admin.execute("select 1 from pg_stat_activity where pid = %s", (pid,))).fetchone():
                    await asyncio.sleep(0.2)
        conn.terminate()
    finally:
        for writer in sockets:
            writer.close()
        server.close()


async def test_a_silent_websocket_session_gets_postgres_idle_fatal(emulator):
    ws = await WsPg.connect(emulator)
    try:
        assert error_of(await ws.login("authenticated", emulator.services.issuer.mint(sub="user_idle"))) is None
        async with asyncio.timeout(WAIT):
            closing = await ws.until_ready()
        error = error_of(closing)
        assert error["C"] == "57P05" and "client_idle_timeout" in error["H"]
    finally:
        await ws.close()


async def test_client_sockets_use_tcp_keepalive(emulator):
    conn = await asyncpg.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                 password=emulator.services.issuer.mint(sub="user_alice"), database="neondb", ssl=False)
    try:
        local_port = conn._transport.get_extra_info("sockname")[1]
        conduit = next(c for c in emulator.services.pg_proxy.clients
                       if getattr(c, "transport", None) and c.transport.get_extra_info("peername")[1] == local_port)
        sock = conduit.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 6
    finally:
        await conn.close()
