"""/sql sends the session init and the user's SQL in one pipeline: what that must not change.

An init that fails means the user's statement never ran; the repair of an unprepared database runs it
once; statements Postgres refuses after another query in the same transaction still work as on Neon.
"""

from __future__ import annotations

import pytest

from http_support import sql_http  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

MARKS = "create table marks (n int); grant select, insert on marks to authenticated;"


async def fresh_database(sql_http, name: str) -> str:
    """A database with the `marks` table, already used once by a JWT user (so it is prepared)."""
    async with await sql_http.admin() as admin:
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.execute(f"create database {name} owner {sql_http.settings.owner}")
    async with await sql_http.admin(name) as admin:
        await admin.execute(MARKS)
    conn = sql_http.conn_string("authenticated", dbname=name)
    assert (await sql_http.query("select auth.user_id() as uid", conn=conn, token=sql_http.token()))["rows"] == [
        {"uid": "user_alice"}]
    return conn


async def marks(sql_http, dbname: str) -> int:
    async with await sql_http.admin(dbname) as admin:
        return (await (await admin.execute("select count(*) from marks")).fetchone())[0]


async def test_a_failing_session_init_skips_the_users_statement(sql_http):
    conn = await fresh_database(sql_http, "init_fails")
    async with await sql_http.admin("init_fails") as admin:  # the stub refuses every token from now on
        await admin.execute("""
            create or replace function auth.jwt_session_init(jwt text) returns void language plpgsql as $$
            begin raise exception 'session state is read-only for this test'; end $$;
        """)
    for body in ({"query": "insert into marks values (1)"},
                 {"queries": [{"query": "insert into marks values (2)"}, {"query": "select 1"}]}):
        response = await sql_http.post(body, conn=conn, token=sql_http.token())
        assert response.status_code == 500
        assert response.json()["message"].startswith("db error: ERROR: session state is read-only for this test")
    assert await marks(sql_http, "init_fails") == 0


async def test_an_unprepared_database_is_repaired_and_the_statement_runs_once(sql_http):
    conn = await fresh_database(sql_http, "init_repair")
    async with await sql_http.admin("init_repair") as admin:
        await admin.execute("revoke usage on schema auth from authenticated")
    response = await sql_http.post({"query": "insert into marks values (1) returning auth.user_id() as uid"},
                                   conn=conn, token=sql_http.token("user_bob"))
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"uid": "user_bob"}]
    assert await marks(sql_http, "init_repair") == 1


@pytest.mark.parametrize(("query", "command"), [
    ("vacuum marks", "VACUUM"),
    ("set transaction isolation level serializable", "SET"),
    ("set transaction deferrable", "SET"),
])
async def test_statements_that_must_come_first_run_as_on_neon(sql_http, query, command):
    conn = await fresh_database(sql_http, "first_in_xact")
    result = await sql_http.query(query, conn=conn, token=sql_http.token())
    assert result["command"] == command
    assert (await sql_http.query("select auth.user_id() as uid", conn=conn, token=sql_http.token("user_bob")))[
        "rows"] == [{"uid": "user_bob"}]


async def test_a_batch_may_set_its_isolation_level_first(sql_http):
    conn = await fresh_database(sql_http, "batch_level")
    body = {"queries": [{"query": "set transaction isolation level repeatable read"},
                        {"query": "show transaction_isolation"}, {"query": "select auth.user_id() as uid"}]}
    response = await sql_http.post(body, conn=conn, token=sql_http.token("user_bob"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[1]["rows"] == [{"transaction_isolation": "repeatable read"}]
    assert results[2]["rows"] == [{"uid": "user_bob"}]


@pytest.mark.parametrize("level", ["RepeatableRead", "ReadUncommitted", "ReadCommitted"])
async def test_batch_isolation_levels_hold_with_the_session_claims(sql_http, level):
    body = {"queries": [{"query": "show transaction_isolation"}, {"query": "select auth.user_id() as uid"}]}
    response = await sql_http.post(body, conn=sql_http.jwt_conn_string(), token=sql_http.token("user_bob"),
                                   headers={"Neon-Batch-Isolation-Level": level})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["rows"] == [{"transaction_isolation": {"RepeatableRead": "repeatable read",
                                                             "ReadUncommitted": "read uncommitted",
                                                             "ReadCommitted": "read committed"}[level]}]
    assert results[1]["rows"] == [{"uid": "user_bob"}]
