"""`up --migrations DIR [--watch]`: the folder's SQL files applied as the owner, in file-name order, each once
(neon_local.migrations); new files applied while running; a failing file reported with file:line:column while the
emulator keeps serving, and retried when it changes; a changed applied file warned about, not run again."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from neon_local.app import Emulator
from neon_local.migrations import line_and_column
from neon_local.settings import SPARE_TENANT_DATABASE, load_settings
from test_cli import neon_local
from test_engine import DRIZZLE_MIGRATION

DEADLINE = 60.0  # seconds a watched change may take to be applied on a loaded machine

NOTES = "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n"
NOTES_TAG = "--> statement-breakpoint\nALTER TABLE notes ADD COLUMN tag text NOT NULL DEFAULT 'none';\n"
BROKEN = "-- 0003: an index\n\nCREATE INDEX notes_body ON notes (body);\nCREATE INDEX notes_oops ON notes (oops);\n"
AFTER_BROKEN = "ALTER TABLE notes ADD COLUMN done boolean NOT NULL DEFAULT false;\n"


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("NEON_LOCAL_")]:
        monkeypatch.delenv(name)


def write(folder: Path, name: str, text: str) -> None:
    """As a migration tool writes a file: complete, then renamed into the folder."""
    temp = folder / f".{name}.tmp"
    temp.write_text(text)
    os.replace(temp, folder / name)


async def until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


def recorded(emulator: Emulator, dbname: str | None = None) -> list[tuple[str, str]]:
    settings = emulator.settings
    conninfo = emulator.cluster.conninfo(user=settings.owner, dbname=dbname or settings.database)
    with psycopg.connect(conninfo) as conn:
        return conn.execute("select name, hash from neon_local.migrations order by applied_at, name").fetchall()


async def sql(emulator: Emulator, query: str, user: str) -> httpx.Response:
    e = emulator.endpoints
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(e.sql_url, json={"query": query},
                                 headers={"Neon-Connection-String": e.database_url("authenticated"),
                                          "Authorization": f"Bearer {emulator.mint(user)}"})


def test_positions_become_line_and_column():
    text = "select 1;\nselect\n  oops;\n"
    assert line_and_column(text, 1) == (1, 1)
    assert line_and_column(text, text.index("oops") + 1) == (3, 3)


async def test_files_apply_once_in_order_and_a_watched_folder_takes_new_and_fixed_files(tmp_path, caplog):
    (tmp_path / "neon_local.toml").write_text('http_port = 0\npg_port = 0\nmigrations = "drizzle"\nmigrations_watch = true\n')
    folder = tmp_path / "drizzle"
    folder.mkdir()
    (folder / "0001_notes_tag.sql").write_text(NOTES_TAG)  # needs 0000's table: name order, not creation order
    (folder / "0000_todos.sql").write_text(DRIZZLE_MIGRATION + NOTES)
    (folder / "README.md").write_text("not a migration")
    settings = load_settings(config_file=tmp_path / "neon_local.toml", env={})
    assert settings.migrations == folder
    emulator = Emulator(settings)
    await emulator.start()
    try:
        migrator = emulator.migrator
        assert [name for name, _ in recorded(emulator)] == ["0000_todos.sql", "0001_notes_tag.sql"]
        assert migrator.error is None and emulator.state()["migration_error"] is None

        # The drizzle-kit migration's RLS policies hold for alice and bob over /sql.
        inserted = await sql(emulator, "insert into todos (task) values ('alice task') returning user_id", "alice")
        assert inserted.status_code == 200 and inserted.json()["rows"] == [{"user_id": "user_alice"}], inserted.text
        assert (await sql(emulator, "select task from todos", "alice")).json()["rows"] == [{"task": "alice task"}]
        assert (await sql(emulator, "select task from todos", "bob")).json()["rows"] == []

        # A new file dropped in while running is applied.
        write(folder, "0002_seed.sql", "INSERT INTO notes (body) VALUES ('first');\n")
        await until(lambda: len(recorded(emulator)) == 3, "0002_seed.sql to be applied")

        # A broken file: reported with file:line:column (Postgres gives no position here: the failing statement's
        # start, found by replaying it), rolled back, the next one waits; /sql keeps serving.
        with caplog.at_level(logging.ERROR, logger="neon_local.migrations"):
            write(folder, "0003_index.sql", BROKEN)
            await until(lambda: migrator.error, "0003_index.sql to fail")
            write(folder, "0004_done.sql", AFTER_BROKEN)
            runs = migrator.runs
            await until(lambda: migrator.runs > runs, "a pass after 0004_done.sql appeared")
        assert migrator.error == (f'{folder / "0003_index.sql"}:4:1: column "oops" does not exist '
                                  "(database neondb; the file was rolled back)")
        assert any("0003_index.sql:4:1:" in r.getMessage() for r in caplog.records)
        assert json.loads((emulator.data_dir / "state.json").read_text())["migration_error"] == migrator.error
        assert [name for name, _ in recorded(emulator)][-1] == "0002_seed.sql"
        with psycopg.connect(emulator.cluster.conninfo(dbname="neondb")) as conn:
            assert conn.execute("select to_regclass('notes_body')").fetchone() == (None,)  # the file's first statement too
        assert (await sql(emulator, "select count(*)::int as n from todos", "alice")).json()["rows"] == [{"n": 1}]

        # Fixed: it applies, and the file after it.
        write(folder, "0003_index.sql", BROKEN.replace("(oops)", "(tag)"))
        await until(lambda: migrator.error is None and len(recorded(emulator)) == 5, "the fixed 0003 and then 0004")
        assert [name for name, _ in recorded(emulator)][3:] == ["0003_index.sql", "0004_done.sql"]
        assert json.loads((emulator.data_dir / "state.json").read_text())["migration_error"] is None

        # An applied file that changes is warned about, not run again.
        with caplog.at_level(logging.WARNING, logger="neon_local.migrations"):
            write(folder, "0002_seed.sql", "INSERT INTO notes (body) VALUES ('second');\n")
            await until(lambda: any("0002_seed.sql changed after it was applied" in r.getMessage() for r in caplog.records),
                        "the warning about 0002_seed.sql")
        with psycopg.connect(emulator.cluster.conninfo(dbname="neondb")) as conn:
            assert conn.execute("select array_agg(body) from notes").fetchone() == (["first"],)
        before = recorded(emulator)
    finally:
        await emulator.stop()

    # A restart applies nothing again.
    emulator = Emulator(load_settings(config_file=tmp_path / "neon_local.toml", env={}))
    await emulator.start()
    try:
        assert recorded(emulator) == before and emulator.migrator.error is None
    finally:
        await emulator.stop()


async def test_with_tenancy_the_template_and_every_tenant_database_take_the_files(tmp_path):
    (tmp_path / "neon_local.toml").write_text('http_port = 0\npg_port = 0\n\n[tenancy]\nclaim = "org_id"\n')
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0000_notes.sql").write_text(NOTES)
    settings = load_settings(config_file=tmp_path / "neon_local.toml", env={}).with_overrides(
        migrations=folder, migrations_watch=True)
    async with Emulator(settings) as emulator:
        answer = await sql(emulator, "insert into notes (body) values ('acme') returning current_database() as db", "alice")
        assert answer.status_code == 200 and answer.json()["rows"] == [{"db": "tenant_org_acme"}], answer.text
        write(folder, "0001_tag.sql", NOTES_TAG)
        await until(lambda: len(recorded(emulator, "tenant_org_acme")) == 2, "0001_tag.sql in the tenant's database")
        # The spare tenant database copied before 0001 was replaced: a new tenant gets the
        # migrated template (checked first: a session on the template, such as recorded()'s, makes the spare stale).
        assert await emulator.services.control_plane.spare_ready()
        with psycopg.connect(emulator.cluster.conninfo(dbname="postgres")) as conn:
            (spare,) = conn.execute("select oid from pg_database where datname = %s", [SPARE_TENANT_DATABASE]).fetchone()
        answer = await sql(emulator, "select tag, current_database() as db from notes", "bob")
        assert answer.json()["rows"] == [] and [c["name"] for c in answer.json()["fields"]] == ["tag", "db"], answer.text
        assert [name for name, _ in recorded(emulator, "tenant_org_globex")] == ["0000_notes.sql", "0001_tag.sql"]
        with psycopg.connect(emulator.cluster.conninfo(dbname="postgres")) as conn:
            assert conn.execute("select oid from pg_database where datname = 'tenant_org_globex'").fetchone() == (spare,)
        assert [name for name, _ in recorded(emulator)] == ["0000_notes.sql", "0001_tag.sql"]
        answer = await sql(emulator, "select body, tag from notes", "alice")
        assert answer.json()["rows"] == [{"body": "acme", "tag": "none"}]


def test_up_detached_with_a_watched_folder(tmp_path):
    folder = tmp_path / "drizzle"
    folder.mkdir()
    (folder / "0000_todos.sql").write_text(DRIZZLE_MIGRATION)
    up = neon_local("up", "-d", "--http-port", "0", "--pg-port", "0", "--migrations", "drizzle", "--watch", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(neon_local("status", "--json", cwd=tmp_path).stdout)
        assert state["migration_error"] is None
        write(folder, "0001_bad.sql", "ALTER TABLE todos\n  ADD COLUMN done booleen;\n")
        deadline = time.monotonic() + DEADLINE
        while "Migration error" not in (shown := neon_local("status", cwd=tmp_path)).stdout:
            assert time.monotonic() < deadline, shown.stdout
        assert f'{folder / "0001_bad.sql"}:2:19: type "booleen" does not exist' in shown.stdout
        alice = neon_local("token", "alice", cwd=tmp_path).stdout.strip()
        answer = httpx.post(state["urls"]["sql"], json={"query": "select count(*)::int as n from todos"},
                            headers={"Neon-Connection-String": state["urls"]["authenticated"],
                                     "Authorization": f"Bearer {alice}"})
        assert answer.status_code == 200 and answer.json()["rows"] == [{"n": 0}], answer.text

        write(folder, "0001_bad.sql", "ALTER TABLE todos\n  ADD COLUMN done boolean;\n")
        while json.loads(neon_local("status", "--json", cwd=tmp_path).stdout)["migration_error"] is not None:
            assert time.monotonic() < deadline + DEADLINE, "the fixed file was not applied"
        with psycopg.connect(state["urls"]["owner"]) as conn:
            assert [name for (name,) in conn.execute("select name from neon_local.migrations order by name")] == [
                "0000_todos.sql", "0001_bad.sql"]
        assert "migration failed: " in (tmp_path / ".neon-local" / "neon-local.log").read_text()
    finally:
        neon_local("down", cwd=tmp_path)
