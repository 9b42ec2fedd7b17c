"""Session isolation on a shared pooled backend: many users interleaved, none sees another's leftovers.

The handlers here run with one connection per (database, role), so every `authenticated` request
shares a backend. Each user leaves every kind of session state behind (claims, SET, temp table,
prepared statement, held cursor, advisory lock, LISTEN, search_path, an open BEGIN), then checks
that what it finds is only its own.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from http_support import serve_sql_http

pytestmark = pytest.mark.asyncio

DIRT = [
    "set search_path = evil, public",
    "select set_config('app.owner', auth.user_id(), false)",
    "select set_config('request.jwt.claims', json_build_object('sub', auth.user_id())::text, false)",
    "set statement_timeout = 123456",
    "create temp table scratch (x int) on commit preserve rows",
    "prepare leftover as select 1",
    "declare held cursor with hold for select 1",
    "listen leftover_channel",
    "select pg_advisory_lock(42)",
]

CHECK = """
select auth.user_id() as uid, auth.session()->>'sub' as session_sub, current_user as cu,
       current_setting('app.owner', true) as owner, current_setting('search_path') as search_path,
       current_setting('statement_timeout') as timeout,
       (select count(*) from pg_prepared_statements)::int as prepared,
       (select count(*) from pg_cursors where name <> '')::int as cursors,
       (select count(*) from pg_listening_channels())::int as listening,
       (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())::int as locks,
       to_regclass('pg_temp.scratch') is null as no_temp,
       current_setting('transaction_isolation') || ' ' || current_setting('transaction_read_only') as transaction,
       pg_backend_pid() as pid
"""

CLEAN = {"cu": None, "owner": None, "search_path": '"$user", public', "timeout": "0", "prepared": 0, "cursors": 0,
         "listening": 0, "locks": 0, "no_temp": True, "transaction": "read committed off"}


@pytest.fixture(scope="module")
async def shared(settings, cluster, tmp_path_factory):
    async with serve_sql_http(settings, cluster, tmp_path_factory.mktemp("sql-http-shared"),
                              max_connections_per_pool=1) as started:
        yield started


async def dirty(shared, role: str, sub: str) -> None:
    conn, token = shared.jwt_conn_string(role), shared.token(sub)
    response = await shared.post({"queries": [{"query": q} for q in DIRT]}, conn=conn, token=token)
    assert response.status_code == 200, response.text
    # Left open: if the next request ran inside it, it would see serializable, read only.
    begin = await shared.post({"query": "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"}, conn=conn, token=token)
    assert begin.status_code == 200


async def check(shared, role: str, sub: str) -> dict:
    response = await shared.post({"query": CHECK}, conn=shared.jwt_conn_string(role), token=shared.token(sub))
    assert response.status_code == 200, response.text
    row = response.json()["rows"][0]
    assert (row["uid"], row["session_sub"]) == (sub, sub)
    assert {k: row[k] for k in CLEAN if k != "cu"} == {k: v for k, v in CLEAN.items() if k != "cu"} | {"owner": row["owner"]}
    assert row["owner"] in (None, ""), f"{sub} sees app.owner={row['owner']!r}"
    assert row["cu"] == role
    return row


async def user_session(shared, role: str, sub: str, rounds: int) -> set[int]:
    pids = set()
    for _ in range(rounds):
        pids.add((await check(shared, role, sub))["pid"])
        await dirty(shared, role, sub)
        await asyncio.sleep(random.random() / 100)
    pids.add((await check(shared, role, sub))["pid"])
    return pids


async def test_interleaved_users_share_one_backend_and_see_nothing_of_each_other(shared):
    users = [("authenticated", f"user_{i}") for i in range(12)] + [("anonymous", f"visitor_{i}") for i in range(4)]
    pids = await asyncio.gather(*(user_session(shared, role, sub, 3) for role, sub in users))
    authenticated_pids = set().union(*pids[:12])
    assert len(authenticated_pids) == 1, "requests were not interleaved over one pooled backend"


async def test_sequential_a_then_b_then_anonymous(shared):
    await dirty(shared, "authenticated", "user_a")
    b = await check(shared, "authenticated", "user_b")
    await dirty(shared, "authenticated", "user_b")
    anon = await check(shared, "anonymous", "visitor")
    assert b["pid"] != anon["pid"]


async def test_advisory_lock_is_released_for_other_sessions(shared):
    await dirty(shared, "authenticated", "user_a")
    result = await shared.query("select pg_try_advisory_lock(42) as got", conn=shared.jwt_conn_string("anonymous"),
                                token=shared.token("visitor"))
    assert result["rows"] == [{"got": True}]


async def test_cancelled_and_failed_requests_never_return_their_backend(shared):
    conn, token = shared.jwt_conn_string(), shared.token("user_a")
    before = (await check(shared, "authenticated", "user_a"))["pid"]
    failed = await shared.post({"query": "select set_config('app.owner', 'user_a', false), 1/0"}, conn=conn, token=token)
    assert failed.status_code == 400
    after = (await check(shared, "authenticated", "user_b"))["pid"]
    assert after != before
