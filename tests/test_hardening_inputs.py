"""Hostile input (issue 9, items 6, 7 and 9) against a whole emulator: NUL bytes, deep JSON, lone surrogates,
exhausted connections, and web pages that try the public owner password. Every /sql failure must be
Neon's 17-key JSON body with the real cause; TCP and WebSocket get Postgres ErrorResponses."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg
import httpx
import psycopg
import pytest

from hardening_support import WsPg, error_of, neon_error, post_sql, running_emulator
from http_support import run_node
from neon_local.settings import ConfigError, load_settings
from neon_local.wire import messages as m

NUL_MESSAGE = 'invalid byte sequence for encoding "UTF8": 0x00'
EVIL = "https://evil.example"
ALLOWED = "https://app.allowed.example"


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    async with running_emulator(tmp_path_factory.mktemp("hardening-inputs"), allowed_origins=(ALLOWED,)) as started:
        async with await psycopg.AsyncConnection.connect(started.cluster.conninfo(dbname="neondb"), autocommit=True) as admin:
            await admin.execute("create table secrets (owner text, secret text)")
            await admin.execute("insert into secrets values ('alice', 'alice secret')")
            await admin.execute("create table accounts (name text)")
            await admin.execute("grant select, insert on secrets, accounts to authenticated")
        yield started


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as http:
        yield http


def _assert_nul_refused(response: httpx.Response) -> None:
    assert response.status_code == 400
    body = neon_error(response)
    assert (body["code"], body["message"], body["severity"]) == ("22021", NUL_MESSAGE, "ERROR")


# --- item 6: NUL bytes --------------------------------------------------------------------------------


async def test_nul_in_a_param_does_not_match_the_text_before_it(emulator, client):
    response = await post_sql(client, emulator, {"query": "select owner from secrets where secret = $1",
                                                 "params": ["alice secret\u0000anything"]})
    _assert_nul_refused(response)


async def test_nul_in_a_param_is_not_stored_cut(emulator, client):
    token = emulator.services.issuer.mint(sub="user_alice")
    response = await post_sql(client, emulator, {"query": "insert into accounts values ($1)", "params": ["admin\u0000ignored"]},
                              token=token)
    _assert_nul_refused(response)
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="neondb")) as admin:
        assert await (await admin.execute("select count(*) from accounts")).fetchone() == (0,)


async def test_nul_in_query_text_and_in_a_batch(emulator, client):
    _assert_nul_refused(await post_sql(client, emulator, {"query": "select 1\u0000; drop table secrets"}))
    _assert_nul_refused(await post_sql(client, emulator, {"queries": [
        {"query": "insert into accounts values ('batch')"}, {"query": "select $1", "params": ["x\u0000"]}]}))
    result = await post_sql(client, emulator, {"query": "select count(*)::int as n from accounts"})
    assert result.json()["rows"] == [{"n": 0}]


@pytest.mark.parametrize("where", ["database", "user"])
@pytest.mark.parametrize("jwt", [False, True], ids=["owner", "jwt"])
async def test_nul_in_the_connection_string_is_refused_not_cut(emulator, client, where, jwt):
    # libpq reads names up to a NUL: "neondb%00x" would land on neondb, and a JWT session lose its startup options.
    s = emulator.settings
    user = "authenticated" if jwt else s.owner
    user, dbname = (user, "neondb%00x") if where == "database" else (user + "%00x", "neondb")
    conn = f"postgresql://{user}@localhost/{dbname}" if jwt else f"postgresql://{user}:{s.owner_password}@localhost/{dbname}"
    token = emulator.services.issuer.mint(sub="user_alice") if jwt else None
    _assert_nul_refused(await post_sql(client, emulator, {"query": "select 1"}, token=token, conn=conn))


async def test_nul_escaped_inside_arrays_and_objects_reaches_postgres_as_text(emulator, client):
    # Neon binds arrays and objects as their JSON text, where U+0000 stays the escape \u0000: no NUL byte.
    response = await post_sql(client, emulator, {"query": "select $1::jsonb->>'k' as v", "params": [{"k": "a\u0000b"}]})
    assert response.status_code == 400 and neon_error(response)["code"] == "22P05"  # jsonb's own refusal of \u0000


async def test_nul_over_tcp_is_refused_by_postgres(emulator):
    conn = await asyncpg.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                 password=emulator.services.issuer.mint(sub="user_alice"), database="neondb", ssl=False)
    try:
        with pytest.raises(asyncpg.exceptions.CharacterNotInRepertoireError, match="0x00"):
            await conn.fetchval("select $1::text", "alice secret\x00anything")
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


async def test_nul_over_websocket_with_the_neon_driver(emulator):
    s = emulator.settings
    result = await run_node("hardening_ws.mjs", {
        "WS_PROXY": f"127.0.0.1:{emulator.endpoints.http_port}/v2",
        "OWNER_URL": f"postgresql://{s.owner}:{s.owner_password}@localhost/neondb",
        "JWT_URL": f"postgresql://authenticated:{emulator.services.issuer.mint(sub='user_alice')}@localhost/neondb",
    })
    assert result["owner"] == {"code": "22021", "message": NUL_MESSAGE}
    assert result["jwt"] == {"code": "22021", "message": NUL_MESSAGE}


async def test_nul_in_a_data_api_value_is_refused_not_cut(tmp_path):
    # PostgREST binds each value with its length, so Postgres itself refuses the NUL (22021, 400).
    async with running_emulator(tmp_path, data_api=True) as emulator, httpx.AsyncClient() as client:
        owner = emulator.cluster.conninfo(user=emulator.settings.owner, dbname="neondb")
        async with await psycopg.AsyncConnection.connect(owner, autocommit=True) as admin:
            await admin.execute("create table accounts (name text); grant select on accounts to authenticated;"
                                " insert into accounts values ('alice')")
            await admin.execute("create function stored(name text) returns text language sql as $$ select name $$")
        token = emulator.services.issuer.mint(sub="user_alice")
        api = emulator.endpoints.data_api_url
        # A filter's value is a bound parameter; a function's arguments go in as JSON, whose \u0000 text refuses.
        for url, code in ((f"{api}/accounts?name=eq.alice%00anything", "22021"), (f"{api}/rpc/stored?name=admin%00ignored", "22P05")):
            response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 400, response.text
            assert response.json()["code"] == code and (code != "22021" or response.json()["message"] == NUL_MESSAGE)
        response = await client.get(f"{api}/accounts?name=eq.alice", headers={"Authorization": f"Bearer {token}"})
        assert response.json() == [{"name": "alice"}]


async def test_nul_inside_a_protocol_string_is_refused_by_postgres(emulator):
    ws = await WsPg.connect(emulator)
    try:
        assert error_of(await ws.login(emulator.settings.owner, emulator.settings.owner_password)) is None
        await ws.ws.send_bytes(m.query("select 'alice secret\x00anything'"))
        error = error_of(await ws.until_ready())
        assert error["C"] == "08P01" and error["M"] == "invalid message format"
    finally:
        await ws.close()


# --- item 7: every failure is Neon's JSON error --------------------------------------------------------


@pytest.mark.parametrize("depth, refused", [(127, False), (128, True), (1000, True), (100_000, True)])
async def test_deeply_nested_json(emulator, client, depth, refused):
    param = "[" * (depth - 2) + "]" * (depth - 2)  # inside the body's object and its params array
    response = await post_sql(client, emulator, ('{"query":"select $1::text as v","params":[' + param + "]}").encode())
    if refused:
        assert response.status_code == 400
        assert neon_error(response)["message"].startswith("could not parse the HTTP request body: recursion limit exceeded at line 1 column ")
    else:
        assert response.json()["rows"] == [{"v": "{" * (depth - 2) + "}" * (depth - 2)}]


@pytest.mark.parametrize("body, message", [
    (b'{"query":"select $1","params":["\\udc80"]}', "lone leading surrogate in hex escape at line 1 column 38"),
    (b'{"query":"select \'\\ud800\'"}', "unexpected end of hex escape at line 1 column 25"),
    (b'{"query":"select $1","params":["\\ud800\\u0041"]}', "lone leading surrogate in hex escape at line 1 column 44"),
])
async def test_lone_surrogates(emulator, client, body, message):
    response = await post_sql(client, emulator, body)
    assert response.status_code == 400
    assert neon_error(response)["message"] == "could not parse the HTTP request body: " + message


async def test_a_surrogate_pair_is_one_character(emulator, client):
    response = await post_sql(client, emulator, b'{"query":"select $1 as v","params":["\\ud83d\\ude00"]}')
    assert response.json()["rows"] == [{"v": "\N{GRINNING FACE}"}]


async def test_connections_exhausted_is_neons_json_with_the_real_cause(tmp_path):
    async with running_emulator(tmp_path, max_connections=120) as emulator, httpx.AsyncClient() as client:
        fillers = []
        try:
            while True:  # take every slot Postgres has, the superuser's reserved ones too
                try:
                    fillers.append(await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="neondb")))
                except psycopg.OperationalError as exc:
                    assert "too many clients" in str(exc)
                    break
                assert len(fillers) < 400
            for token in (None, emulator.services.issuer.mint(sub="user_alice")):
                response = await post_sql(client, emulator, {"query": "select 1"}, token=token)
                assert response.status_code == 500, response.text
                body = neon_error(response)
                assert body["code"] == "53300" or "too many clients" in body["message"], body
        finally:
            await asyncio.gather(*(conn.close() for conn in fillers))
        response = await post_sql(client, emulator, {"query": "select 1 as one"})
        assert response.json()["rows"] == [{"one": 1}]


async def test_owner_requests_while_postgres_restarts_get_neons_json(tmp_path):
    async with running_emulator(tmp_path) as emulator, httpx.AsyncClient() as client:
        assert (await post_sql(client, emulator, {"query": "select 1"})).status_code == 200
        os.kill(emulator.cluster.pid, signal.SIGKILL)
        # An idle backend can still answer until it notices; the supervisor waits 0.2 s before restarting.
        await emulator.cluster.wait_exit()
        answers = []
        async with asyncio.timeout(60):  # until Postgres is back; every answer meanwhile is Neon's JSON error
            while not answers or answers[-1].status_code != 200:
                answers.append(await post_sql(client, emulator, {"query": "select 1"}))
                await asyncio.sleep(0.02)
        errors = [neon_error(response) for response in answers[:-1]]
        assert errors and all(response.status_code in (400, 500) for response in answers[:-1])
        assert all(e["message"] for e in errors)


# --- item 9: web origins and the public owner password -------------------------------------------------


async def test_owner_sql_from_a_foreign_web_page_is_refused(emulator, client):
    response = await post_sql(client, emulator, {"query": "select 1"}, headers={"Origin": EVIL})
    assert response.status_code == 400
    message = neon_error(response)["message"]
    assert EVIL in message and "allowed_origins" in message and "NEON_LOCAL_ALLOWED_ORIGINS" in message


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080", ALLOWED, None])
async def test_owner_sql_from_loopback_or_allowed_pages_and_from_no_page(emulator, client, origin):
    response = await post_sql(client, emulator, {"query": "select 1 as one"}, headers={"Origin": origin} if origin else {})
    assert response.status_code == 200 and response.json()["rows"] == [{"one": 1}]


async def test_jwt_sql_stays_open_to_every_origin(emulator, client):
    response = await post_sql(client, emulator, {"query": "select auth.user_id() as me"},
                              token=emulator.services.issuer.mint(sub="user_alice"), headers={"Origin": EVIL})
    assert response.status_code == 200 and response.json()["rows"] == [{"me": "user_alice"}]


@pytest.mark.parametrize("origin, answered", [(EVIL, False), ("null", False), (ALLOWED, True), ("http://localhost:3000", True)])
async def test_private_network_access_preflight(emulator, client, origin, answered):
    response = await client.options(emulator.endpoints.sql_url, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Private-Network") == ("true" if answered else None)


@pytest.mark.parametrize("origin, answered", [(EVIL, False), (ALLOWED, True)])
async def test_private_network_access_preflight_of_the_issuer(emulator, client, origin, answered):
    response = await client.options(f"{emulator.endpoints.http_url}/oauth/mint", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"})
    assert response.headers.get("Access-Control-Allow-Private-Network") == ("true" if answered else None)


def test_allowed_origins_is_a_list_in_the_file_and_comma_separated_in_flags_and_env(tmp_path):
    assert load_settings({"allowed_origins": "https://a.example, https://b.example"}, cwd=tmp_path, env={}).allowed_origins \
        == ("https://a.example", "https://b.example")
    assert load_settings(None, cwd=tmp_path, env={"NEON_LOCAL_ALLOWED_ORIGINS": "*"}).allowed_origins == ("*",)
    (tmp_path / "neon_local.toml").write_text('allowed_origins = ["https://x.example"]\n')
    assert load_settings(None, cwd=tmp_path, env={}).allowed_origins == ("https://x.example",)
    (tmp_path / "neon_local.toml").write_text("allowed_origins = 3\n")
    with pytest.raises(ConfigError, match="allowed_origins must be a list of strings"):
        load_settings(None, cwd=tmp_path, env={})


async def test_mint_refuses_foreign_pages(emulator, client):
    url = f"{emulator.endpoints.http_url}/oauth/mint"
    refused = await client.post(url, json={"user": "alice"}, headers={"Origin": EVIL})
    assert refused.status_code == 400 and "allowed_origins" in refused.json()["error_description"]
    for headers in ({}, {"Origin": ALLOWED}, {"Origin": "http://localhost:5173"}):
        assert "token" in (await client.post(url, json={"user": "alice"}, headers=headers)).json()


async def test_websocket_password_session_from_a_foreign_page_is_refused(emulator):
    s = emulator.settings
    ws = await WsPg.connect(emulator, origin=EVIL)
    try:
        error = error_of(await ws.login(s.owner, s.owner_password))
        assert error["C"] == "28000" and "allowed_origins" in error["M"] and EVIL in error["M"]
    finally:
        await ws.close()
    for origin in (None, ALLOWED, "http://localhost:3000"):
        ws = await WsPg.connect(emulator, origin=origin)
        try:
            assert error_of(await ws.login(s.owner, s.owner_password)) is None
        finally:
            await ws.close()


async def test_websocket_jwt_session_from_any_page(emulator):
    ws = await WsPg.connect(emulator, origin=EVIL)
    try:
        assert error_of(await ws.login("authenticated", emulator.services.issuer.mint(sub="user_alice"))) is None
        await ws.ws.send_bytes(m.query("select auth.user_id()"))
        rows = [m.data_row(msg.body) for msg in await ws.until_ready() if msg.type == b"D"]
        assert rows == [[b"user_alice"]]
    finally:
        await ws.close()

