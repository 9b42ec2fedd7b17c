"""One control plane for every path: the same JWT-session preparation, repair, refusals and request log over /sql and TCP.

Each case runs on both paths against a whole emulator, as an app would meet it (issue 9, items 1-5, 8, 11).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import httpx
import psycopg
import pytest

from neon_local.app import Emulator
from neon_local.settings import Settings

PATHS = ["http", "tcp"]


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-plane")
    emu = Emulator(Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0), write_state=False)
    await emu.start()
    yield emu
    await emu.stop()


def token(emu, sub: str = "user_alice") -> str:
    return emu.services.issuer.mint(sub=sub)


async def as_jwt_user(emu, path: str, query: str, dbname: str = "neondb", sub: str = "user_alice") -> list:
    """Rows of `query` run as `authenticated` with a token for `sub`; raises `Refused` with the client's error."""
    if path == "http":
        async with httpx.AsyncClient() as client:
            response = await client.post(emu.endpoints.sql_url, json={"query": query}, headers={
                "Neon-Connection-String": f"postgresql://authenticated@127.0.0.1/{dbname}",
                "Authorization": f"Bearer {token(emu, sub)}"})
        body = response.json()
        if response.status_code != 200:
            raise Refused(response.status_code, body.get("code"), body["message"])
        return [tuple(row.values()) for row in body["rows"]]
    try:
        async with await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=emu.endpoints.pg_port, user="authenticated", password=token(emu, sub),
                dbname=dbname, sslmode="require", autocommit=True) as conn:
            return await (await conn.execute(query)).fetchall()
    except psycopg.Error as exc:
        raise Refused(None, getattr(exc, "sqlstate", None), str(exc)) from None


async def as_owner(emu, statements: str, dbname: str = "neondb") -> None:
    """The owner's own SQL, straight to Postgres (as a migration tool on Neon's direct URL would)."""
    async with await psycopg.AsyncConnection.connect(emu.cluster.conninfo(user="neondb_owner", dbname=dbname), autocommit=True) as conn:
        await conn.execute(statements)


async def owner_over_http(emu, query: str, dbname: str = "neondb") -> httpx.Response:
    url = emu.endpoints.owner_url.replace("/neondb?", f"/{dbname}?")
    async with httpx.AsyncClient() as client:
        return await client.post(emu.endpoints.sql_url, json={"query": query}, headers={"Neon-Connection-String": url})


class Refused(Exception):
    def __init__(self, status, code, message) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@pytest.mark.parametrize("path", PATHS)
async def test_a_database_the_owner_just_created_works_for_jwt_users(emulator, path):
    await as_owner(emulator, f"create database fresh_{path}", dbname="neondb")
    assert await as_jwt_user(emulator, path, "select auth.user_id()", dbname=f"fresh_{path}") == [("user_alice",)]


@pytest.mark.parametrize("path", PATHS)
async def test_a_schema_reset_is_repaired_on_the_failing_request(emulator, path):
    db = f"reset_{path}"
    await as_owner(emulator, f"create database {db}")
    assert await as_jwt_user(emulator, path, "select auth.user_id()", dbname=db) == [("user_alice",)]
    # drizzle's test suites, `prisma migrate reset`, `drizzle-kit push`: pg_session_jwt lives in public and goes too.
    await as_owner(emulator, "drop schema public cascade; create schema public;", dbname=db)
    assert await as_jwt_user(emulator, path, "select auth.user_id()", dbname=db, sub="user_bob") == [("user_bob",)]
    # The owner puts the extension back before neon-local does: USAGE on its schema is still granted again.
    await as_owner(emulator, "drop schema public cascade; create schema public; create extension pg_session_jwt;", dbname=db)
    assert await as_jwt_user(emulator, path, "select auth.user_id()", dbname=db) == [("user_alice",)]
    assert await as_jwt_user(emulator, path, "select auth.user_id()", dbname=db, sub="user_bob") == [("user_bob",)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("template", ["template1", "template0"])
async def test_jwt_sessions_on_template_databases_are_refused(emulator, path, template):
    with pytest.raises(Refused) as refused:
        await as_jwt_user(emulator, path, "select 1", dbname=template)
    assert f'JWT sessions are not allowed on template database "{template}"' in refused.value.message
    if path == "http":
        assert (refused.value.status, refused.value.code) == (400, "42501")
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="template1")) as admin:
        cursor = await admin.execute("select count(*) from pg_extension where extname = 'pg_session_jwt'")
        assert await cursor.fetchone() == (0,)


@pytest.mark.parametrize("path", PATHS)
async def test_a_misspelt_database_gets_postgres_3D000(emulator, path):
    with pytest.raises(Refused) as refused:
        await as_jwt_user(emulator, path, "select 1", dbname="neonbd")
    assert 'database "neonbd" does not exist' in refused.value.message
    if path == "http":
        assert (refused.value.status, refused.value.code) == (400, "3D000")


async def test_auth_refusals_over_tcp_carry_their_sqlstate(emulator):
    with pytest.raises(asyncpg.PostgresError) as refused:
        await asyncpg.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                              password="not-a-jwt", database="neondb", ssl="require")
    assert refused.value.sqlstate == "28000"


@pytest.mark.parametrize("option", ["-c pg-session-jwt.jwk={}", "-c pg-session-jwt.jwt=x", "-c session-authorization=cloud_admin"])
async def test_startup_options_in_dash_form_are_refused(emulator, option):
    with pytest.raises(psycopg.OperationalError, match="permission denied to set parameter"):
        await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                              password=token(emulator), dbname="neondb", sslmode="require", options=option)


async def test_no_connection_of_neon_local_blocks_drop_or_create_database(emulator):
    await as_owner(emulator, "create database dropme")
    assert (await owner_over_http(emulator, "select 1", dbname="dropme")).status_code == 200
    assert await as_jwt_user(emulator, "http", "select 1", dbname="dropme") == [(1,)]
    dropped = await owner_over_http(emulator, "drop database dropme with (force)")
    assert dropped.status_code == 200, dropped.text
    assert (await owner_over_http(emulator, "select 1", dbname="template1")).status_code == 200
    created = await owner_over_http(emulator, "create database made_after")
    assert created.status_code == 200, created.text
    again = await owner_over_http(emulator, "select 1", dbname="dropme")
    assert again.status_code == 400 and again.json()["code"] == "3D000"


@pytest.mark.parametrize("setting", ["local_preload_libraries = 'x'", "search_path = pg_temp"])
async def test_a_jwt_user_cannot_lock_others_out_with_role_defaults(emulator, setting):
    await as_owner(emulator, "drop table if exists shared_notes; create table shared_notes (body text);"
                             "grant select on shared_notes to authenticated; insert into shared_notes values ('hello')")
    try:
        assert await as_jwt_user(emulator, "http", f"alter role authenticated set {setting}") == []
        # A JWT role's own defaults that stop it from connecting are cleared (and logged) by neon-local...
        assert await as_jwt_user(emulator, "tcp", "select auth.user_id()", sub="user_bob") == [("user_bob",)]
        # ...and whatever else a user set there, the owner can undo, as on Neon (neon_superuser manages the roles).
        await as_owner(emulator, "alter role authenticated reset all")
        assert await as_jwt_user(emulator, "tcp", "select body from shared_notes", sub="user_bob") == [("hello",)]
    finally:
        async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
            await admin.execute("alter role authenticated reset all")


def test_a_damaged_keyring_is_one_clear_line_not_a_traceback(tmp_path):
    keys = tmp_path / "data" / "keys"
    keys.mkdir(parents=True)
    (keys / "keyring.json").write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "neon_local", "up", "--data-dir", str(tmp_path / "data"),
                             "--http-port", "0", "--pg-port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "keyring.json" in result.stderr


async def test_the_pg_authid_connection_closes_when_idle(emulator):
    assert (await owner_over_http(emulator, "select 1")).status_code == 200
    await asyncio.sleep(2.5)
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="postgres")) as admin:
        cursor = await admin.execute("select count(*) from pg_stat_activity where usename = 'cloud_admin'"
                                     " and pid <> pg_backend_pid() and backend_type = 'client backend'")
        assert await cursor.fetchone() == (0,)


async def test_sql_requests_and_tcp_sessions_share_one_log(emulator):
    log = emulator.services.sql.request_log
    assert emulator.services.pg_proxy.context.request_log is log
    token = emulator.services.issuer.mint(sub="user_alice")
    async with httpx.AsyncClient() as client:
        response = await client.post(emulator.endpoints.sql_url, json={"query": "select auth.user_id()"}, headers={
            "Neon-Connection-String": "postgresql://authenticated@127.0.0.1/neondb", "Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                                     password=token, dbname="neondb", sslmode="require"):
        pass
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                              password="not-a-jwt", dbname="neondb", sslmode="require")
    entries = log.entries()
    assert [(e["path"], e["sub"], e["error"] is None) for e in entries[-3:]] == [
        ("/sql", "user_alice", True), ("tcp", "user_alice", True), ("tcp", None, False)]
    assert entries[-1]["role"] == "authenticated" and "not a valid JWT encoding" in entries[-1]["error"]
