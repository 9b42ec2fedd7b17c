"""Robustness: odd write sizes, garbage and oversized startups (compared with Postgres), TLS downgrade
injection, killed clients, PgBouncer's cancel race, and Postgres restarting under the proxy."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import struct
from pathlib import Path

import psycopg
import pytest

from conftest import start_cluster
from neon_local.wire import messages as m
from proxy_support import RawClient, proxy, start_proxy, wait_until_running  # noqa: F401 (fixtures)


def socket_path(cluster) -> str:
    return str(Path(cluster.socket_dir) / f".s.PGSQL.{cluster.port}")


def outcome(reply: bytes) -> list[tuple]:
    """What a client can tell from a refusal: each message's type, and for errors severity and SQLSTATE."""
    decoded, offset = [], 0
    while offset + 5 <= len(reply):
        length = m.int32(reply, offset + 1)
        body = reply[offset + 5:offset + 1 + length]
        fields = m.error_fields(body) if reply[offset:offset + 1] == b"E" else {}
        decoded.append((reply[offset:offset + 1], fields.get("S"), fields.get("C")))
        offset += 1 + length
    return decoded


async def reply_to(data: bytes, **target) -> bytes:
    client = await RawClient.connect(**target)
    await client.send(data)
    try:
        return await client.read_to_end(timeout=5)
    finally:
        client.close()


async def test_one_byte_writes_through_tls(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    client = RawClient(reader, writer)
    await client.send(m.ssl_request())
    assert await reader.readexactly(1) == b"S"
    await writer.start_tls(ssl.create_default_context(cafile=proxy.ca), server_hostname="localhost")
    session = (m.startup_message({"user": "authenticated", "database": "neondb"}) + m.password_message(proxy.token("user_one"))
               + m.query("select auth.user_id()"))
    for byte in range(len(session)):
        await client.send(session[byte:byte + 1])
    await client.read_until_ready()
    reply = await client.read_until_ready()
    assert m.data_row(next(msg for msg in reply if msg.type == b"D").body) == [b"user_one"]
    client.close()


async def test_huge_coalesced_write(proxy):
    client = await RawClient.connect(proxy.port)
    queries = b"".join(m.query(f"select {i}") for i in range(5000))
    await client.send(m.startup_message({"user": "authenticated", "database": "neondb"})
                      + m.password_message(proxy.token()) + queries + m.query("select repeat('z', 5000000)"))
    replies = await client.read_until_ready(5002, timeout=60)
    rows = [m.data_row(msg.body)[0] for msg in replies if msg.type == b"D"]
    assert rows[:5000] == [str(i).encode() for i in range(5000)] and rows[5000] == b"z" * 5000000
    client.close()


GARBAGE_STARTUPS = {
    "length 7": struct.pack("!ii", 7, m.PROTOCOL_3_0),
    "length over 10000": struct.pack("!ii", 10009, m.PROTOCOL_3_0) + b"x" * 10001,
    "largest length, no terminator": struct.pack("!ii", 10004, m.PROTOCOL_3_0) + b"a" * 9996,
    "protocol 2.0": struct.pack("!ii", 8, 2 << 16),
    "protocol 4.0": m.startup_message({"user": "u"}, 4 << 16),
    "missing value": struct.pack("!ii", 13, m.PROTOCOL_3_0) + b"user\0",
    "no user": m.startup_message({"database": "neondb"}),
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "cancel of wrong length": struct.pack("!iiiii", 20, m.CANCEL_REQUEST_CODE, 1, 2, 3),
    "bogus cancel": m.cancel_request(12345, 67890),
}


@pytest.mark.parametrize("name", list(GARBAGE_STARTUPS))
async def test_garbage_startup_answered_like_postgres(proxy, name):
    data = GARBAGE_STARTUPS[name]
    direct = await reply_to(data, path=socket_path(proxy.cluster))
    proxied = await reply_to(data, port=proxy.port)
    assert outcome(proxied) == outcome(direct)


async def test_random_garbage_never_hurts_the_proxy(proxy):
    rng = random.Random(5)
    for _ in range(150):
        prefix = rng.choice([b"", m.ssl_request(), m.gssenc_request(), struct.pack("!i", rng.randint(0, 10010))])
        client = await RawClient.connect(proxy.port)
        await client.send(prefix + rng.randbytes(rng.randint(0, 64)))
        await asyncio.sleep(0.005)
        client.close()
    client = await RawClient.connect(proxy.port)
    assert (await client.login_jwt("authenticated", proxy.token()))[-1].type == b"Z"
    client.close()


async def test_ssl_request_followed_by_plaintext_is_refused(proxy):
    data = m.ssl_request() + m.startup_message({"user": "authenticated", "database": "neondb"})
    direct = await reply_to(data, path=socket_path(proxy.cluster))
    proxied = await reply_to(data, port=proxy.port)
    assert proxied[:1] == b"S" and direct[:1] == b"N"  # the proxy offers TLS, our test Postgres does not
    assert outcome(proxied[1:]) == outcome(direct[1:]) == [(b"E", "FATAL", "08P01")]
    ours, theirs = m.error_fields(proxied[6:]), m.error_fields(direct[6:])
    assert (ours["M"], ours["D"]) == (theirs["M"], theirs["D"])


async def test_gss_then_ssl_then_a_second_ssl_request(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(m.gssenc_request())
    assert await reader.readexactly(1) == b"N"
    writer.write(m.ssl_request())
    assert await reader.readexactly(1) == b"S"
    await writer.start_tls(ssl.create_default_context(cafile=proxy.ca), server_hostname="localhost")
    writer.write(m.ssl_request())
    error = m.error_fields((await reader.read(-1))[5:])
    assert (error["C"], error["M"]) == ("0A000", "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0")


async def test_direct_tls_garbage_and_missing_alpn_are_refused(proxy):
    assert await reply_to(b"\x16\x03\x01\x00\x05junk!", port=proxy.port) == b""
    context = ssl.create_default_context(cafile=proxy.ca)  # a TLS client that does not say "postgresql"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=context, server_hostname="localhost")
        writer.write(m.startup_message({"user": "authenticated", "database": "neondb"}))
        assert await asyncio.wait_for(reader.read(-1), 5) == b""
    except (ConnectionError, ssl.SSLError):
        pass  # refused during the handshake: just as good


async def test_oversized_password_message_closes(proxy):
    client = await RawClient.connect(proxy.port)
    await client.send(m.startup_message({"user": "authenticated", "database": "neondb"}))
    await client.read_message()
    await client.send(b"p" + struct.pack("!i", 70000) + b"x" * 69996)
    assert await client.read_to_end() == b""


async def test_handshake_timeout_closes_idle_clients(proxy, monkeypatch):
    monkeypatch.setattr(proxy.server.context, "auth_timeout", 0.3)
    client = await RawClient.connect(proxy.port)
    await client.send(m.startup_message({"user": "authenticated", "database": "neondb"}))
    await client.read_message()
    assert await client.read_to_end(timeout=3) == b""


async def test_killed_client_mid_transaction_is_rolled_back(proxy):
    async with await proxy.admin() as admin:
        await admin.execute("create table if not exists killed (v text)")
        await admin.execute("grant insert, select on killed to authenticated")
    client = await RawClient.connect(proxy.port)
    await client.login_jwt("authenticated", proxy.token())
    await client.send(m.query("begin; insert into killed values ('ghost'); select pg_backend_pid()"))
    reply = await client.read_until_ready()
    pid = int(m.data_row(next(msg for msg in reply if msg.type == b"D").body)[0])
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, like a killed process
    client.writer.transport.abort()
    async with await proxy.admin() as admin:
        for _ in range(500):
            if not await (await admin.execute("select 1 from pg_stat_activity where pid = %s", (pid,))).fetchall():
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the backend outlived its killed client")
        assert await (await admin.execute("select count(*) from killed")).fetchone() == (0,)
    other = await RawClient.connect(proxy.port)
    assert (await other.login_jwt("authenticated", proxy.token()))[-1].type == b"Z"
    other.close()


async def test_protocol_error_of_one_client_leaves_another_alone(proxy):
    calm = await RawClient.connect(proxy.port)
    await calm.login_jwt("authenticated", proxy.token("calm"))
    await calm.send(m.query("begin; select 1"))
    await calm.read_until_ready()
    rude = await RawClient.connect(proxy.port)
    await rude.login_jwt("authenticated", proxy.token("rude"))
    await rude.send(b"Q\0\0\0\x02")
    assert await rude.read_to_end() == b""
    await calm.send(m.query("select auth.user_id(); commit"))
    reply = await calm.read_until_ready()
    assert m.data_row(next(msg for msg in reply if msg.type == b"D").body) == [b"calm"]
    assert reply[-1] == m.Message(b"Z", b"I")
    calm.close()


async def test_pgbouncer_cancel_race(proxy):
    """PgBouncer's test_cancel_race: many cancels for one client must hit only that client's query."""
    slow, quick = await RawClient.connect(proxy.port), await RawClient.connect(proxy.port)
    slow_key = next(msg for msg in await slow.login_jwt("authenticated", proxy.token()) if msg.type == b"K").body
    await quick.login_jwt("authenticated", proxy.token())
    await slow.send(m.query("select pg_sleep(5)"))
    await quick.send(m.query("select pg_sleep(1)"))
    await wait_until_running(proxy, "select pg_sleep(5)")
    await wait_until_running(proxy, "select pg_sleep(1)")
    cancel = m.cancel_request(m.int32(slow_key), m.int32(slow_key, 4))
    await asyncio.gather(*(reply_to(cancel, port=proxy.port) for _ in range(100)))
    slow_reply = await slow.read_until_ready(timeout=3)
    quick_reply = await quick.read_until_ready(timeout=5)
    assert m.error_fields(next(msg for msg in slow_reply if msg.type == b"E").body)["C"] == "57014"
    assert [msg.type for msg in quick_reply] == [b"T", b"D", b"C", b"Z"]
    slow.close(), quick.close()


async def test_wrong_key_and_finished_session_cancel_nothing(proxy):
    client = await RawClient.connect(proxy.port)
    key = next(msg for msg in await client.login_jwt("authenticated", proxy.token()) if msg.type == b"K").body
    pid, secret = m.int32(key), m.int32(key, 4)
    await client.send(m.query("select pg_sleep(0.5)"))
    assert await reply_to(m.cancel_request(pid, secret ^ 1), port=proxy.port) == b""
    assert [msg.type for msg in await client.read_until_ready()] == [b"T", b"D", b"C", b"Z"]
    client.close()
    await asyncio.sleep(0.1)
    assert proxy.server.context.cancellations.lookup(pid, secret) is None  # forgotten with its session
    assert await reply_to(m.cancel_request(pid, secret), port=proxy.port) == b""


@pytest.fixture
async def own_cluster(settings, tmp_path):
    """A Postgres of this test's own, so restarting it disturbs no other test."""
    pg = await start_cluster(settings, tmp_path)
    yield pg
    await pg.stop()


async def test_postgres_restarted_under_the_proxy(settings, own_cluster, tmp_path):
    started = await start_proxy(settings, own_cluster, tmp_path / "proxy")
    try:
        conn = await psycopg.AsyncConnection.connect(started.owner_url(), autocommit=True)
        await own_cluster.stop()
        with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
            await conn.execute("select 1")
        await conn.close()
        for url, password in ((started.owner_url(), None), (started.url("authenticated"), started.token())):
            with pytest.raises(psycopg.OperationalError, match="neon-local could not reach Postgres"):
                await psycopg.AsyncConnection.connect(url, password=password)
        await own_cluster.start()
        for url, password in ((started.owner_url(), None), (started.url("authenticated"), started.token("back"))):
            async with await psycopg.AsyncConnection.connect(url, password=password) as again:
                assert (await (await again.execute("select 1")).fetchone()) == (1,)
    finally:
        await started.server.close()


async def test_slow_reader_gets_every_byte(proxy):
    client = await RawClient.connect(proxy.port)
    await client.login_jwt("authenticated", proxy.token())
    await client.send(m.query("select repeat(chr(65 + g % 26), 1000000) from generate_series(0, 63) g"))
    await asyncio.sleep(1)  # 64 MB pile up: the relay must pause Postgres rather than buffer it all
    reply = await client.read_until_ready(timeout=30)
    rows = [m.data_row(msg.body)[0] for msg in reply if msg.type == b"D"]
    assert rows == [bytes([65 + g % 26]) * 1000000 for g in range(64)]
    client.close()
