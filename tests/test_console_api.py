"""The console's guard and API over real HTTP against a whole emulator: who may use it, and what it records."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from hardening_support import owner_conn_string, running_emulator
from neon_local.console.guard import loopback_host


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
