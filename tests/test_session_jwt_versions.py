"""Which pg_session_jwt version a database gets, and who may change it: Neon's docs version by default,
installed as the database owner so that the owner can update it, as on Neon.

Each test runs on the default engine and on Debian's PostgreSQL 15 (`--pg-bin`), each started as `up` starts it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from neon_local.app import Emulator
from neon_local.postgres import session_jwt
from neon_local.settings import SCALARS, Settings
from session_jwt_support import ORG_ID, OWNER, JwtSession, scratch_database

USER_UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
ENGINES = {"default engine": None, "Debian PostgreSQL 15": Path("/usr/lib/postgresql/15/bin")}


def emulator_settings(root: Path, pg_bin: Path | None, **overrides) -> Settings:
    return Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, pg_bin=pg_bin, **overrides)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> Path | None:
    return ENGINES[request.param]


@pytest.fixture(scope="module")
async def emulator(engine, tmp_path_factory):
    """The emulator as `up` starts it on a fresh data directory, with the default settings."""
    root = tmp_path_factory.mktemp("session-jwt-versions")
    async with Emulator(emulator_settings(root, engine), write_state=False) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(emulator):
    return emulator.cluster


def extension(conn) -> tuple[str, str]:
    return conn.execute("""select extversion, extowner::regrole::text from pg_extension
                           where extname = 'pg_session_jwt'""").fetchone()


async def neondb_extension(emulator) -> tuple[str, str]:
    async with await psycopg.AsyncConnection.connect(emulator.endpoints.owner_url) as owner:
        cur = await owner.execute("""select extversion, extowner::regrole::text from pg_extension
                                     where extname = 'pg_session_jwt'""")
        return await cur.fetchone()


async def sql_over_http(emulator, query: str, claims: dict | None = None) -> httpx.Response:
    """`query` on Neon's /sql as `authenticated` in neondb, with a token of the emulator's issuer."""
    token = emulator.services.issuer.mint(sub=USER_UUID, claims=claims)
    async with httpx.AsyncClient() as client:
        return await client.post(emulator.endpoints.sql_url, json={"query": query, "params": []}, headers={
            "Neon-Connection-String": emulator.endpoints.database_url("authenticated"),
            "Authorization": f"Bearer {token}"})


def test_the_setting_defaults_to_neons_docs_version_and_offers_the_packaged_ones():
    scalar = next(s for s in SCALARS if s.name == "session_jwt_version")
    assert (Settings().session_jwt_version, scalar.default, scalar.choices) == ("0.4.0", "0.4.0", session_jwt.EXTENSION_VERSIONS)


async def test_uid_works_right_after_up(emulator):
    """neondb as `up` made it, with nothing run by hand: 0.4.0, the owner's, and auth.uid() and auth.jwt() answer."""
    assert await neondb_extension(emulator) == ("0.4.0", OWNER)
    answer = await sql_over_http(emulator, "select auth.uid()::text as uid, auth.jwt() ->> 'sub' as sub")
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [{"uid": USER_UUID, "sub": USER_UUID}]


async def test_the_setting_picks_the_version_an_existing_database_keeps_and_the_owner_updates(engine, tmp_path):
    """session_jwt_version = "0.3.1" (an app pinned to it) gives neondb 0.3.1, without auth.uid(), as on a Neon
    project that still has 0.3.1; a later `up` with the default keeps it; the owner updates it to 0.5.0 in neondb."""
    async with Emulator(emulator_settings(tmp_path, engine, session_jwt_version="0.3.1"), write_state=False) as pinned:
        assert await neondb_extension(pinned) == ("0.3.1", OWNER)
        answer = await sql_over_http(pinned, "select auth.uid()")
        assert answer.status_code == 400 and answer.json()["message"] == "function auth.uid() does not exist", answer.text

    async with Emulator(emulator_settings(tmp_path, engine), write_state=False) as restarted:
        assert await neondb_extension(restarted) == ("0.3.1", OWNER)
        async with await psycopg.AsyncConnection.connect(restarted.endpoints.owner_url, autocommit=True) as owner:
            await owner.execute("ALTER EXTENSION pg_session_jwt UPDATE TO '0.5.0'")
        assert await neondb_extension(restarted) == ("0.5.0", OWNER)
        answer = await sql_over_http(restarted, "select auth.uid()::text as uid, auth.organization_id()::text as org",
                                     claims={"o": {"id": ORG_ID, "slug": "acme", "role": "owner"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [{"uid": USER_UUID, "org": ORG_ID}]


def test_plain_create_extension_gives_neons_docs_version(cluster):
    with scratch_database(cluster, "session_jwt_plain", version=None) as name:
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as owner:
            owner.execute("CREATE EXTENSION pg_session_jwt")
            assert extension(owner) == ("0.4.0", OWNER)


@pytest.mark.parametrize("version", session_jwt.EXTENSION_VERSIONS)
def test_installed_as_the_owner_who_can_update_it(cluster, version):
    with scratch_database(cluster, "session_jwt_install", version=None) as name:
        with psycopg.connect(cluster.conninfo(dbname=name), autocommit=True) as admin:
            admin.execute(session_jwt.install_statement(version, OWNER))
            admin.execute("GRANT USAGE ON SCHEMA auth TO authenticated")
            assert admin.execute("select current_user").fetchone() == ("cloud_admin",)  # the role lasted one message
            assert extension(admin) == (version, OWNER)
            owners = admin.execute("""select distinct pg_get_userbyid(p.proowner) from pg_proc p
                                      where p.pronamespace = 'auth'::regnamespace""").fetchall()
            assert owners == [("cloud_admin",)]
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as owner:
            for target in ("0.5.0", "0.3.1", "0.4.0"):
                owner.execute(sql.SQL("ALTER EXTENSION pg_session_jwt UPDATE TO {}").format(sql.Literal(target)))
                assert extension(owner) == (target, OWNER)
        session = JwtSession(cluster, name)
        try:
            session.login({"sub": USER_UUID})
            assert session.value("select auth.uid()::text") == USER_UUID
        finally:
            session.close()


def test_an_existing_install_keeps_its_version(cluster):
    with scratch_database(cluster, "session_jwt_existing", version="0.3.1") as name:
        with psycopg.connect(cluster.conninfo(dbname=name), autocommit=True) as admin:
            admin.execute(session_jwt.install_statement("0.5.0", OWNER))
            assert extension(admin) == ("0.3.1", OWNER)


def test_an_unpackaged_version_is_refused():
    with pytest.raises(ValueError, match="0.3.1, 0.4.0, 0.5.0"):
        session_jwt.install_statement("0.6.0", OWNER)
