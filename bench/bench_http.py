"""SQL over HTTP: /sql requests per second with a JWT on a one-row RLS select, beside pgbench running the same SQL.

16 concurrent clients for each side. The HTTP side is neon-local's handlers on uvloop with a fresh
Postgres; the load comes from a separate process speaking raw HTTP/1.1 keep-alive (so the client
costs little). The floor is pgbench on the same Postgres, as `authenticated`, running per
transaction what the proxy sends per request: Neon's reset, the session claims, the select.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

CLIENTS = 16
SECONDS = 10
ROUNDS = 2
WARMUP_SECONDS = 2
ROWS = 10  # users in the table, one row each: RLS leaves exactly one

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
QUERY = "select id, body from bench_notes"

# For pgbench only: mints, inside Postgres, the token the proxy would send on this backend (the stub's
# scheme: HMAC under the connection's key, jti one past the last accepted). Reads the stub's private
# state, so it is created by the superuser; signing in SQL makes the floor a little slower, not faster.
SIGNER_SQL = """
create schema if not exists bench;
create or replace function bench.session_token(payload jsonb) returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
    state _pg_session_jwt.backend := _pg_session_jwt.loaded_state();
    signing_input text := 'eyJhbGciOiJIUzI1NiJ9.' || _pg_session_jwt.b64url_encode(
        convert_to((payload || jsonb_build_object('jti', state.last_jti + 1))::text, 'UTF8'));
begin
    return signing_input || '.' || _pg_session_jwt.b64url_encode(
        _pg_session_jwt.hmac(state.ipad, state.opad, convert_to(signing_input, 'UTF8')));
end
$$;
grant usage on schema bench to authenticated;
grant execute on function bench.session_token(jsonb) to authenticated;
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the load generator (runs in its own process: `python -m bench.bench_http load ...`) ---------------


async def _client(host: str, port: int, request: bytes, until: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    while (start := time.perf_counter()) < until:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        body = await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(body.decode(errors="replace"))
        latencies.append(time.perf_counter() - start)
    writer.close()


async def _load(url: str, conn_string: str, token: str, seconds: float) -> dict:
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    body = json.dumps({"query": QUERY, "params": []}).encode()
    request = (f"POST /sql HTTP/1.1\r\nHost: {host}:{port}\r\nNeon-Connection-String: {conn_string}\r\n"
               f"Authorization: Bearer {token}\r\nNeon-Raw-Text-Output: true\r\nNeon-Array-Mode: true\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_client(host, int(port), request, until, latencies, errors) for _ in range(CLIENTS)))
    return {"requests": len(latencies), "seconds": seconds, "errors": len(errors), "first_error": errors[:1],
            "p50_ms": _percentile(latencies, 0.5) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3}


def _load_main(argv: list[str]) -> None:
    import uvloop

    url, conn_string, token, seconds = argv
    print(json.dumps(uvloop.run(_load(url, conn_string, token, float(seconds)))))


# --- the benchmark ------------------------------------------------------------------------------------


async def _run_load(url: str, conn_string: str, token: str, seconds: float) -> dict:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_http", "load", url, conn_string, token, str(seconds),
        cwd=Path(__file__).parent.parent, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await process.communicate()
    return json.loads(stdout)


async def _pgbench(binaries, cluster, dbname: str, claims: str, directory: Path) -> dict:
    """pgbench as `authenticated` with the session JWK, over the Unix socket: reset, session init, select."""
    from neon_local.postgres import session_jwt
    from neon_local.serverless.pg_conn import RESET_STATEMENTS

    script = directory / "per_request.sql"
    reset = " \\; ".join(statement.decode() for statement in RESET_STATEMENTS)  # one message, as Neon sends it
    script.write_text(f"{reset};\nselect auth.jwt_session_init(bench.session_token('{claims}'));\n{QUERY};\n")
    for old_log in directory.glob("pgbench_log*"):
        old_log.unlink()
    log_prefix = directory / "pgbench_log"
    process = await asyncio.create_subprocess_exec(
        str(binaries.tool("pgbench")), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "authenticated",
        "-n", "-M", "simple", "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS), "-f", str(script),
        "-l", "--log-prefix", str(log_prefix), dbname,
        cwd=directory, env={**os.environ, "PGOPTIONS": session_jwt.startup_options()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    if process.returncode != 0 or b"aborted" in stdout + stderr:
        raise RuntimeError(f"pgbench failed: {stdout.decode()} {stderr.decode()}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout.decode()).group(1))
    latencies = [int(line.split()[2]) / 1e3 for log in directory.glob("pgbench_log*") for line in log.read_text().splitlines()]
    return {"tps": tps, "p50_ms": _percentile(latencies, 0.5), "p99_ms": _percentile(latencies, 0.99)}


@asynccontextmanager
async def _cluster(directory: Path):
    """A fresh Postgres shaped like a Neon branch, with the bench table and the SQL signer."""
    import psycopg

    from neon_local.postgres.binaries import find_binaries
    from neon_local.postgres.bootstrap import bootstrap
    from neon_local.postgres.cluster import PostgresCluster
    from neon_local.postgres.template import neon_template
    from neon_local.settings import Settings

    settings = Settings(project_dir=directory, data_dir=directory / "data", http_port=0, pg_port=0)
    binaries = find_binaries()
    cluster = PostgresCluster(binaries, directory / "data" / "pgdata", directory / "postgres.log")
    cluster.prepare(await neon_template(binaries, settings))
    await cluster.start()
    try:
        await bootstrap(cluster, settings)
        async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=settings.database), autocommit=True) as conn:
            await conn.execute(SETUP_SQL + SIGNER_SQL)
        yield settings, binaries, cluster
    finally:
        await cluster.stop()


@asynccontextmanager
async def _sql_endpoint(settings, cluster, directory: Path):
    """neon-local's /sql handler on a free port; yields its URL and a token for user_7."""
    from aiohttp import web

    from neon_local.auth.issuer import Issuer
    from neon_local.auth.keys import KeyRing
    from neon_local.auth.providers import ProviderCache
    from neon_local.auth.verifier import Verifier
    from neon_local.control_plane import ControlPlane
    from neon_local.serverless.sql_over_http import SqlOverHttp

    keyring = KeyRing.load_or_create(directory / "keys")
    handler = SqlOverHttp(settings, ControlPlane(cluster), Verifier(settings, keyring, ProviderCache(settings, directory / "jwks-cache")))
    app = web.Application()
    app.router.add_post("/sql", handler.handle_sql)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/sql"
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield url, Issuer(settings, keyring, url.rsplit("/", 1)[0]).mint(sub="user_7", lifetime=3600)
    finally:
        await runner.cleanup()
        await handler.close()


def _errors(runs: list[dict]) -> str:
    count = sum(run["errors"] for run in runs)
    first = next((run["first_error"][0] for run in runs if run["first_error"]), "")
    return f"{count} errors" + (f" (first: {first[:200]})" if count else "")


async def _bench(directory: Path) -> list[dict]:
    """Both sides ROUNDS times, alternating, best of each: the machine is shared, so noise comes and goes."""
    https, floors = [], []
    async with _cluster(directory) as (settings, binaries, cluster), _sql_endpoint(settings, cluster, directory) as (url, token):
        conn_string = "postgresql://authenticated@localhost/" + settings.database
        await _run_load(url, conn_string, token, WARMUP_SECONDS)
        for _ in range(ROUNDS):
            https.append(await _run_load(url, conn_string, token, SECONDS))
            floors.append(await _pgbench(binaries, cluster, settings.database, json.dumps({"sub": "user_7"}), directory))
    http = max(https, key=lambda run: run["requests"])
    floor = max(floors, key=lambda run: run["tps"])
    rps = http["requests"] / http["seconds"]
    return [
        {"what": "pgbench, same SQL direct (reset, session init, select)", "per second": f"{floor['tps']:.0f}",
         "p50 (ms)": f"{floor['p50_ms']:.2f}", "p99 (ms)": f"{floor['p99_ms']:.2f}", "vs floor": "1.00x",
         "notes": f"tokens signed in SQL by a bench helper; best of {ROUNDS}"},
        {"what": "POST /sql with a JWT (neon-local)", "per second": f"{rps:.0f}", "p50 (ms)": f"{http['p50_ms']:.2f}",
         "p99 (ms)": f"{http['p99_ms']:.2f}", "vs floor": f"{rps / floor['tps']:.2f}x",
         "notes": f"best of {ROUNDS}; {_errors(https)}; target >= 0.25x"},
    ]


def run() -> list[dict]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-http-") as directory:
        os.chmod(directory, 0o755)
        return uvloop.run(_bench(Path(directory)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        _load_main(sys.argv[2:])
    else:
        for row in run():
            print(row)
