"""Multi-tenancy by claim in [tenancy] mode "upstream": each tenant's JWT sessions go to the Postgres its URL names.

Two Debian PostgreSQL 15 servers stand for two tenants' own databases (acme on one, globex on the other),
both prepared by neon-local at start as --upstream prepares one. Tokens of both tenants write and read
concurrently over /sql, TCP (psycopg), WebSocket (@neondatabase/serverless) and the Data API, in connection
strings and URLs that name the other tenant's database; each reaches its own server only. A tenant that is
not mapped is refused on every path, and the owner's password sessions stay on neon-local's own Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import quote

import httpx
import psycopg
import pytest

from http_support import run_node
from neon_local.app import Emulator
from neon_local.settings import ConfigError, Tenancy, load_settings, read_config_file
from test_cli import neon_local
from test_reload import edit
from test_upstream import PASSWORD, debian_postgres

TENANTS = ("acme", "globex")
SHARED = "hooli"  # a third tenant, in another database of acme's server

SCHEMA = """
create table notes (id serial primary key, body text not null);
grant select, insert on notes to authenticated;
grant usage on sequence notes_id_seq to authenticated;
insert into notes (body) values ('seed-{tenant}');
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Tenant → its Debian PostgreSQL 15 server, whose database is named after it."""
    with contextlib.ExitStack() as stack:
        yield {tenant: stack.enter_context(debian_postgres(tmp_path_factory.mktemp(tenant), database=tenant))
               for tenant in TENANTS}


def tenancy_toml(servers, mapped=TENANTS) -> str:
    return '[tenancy]\nclaim = "org_id"\nmode = "upstream"\n\n[tenancy.upstreams]\n' + "".join(
        f'{tenant} = "{servers[tenant]["verified_url"]}"\n' for tenant in mapped)


def shared_url(servers) -> str:
    return servers["acme"]["verified_url"].replace("/acme?", f"/{SHARED}?")


@pytest.fixture(scope="module")
async def emulator(servers, tmp_path_factory):
    root = tmp_path_factory.mktemp("tenancy-upstream")
    with psycopg.connect(dbname="postgres", **servers["acme"]["admin"]) as conn:
        conn.execute(f"create database {SHARED}")
    (root / "neon_local.toml").write_text(tenancy_toml(servers) + f'{SHARED} = "{shared_url(servers)}"\n')
    settings = load_settings({"http_port": 0, "pg_port": 0, "upstream_yes": True}, config_file=root / "neon_local.toml", env={})
    emu = Emulator(settings, write_state=False)
    await emu.start()
    for tenant in TENANTS:  # the app's migration, run by each tenant's own user (the owner there)
        with psycopg.connect(dbname=tenant, **servers[tenant]["admin"]) as conn:
            conn.execute(SCHEMA.format(tenant=tenant))
    with psycopg.connect(dbname=SHARED, **servers["acme"]["admin"]) as conn:  # no grants: Neon's default privileges apply
        conn.execute(f"create table notes (id serial primary key, body text not null); insert into notes (body) values ('seed-{SHARED}')")
    yield emu
    await emu.stop()


def token(emulator, org, sub: str = "user_alice") -> str:
    claims = {"role": "authenticated"} | ({} if org is None else {"org_id": org})
    return emulator.services.issuer.mint(sub=sub, claims=claims)


def other(tenant: str) -> str:
    return TENANTS[1 - TENANTS.index(tenant)]


def stored(servers, tenant: str) -> list[str]:
    """What the tenant's server holds, read there directly (not through neon-local)."""
    with psycopg.connect(dbname=tenant, **servers[tenant]["admin"]) as conn:
        return [body for (body,) in conn.execute("select body from notes order by body").fetchall()]


async def sql(client: httpx.AsyncClient, emulator, org, query: str, params=(), dbname: str = "neondb") -> httpx.Response:
    return await client.post(emulator.endpoints.sql_url, json={"query": query, "params": list(params)}, headers={
        "Neon-Connection-String": f"postgresql://authenticated@127.0.0.1/{dbname}", "Authorization": f"Bearer {token(emulator, org)}"})


async def tcp(emulator, org, dbname: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                                 password=token(emulator, org), dbname=dbname, sslmode="require",
                                                 autocommit=True)


def route(emulator, tenant: str) -> str:
    """The name neon-local's paths use for a tenant's upstream database: a token of another tenant may send it."""
    return emulator.services.control_plane.tenant_upstreams[tenant].route


async def test_each_upstream_was_prepared_at_start(emulator, servers):
    for tenant in TENANTS:
        with psycopg.connect(dbname=tenant, **servers[tenant]["admin"]) as conn:
            roles = conn.execute("select rolname from pg_roles where rolname in ('authenticated', 'anonymous', 'authenticator')"
                                 " order by 1").fetchall()
            assert roles == [("anonymous",), ("authenticated",), ("authenticator",)]
            assert conn.execute("select count(*) from _pg_session_jwt.instance_secret").fetchone() == (1,)
            assert conn.execute("select count(*) from pg_extension where extname = 'pg_session_jwt'").fetchone() == (0,)


async def test_sql_over_http_tenants_reach_their_own_server_only_under_concurrency(emulator, servers):
    async with httpx.AsyncClient() as client:
        async def write(tenant, i):  # the connection string names the other tenant's database, or its route
            dbname = other(tenant) if i % 2 else quote(route(emulator, other(tenant)))
            response = await sql(client, emulator, tenant, "insert into notes (body) values ($1) returning current_database() as db,"
                                 " inet_server_port() as port", [f"http-{tenant}-{i}"], dbname=dbname)
            assert response.status_code == 200, response.text
            return tenant, response.json()["rows"][0]
        for tenant, row in await asyncio.gather(*(write(tenant, i) for i in range(12) for tenant in TENANTS)):
            assert row == {"db": tenant, "port": servers[tenant]["port"]}
        for tenant in TENANTS:
            response = await sql(client, emulator, tenant, "select array_agg(body order by body) as b from notes", dbname=other(tenant))
            expected = sorted([f"seed-{tenant}", *(f"http-{tenant}-{i}" for i in range(12))])
            assert response.json()["rows"] == [{"b": expected}]
            assert [b for b in stored(servers, tenant) if b.startswith(("seed", "http"))] == expected


async def test_tcp_tenants_reach_their_own_server_only_under_concurrency(emulator, servers):
    async def session(tenant, i):
        async with await tcp(emulator, tenant, other(tenant) if i % 2 else route(emulator, other(tenant))) as conn:
            await conn.execute("insert into notes (body) values (%s)", [f"tcp-{tenant}-{i}"])
            row = await (await conn.execute("select current_database(), inet_server_port(), auth.user_id()")).fetchone()
            return tenant, row
    for tenant, row in await asyncio.gather(*(session(tenant, i) for i in range(6) for tenant in TENANTS)):
        assert row == (tenant, servers[tenant]["port"], "user_alice")
    for tenant in TENANTS:
        assert [b for b in stored(servers, tenant) if b.startswith("tcp")] == sorted(f"tcp-{tenant}-{i}" for i in range(6))


async def test_tenants_in_two_databases_of_one_server_share_its_roles_and_stay_apart(emulator, servers):
    """hooli's database got Neon's grants though acme's start made the roles; both log in with the same passwords."""
    async with httpx.AsyncClient() as client:
        async def write(tenant, i):
            response = await sql(client, emulator, tenant, "insert into notes (body) values ($1) returning current_database() as db",
                                 [f"shared-{tenant}-{i}"], dbname="acme")
            assert response.status_code == 200, response.text
            return tenant, response.json()["rows"][0]["db"]
        for tenant, db in await asyncio.gather(*(write(tenant, i) for i in range(6) for tenant in ("acme", SHARED))):
            assert db == tenant
    async with await tcp(emulator, SHARED, "acme") as conn:
        rows = await (await conn.execute("select body from notes order by body")).fetchall()
        assert [r[0] for r in rows] == sorted([f"seed-{SHARED}", *(f"shared-{SHARED}-{i}" for i in range(6))])
    assert not [b for b in stored(servers, "acme") if b.startswith(f"shared-{SHARED}")]


async def test_a_cancel_reaches_the_tenants_server(emulator, servers):
    async with await tcp(emulator, "globex", "globex") as conn:
        running = asyncio.ensure_future(conn.execute("select pg_sleep(30)"))
        async with await psycopg.AsyncConnection.connect(dbname="globex", **servers["globex"]["admin"]) as admin:
            while await (await admin.execute("select count(*) from pg_stat_activity where state = 'active'"
                                             " and query = 'select pg_sleep(30)'")).fetchone() != (1,):
                await asyncio.sleep(0.05)  # until the query runs on globex's server
        await conn.cancel_safe()
        with pytest.raises(psycopg.errors.QueryCanceled):
            await asyncio.wait_for(running, 10)


async def test_websocket_tenants_reach_their_own_server_only(emulator, servers):
    urls = [[tenant, f"postgresql://authenticated:{token(emulator, tenant)}@localhost/{other(tenant)}"]
            for _ in range(3) for tenant in TENANTS]
    urls += [["initech", f"postgresql://authenticated:{token(emulator, 'initech')}@localhost/acme"]]
    result = await run_node("tenancy_upstream_ws.mjs", {"WS_PROXY": f"127.0.0.1:{emulator.endpoints.http_port}/v2",
                                                        "URLS": json.dumps(urls)})
    *sessions, refused = result
    for entry in sessions:
        tenant = entry["tenant"]
        assert (entry["db"], entry["port"]) == (tenant, servers[tenant]["port"]), entry
        assert all(b == f"seed-{tenant}" or b.startswith((f"ws-{tenant}-", f"http-{tenant}-", f"tcp-{tenant}-", f"shared-{tenant}-"))
                   for b in entry["bodies"]), entry
    assert refused["code"] == "28000", refused
    assert refused["error"] == "tenant 'initech' (the \"org_id\" claim) has no upstream in [tenancy.upstreams]"
    for tenant in TENANTS:
        assert len([b for b in stored(servers, tenant) if b.startswith("ws-")]) == 3


async def test_data_api_tenants_reach_their_own_server_only(emulator, servers):
    base = f"http://127.0.0.1:{emulator.endpoints.http_port}"
    async with httpx.AsyncClient() as client:
        async def insert(tenant, i):  # the URL names the other tenant's database
            response = await client.post(f"{base}/{other(tenant)}/rest/v1/notes", json={"body": f"api-{tenant}-{i}"},
                                         headers={"Authorization": f"Bearer {token(emulator, tenant)}"})
            assert response.status_code == 201, response.text
        await asyncio.gather(*(insert(tenant, i) for i in range(5) for tenant in TENANTS))
        for tenant in TENANTS:
            response = await client.get(f"{base}/{other(tenant)}/rest/v1/notes?select=body&body=like.api-*&order=body",
                                        headers={"Authorization": f"Bearer {token(emulator, tenant)}"})
            assert response.status_code == 200, response.text
            assert [r["body"] for r in response.json()] == sorted(f"api-{tenant}-{i}" for i in range(5))
            assert [b for b in stored(servers, tenant) if b.startswith("api-")] == sorted(f"api-{tenant}-{i}" for i in range(5))
        # The OpenAPI document names the path the client used, never the route behind it.
        response = await client.get(f"{base}/acme/rest/v1/", headers={"Authorization": f"Bearer {token(emulator, 'globex')}"})
        assert response.status_code == 200 and response.json()["basePath"] == "/acme/rest/v1", response.text


async def test_an_unmapped_tenant_or_a_token_without_the_claim_is_refused_on_every_path(emulator):
    message = "tenant 'initech' (the \"org_id\" claim) has no upstream in [tenancy.upstreams]"
    async with httpx.AsyncClient() as client:
        response = await sql(client, emulator, "initech", "select 1", dbname="acme")
        assert response.status_code == 400 and response.json()["message"] == message, response.text
        assert response.json()["code"] == "28000" and "[tenancy.upstreams] initech" in response.json()["hint"]
        response = await sql(client, emulator, None, "select 1", dbname="acme")
        assert response.status_code == 400 and 'no "org_id" claim' in response.json()["message"]
        response = await client.get(f"http://127.0.0.1:{emulator.endpoints.http_port}/acme/rest/v1/notes",
                                    headers={"Authorization": f"Bearer {token(emulator, 'initech')}"})
        assert response.status_code == 401 and response.json()["message"] == message, response.text
        response = await client.get(f"http://127.0.0.1:{emulator.endpoints.http_port}/acme/rest/v1/notes")
        assert response.status_code == 401, response.text  # no token, no tenant
    with pytest.raises(psycopg.OperationalError, match=r"tenant 'initech' \(the \"org_id\" claim\) has no upstream"):
        await tcp(emulator, "initech", "acme")
    with pytest.raises(psycopg.OperationalError, match=r"the \"org_id\" claim \{'id': 'acme'\} cannot name a tenant"):
        await tcp(emulator, {"id": "acme"}, "acme")
    with pytest.raises(psycopg.OperationalError, match="tenant '42' .* has no upstream"):  # a number counts as its digits
        await tcp(emulator, 42, "acme")


async def test_password_sessions_stay_on_neon_locals_own_postgres(emulator):
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url) as owner:
        row = await (await owner.execute("select current_database(), to_regclass('notes')")).fetchone()
    assert row == ("neondb", None)
    e = emulator.endpoints
    async with httpx.AsyncClient() as client:
        for dbname in ("neondb", route(emulator, "acme")):
            response = await client.post(e.sql_url, json={"query": "select current_database() as db"},
                                         headers={"Neon-Connection-String": f"postgresql://{e.owner}:{e.owner_password}@127.0.0.1/{quote(dbname)}"})
            if dbname == "neondb":
                assert response.json()["rows"] == [{"db": "neondb"}], response.text
            else:  # a route names a tenant's upstream: only that tenant's JWT sessions go there
                assert response.status_code == 400 and "only that tenant's JWT sessions reach" in response.json()["message"]


async def test_a_mapping_edited_while_running_applies_and_the_old_one_is_refused(servers, tmp_path):
    config = tmp_path / "neon_local.toml"
    config.write_text(tenancy_toml(servers, mapped=("acme",)))
    settings = load_settings({"http_port": 0, "pg_port": 0, "upstream_yes": True, "data_api": False}, config_file=config, env={})
    emulator = Emulator(settings, write_state=False)
    await emulator.start()
    try:
        async with httpx.AsyncClient() as client:
            query = "select current_database() as db"
            assert (await sql(client, emulator, "acme", query)).json()["rows"] == [{"db": "acme"}]
            assert (await sql(client, emulator, "globex", query)).status_code == 400
            await edit(emulator, tenancy_toml(servers, mapped=("globex",)))  # acme unmapped, globex mapped
            assert emulator.reloader.error is None
            response = await sql(client, emulator, "globex", query)
            assert response.json()["rows"] == [{"db": "globex"}], response.text
            response = await sql(client, emulator, "acme", query)
            assert response.status_code == 400 and "has no upstream" in response.json()["message"]
            await edit(emulator, 'roles = ["auditor"]\n' + tenancy_toml(servers, mapped=("globex",)))  # a new role: on every tenant's server
            assert emulator.reloader.error is None
            with psycopg.connect(dbname="globex", **servers["globex"]["admin"]) as conn:
                conn.execute("create table auditor_probe (x int)")  # the owner's new tables: Neon's default privileges
                assert conn.execute("select has_table_privilege('auditor', 'auditor_probe', 'select')").fetchone() == (True,)
            await edit(emulator, tenancy_toml(servers, mapped=("globex",)).replace(servers["globex"]["verified_url"],
                                                                                   "postgresql://postgres@127.0.0.1:1/x"))
            assert "[tenancy.upstreams] globex: cannot connect" in emulator.reloader.error
            response = await sql(client, emulator, "globex", query)  # the last good map stays in force
            assert response.json()["rows"] == [{"db": "globex"}], response.text
    finally:
        await emulator.stop()


def test_changes_to_a_tenants_upstream_wait_for_consent(servers, tmp_path):
    acme = servers["acme"]
    with psycopg.connect(dbname="postgres", **acme["admin"]) as conn:
        conn.execute("create database fresh")
    (tmp_path / "neon_local.toml").write_text(tenancy_toml({"fresh": {"verified_url": acme["verified_url"].replace("/acme?", "/fresh?")}},
                                                           mapped=("fresh",)))
    up = neon_local("up", "--http-port", "0", "--pg-port", "0", cwd=tmp_path)  # no terminal to ask in
    assert up.returncode == 1
    assert "the upstream of each tenant in [tenancy.upstreams] needs these changes before neon-local can front it:" in up.stderr
    assert (f"  - tenant fresh (postgresql://postgres@127.0.0.1:{acme['port']}/fresh): database fresh: install neon-local's "
            "pg_session_jwt 0.4.0 stand-in") in up.stderr
    assert "Nothing was changed. Run again with --upstream-yes" in up.stderr
    with psycopg.connect(dbname="fresh", **acme["admin"]) as conn:
        assert conn.execute("select count(*) from pg_namespace where nspname in ('auth', '_pg_session_jwt')").fetchone() == (0,)


def test_tenants_cli_in_upstream_mode(servers, tmp_path):
    (tmp_path / "neon_local.toml").write_text(tenancy_toml(servers))
    listed = neon_local("tenants", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"tenant": tenant, "database": tenant, "upstream": f"postgresql://postgres@127.0.0.1:{servers[tenant]['port']}/{tenant}"}
        for tenant in TENANTS]
    plain = neon_local("tenants", "list", cwd=tmp_path).stdout
    assert "acme" in plain and PASSWORD.replace(" ", "%20") not in plain
    for command in (["create", "initech"], ["drop", "acme", "--yes"]):
        refused = neon_local("tenants", *command, cwd=tmp_path)
        assert refused.returncode == 1 and 'is for [tenancy] mode "database"' in refused.stderr
    (tmp_path / "neon_local.toml").write_text("upstream_yes = true\n" + tenancy_toml(servers))
    (tmp_path / "001_tags.sql").write_text("create table tags (name text primary key);\n")
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        displays = {tenant: f"{tenant} (postgresql://postgres@127.0.0.1:{servers[tenant]['port']}/{tenant})" for tenant in TENANTS}
        migrated = neon_local("tenants", "migrate", "001_tags.sql", cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.splitlines() == ["neondb: 001_tags.sql", *(f"{displays[t]}: 001_tags.sql" for t in TENANTS)]
        again = neon_local("tenants", "migrate", "001_tags.sql", cwd=tmp_path)
        assert again.stdout.splitlines() == ["neondb: up to date", *(f"{displays[t]}: up to date" for t in TENANTS)]
    finally:
        neon_local("down", cwd=tmp_path)
    for tenant in TENANTS:
        with psycopg.connect(dbname=tenant, **servers[tenant]["admin"]) as conn:
            assert conn.execute("select to_regclass('tags') is not null").fetchone() == (True,)


def test_upstream_mode_config_errors_name_the_key(tmp_path):
    config = tmp_path / "neon_local.toml"
    head = '[tenancy]\nclaim = "org_id"\nmode = "upstream"\n'
    config.write_text(head + '\n[tenancy.upstreams]\nacme = "postgresql://postgres:pw@127.0.0.1:5433/acme"\n')
    assert read_config_file(config)["tenancy"] == Tenancy(
        "org_id", "upstream", upstreams={"acme": "postgresql://postgres:pw@127.0.0.1:5433/acme"})
    for text, expected in [
        (head, r'mode "upstream" needs \[tenancy.upstreams\], a table of tenant id = Postgres URL'),
        (head + '\n[tenancy.upstreams]\nacme = "mysql://x@y/z"\n', r"\[tenancy.upstreams\] acme must start with postgresql://"),
        (head + '\n[tenancy.upstreams]\nacme = 5433\n', r"\[tenancy.upstreams\] acme must be a Postgres URL string"),
        (head + '\n[tenancy.upstreams]\n"a b" = "postgresql://p@h/d"\n', r"\[tenancy.upstreams\] 'a b': a tenant id is letters"),
        (head + 'prefix = "t_"\n\n[tenancy.upstreams]\nacme = "postgresql://p@h/d"\n', r'\[tenancy\] prefix apply to mode "database" only'),
        ('[tenancy]\nclaim = "org_id"\n\n[tenancy.upstreams]\nacme = "postgresql://p@h/d"\n',
         r'\[tenancy.upstreams\] needs mode = "upstream"'),
    ]:
        config.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            read_config_file(config)
