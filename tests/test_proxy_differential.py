"""Differential tests in PgCat's style: the same raw messages to Postgres and through the proxy, the same bytes back.

Postgres is reached directly on its private socket (trust) as the same role; the proxy is reached
over TCP with the role's real login (SCRAM for the owner, a JWT for `authenticated`). After login
every byte must match, except BackendKeyData, which the proxy replaces with a key of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neon_local.wire import messages as m
from proxy_support import RawClient, proxy, raw_trust_login, wait_until_running  # noqa: F401 (fixtures)

FLUSH = m.frame(b"H", b"")


def copy_data(text: str) -> bytes:
    return m.frame(b"d", text.encode())


def close_statement(name: str) -> bytes:
    return m.frame(b"C", b"S" + m.cstr(name))


def describe_statement(name: str) -> bytes:
    return m.frame(b"D", b"S" + m.cstr(name))


# (name, bytes to send, how many ReadyForQuery end the reply; None: Postgres closes the connection)
SEQUENCES = [
    ("simple", m.query("select 1 as a, 'x'::text as b; select null::int, 2.5::numeric, true"), 1),
    ("simple error mid-batch", m.query("select 1; select 1/0; select 2"), 1),
    ("empty query", m.query(""), 1),
    ("notice", m.query("do $$ begin raise notice 'hello %', 42; end $$"), 1),
    ("transaction states", m.query("begin") + m.query("select 1/0") + m.query("select 1") + m.query("rollback"), 4),
    ("extended", m.parse("select $1::int + 1 as n, $2::text as t") + m.bind(["41", "hi"]) + m.describe_portal()
     + m.execute() + m.sync(), 1),
    ("named statement reused", m.parse("select $1::int * 2", "s1") + describe_statement("s1") + m.sync()
     + m.bind(["21"], statement="s1") + m.execute() + m.bind([None], statement="s1") + m.execute()
     + close_statement("s1") + m.sync(), 2),
    ("error mid-pipeline", m.parse("select 1") + m.bind([]) + m.execute() + m.parse("selec oops") + m.bind([])
     + m.execute() + m.parse("select 2") + m.bind([]) + m.execute() + m.sync() + m.parse("select 3") + m.bind([])
     + m.execute() + m.sync(), 2),
    ("bad bind", m.parse("select $1::int") + m.bind(["not a number"]) + m.execute() + m.sync(), 1),
    ("portal row limit", m.parse("select generate_series(1, 5)") + m.bind([]) + m.execute(max_rows=2)
     + m.execute(max_rows=2) + FLUSH + m.sync(), 1),
    ("copy out", m.query("copy (select g, md5(g::text) from generate_series(1, 3000) g) to stdout"), 1),
    ("copy in", m.query("create temp table t (a int, b text)") + m.query("copy t from stdin")
     + copy_data("1\tone\n2\ttwo\n") + copy_data("3\tthree\n") + m.frame(b"c", b"")
     + m.query("select count(*), sum(a), string_agg(b, ',' order by a) from t"), 3),
    ("copy in failed", m.query("create temp table u (a int)") + m.query("copy u from stdin") + copy_data("1\n")
     + m.frame(b"f", m.cstr("client gave up")) + m.query("select count(*) from u"), 3),
    ("copy in bad data", m.query("create temp table v (a int)") + m.query("copy v from stdin") + copy_data("x\n")
     + m.frame(b"c", b"") + m.query("select 1"), 3),
    ("large row", m.query("select repeat('a', 3000000), repeat('b', 10)"), 1),
    ("unknown message type", m.query("select 1") + m.frame(b"y", b"junk") + m.query("select 1"), None),
    ("oversized message length", m.query("select 1") + b"Q\x7f\xff\xff\xff", None),
]


def mask(messages: list[m.Message]) -> list[m.Message]:
    return [m.Message(b"K", b"<ours>") if msg.type == b"K" else msg for msg in messages]


async def proxied_login(proxy, role: str, **params: str) -> tuple[RawClient, list[m.Message]]:
    client = await RawClient.connect(proxy.port)
    if role == "authenticated":
        return client, await client.login_jwt(role, proxy.token("user_diff"), **params)
    return client, await client.login_scram(role, proxy.settings.owner_password, **params)


@pytest.fixture(params=["owner", "authenticated"])
def role(request, proxy) -> str:
    return proxy.settings.owner if request.param == "owner" else "authenticated"


async def both(proxy, role: str):
    direct, direct_login = await raw_trust_login(proxy.cluster, role, application_name="diff")
    proxied, proxied_login_reply = await proxied_login(proxy, role, application_name="diff")
    return (direct, direct_login), (proxied, proxied_login_reply)


async def test_login_reports_the_same_parameters(proxy, role):
    (direct, direct_login), (proxied, proxied_reply) = await both(proxy, role)
    direct_tail = [msg for msg in direct_login if msg.type != b"R"]
    proxied_tail = [msg for msg in proxied_reply if msg.type != b"R"]
    assert sorted(mask(proxied_tail), key=lambda x: x.body) == sorted(mask(direct_tail), key=lambda x: x.body)
    direct.close(), proxied.close()


@pytest.mark.parametrize("name, data, readies", SEQUENCES, ids=[s[0] for s in SEQUENCES])
async def test_same_bytes_as_postgres(proxy, role, name, data, readies):
    (direct, _), (proxied, _) = await both(proxy, role)
    for client in (direct, proxied):
        await client.send(data)
    if readies is None:
        assert await proxied.read_to_end() == await direct.read_to_end()
    else:
        assert await proxied.read_until_ready(readies) == await direct.read_until_ready(readies)
    direct.close(), proxied.close()


@pytest.mark.parametrize("chunk", [1, 7])
async def test_same_bytes_when_written_in_small_pieces(proxy, role, chunk):
    data = b"".join(seq[1] for seq in SEQUENCES if seq[0] in ("extended", "copy in", "error mid-pipeline"))
    (direct, _), (proxied, _) = await both(proxy, role)
    await direct.send(data)
    for index in range(0, len(data), chunk):
        await proxied.send(data[index:index + chunk])
    assert await proxied.read_until_ready(6) == await direct.read_until_ready(6)
    direct.close(), proxied.close()


async def test_cancel_gives_the_same_bytes(proxy, role):
    (direct, direct_login), (proxied, proxied_reply) = await both(proxy, role)
    socket_path = str(Path(proxy.cluster.socket_dir) / f".s.PGSQL.{proxy.cluster.port}")
    replies = []
    for client, login, target in ((direct, direct_login, {"path": socket_path}), (proxied, proxied_reply, {"port": proxy.port})):
        key = next(msg for msg in login if msg.type == b"K").body
        await client.send(m.query("select pg_sleep(20)"))
        await wait_until_running(proxy, "select pg_sleep(20)")
        canceller = await RawClient.connect(**target)
        await canceller.send(m.cancel_request(m.int32(key), m.int32(key, 4)))
        assert await canceller.read_to_end() == b""
        replies.append(await client.read_until_ready(timeout=5))
        client.close()
    assert replies[0] == replies[1]
    error = next(msg for msg in replies[1] if msg.type == b"E")
    assert m.error_fields(error.body)["C"] == "57014"


async def test_terminate_closes_both_alike(proxy, role):
    (direct, _), (proxied, _) = await both(proxy, role)
    for client in (direct, proxied):
        await client.send(m.terminate())
    assert await direct.read_to_end() == await proxied.read_to_end() == b""
