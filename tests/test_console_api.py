"""The console's guard and API over real HTTP against a whole emulator: who may use it, and what it records."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import httpx
import psycopg
import pytest
from aiohttp.test_utils import make_mocked_request

from hardening_support import WsPg, owner_conn_string, running_emulator
from neon_local.console.guard import ConsoleGuard, loopback_host
from neon_local.console.request_log import STATEMENT_CHARS, RequestLog


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    async with running_emulator(tmp_path_factory.mktemp("console-api")) as emu:
        yield emu


@pytest.fixture
async def client(emulator):
    async with httpx.AsyncClient(base_url=emulator.services.console.http_url, timeout=30) as http:
        yield http


async def signed_in(client, emulator) -> str:
    """Open the printed URL as a browser does; the cookie is then in the client's jar."""
    key = emulator.services.console.url.split("?key=")[1]
    response = await client.get(f"/console?key={key}")
    assert response.status_code == 302 and response.headers["location"] == "/console"
    return response.headers["set-cookie"]


async def test_the_printed_key_becomes_a_strict_httponly_cookie(client, emulator):
    cookie = await signed_in(client, emulator)
    assert f"neon_local_console_{emulator.endpoints.http_port}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    page = await client.get("/console")
    assert page.status_code == 200 and "<title>neon-local console</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_without_the_secret_nothing_answers(client):
    assert (await client.get("/console")).status_code == 401
    assert (await client.get("/console?key=guess")).status_code == 401
    refused = await client.get("/console/api/info")
    assert refused.status_code == 401 and "neon-local up" in refused.json()["error"]
    assert (await client.get("/console/static/console.js")).status_code == 401


async def test_a_foreign_host_is_refused_even_with_the_secret(client, emulator):
    """DNS rebinding: a page at evil.example resolved to 127.0.0.1 sends its own name as Host."""
    await signed_in(client, emulator)
    refused = await client.get("/console/api/info", headers={"Host": "evil.example"})
    assert refused.status_code == 403 and "DNS rebinding" in refused.json()["error"]
    assert (await client.get("/console/api/info", headers={"Host": f"localhost:{emulator.endpoints.http_port}"})).status_code == 200


async def test_only_the_consoles_own_origin_may_call_the_api(client, emulator):
    await signed_in(client, emulator)
    sql = {"sql": "create table pwned (x int)"}
    own = emulator.services.console.http_url
    for headers in ({"Origin": "http://127.0.0.1:3000"}, {"Origin": "http://localhost:3000"}, {},
                    {"Origin": own, "Sec-Fetch-Site": "same-site"}):
        refused = await client.post("/console/api/owner-sql", json=sql, headers=headers)
        assert refused.status_code == 403, headers
    info = await client.get("/console/api/info")
    assert "Access-Control-Allow-Origin" not in info.headers  # no other page may read an answer
    created = await client.post("/console/api/owner-sql", json={"sql": "create table mine (x int)"}, headers={"Origin": own})
    assert created.status_code == 200 and created.json() == {"ok": True}


def test_loopback_host_names():
    for host in ("localhost", "localhost:4444", "127.0.0.1:4444", "[::1]:4444", "app.localhost", "127.1.2.3"):
        assert loopback_host(host), host
    for host in ("evil.example", "evil.example:4444", "10.0.0.1:4444", "localhost.evil.example", "", None, "[::2]:1"):
        assert not loopback_host(host), host


def test_a_peer_off_loopback_is_refused_even_with_host_and_secret():
    """With `host = "0.0.0.0"` the listeners take other machines' connections: the console still answers none."""
    guard = ConsoleGuard(4444, "the-key")
    request = make_mocked_request("GET", "/console/api/info", headers={
        "Host": "127.0.0.1:4444", "Cookie": "neon_local_console_4444=the-key"})
    assert guard.refusal(request.clone(remote="127.0.0.1")) is None
    assert guard.refusal(request.clone(remote="::1")) is None
    refused = guard.refusal(request.clone(remote="192.0.2.7"))
    assert refused is not None and refused.status == 403
    assert json.loads(refused.text)["error"] == "the console answers only on this machine (loopback)"


async def test_root_redirects_to_the_console(client):
    response = await client.get("/")
    assert response.status_code == 302 and response.headers["location"] == "/console"


async def test_the_request_log_records_and_streams_sql_requests(client, emulator):
    await signed_in(client, emulator)
    async with client.stream("GET", "/console/api/log/stream") as stream:
        sent = await client.post("/sql", json={"query": "select 1 as one union all select 2", "params": []},
                                 headers={"Neon-Connection-String": owner_conn_string(emulator)})
        assert sent.status_code == 200
        failed = await client.post("/sql", json={"query": "select * from nowhere", "params": []},
                                   headers={"Neon-Connection-String": owner_conn_string(emulator)})
        assert failed.status_code == 400
        seen = []
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if any(e.get("error") for e in seen if e["path"] == "/sql"):
                    break
    ok = next(e for e in seen if e["statement"] == "select 1 as one union all select 2")
    assert ok["path"] == "/sql" and ok["role"] == "neondb_owner" and ok["rows"] == 2 and ok["duration_ms"] >= 0
    bad = next(e for e in seen if e["statement"] == "select * from nowhere")
    assert bad["error"] == 'relation "nowhere" does not exist' and bad["rows"] is None
    listed = (await client.get("/console/api/log")).json()["entries"]
    assert [e["id"] for e in listed if e["statement"] == "select * from nowhere"] == [bad["id"]]


async def test_the_request_log_records_websocket_sessions(emulator):
    log = emulator.services.sql.request_log
    token = emulator.services.issuer.mint(sub="user_alice")
    for password in (token, "not-a-jwt"):
        ws = await WsPg.connect(emulator)
        try:
            await ws.login("authenticated", password)
        finally:
            await ws.close()
    opened, refused = log.entries()[-2:]
    assert (opened["path"], opened["role"], opened["sub"], opened["statement"], opened["error"]) == (
        "ws", "authenticated", "user_alice", "(session)", None)
    assert refused["path"] == "ws" and refused["sub"] is None and "not a valid JWT encoding" in refused["error"]


def test_the_request_log_is_bounded():
    log = RequestLog(size=3)
    for n in range(5):
        log.record("/sql", "authenticated", statement=f"select {n}" + " " * STATEMENT_CHARS)
    kept = log.entries()
    assert [e["statement"].rstrip() for e in kept] == ["select 2", "select 3", "select 4"]
    assert all(len(e["statement"]) == STATEMENT_CHARS for e in kept)
    assert log.entries(after=kept[1]["id"]) == [kept[2]]


async def api(client, emulator, path: str, body=None):
    """A console API call as its page makes it (cookie and Origin)."""
    await signed_in(client, emulator)
    if body is None:
        return (await client.get(f"/console/api/{path}")).json()
    response = await client.post(f"/console/api/{path}", json=body, headers={"Origin": emulator.services.console.http_url})
    return response.json()


DOCS = """
drop table if exists docs;
create table docs (id int generated always as identity primary key, title text not null,
                   user_id text default (auth.user_id()), org_id text, published boolean default false);
insert into docs (title, user_id, org_id, published) values
  ('a1', 'user_alice', 'org_acme', true), ('a2', 'user_alice', 'org_acme', false), ('b1', 'user_bob', 'org_globex', false)
"""
WHO = (("alice", {"kind": "user", "name": "alice"}), ("anonymous", {"kind": "anonymous"}),
       ("admin", {"kind": "claims", "claims": {"sub": "user_zed", "role": "admin"}}))


async def test_every_template_applies_and_shapes_access(client, emulator):
    templates = [t["name"] for t in (await api(client, emulator, "templates"))["templates"]]
    assert templates == ["owner_only", "tenant", "public_read", "published", "admin", "blank"]
    seen = {}
    for name in templates:
        await api(client, emulator, "owner-sql", {"sql": DOCS})
        sql = (await api(client, emulator, "policy/preview", {"table": "public.docs", "template": name, "params": {}}))["sql"]
        assert (await api(client, emulator, "owner-sql", {"sql": sql})) == {"ok": True}, sql
        lints = [f for f in (await api(client, emulator, "lints"))["findings"] if f["object"].startswith("public.docs")]
        assert lints == [], (name, lints)  # a template the advisor would flag would be a bad template
        select = {"sql": "select title from docs order by title"}
        seen[name] = {who: [row[0] for row in (await api(client, emulator, "sql", {**select, "identity": identity}))["result"]["rows"]]
                      for who, identity in WHO}
    assert seen["owner_only"] == {"alice": ["a1", "a2"], "anonymous": [], "admin": []}
    assert seen["tenant"] == {"alice": ["a1", "a2"], "anonymous": [], "admin": []}  # alice's org_id is org_acme
    assert seen["public_read"] == {"alice": ["a1", "a2", "b1"], "anonymous": ["a1", "a2", "b1"], "admin": ["a1", "a2", "b1"]}
    assert seen["published"] == {"alice": [], "anonymous": ["a1"], "admin": []}
    assert seen["admin"] == {"alice": [], "anonymous": [], "admin": ["a1", "a2", "b1"]}
    assert seen["blank"] == {"alice": [], "anonymous": [], "admin": []}


LEDGERS = """
create table ledgers (id int primary key, user_id text default (auth.user_id()), org_id text, amount int);
alter table ledgers enable row level security;
alter table ledgers force row level security;
create policy own on ledgers for select to authenticated using ((select auth.user_id()) = user_id);
create policy same_org on ledgers as restrictive for all to authenticated
  using (org_id = (select auth.session()->>'org_id')) with check (org_id = (select auth.session()->>'org_id'));
revoke delete on ledgers from anonymous;
"""


async def test_the_rls_overview_shows_policies_grants_and_what_they_read(client, emulator):
    await api(client, emulator, "owner-sql", {"sql": LEDGERS})
    tables = (await api(client, emulator, "rls"))["tables"]
    ledgers = next(t for t in tables if (t["schema"], t["name"]) == ("public", "ledgers"))
    assert (ledgers["rls"], ledgers["forced"], ledgers["owner"]) == (True, True, emulator.settings.owner)
    own, same_org = ledgers["policies"]
    assert (own["name"], own["command"], own["roles"], own["permissive"]) == ("own", "SELECT", ["authenticated"], True)
    assert own["using"] == "(( SELECT auth.user_id() AS user_id)) = user_id" and own["with_check"] is None
    assert own["reads"] == {"functions": ["auth.user_id()"], "claims": []}
    assert (same_org["command"], same_org["permissive"]) == ("ALL", False)
    assert same_org["with_check"] == same_org["using"] and "auth.session() ->> 'org_id'" in same_org["using"]
    assert same_org["reads"] == {"functions": ["auth.session()"], "claims": ["org_id"]}
    assert ledgers["grants"]["authenticated"] == ["SELECT", "INSERT", "UPDATE", "DELETE"]
    assert ledgers["grants"]["anonymous"] == ["SELECT", "INSERT", "UPDATE"]


MEMOS = """
create table memos (id int generated always as identity primary key, title text, team_id text);
alter table memos enable row level security;
create policy by_team on memos for all to authenticated
  using (team_id = (select auth.session()->>'team_id')) with check (team_id = (select auth.session()->>'team_id'));
insert into memos (title, team_id) values ('m1', 't1'), ('m2', 't2');
revoke insert on memos from anonymous;
"""


async def test_the_matrix_explains_a_null_claim_and_a_missing_grant(client, emulator):
    await api(client, emulator, "owner-sql", {"sql": MEMOS})
    matrix = await api(client, emulator, "matrix", {"table": "memos", "new_row": {"title": "x", "team_id": "t1"}})
    assert (matrix["table"], matrix["total_rows"], matrix["commands"]) == ("public.memos", 2, ["select", "insert", "update", "delete"])
    rows = {row["identity"]["label"]: row["cells"] for row in matrix["rows"]}
    assert list(rows) == ["alice", "bob", "anonymous", "owner"]
    alice = rows["alice"]
    assert [alice[c]["state"] for c in ("select", "update", "delete")] == ["allowed"] * 3
    assert alice["select"]["rows"] == 0 and alice["update"]["rows"] == 0  # no team_id claim: no row matches
    assert alice["insert"]["state"] == "refused"
    assert 'new row violates row-level security policy for table "memos"' in alice["insert"]["error"]
    assert "auth.session()->>'team_id' is NULL" in alice["insert"]["why"]  # which claim was NULL
    anonymous = rows["anonymous"]
    assert anonymous["insert"]["state"] == "refused" and "permission denied for table memos" in anonymous["insert"]["error"]
    assert "anonymous holds SELECT, UPDATE, DELETE on table memos and lacks INSERT" in anonymous["insert"]["why"]
    owner = rows["owner"]
    assert (owner["select"]["rows"], owner["select"]["sample"]) == (2, ["(1,m1,t1)", "(2,m2,t2)"])
    assert owner["insert"]["state"] == owner["update"]["state"] == owner["delete"]["state"] == "allowed"
    with psycopg.connect(emulator.cluster.conninfo(dbname=emulator.settings.database)) as conn:  # all rolled back
        assert conn.execute("select count(*) from memos").fetchone() == (2,)


def _header(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))


async def test_tokens_mint_copy_and_verify(client, emulator):
    minted = await api(client, emulator, "tokens/mint", {"user": "alice", "alg": "RS256", "lifetime": 60, "claims": {"plan": "pro"}})
    claims = minted["claims"]
    assert (claims["sub"], claims["plan"], claims["exp"] - claims["iat"]) == ("user_alice", "pro", 60)
    assert _header(minted["token"])["alg"] == "RS256"
    assert minted["authorization"] == f"Authorization: Bearer {minted['token']}"
    async with await psycopg.AsyncConnection.connect(minted["connection_string"]) as conn:  # the copied string works
        assert await (await conn.execute("select auth.user_id(), auth.session()->>'plan'")).fetchone() == ("user_alice", "pro")
    curl = await asyncio.create_subprocess_shell(minted["curl"], stdout=asyncio.subprocess.PIPE)
    assert json.loads((await curl.communicate())[0])["rows"] == [{"user_id": "user_alice"}]  # and so does the curl

    verified = await api(client, emulator, "tokens/decode", {"token": "Bearer " + minted["token"], "role": "authenticated"})
    assert verified["valid"] is True and verified["kid"] == _header(minted["token"])["kid"]
    assert verified["claims"] == claims and verified["provider"]

    expired = (await api(client, emulator, "tokens/mint", {"user": "bob", "expired": True}))["token"]
    refused = await api(client, emulator, "tokens/decode", {"token": expired})
    assert refused["valid"] is False and re.fullmatch(r"JWT token has expired \(exp=\d+\)", refused["error"])
    assert refused["claims"]["sub"] == "user_bob"  # decoded even when refused
    garbage = await api(client, emulator, "tokens/decode", {"token": "abc"})
    assert garbage["valid"] is False and "header" not in garbage


async def test_explain_identities_and_errors(client, emulator):
    explained = await api(client, emulator, "sql", {"identity": {"kind": "owner"}, "sql": "select 1", "explain": True})
    assert explained["status"] == 200 and explained["result"]["rows"][0][0].startswith("Result")
    anonymous = await api(client, emulator, "sql", {"identity": {"kind": "anonymous"}, "sql": "select auth.user_id() as me, current_user"})
    assert anonymous["result"]["rows"] == [[None, "anonymous"]] and anonymous["result"]["types"] == ["text", "name"]
    custom = await api(client, emulator, "sql", {"identity": {"kind": "claims", "role": "authenticated", "claims": {"sub": "u42", "plan": "pro"}},
                                                 "sql": "select auth.user_id(), auth.session()->>'plan'"})
    assert custom["result"]["rows"] == [["u42", "pro"]]
    broken = await api(client, emulator, "sql", {"identity": {"kind": "user", "name": "bob"}, "sql": "select 1 from nowhere"})
    assert broken["status"] == 400 and broken["result"]["position"] == "15" and broken["result"]["code"] == "42P01"
    unknown = await api(client, emulator, "sql", {"identity": {"kind": "user", "name": "mallory"}, "sql": "select 1"})
    assert "no test user 'mallory'" in unknown["error"]


async def test_a_policy_is_written_as_a_migration_file(client, emulator):
    written = await api(client, emulator, "policy/migration", {"name": "docs_rls", "sql": "ALTER TABLE docs ENABLE ROW LEVEL SECURITY;"})
    path = written["path"]
    assert path.startswith(str(emulator.settings.project_dir / "migrations")) and path.endswith("_docs_rls.sql")
    with open(path) as handle:
        assert handle.read() == "ALTER TABLE docs ENABLE ROW LEVEL SECURITY;\n"
    refused = await api(client, emulator, "policy/migration", {"name": "../../etc/x", "sql": "select 1"})
    assert "lower-case letters" in refused["error"]


async def test_a_policy_migration_goes_to_the_configured_migrations_folder(tmp_path):
    """With `migrations = "drizzle"` the file lands where `up --migrations` (and --watch) reads, not in migrations/."""
    (tmp_path / "drizzle").mkdir()
    async with running_emulator(tmp_path, migrations=tmp_path / "drizzle") as emu, \
            httpx.AsyncClient(base_url=emu.services.console.http_url, timeout=30) as http:
        written = await api(http, emu, "policy/migration", {"name": "notes_rls", "sql": "select 1;"})
    path = Path(written["path"])
    assert path.parent == tmp_path / "drizzle" and path.name.endswith("_notes_rls.sql") and path.read_text() == "select 1;\n"
    assert not (tmp_path / "migrations").exists()


async def test_the_page_weighs_under_500_kb(client, emulator):
    await signed_in(client, emulator)
    page = await client.get("/console")
    assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/console/static/console.css", "/console/static/console.js"]
    sizes = [len(page.content)] + [len((await client.get(asset)).content) for asset in assets]
    assert sum(sizes) < 500_000, sizes


JUNK = [[], "x", 1, None, {"identity": "alice", "sql": 5}, {"identity": {"kind": "claims", "claims": []}, "sql": "select 1"},
        {"table": 5, "template": ["x"], "params": "p"}, {"table": "public.nope"}, {"table": "x", "new_row": [1]},
        {"token": 5, "role": {}}, {"user": "nobody"}, {"claims": "x"}, {"lifetime": "long"}, {"sql": "syntax error here"},
        {"name": 5, "sql": None}]


@pytest.mark.parametrize("path", ["sql", "policy/preview", "owner-sql", "policy/migration", "matrix", "tokens/mint", "tokens/decode"])
async def test_bad_input_gets_a_json_error_never_a_crash(client, emulator, path):
    await signed_in(client, emulator)
    for body in JUNK:
        response = await client.post(f"/console/api/{path}", json=body, headers={"Origin": emulator.services.console.http_url})
        assert response.status_code in (200, 400), (body, response.status_code, response.text)
        assert isinstance(response.json(), dict)
    raw = await client.post(f"/console/api/{path}", content=b"{not json", headers={"Origin": emulator.services.console.http_url})
    assert raw.status_code == 400 and raw.json() == {"error": "the body must be JSON"}


async def test_the_page_may_be_opened_from_a_link_elsewhere_but_its_api_may_not(client, emulator):
    key = emulator.services.console.url.split("?key=")[1]
    opened = await client.get(f"/console?key={key}", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert opened.status_code == 302
    refused = await client.get("/console/api/info", headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
