"""The pg_session_jwt stub inside Postgres: what auth.* costs per call, per RLS-checked row, per token, and the pool's reset.

Everything runs in one fresh Postgres, each figure beside a floor measured in the same run. The stub is the build the
server gets (the C one when its module was built, see neon_local/postgres/extension_path.py; the first row says which):
- per call: auth.user_id()/uid()/session() evaluated once per row of generate_series in a session
  logged in as the proxy logs in, against current_setting() of a plain setting (the cheapest read a
  compiled extension could do); the empty loop's time is subtracted from both;
- Drizzle's crudPolicy form `(select auth.user_id() = user_id)` on 10k rows under RLS, against the
  sub-select form `(select auth.user_id()) = user_id`, which Postgres evaluates once per query;
- auth.jwt_session_init after RESET ALL (what every pooled request does) against set_config() of a
  setting to the same token, each request its own transaction as through the proxy (a pipeline
  without a Sync between requests would run them all in one, whose row versions then pile up);
- the reset between pooled requests: Neon's batch as one simple-protocol message against the same
  statements sent one extended-protocol round each (how neon-local sent them before), each after a
  `select 1`, against the `select 1` alone.
Times are the Postgres backend's CPU time (Linux's /proc/<pid>/schedstat; wall time elsewhere), so a busy
neighbour on the shared cores does not count as our cost; medians of ROUNDS rounds with the range, each
round less the same round's floor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import ROUNDS, emulator, ratio, run_async, show, spread

CALLS = 200_000  # per-call loops
ROWS = 10_000  # the crudPolicy table
TOKENS = 2_000  # jwt_session_init calls per round
RESETS = 2_000  # reset rounds per round

CLAIMS = {"sub": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "email": "user_7@example.com", "role": "authenticated",
          "iat": 1700000000, "exp": 4102444800, "o": {"id": "11111111-1111-1111-1111-111111111111", "slug": "acme"}}

SETUP_SQL = f"""
drop table if exists crud_form, subselect_form, compiled_form;
create table crud_form (id int primary key, user_id text not null);
create table subselect_form (id int primary key, user_id text not null);
insert into crud_form select g, 'user_' || (g % 100) from generate_series(1, {ROWS}) g;
insert into subselect_form select * from crud_form;
create table compiled_form as select * from crud_form;
alter table crud_form enable row level security;
alter table subselect_form enable row level security;
create policy "crud-authenticated-policy-select" on crud_form for select to authenticated
  using ((select auth.user_id() = crud_form.user_id));
create policy "subselect" on subselect_form for select to authenticated
  using ((select auth.user_id()) = subselect_form.user_id);
grant select on crud_form, subselect_form, compiled_form to authenticated;
analyze crud_form, subselect_form, compiled_form;
"""


def _rounds(measure) -> list[float]:
    return [measure() for _ in range(ROUNDS)]


def _minus(samples: list[float], floor: list[float], per: int = 1) -> list[float]:
    """Each round's figure less the same round's floor, per call."""
    return [(sample - base) / per for sample, base in zip(samples, floor)]


def _clock(pid: int) -> float:
    """Seconds of CPU the backend has used, or the wall clock where that cannot be read."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError):
        return time.perf_counter()


def _timed(conn, query: str, params=None) -> float:
    pid = conn.info.backend_pid
    started = _clock(pid)
    conn.execute(query, params).fetchall()
    return _clock(pid) - started


def _per_call(session) -> list[dict]:
    """µs per call: each expression evaluated once per row (it is compared with a row value, so the
    planner cannot hoist it), minus the empty loop."""
    session.execute("set neon_local.bench = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'")
    loop = f"select count(*) from generate_series(1, {CALLS}) g where ({{}}) = g::text"
    empty = _rounds(lambda: _timed(session, loop.format("'x'")))
    floor = _minus(_rounds(lambda: _timed(session, loop.format("current_setting('neon_local.bench')"))), empty, CALLS)
    build = session.execute("select l.lanname from pg_proc p join pg_language l on l.oid = p.prolang "
                            "where p.oid = 'auth.user_id()'::regprocedure").fetchone()[0]
    rows = [{"what": "current_setting() of a plain setting (floor)", "per call (µs)": spread(floor, 2, 1e6), "vs floor": "1.00x",
             "notes": f"{CALLS} calls a round; the stub's {build.upper()} build"}]
    for expression, target in (("auth.user_id()", "<= 2 µs"), ("auth.uid()::text", "<= 2 µs"), ("auth.session()::text", "<= 2 µs")):
        cost = _minus(_rounds(lambda: _timed(session, loop.format(expression))), empty, CALLS)  # noqa: B023 (called at once)
        rows.append({"what": expression, "per call (µs)": spread(cost, 2, 1e6), "vs floor": ratio(cost, floor),
                     "notes": f"target {target}"})
    return rows


def _crud_policy(session) -> list[dict]:
    subselect = _rounds(lambda: _timed(session, "select count(*) from subselect_form"))
    crud = _rounds(lambda: _timed(session, "select count(*) from crud_form"))
    # What the crudPolicy form costs with a reader as cheap as a compiled extension's: the sub-plan alone.
    compiled = _rounds(lambda: _timed(session, "select count(*) from compiled_form where (select current_setting('neon_local.bench') = user_id)"))
    return [
        {"what": f"RLS `(select auth.user_id()) = user_id`, {ROWS} rows (floor)", "per call (µs)": f"{spread(subselect, 2, 1e3)} ms",
         "vs floor": "1.00x", "notes": "the policy's sub-select runs once per query"},
        {"what": f"RLS `(select auth.user_id() = user_id)` (Drizzle crudPolicy), {ROWS} rows", "per call (µs)": f"{spread(crud, 2, 1e3)} ms",
         "vs floor": ratio(crud, subselect), "notes": "a sub-plan per row; target within 3x"},
        {"what": "the same form with current_setting() for auth.user_id() (no RLS)", "per call (µs)": f"{spread(compiled, 2, 1e3)} ms",
         "vs floor": ratio(compiled, subselect), "notes": "the sub-plan's own cost, whatever the reader"},
    ]


def _session_init(session, signer) -> list[dict]:
    payload = json.dumps(CLAIMS).encode()

    def pipelined(query: str) -> float:
        tokens = [signer.token_for(payload) for _ in range(TOKENS)]
        started = _clock(session.info.backend_pid)
        with session.pipeline() as pipeline:
            for token in tokens:
                session.execute("reset all")
                session.execute(query, [token])
                pipeline.sync()  # a transaction per request, as the proxy's: without Sync all would share one
        return (_clock(session.info.backend_pid) - started) / TOKENS

    floor = _rounds(lambda: pipelined("select set_config('neon_local.bench', %s, false)"))
    init = _minus(_rounds(lambda: pipelined("select auth.jwt_session_init(%s)")), floor)
    return [{"what": "auth.jwt_session_init after RESET ALL (beyond set_config of the token)", "per call (µs)": spread(init, 1, 1e6),
             "vs floor": "", "notes": f"{TOKENS} tokens a round, a transaction each; target <= 30 µs"}]


async def _reset(cluster, dbname: str) -> list[dict]:
    from neon_local.serverless.pg_conn import RESET_STATEMENTS, PgConnection, Statement, connect

    backend: PgConnection = await connect(cluster.conninfo(user="authenticated", dbname=dbname))
    select = [Statement("select 1")]

    async def rounds(reset) -> float:
        started = _clock(backend.pid)
        for _ in range(RESETS):
            await backend.run(select)
            await reset()
        return (_clock(backend.pid) - started) / RESETS

    async def nothing() -> None:
        pass

    async def one_message() -> None:
        backend.queue_reset()
        await backend.finish_reset()

    async def extended() -> None:
        await backend.run([Statement(statement.decode()) for statement in RESET_STATEMENTS])

    try:
        floor = [await rounds(nothing) for _ in range(ROUNDS)]
        single = _minus([await rounds(one_message) for _ in range(ROUNDS)], floor)
        per_statement = _minus([await rounds(extended) for _ in range(ROUNDS)], floor)
    finally:
        await backend.close()
    return [
        {"what": f"reset, {len(RESET_STATEMENTS)} statements as one simple-protocol message", "per call (µs)": spread(single, 0, 1e6),
         "vs floor": ratio(single, per_statement), "notes": "vs the same statements sent as extended-protocol rounds (below)"},
        {"what": f"reset, {len(RESET_STATEMENTS)} extended-protocol statements in one pipeline", "per call (µs)": spread(per_statement, 0, 1e6),
         "vs floor": "1.00x", "notes": "how neon-local sent it before (plus a ROLLBACK)"},
    ]


async def _bench(directory: Path) -> list[dict]:
    import psycopg

    from neon_local.postgres import session_jwt

    async with emulator(directory, SETUP_SQL + "alter extension pg_session_jwt update to '0.5.0';") as emu:
        cluster, dbname = emu.cluster, emu.settings.database
        options = session_jwt.startup_options()
        with psycopg.connect(cluster.conninfo(user="authenticated", dbname=dbname, options=options), autocommit=True) as session:
            pid, backend_start = session.execute(session_jwt.BIND_QUERY).fetchone()
            signer = session_jwt.SessionSigner(cluster.session_secret, pid, backend_start)
            rows = _session_init(session, signer)
            session.execute("select auth.jwt_session_init(%s)", [signer.token_for(json.dumps(CLAIMS).encode())])
            rows = _per_call(session) + _crud_policy(session) + rows
        return rows + await _reset(cluster, dbname)


def run() -> list[dict]:
    return run_async("bench-stub-", _bench)


if __name__ == "__main__":
    show(run())
