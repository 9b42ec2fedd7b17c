"""Multi-tenancy by claim ([tenancy], mode "database"): a JWT session's database is its tenant's, on every path.

Two tenants write and read concurrently over /sql, TCP, WebSocket and the Data API with tokens whose
connection strings (or URLs) name the other tenant's database; each sees only its own rows. The first
request of a tenant creates its database from the template (neondb, migrated by the owner first).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import httpx
import psycopg
import pytest

from http_support import run_node
from neon_local.app import Emulator
from neon_local.control_plane import claim_at, tenant_dbname
from neon_local.errors import PostgresErrorResponse
from neon_local.migrations import target_databases
from neon_local.reload import apply_settings
from neon_local.settings import SPARE_TENANT_DATABASE, ConfigError, Settings, Tenancy, read_config_file
from test_cli import neon_local

MIGRATION = """
create table notes (id serial primary key, body text not null);
grant select, insert on notes to authenticated;
grant usage on sequence notes_id_seq to authenticated;
insert into notes (body) values ('template-row');
"""


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("tenancy")
    settings = Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, tenancy=Tenancy(claim="org_id"))
    emu = Emulator(settings, write_state=False)
    await emu.start()
    async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url, autocommit=True) as owner:
        await owner.execute(MIGRATION)
    yield emu
    await emu.stop()


def token(emulator, org, sub: str = "user_alice") -> str:
    claims = {"role": "authenticated"} | ({} if org is None else {"org_id": org})
    return emulator.services.issuer.mint(sub=sub, claims=claims)


async def sql(client: httpx.AsyncClient, emulator, org, query: str, params=(), dbname: str = "neondb") -> httpx.Response:
    return await client.post(emulator.endpoints.sql_url, json={"query": query, "params": list(params)}, headers={
        "Neon-Connection-String": f"postgresql://authenticated@127.0.0.1/{dbname}", "Authorization": f"Bearer {token(emulator, org)}"})


async def tcp(emulator, org, dbname: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                                 password=token(emulator, org), dbname=dbname, sslmode="require",
                                                 autocommit=True)


async def bodies(emulator, org) -> tuple[str, list[str]]:
    """What the tenant's database holds, read as its owner (not through the tenancy routing)."""
    dbname = f"tenant_{org}"
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url.replace("/neondb?", f"/{dbname}?")) as owner:
        rows = await (await owner.execute("select body from notes order by body")).fetchall()
    return dbname, [r[0] for r in rows]


async def test_first_request_creates_the_tenant_database_from_the_template(emulator):
    async with httpx.AsyncClient() as client:
        response = await sql(client, emulator, "firstco", "select current_database() as db, array_agg(body) as b from notes")
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"db": "tenant_firstco", "b": ["template-row"]}]


async def database_oid(emulator, dbname: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="postgres")) as conn:
        row = await (await conn.execute("select oid from pg_database where datname = %s", [dbname])).fetchone()
    return row and row[0]


async def test_a_tenant_is_created_once_when_its_first_requests_race(emulator):
    assert await emulator.services.control_plane.spare_ready()
    spare = await database_oid(emulator, SPARE_TENANT_DATABASE)
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(sql(client, emulator, "raceco", "select current_database() as db")
                                           for _ in range(12)))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses]
    assert {r.json()["rows"][0]["db"] for r in responses} == {"tenant_raceco"}
    assert await database_oid(emulator, "tenant_raceco") == spare  # the spare, renamed


async def test_concurrent_first_requests_of_different_tenants_each_get_a_copy_of_the_template(emulator):
    assert await emulator.services.control_plane.spare_ready()
    orgs = [f"burst{i}" for i in range(6)]
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(*(sql(client, emulator, org, "insert into notes (body) values ($1)"
                                                " returning current_database() as db", [org]) for org in orgs))
    assert [r.status_code for r in responses] == [200] * len(orgs), [r.text for r in responses]
    assert [r.json()["rows"][0]["db"] for r in responses] == [f"tenant_{org}" for org in orgs]
    for org in orgs:
        assert await bodies(emulator, org) == (f"tenant_{org}", sorted(["template-row", org]))
    assert await emulator.services.control_plane.spare_ready()  # and another spare for the next one


async def test_a_tenant_made_after_the_template_changed_has_its_current_schema(emulator):
    """A spare copied before the owner changed the template (here over /sql, which neon-local does not watch)
    is not used: the tenant's database is a copy of the template as it is now."""
    control_plane = emulator.services.control_plane
    assert await control_plane.spare_ready()
    stale = await database_oid(emulator, SPARE_TENANT_DATABASE)
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url, autocommit=True) as owner:
        await owner.execute("create table if not exists added_later (id int); grant select on added_later to authenticated;"
                            "insert into added_later values (7)")
    async with httpx.AsyncClient() as client:
        response = await sql(client, emulator, "laterco", "select id from added_later")
        assert response.status_code == 200 and response.json()["rows"] == [{"id": 7}], response.text
        assert await database_oid(emulator, "tenant_laterco") != stale
        # The next spare is copied from the changed template, and the next tenant gets it.
        assert await control_plane.spare_ready()
        fresh = await database_oid(emulator, SPARE_TENANT_DATABASE)
        response = await sql(client, emulator, "laterco2", "select id from added_later")
        assert response.status_code == 200 and response.json()["rows"] == [{"id": 7}], response.text
    assert await database_oid(emulator, "tenant_laterco2") == fresh


async def test_a_session_on_the_spare_keeps_it_from_being_used(emulator):
    """Someone connected to the spare (and may have changed it): the tenant's database is copied from the template."""
    assert await emulator.services.control_plane.spare_ready()
    spare = await database_oid(emulator, SPARE_TENANT_DATABASE)
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname=SPARE_TENANT_DATABASE), autocommit=True) as conn:
        await conn.execute("create table meddled (id int)")
    async with httpx.AsyncClient() as client:
        response = await sql(client, emulator, "meddled", "select to_regclass('meddled') is null as clean, array_agg(body) as b from notes")
    assert response.status_code == 200 and response.json()["rows"] == [{"clean": True, "b": ["template-row"]}], response.text
    assert await database_oid(emulator, "tenant_meddled") != spare


async def test_the_spare_is_nobody_s_tenant(emulator):
    with pytest.raises(PostgresErrorResponse, match="cannot name a tenant database"):
        tenant_dbname(Tenancy(claim="org_id", prefix="neon_local."), "next_tenant")
    assert await emulator.services.control_plane.spare_ready()
    settings = replace(emulator.settings, tenancy=Tenancy(claim="org_id", prefix="neon_local."))
    assert SPARE_TENANT_DATABASE not in target_databases(emulator.cluster.conninfo(dbname="postgres"), settings)
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="postgres")) as conn:
        (comment,) = await (await conn.execute("select shobj_description(oid, 'pg_database') from pg_database"
                                               " where datname = %s", [SPARE_TENANT_DATABASE])).fetchone()
        assert comment.startswith("neon-local: a copy of the [tenancy] template neondb")
    async with httpx.AsyncClient() as client:
        assert (await sql(client, emulator, "nocomment", "select 1")).status_code == 200
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="postgres")) as conn:
        (tenant_comment,) = await (await conn.execute("select shobj_description(oid, 'pg_database') from pg_database"
                                                      " where datname = 'tenant_nocomment'")).fetchone()
        assert tenant_comment is None  # the spare's comment went with the rename


async def test_sql_over_http_tenants_never_see_each_other_under_concurrency(emulator):
    async with httpx.AsyncClient() as client:
        async def write(org, other, i):  # the connection string names the other tenant's database
            response = await sql(client, emulator, org, "insert into notes (body) values ($1) returning current_database() as db",
                                 [f"http-{org}-{i}"], dbname=f"tenant_{other}")
            assert response.status_code == 200, response.text
            return response.json()["rows"][0]["db"]
        dbs = await asyncio.gather(*(write(org, other, i) for i in range(15) for org, other in
                                     (("httpa", "httpb"), ("httpb", "httpa"))))
        assert dbs == ["tenant_httpa", "tenant_httpb"] * 15
        for org in ("httpa", "httpb"):
            response = await sql(client, emulator, org, "select array_agg(body order by body) as b from notes",
                                 dbname="tenant_httpa")
            assert sorted(response.json()["rows"][0]["b"]) == sorted(["template-row", *(f"http-{org}-{i}" for i in range(15))])
    _, template_rows = await bodies(emulator, "httpa")
    assert not any(b.startswith("http-httpb") for b in template_rows)


async def test_tcp_tenants_never_see_each_other_under_concurrency(emulator):
    async def session(org, other, i):
        async with await tcp(emulator, org, f"tenant_{other}") as conn:
            await conn.execute("insert into notes (body) values (%s)", [f"tcp-{org}-{i}"])
            return (await (await conn.execute("select current_database()")).fetchone())[0]
    dbs = await asyncio.gather(*(session(org, other, i) for i in range(8) for org, other in
                                 (("tcpa", "tcpb"), ("tcpb", "tcpa"))))
    assert dbs == ["tenant_tcpa", "tenant_tcpb"] * 8
    for org in ("tcpa", "tcpb"):
        assert await bodies(emulator, org) == (f"tenant_{org}", sorted(["template-row", *(f"tcp-{org}-{i}" for i in range(8))]))


async def test_websocket_tenants_never_see_each_other(emulator):
    def url(org, other):
        return f"postgresql://authenticated:{token(emulator, org)}@localhost/tenant_{other}"
    urls = [[org, url(org, other)] for _ in range(4) for org, other in (("wsa", "wsb"), ("wsb", "wsa"))]
    result = await run_node("tenancy_ws.mjs", {"WS_PROXY": f"127.0.0.1:{emulator.endpoints.http_port}/v2",
                                               "URLS": json.dumps(urls)})
    for entry in result:
        assert entry["db"] == f"tenant_{entry['tenant']}"
        assert all(b == "template-row" or b.startswith(f"ws-{entry['tenant']}-") for b in entry["bodies"]), entry
    for org in ("wsa", "wsb"):
        _, rows = await bodies(emulator, org)
        assert sorted(rows) == sorted(["template-row", *(f"ws-{org}-{i}" for i in range(8) if urls[i][0] == org)])


async def test_data_api_tenants_never_see_each_other(emulator):
    base = f"http://127.0.0.1:{emulator.endpoints.http_port}"
    async with httpx.AsyncClient() as client:
        async def insert(org, other, i):  # the URL names the other tenant's database
            response = await client.post(f"{base}/tenant_{other}/rest/v1/notes", json={"body": f"api-{org}-{i}"},
                                         headers={"Authorization": f"Bearer {token(emulator, org)}"})
            assert response.status_code == 201, response.text
        await asyncio.gather(*(insert(org, other, i) for i in range(6) for org, other in (("apia", "apib"), ("apib", "apia"))))
        for org, other in (("apia", "apib"), ("apib", "apia")):
            response = await client.get(f"{base}/tenant_{other}/rest/v1/notes?select=body&order=body",
                                        headers={"Authorization": f"Bearer {token(emulator, org)}"})
            assert response.status_code == 200, response.text
            assert sorted(r["body"] for r in response.json()) == sorted(["template-row", *(f"api-{org}-{i}" for i in range(6))])


async def test_a_token_without_the_claim_is_refused_on_every_path(emulator):
    async with httpx.AsyncClient() as client:
        response = await sql(client, emulator, None, "select 1")
        assert response.status_code == 400
        assert response.json()["message"] == 'this token has no "org_id" claim, and tenancy routes every JWT session by it'
        response = await client.get(f"http://127.0.0.1:{emulator.endpoints.http_port}/neondb/rest/v1/notes",
                                    headers={"Authorization": f"Bearer {token(emulator, None)}"})
        assert response.status_code == 401 and "org_id" in response.json()["message"]
        response = await client.get(f"http://127.0.0.1:{emulator.endpoints.http_port}/neondb/rest/v1/notes")
        assert response.status_code == 401
    with pytest.raises(psycopg.OperationalError, match='no "org_id" claim'):
        await tcp(emulator, None, "neondb")
    with pytest.raises(psycopg.OperationalError, match="cannot name a tenant database"):
        await tcp(emulator, "../neondb", "neondb")


async def test_idle_pooled_connections_to_the_template_do_not_block_a_new_tenant(emulator):
    owner = emulator.endpoints.owner_url.replace("?sslmode=require", "")
    async with httpx.AsyncClient() as client:
        response = await client.post(emulator.endpoints.sql_url, json={"query": "select count(*) from notes"},
                                     headers={"Neon-Connection-String": owner})
        assert response.status_code == 200, response.text  # leaves an idle pooled owner connection on neondb
        response = await sql(client, emulator, "afterpool", "select current_database() as db")
    assert response.status_code == 200 and response.json()["rows"] == [{"db": "tenant_afterpool"}], response.text


async def test_a_session_on_the_template_blocks_a_new_tenant_with_a_clear_error(emulator):
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url):
        async with httpx.AsyncClient(timeout=30) as client:  # Postgres waits 5 s per try for the session to end
            response = await sql(client, emulator, "blocked", "select 1")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "55006" and body["message"].startswith('could not create tenant database "tenant_blocked" from "neondb"')
    assert "Close the sessions" in body["hint"]
    async with httpx.AsyncClient() as client:  # once the session is gone, the tenant's next request makes it
        response = await sql(client, emulator, "blocked", "select current_database() as db")
    assert response.status_code == 200 and response.json()["rows"] == [{"db": "tenant_blocked"}], response.text


async def test_password_roles_are_not_routed(emulator):
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url) as owner:
        row = await (await owner.execute("select current_database(), array_agg(body) from notes")).fetchone()
    assert row == ("neondb", ["template-row"])


async def test_a_spare_left_by_an_earlier_run_or_of_an_earlier_template_is_replaced(tmp_path):
    """A stop or crash before the spare was renamed leaves it behind: it is dropped and copied again, never used.
    A reload that changes [tenancy] template replaces the spare with a copy of the new template."""
    settings = Settings(project_dir=tmp_path, data_dir=tmp_path / "data", http_port=0, pg_port=0)
    async with Emulator(settings, write_state=False) as emu:
        async with await psycopg.AsyncConnection.connect(emu.cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
            await conn.execute(f'create database "{SPARE_TENANT_DATABASE}"')
        async with await psycopg.AsyncConnection.connect(emu.cluster.conninfo(dbname=SPARE_TENANT_DATABASE), autocommit=True) as conn:
            await conn.execute("create table left_over (id int)")
    async with Emulator(replace(settings, tenancy=Tenancy(claim="org_id")), write_state=False) as emu:
        assert await emu.services.control_plane.spare_ready()
        async with httpx.AsyncClient() as client:
            response = await sql(client, emu, "after", "select to_regclass('left_over') is null as gone, current_database() as db")
        assert response.status_code == 200 and response.json()["rows"] == [{"gone": True, "db": "tenant_after"}], response.text

        # A reload that names another template: the spare is replaced by a copy of that one.
        async with await psycopg.AsyncConnection.connect(emu.cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
            await conn.execute(f"create database other_template owner {emu.settings.owner}")
        async with await psycopg.AsyncConnection.connect(emu.cluster.conninfo(dbname="other_template"), autocommit=True) as conn:
            await conn.execute("create table marker (id int); grant select on marker to authenticated")
        await apply_settings(emu, replace(emu.settings, tenancy=Tenancy(claim="org_id", template="other_template")))
        assert await emu.services.control_plane.spare_ready()
        spare = await database_oid(emu, SPARE_TENANT_DATABASE)
        async with httpx.AsyncClient() as client:
            response = await sql(client, emu, "other", "select count(*)::int as n from marker")
        assert response.status_code == 200 and response.json()["rows"] == [{"n": 0}], response.text
        assert await database_oid(emu, "tenant_other") == spare


def test_tenant_claim_paths_and_config(tmp_path):
    assert claim_at({"org": {"id": "acme"}}, "org.id") == "acme"
    assert claim_at({"org": {"id": "acme"}}, "$.org.id") == "acme"
    assert claim_at({"https://x.io/org": "acme"}, "https://x.io/org") == "acme"
    assert claim_at({"org": "acme"}, "org.id") is None
    config = tmp_path / "neon_local.toml"
    config.write_text('[tenancy]\nclaim = "org.id"\ntemplate = "app_template"\n')
    assert read_config_file(config)["tenancy"] == Tenancy(claim="org.id", template="app_template")
    config.write_text('[tenancy]\nclaim = "org_id"\nmode = "schema"\n')
    with pytest.raises(ConfigError, match="mode must be one of 'database'"):
        read_config_file(config)


def test_tenants_cli_create_list_migrate_drop(tmp_path):
    (tmp_path / "neon_local.toml").write_text('[tenancy]\nclaim = "org_id"\n\n[users.alice]\norg_id = "acme"\n')
    (tmp_path / "001_notes.sql").write_text(MIGRATION)
    (tmp_path / "002_tag.sql").write_text("alter table notes add column tag text not null default 'none';\n")
    (tmp_path / "003_bad.sql").write_text("alter table notes add column oops;\n")
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(neon_local("status", "--json", cwd=tmp_path).stdout)
        migrated = neon_local("tenants", "migrate", "001_notes.sql", cwd=tmp_path)
        assert migrated.returncode == 0 and migrated.stdout == "neondb: 001_notes.sql\n", migrated.stderr
        created = neon_local("tenants", "create", "beta", cwd=tmp_path)
        assert created.returncode == 0 and created.stdout == 'created "tenant_beta" from "neondb"\n', created.stderr
        again = neon_local("tenants", "create", "beta", cwd=tmp_path)
        assert again.returncode == 1 and 'tenant beta already has its database "tenant_beta"' in again.stderr

        alice = neon_local("token", "alice", cwd=tmp_path).stdout.strip()
        headers = {"Neon-Connection-String": "postgresql://authenticated@127.0.0.1/neondb", "Authorization": f"Bearer {alice}"}

        def query(sql: str) -> httpx.Response:
            return httpx.post(state["urls"]["sql"], json={"query": sql}, headers=headers)
        response = query("select current_database() as db, count(*)::int as n from notes")
        assert response.status_code == 200 and response.json()["rows"] == [{"db": "tenant_acme", "n": 1}], response.text
        listed = json.loads(neon_local("tenants", "list", "--json", cwd=tmp_path).stdout)
        assert [(t["tenant"], t["database"]) for t in listed] == [("acme", "tenant_acme"), ("beta", "tenant_beta")]

        migrated = neon_local("tenants", "migrate", "001_notes.sql", "002_tag.sql", cwd=tmp_path)
        assert migrated.stdout.splitlines() == ["neondb: 002_tag.sql", "tenant_acme: 002_tag.sql", "tenant_beta: 002_tag.sql"], migrated.stderr
        assert query("select tag from notes").json()["rows"] == [{"tag": "none"}]
        failed = neon_local("tenants", "migrate", "002_tag.sql", "003_bad.sql", cwd=tmp_path)
        assert failed.returncode == 1 and '003_bad.sql:1:34: syntax error at or near ";" (database neondb; the file was rolled back)' in failed.stderr

        assert query("insert into notes (body) values ('alice') returning body").status_code == 200
        dropped = neon_local("tenants", "drop", "acme", "--yes", cwd=tmp_path)
        assert dropped.returncode == 0 and dropped.stdout == 'dropped "tenant_acme"\n', dropped.stderr
        response = query("select array_agg(body) as b from notes")  # a fresh copy of the template
        assert response.status_code == 200 and response.json()["rows"] == [{"b": ["template-row"]}], response.text
        missing = neon_local("tenants", "drop", "nobody", "--yes", cwd=tmp_path)
        assert missing.returncode == 1 and "tenant nobody has no database" in missing.stderr
    finally:
        neon_local("down", cwd=tmp_path)
