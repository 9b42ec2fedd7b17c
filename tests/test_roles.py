"""Custom JWT roles: created as Neon creates JWT roles, selected by the connection string on /sql, TCP and
WebSocket (refused when the token's provider does not list the role) and by the `role` claim on the Data API."""

from __future__ import annotations

import asyncio
import json
import os

import asyncpg
import httpx
import psycopg
import pytest

from neon_local.app import Emulator
from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.settings import load_settings
from test_proxy_websocket import tunnel

CONFIG = """\
http_port = 0
pg_port = 0

[roles.admin]
inherits = ["authenticated"]

[roles.auditor]
grants = "none"

[[jwks]]
id = "neon-local"
roles = ["authenticated", "anonymous", "admin"]

[[jwks]]
id = "partner"
jwks_file = "partner-jwks.json"
roles = ["auditor"]
"""


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    project = tmp_path_factory.mktemp("roles")
    partner_keys = KeyRing.load_or_create(project / "partner-keys")
    (project / "partner-jwks.json").write_text(json.dumps(partner_keys.jwks()))
    (project / "neon_local.toml").write_text(CONFIG)
    settings = load_settings(cwd=project, env={})
    emulator = Emulator(settings, write_state=False)
    await emulator.start()
    emulator.partner = Issuer(settings, partner_keys, "https://partner.example")
    await owner_run(emulator, """
        create table notes (id int primary key, body text);
        insert into notes values (1, 'one'), (2, 'two');
        alter table notes enable row level security;
        create policy own on notes to authenticated using (id = 1);
        create policy everything on notes to admin using (true);
        grant select on notes to authenticated, anonymous, admin;
    """)
    yield emulator
    await emulator.stop()


async def owner_run(emulator, query: str) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url, autocommit=True) as conn:
        cur = await conn.execute(query)
        return await cur.fetchall() if cur.description else []


async def sql(emulator, user: str, token: str, query: str) -> httpx.Response:
    url = emulator.endpoints.database_url(user)
    async with httpx.AsyncClient() as client:
        return await client.post(emulator.endpoints.sql_url, json={"query": query},
                                 headers={"Neon-Connection-String": url, "Authorization": f"Bearer {token}"})


async def tcp_connect(emulator, user: str, token: str) -> psycopg.AsyncConnection:
    e = emulator.endpoints
    return await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, dbname=e.database, user=user,
                                                 password=token, sslmode="require")


async def test_custom_roles_are_created_as_neon_creates_jwt_roles(emulator):
    rows = await owner_run(emulator,
        "select rolname, rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolpassword is null "
        "from pg_authid where rolname in ('admin', 'auditor') order by 1")
    assert rows == [("admin", True, False, False, False, False, True), ("auditor", True, False, False, False, False, True)]
    assert await owner_run(emulator, "select pg_has_role('admin', 'authenticated', 'member'), "
                                     "pg_has_role('auditor', 'authenticated', 'member')") == [(True, False)]
    # Neon's documented grants for admin; none for auditor (grants = "none").
    await owner_run(emulator, "create table plain (v int)")  # no grants of its own: default privileges only
    assert await owner_run(emulator, "select has_table_privilege('admin', 'plain', 'insert'), "
                                     "has_table_privilege('auditor', 'plain', 'insert')") == [(True, False)]


async def test_sql_over_http_uses_the_connection_string_role(emulator):
    token = emulator.services.issuer.mint(sub="user_admin")
    answer = await sql(emulator, "admin", token, "select current_user, auth.user_id() as uid, count(*) as n from notes")
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [{"current_user": "admin", "uid": "user_admin", "n": "2"}]
    # The same token as authenticated sees only what that role's policy allows.
    answer = await sql(emulator, "authenticated", token, "select count(*) as n from notes")
    assert answer.json()["rows"] == [{"n": "1"}]


async def test_sql_over_http_refuses_a_role_the_provider_does_not_list(emulator):
    built_in = emulator.services.issuer.mint(sub="user_x")
    answer = await sql(emulator, "auditor", built_in, "select 1")
    assert answer.status_code == 400 and answer.json()["message"] == "jwk not found"  # Neon's text, word for word
    partner = emulator.partner.mint(sub="user_p")
    assert (await sql(emulator, "authenticated", partner, "select 1")).json()["message"] == "jwk not found"
    answer = await sql(emulator, "auditor", partner, "select current_user")
    assert answer.status_code == 200 and answer.json()["rows"] == [{"current_user": "auditor"}]
    # auditor has no grants at all.
    answer = await sql(emulator, "auditor", partner, "select * from notes")
    assert "permission denied for table notes" in answer.json()["message"]


async def test_tcp_takes_the_role_and_names_the_provider_when_refusing(emulator):
    token = emulator.services.issuer.mint(sub="user_admin")
    async with await tcp_connect(emulator, "admin", token) as conn:
        assert await (await conn.execute("select current_user, count(*) from notes")).fetchone() == ("admin", 2)
    with pytest.raises(psycopg.OperationalError) as refused:
        await tcp_connect(emulator, "auditor", token)
    assert "jwk not found" in str(refused.value)
    assert "Provider neon-local allows the roles authenticated, anonymous, admin, not auditor" in str(refused.value)


async def test_websocket_takes_the_role_and_refuses_others(emulator):
    server, port = await tunnel(emulator.endpoints.http_port)
    try:
        token = emulator.services.issuer.mint(sub="user_admin")
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="admin", password=token, database="neondb", ssl=False)
        assert await conn.fetchval("select current_user") == "admin"
        assert await conn.fetchval("select count(*) from notes") == 2
        await conn.close()
        with pytest.raises(asyncpg.PostgresError) as refused:
            await asyncpg.connect(host="127.0.0.1", port=port, user="auditor", password=token, database="neondb", ssl=False)
        assert "jwk not found" in str(refused.value)
        assert "not auditor" in refused.value.hint
    finally:
        server.close()


async def test_data_api_selects_the_role_claim(emulator):
    url = emulator.endpoints.data_api_url + "/notes?select=id&order=id"

    async def get(claims: dict) -> httpx.Response:
        token = emulator.services.issuer.mint(sub="user_y", claims=claims)
        async with httpx.AsyncClient() as client:
            return await client.get(url, headers={"Authorization": f"Bearer {token}"})

    admin, member = await asyncio.gather(get({"role": "admin"}), get({"role": "authenticated"}))
    assert admin.status_code == 200 and admin.json() == [{"id": 1}, {"id": 2}]
    assert member.json() == [{"id": 1}]


def test_roles_commands_edit_the_file_in_place(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from neon_local.cli import main

    for name in [n for n in os.environ if n.startswith("NEON_LOCAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "neon_local.toml").write_text('# my roles\nroles = ["editor"]  # old list form\n')
    runner = CliRunner()
    assert runner.invoke(main, ["roles", "add", "admin", "--inherits", "authenticated"]).exit_code == 0
    assert runner.invoke(main, ["roles", "add", "auditor", "--grants", "none"]).exit_code == 0
    refused = runner.invoke(main, ["roles", "add", "admin"])
    assert refused.exit_code == 1 and "'admin' is a JWT role already" in refused.output
    refused = runner.invoke(main, ["roles", "remove", "authenticated"])
    assert refused.exit_code == 1 and "one of Neon's JWT roles" in refused.output
    assert runner.invoke(main, ["roles", "remove", "editor"]).exit_code == 0
    assert (tmp_path / "neon_local.toml").read_text() == (
        '# my roles\n\n[roles.admin]\ninherits = ["authenticated"]\n\n[roles.auditor]\ngrants = "none"\n')
    listed = json.loads(runner.invoke(main, ["roles", "list", "--json"]).output)
    assert listed["admin"] == {"custom": True, "inherits": ["authenticated"], "grants": "default", "providers": ["neon-local"]}
    assert listed["auditor"]["grants"] == "none" and not listed["authenticated"]["custom"]
    settings = load_settings(cwd=tmp_path, env={})
    assert settings.roles == ("admin", "auditor") and settings.role_specs["admin"].inherits == ("authenticated",)


@pytest.mark.parametrize("text, error", [
    ('[roles.admin]\ngrants = "all"\n', "[roles.admin]: grants must be one of 'default', 'none', got 'all'"),
    ('[roles.admin]\ninherits = ["admin"]\n', "inherits must be a role name or a list of them (not the role itself)"),
    ('[roles.admin]\nlogin = true\n', "[roles.admin] has unknown keys ['login']"),
    ('[[jwks]]\nid = "x"\njwks_url = "https://x/jwks"\nroles = ["a"]\nrole_names = ["a"]\n', "give roles or role_names"),
])
def test_bad_role_tables_are_refused_with_the_key(tmp_path, text, error):
    from neon_local.settings import ConfigError, read_config_file

    with pytest.raises(ConfigError) as refused:
        read_config_file(tmp_path / "neon_local.toml", text)
    assert error in str(refused.value)
