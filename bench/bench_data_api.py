"""Data API: GET /<db>/rest/v1 requests per second with a JWT, beside POST /sql running the SQL each request generates.

16 concurrent clients, one RLS-filtered row (`select=id,body&id=eq.7` as user_7), and the same with a
to-one embed one level deep. Both endpoints are neon-local's handlers on uvloop in one process over the
same fresh Postgres; the load comes from a separate process speaking raw HTTP/1.1 keep-alive. The
baseline is /sql given the Data API's own main query (its text and parameters, taken from the builder),
measured in the same run. Goals: >= 0.8x of /sql, >= 0.5x with the embed.
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

from bench.bench_http import CLIENTS, ROUNDS, SECONDS, WARMUP_SECONDS, _cluster, _percentile

EMBED_SQL = """
create table bench_owners (user_id text primary key, name text);
insert into bench_owners select 'user_' || g, 'owner ' || g from generate_series(1, 10) g;
alter table bench_notes add constraint bench_notes_owner_fkey foreign key (user_id) references bench_owners;
alter table bench_owners enable row level security;
create policy owners_read on bench_owners for select to authenticated using (true);
grant select on bench_owners to authenticated;
"""
PLAIN = "/bench_notes?select=id,body&id=eq.7"
EMBED = "/bench_notes?select=id,body,bench_owners(name)&id=eq.7"


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


async def _load(port: int, request_text: str, seconds: float) -> dict:
    request = request_text.encode()
    latencies: list[float] = []
    errors: list[str] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_client("127.0.0.1", port, request, until, latencies, errors) for _ in range(CLIENTS)))
    return {"requests": len(latencies), "seconds": seconds, "errors": len(errors), "first_error": errors[:1],
            "p50_ms": _percentile(latencies, 0.5) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3}


async def _run_load(port: int, request: str, seconds: float) -> dict:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_data_api", "load", str(port), request, str(seconds),
        cwd=Path(__file__).parent.parent, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await process.communicate()
    return json.loads(stdout)


@asynccontextmanager
async def _endpoints(settings, cluster, directory: Path):
    """/sql and the Data API on one free port; yields the port, a token for user_7 and the Data API."""
    from aiohttp import web

    from neon_local.auth.issuer import Issuer
    from neon_local.auth.keys import KeyRing
    from neon_local.auth.providers import ProviderCache
    from neon_local.auth.verifier import Verifier
    from neon_local.control_plane import ControlPlane
    from neon_local.data_api.handler import DataApi
    from neon_local.serverless.sql_over_http import SqlOverHttp

    keyring = KeyRing.load_or_create(directory / "keys")
    verifier = Verifier(settings, keyring, ProviderCache(settings, directory / "jwks-cache"))
    control_plane = ControlPlane(cluster)
    sql = SqlOverHttp(settings, control_plane, verifier)
    api = DataApi(settings, control_plane, verifier)
    app = web.Application()
    app.router.add_post("/sql", sql.handle_sql)
    app.router.add_route("*", "/{db}/rest/{tail:.*}", api.handle)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        token = Issuer(settings, keyring, f"http://127.0.0.1:{port}").mint(sub="user_7", claims={"role": "authenticated"}, lifetime=3600)
        yield port, token, api
    finally:
        await runner.cleanup()
        await sql.close()
        await api.close()
        await control_plane.close()


async def _generated_sql(api, dbname: str, path: str) -> tuple[str, list]:
    """The main query the Data API runs for `path`, from its own builder."""
    from urllib.parse import parse_qsl

    from neon_local.data_api.grammar import parse_query
    from neon_local.data_api.sql import Builder

    cached = await api._schema(dbname)
    table_name, _, query = path.lstrip("/").partition("?")
    builder = Builder(cached.schema, parse_query(parse_qsl(query)))
    plan = builder.read(cached.schema.table("public", table_name), False, False)
    return plan.sql, plan.params


def _requests(port: int, dbname: str, token: str, path: str, sql: str, params: list) -> tuple[str, str]:
    rest = (f"GET /{dbname}/rest/v1{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n")
    body = json.dumps({"query": sql, "params": params})
    conn = f"postgresql://authenticated@localhost/{dbname}"
    over_sql = (f"POST /sql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nNeon-Connection-String: {conn}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}")
    return rest, over_sql


def _errors(runs: list[dict]) -> str:
    count = sum(run["errors"] for run in runs)
    first = next((run["first_error"][0] for run in runs if run["first_error"]), "")
    return f"{count} errors" + (f" (first: {first[:200]})" if count else "")


async def _bench(directory: Path) -> list[dict]:
    import psycopg

    rows = []
    async with _cluster(directory) as (settings, _binaries, cluster):
        async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=settings.database), autocommit=True) as conn:
            await conn.execute(EMBED_SQL)
        async with _endpoints(settings, cluster, directory) as (port, token, api):
            for label, path, goal in (("one row", PLAIN, 0.8), ("one row + to-one embed", EMBED, 0.5)):
                sql, params = await _generated_sql(api, settings.database, path)
                rest, over_sql = _requests(port, settings.database, token, path, sql, params)
                await _run_load(port, rest, WARMUP_SECONDS)
                await _run_load(port, over_sql, WARMUP_SECONDS)
                rests, sqls = [], []
                for _ in range(ROUNDS):
                    rests.append(await _run_load(port, rest, SECONDS))
                    sqls.append(await _run_load(port, over_sql, SECONDS))
                best_rest = max(rests, key=lambda run: run["requests"])
                best_sql = max(sqls, key=lambda run: run["requests"])
                rest_rps, sql_rps = best_rest["requests"] / SECONDS, best_sql["requests"] / SECONDS
                rows.append({"what": f"POST /sql, the Data API's SQL ({label})", "per second": f"{sql_rps:.0f}",
                             "p50 (ms)": f"{best_sql['p50_ms']:.2f}", "p99 (ms)": f"{best_sql['p99_ms']:.2f}",
                             "vs /sql": "1.00x", "notes": f"best of {ROUNDS}; {_errors(sqls)}"})
                rows.append({"what": f"GET /rest/v1{path}", "per second": f"{rest_rps:.0f}",
                             "p50 (ms)": f"{best_rest['p50_ms']:.2f}", "p99 (ms)": f"{best_rest['p99_ms']:.2f}",
                             "vs /sql": f"{rest_rps / sql_rps:.2f}x",
                             "notes": f"best of {ROUNDS}; {_errors(rests)}; target >= {goal}x"})
    return rows


def run() -> list[dict]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-data-api-") as directory:
        os.chmod(directory, 0o755)
        return uvloop.run(_bench(Path(directory)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        import uvloop

        port, request, seconds = sys.argv[2:]
        print(json.dumps(uvloop.run(_load(int(port), request, float(seconds)))))
    else:
        for row in run():
            print(row)
