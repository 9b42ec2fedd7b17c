"""Capacity: 500 idle TLS clients with JWTs all connect while the /sql pool holds backends; a count, not a timing.

One emulator with its default settings (`bench.common.emulator`, in this process). First a burst of
/sql requests (64 keep-alive clients, 2 s) leaves the pool holding idle backends, as an app that has
served some traffic would. Then a separate process opens CLIENTS psycopg connections as
`authenticated` (sslmode=require, a JWT as the password), 50 logins in flight at a time, runs
`select 1` on each and keeps them all open; while they are held, the owner connects too.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

from bench.bench_http import QUERY, SETUP_SQL, jwt_connection_string
from bench.common import ROOT, emulator, http_load, post_sql, run_async, show, superuser

CLIENTS = 500
IN_FLIGHT = 50


async def _hold(conninfo: str, token: str, count: int) -> None:
    """The client process: open `count` sessions, print what happened, keep them until stdin closes."""
    import psycopg

    gate = asyncio.Semaphore(IN_FLIGHT)
    held, errors = [], Counter()

    async def one() -> None:
        async with gate:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, password=token, connect_timeout=30, autocommit=True)
                await conn.execute("select 1")
                held.append(conn)
            except psycopg.Error as exc:
                errors[str(exc).strip().splitlines()[0][:200]] += 1

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"connected": len(held), "seconds": time.perf_counter() - began, "errors": dict(errors)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for conn in held:
        await conn.close()


async def _backends(emu) -> Counter:
    async with await superuser(emu, "postgres") as conn:
        cursor = await conn.execute("select usename, state from pg_stat_activity where backend_type = 'client backend'")
        return Counter(f"{user} {state}" for user, state in await cursor.fetchall())


async def _bench(directory: Path) -> list[dict]:
    import psycopg

    async with emulator(directory, SETUP_SQL) as emu:
        settings, port = emu.settings, emu.endpoints.http_port
        token = emu.services.issuer.mint(sub="user_7", lifetime=3600)
        await http_load(port, [post_sql(port, QUERY, [], jwt_connection_string(emu), token)], 64, 2)
        pooled = await _backends(emu)
        conninfo = f"host=127.0.0.1 port={emu.endpoints.pg_port} dbname={settings.database} user=authenticated sslmode=require"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bench_capacity", "hold", conninfo, token, str(CLIENTS), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            held = json.loads(await process.stdout.readline())
            during = await _backends(emu)
            try:
                async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url, connect_timeout=10) as owner:
                    await owner.execute("select 1")
                owner_result = "connected"
            except psycopg.Error as exc:
                owner_result = f"refused: {str(exc).strip()[:200]}"
        finally:
            process.stdin.close()
            await process.wait()
    errors = "; ".join(f"{n} × {message}" for message, n in held["errors"].items())
    return [
        {"what": "/sql pool after a 64-client burst", "result": ", ".join(f"{n} {k}" for k, n in sorted(pooled.items())),
         "notes": "client backends in pg_stat_activity"},
        {"what": f"{CLIENTS} idle TLS clients (JWT, sslmode=require)", "result": f"{held['connected']} of {CLIENTS} connected",
         "notes": f"in {held['seconds']:.1f} s, {IN_FLIGHT} logins in flight; {errors or 'no refusals'}; target: all"},
        {"what": "Postgres client backends while they are held", "result": ", ".join(f"{n} {k}" for k, n in sorted(during.items())),
         "notes": f"max_connections {settings.max_connections}, role_connection_limit {settings.role_connection_limit}"},
        {"what": "the owner connects while they are held", "result": owner_result, "notes": ""},
    ]


def run() -> list[dict]:
    return run_async("bench-capacity-", _bench)


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        import uvloop

        uvloop.run(_hold(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        show(run())
