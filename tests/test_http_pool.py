"""The /sql connection pool: reuse, Neon's reset, per-request password checks, drops after errors, cancellation."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from psycopg import sql

from http_support import sql_http  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

PID = "select pg_backend_pid() as pid"


async def pid(sql_http, **kwargs) -> int:
    return (await sql_http.query(PID, **kwargs))["rows"][0]["pid"]


async def test_pool_reuses_the_backend(sql_http):
    assert await pid(sql_http) == await pid(sql_http)


async def test_password_checked_per_request_and_after_alter_user(sql_http):
    """test_sql_over_http_pool: a wrong password fails though a pooled connection exists; a new one works at once."""
    role = "http_pool_user"
    async with await sql_http.admin() as admin:
        await admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
        await admin.execute(sql.SQL("create role {} login password 'first'").format(sql.Identifier(role)))
    first = await pid(sql_http, conn=sql_http.conn_string(role, "first"))
    assert await pid(sql_http, conn=sql_http.conn_string(role, "first")) == first
    wrong = await sql_http.post({"query": PID}, conn=sql_http.conn_string(role, "second"))
    assert (wrong.status_code, wrong.json()["message"]) == (400, f"password authentication failed for user '{role}'")
    await sql_http.query(f"alter user {role} password 'second'", conn=sql_http.conn_string(role, "first"))
    assert await pid(sql_http, conn=sql_http.conn_string(role, "second")) == first
    stale = await sql_http.post({"query": PID}, conn=sql_http.conn_string(role, "first"))
    assert stale.status_code == 400
    unknown = await sql_http.post({"query": PID}, conn=sql_http.conn_string("http_nobody", "x"))
    assert unknown.json()["message"] == "password authentication failed for user 'http_nobody'"


async def test_settings_are_reset_between_requests(sql_http):
    """test_sql_over_http_pool_settings."""
    batch = {"queries": [{"query": "SET IntervalStyle = 'iso_8601'"}, {"query": "select '0 seconds'::interval as x"}]}
    assert (await sql_http.post(batch)).json()["results"][1]["rows"] == [{"x": "PT0S"}]
    assert (await sql_http.query("select '0 seconds'::interval as x"))["rows"] == [{"x": "00:00:00"}]


async def test_open_transaction_is_rolled_back_not_reused(sql_http):
    """test_sql_over_http_pool_tx_reuse: same pid after a standalone BEGIN, a new transaction each time."""
    await sql_http.query("BEGIN")
    query = "SELECT pg_backend_pid() as pid, pg_current_xact_id()::text as txid"
    first, second = (await sql_http.query(query))["rows"][0], (await sql_http.query(query))["rows"][0]
    assert first["pid"] == second["pid"] and first["txid"] != second["txid"]


async def test_error_drops_the_connection(sql_http):
    before = await pid(sql_http)
    assert (await sql_http.post({"query": "select 1/0"})).status_code == 400
    after = await pid(sql_http)
    assert after != before
    assert await pid(sql_http) == after


async def test_concurrent_requests_after_a_slow_one(sql_http):
    """test_http_pool_begin_1: one pg_sleep, then ten concurrent ones, all fine."""
    assert (await sql_http.post({"query": "SELECT pg_sleep(0.2)"})).status_code == 200
    responses = await asyncio.gather(*(sql_http.post({"query": "SELECT pg_sleep(0.2)"}) for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10


async def _sleeping(sql_http) -> int:
    async with await sql_http.admin() as admin:
        cur = await admin.execute("select count(*) from pg_stat_activity where query like 'WITH temp AS (SELECT pg_sleep%'"
                                  " and state = 'active'")
        return (await cur.fetchone())[0]


async def test_client_disconnect_cancels_the_query(sql_http):
    """test_sql_over_http_connection_cancel: a client that gives up gets its INSERT cancelled, not committed."""
    await sql_http.query("drop table if exists test_table")
    await sql_http.query("create table test_table (id int primary key)")
    query = "WITH temp AS (SELECT pg_sleep($1) as sleep, $2::int as id) INSERT INTO test_table (id) SELECT id FROM temp"
    with pytest.raises(httpx.ReadTimeout):
        await sql_http.post({"query": query, "params": [5, 1]}, timeout=0.5)
    for _ in range(40):  # without the cancel it would sleep 4.5 s more
        if not await _sleeping(sql_http):
            break
        await asyncio.sleep(0.05)
    assert await _sleeping(sql_http) == 0
    assert (await sql_http.query("select count(*)::int as n from test_table"))["rows"] == [{"n": 0}]
    inserted = await sql_http.query(query, [0.1, 1])
    assert (inserted["command"], inserted["rowCount"]) == ("INSERT", 1)
    duplicate = await sql_http.post({"query": query, "params": [0, 1]})
    assert duplicate.status_code == 400
    assert duplicate.json()["message"].startswith("duplicate key value violates unique constraint")
    await sql_http.query("drop table test_table")


async def test_pool_survives_postgres_closing_idle_connections(sql_http):
    before = await pid(sql_http)
    async with await sql_http.admin() as admin:
        await admin.execute("select pg_terminate_backend(%s)", (before,))
    await asyncio.sleep(0.1)
    assert await pid(sql_http) != before
