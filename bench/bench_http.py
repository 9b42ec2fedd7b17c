"""SQL over HTTP: /sql with a JWT beside pgbench (the select alone, and the proxy's own SQL); the token cache; large results.

neon-local runs in this process on uvloop (`bench.common.emulator`); the HTTP load comes from a separate
process speaking raw HTTP/1.1 keep-alive, as Neon's driver does (`Neon-Raw-Text-Output`, array mode).
- Throughput, 16 clients: POST /sql with a JWT on a one-row RLS select (Drizzle's crudPolicy form),
  beside pgbench on the same Postgres over its Unix socket running (a) the select alone as the owner,
  no RLS: the plain-select floor; (b) per transaction what the proxy sends per request (Neon's reset,
  the session claims, the select) as `authenticated`.
- Token cache: the same /sql load with 20,000 users' tokens round-robin (each verified once before
  the rounds, as a working set that has been seen), beside one token.
- Large results: one client, the owner's /sql request for 10k and 100k rows of a 100k-row table,
  beside pgbench fetching the same rows (latency average, one client).
Each figure is the median of ROUNDS rounds (range beside it); a round runs every side once. The
throughput ratios are the /sql figures issue 9 asks to hold across the control-plane change.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

from bench.common import ROUNDS, direct_args, emulator, http_load, load_errors, pgbench, post_sql, ratio, run_async, show, spread

CLIENTS = 16
SECONDS = 5
WARMUP_SECONDS = 2
ROWS = 10  # users in the table, one row each: RLS leaves exactly one
WORKING_SET = 20_000  # distinct users for the token cache
BIG_ROWS = 100_000
FETCHES = {10_000: 20, 100_000: 5}  # rows per request: requests per round

SETUP_SQL = f"""
drop table if exists bench_notes;
create table bench_notes (id serial primary key, user_id text not null default (auth.user_id()), body text not null);
create index on bench_notes (user_id);
insert into bench_notes (user_id, body) select 'user_' || g, 'note ' || g from generate_series(1, {ROWS}) g;
alter table bench_notes enable row level security;
create policy "crud-authenticated-policy-select" on bench_notes as permissive for select to authenticated
  using ((select auth.user_id() = bench_notes.user_id));
grant select on bench_notes to authenticated;
analyze bench_notes;
"""
BIG_SQL = f"""
create table bench_big (id int primary key, body text not null, created timestamptz not null default now());
insert into bench_big (id, body) select g, md5(g::text) from generate_series(1, {BIG_ROWS}) g;
analyze bench_big;
"""
QUERY = "select id, body from bench_notes"
PLAIN_QUERY = "select id, body from bench_notes where user_id = 'user_7'"
DRIVER_HEADERS = {"Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "true"}

# For pgbench only: mints, inside Postgres, the token the proxy would send on this backend (the stub's
# scheme: HMAC-SHA256 under K_conn = HMAC(secret, "<pid>:<backend_start>"); the jti from the clock, which
# only has to grow). Reads the instance secret, so it is created by the superuser; it uses pgcrypto's
# hmac(), so it works on the compiled stub and the SQL one alike. Signing in SQL makes the floor a little
# slower, not faster.
SIGNER_SQL = """
create extension if not exists pgcrypto;
create schema if not exists bench;
create or replace function bench.b64url(data bytea) returns text
language sql immutable as $$ select rtrim(translate(encode(data, 'base64'), E'+/\\n', '-_'), '=') $$;
create or replace function bench.session_token(payload jsonb) returns text
language plpgsql volatile security definer set search_path = pg_catalog, public, bench, pg_temp as $$
declare
    me text := (select pg_backend_pid() || ':' || extract(epoch from a.backend_start)::text
                from pg_stat_get_activity(pg_backend_pid()) as a);
    conn_key bytea := hmac(convert_to(me, 'UTF8'),
                           decode(btrim(pg_read_file('neon_local_session.key'), E' \\n'), 'hex'), 'sha256');
    jti bigint := (extract(epoch from clock_timestamp()) * 1000000)::bigint;
    signing_input text := 'eyJhbGciOiJIUzI1NiJ9.' || b64url(convert_to((payload || jsonb_build_object('jti', jti))::text, 'UTF8'));
begin
    return signing_input || '.' || b64url(hmac(convert_to(signing_input, 'UTF8'), conn_key, 'sha256'));
end
$$;
grant usage on schema bench to authenticated;
grant execute on function bench.session_token(jsonb) to authenticated;
"""


def _cpu_seconds() -> float:
    """CPU this process (the emulator: its event loop and any threads) has used; the load runs elsewhere."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def jwt_connection_string(emu) -> str:
    return f"postgresql://authenticated@localhost/{emu.settings.database}"


async def _pgbench_script(emu, directory: Path, name: str, script: str, user: str, clients: int, **how) -> dict:
    from neon_local.postgres import session_jwt

    (directory / name).write_text(script)
    env = {"PGOPTIONS": session_jwt.startup_options()} if user == "authenticated" else None
    return await pgbench([*direct_args(emu, user), "-M", "simple", "-c", str(clients), "-j", str(min(clients, 2)),
                          *how.get("length", ["-T", str(SECONDS)]), "-f", str(directory / name), emu.settings.database],
                         env, log_dir=directory if how.get("log", True) else None)


async def _throughput(emu, directory: Path) -> list[dict]:
    from neon_local.serverless.pg_conn import RESET_STATEMENTS

    port = emu.endpoints.http_port
    token = emu.services.issuer.mint(sub="user_7", lifetime=3600)
    request = post_sql(port, QUERY, [], jwt_connection_string(emu), token, DRIVER_HEADERS)
    reset = " \\; ".join(statement.decode() for statement in RESET_STATEMENTS)  # one message, as Neon sends it
    proxy_sql = f"{reset};\nselect auth.jwt_session_init(bench.session_token('{json.dumps({'sub': 'user_7'})}'));\n{QUERY};\n"
    await http_load(port, [request], CLIENTS, WARMUP_SECONDS)
    https, plains, proxies = [], [], []
    cpu_per_request = []
    for _ in range(ROUNDS):
        cpu = _cpu_seconds()
        https.append(await http_load(port, [request], CLIENTS, SECONDS))
        cpu_per_request.append((_cpu_seconds() - cpu) / https[-1]["requests"])
        plains.append(await _pgbench_script(emu, directory, "plain.sql", PLAIN_QUERY + ";\n", emu.settings.owner, CLIENTS))
        proxies.append(await _pgbench_script(emu, directory, "proxy.sql", proxy_sql, "authenticated", CLIENTS))
    rps = [run["per_second"] for run in https]
    plain_tps, proxy_tps = [run["tps"] for run in plains], [run["tps"] for run in proxies]
    return [
        {"what": "floor: pgbench, the select alone (owner, no RLS, Unix socket)", "per second": spread(plain_tps),
         "p50 (ms)": spread([r["p50_ms"] for r in plains], 2), "p99 (ms)": spread([r["p99_ms"] for r in plains], 2),
         "vs floor": "1.00x", "notes": f"{CLIENTS} clients"},
        {"what": "pgbench, the proxy's SQL (reset, session init, select as authenticated)", "per second": spread(proxy_tps),
         "p50 (ms)": spread([r["p50_ms"] for r in proxies], 2), "p99 (ms)": spread([r["p99_ms"] for r in proxies], 2),
         "vs floor": ratio(proxy_tps, plain_tps), "notes": "tokens signed in SQL by a bench helper"},
        {"what": "POST /sql with a JWT (neon-local), one RLS row", "per second": spread(rps),
         "p50 (ms)": spread([r["p50_ms"] for r in https], 2), "p99 (ms)": spread([r["p99_ms"] for r in https], 2),
         "vs floor": ratio(rps, plain_tps),
         "notes": f"{ratio(rps, proxy_tps)} of the proxy's SQL by pgbench (issue 12 target); {load_errors(https)}"},
        {"what": "neon-local's own CPU per /sql request (user + system, all threads)",
         "CPU per request (µs)": spread(cpu_per_request, 0, 1e6),
         "notes": "this process's CPU during the load above / requests; target <= 200 µs"},
    ]


async def _token_cache(emu) -> list[dict]:
    port, issuer, verifier = emu.endpoints.http_port, emu.services.issuer, emu.services.verifier
    conn = jwt_connection_string(emu)
    # Users with no row: both sides get an empty result, so only the tokens differ.
    one = [post_sql(port, QUERY, [], conn, issuer.mint(sub="user_none", lifetime=3600), DRIVER_HEADERS)]
    tokens = [issuer.mint(sub=f"user_set_{i}", lifetime=3600) for i in range(WORKING_SET)]
    rss = _rss_kib()
    for token in tokens:  # the working set has been seen once: what is measured is whether it stays cached
        await verifier.verify(token, "authenticated")
    cache_mib = (_rss_kib() - rss) / 1024
    many = [post_sql(port, QUERY, [], conn, token, DRIVER_HEADERS) for token in tokens]
    singles, sets = [], []
    for _ in range(ROUNDS):
        singles.append(await http_load(port, one, CLIENTS, SECONDS))
        sets.append(await http_load(port, many, CLIENTS, SECONDS))
    single_rps, set_rps = [r["per_second"] for r in singles], [r["per_second"] for r in sets]
    return [
        {"what": "POST /sql, one token", "per second": spread(single_rps), "vs one token": "1.00x",
         "notes": load_errors(singles)},
        {"what": f"POST /sql, {WORKING_SET:,} users' tokens round-robin", "per second": spread(set_rps),
         "vs one token": ratio(set_rps, single_rps),
         "notes": f"target >= 0.95x; verifying them grew the process by {cache_mib:.0f} MiB; {load_errors(sets)}"},
    ]


async def _large_results(emu, directory: Path) -> list[dict]:
    port, settings = emu.endpoints.http_port, emu.settings
    owner = f"postgresql://{settings.owner}:{settings.owner_password}@localhost/{settings.database}"
    rows = []
    for count, requests in FETCHES.items():
        query = f"select id, body, created from bench_big order by id limit {count}"
        request = post_sql(port, query, [], owner, headers={"Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "false"})
        await http_load(port, [request], 1, count=2)
        https, floors = [], []
        for _ in range(ROUNDS):
            https.append(await http_load(port, [request], 1, count=requests))
            floors.append(await _pgbench_script(emu, directory, "big.sql", query + ";\n", settings.owner, 1,
                                                length=["-t", str(requests)], log=False))
        http_ms, floor_ms = [r["p50_ms"] for r in https], [r["latency_ms"] for r in floors]
        rows.append({"what": f"floor: pgbench fetching {count:,} rows (id, text, timestamptz)", "ms per request": spread(floor_ms, 1),
                     "vs floor": "1.00x", "notes": f"one client, {requests} per round"})
        rows.append({"what": f"POST /sql, owner, {count:,} rows as JSON objects", "ms per request": spread(http_ms, 1),
                     "vs floor": ratio(http_ms, floor_ms), "notes": f"target <= 2x; {load_errors(https)}"})
    return rows


async def _bench(directory: Path) -> dict:
    async with emulator(directory, SETUP_SQL + BIG_SQL + SIGNER_SQL) as emu:
        return {
            f"/sql JWT one-row RLS select, {CLIENTS} clients": await _throughput(emu, directory),
            f"Verified-token cache: a working set of {WORKING_SET:,} users": await _token_cache(emu),
            "Large results": await _large_results(emu, directory),
        }


def run() -> dict:
    return run_async("bench-http-", _bench)


if __name__ == "__main__":
    show(run())
