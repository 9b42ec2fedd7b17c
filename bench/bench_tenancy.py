"""Tenancy ([tenancy] mode "database"): a new tenant's first /sql request, and /sql throughput over 100 tenants vs one.

The emulator runs in this process with [tenancy] claim = "org_id"; the template (neondb) holds a small
migrated table. "first request" times a /sql request whose tenant has no database yet (CREATE DATABASE
... TEMPLATE, the JWT role's preparation, the first session), against a request to an existing tenant.
Throughput comes from a separate process with CLIENTS concurrent keep-alive clients for SECONDS,
each request's token picked round-robin from 100 tenants, or always the same tenant (the baseline).
"Idle tenant" is what one more tenant with one idle pooled connection costs: disk (pg_database_size)
and Postgres memory (proportional set size of all its processes, so shared buffers count once).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENTS = 16
SECONDS = 8
TENANTS = 100
FIRSTS = 10
MIGRATION = """
create table notes (id serial primary key, body text not null);
insert into notes (body) select 'note ' || g from generate_series(1, 10) g;
grant select on notes to authenticated;
"""
QUERY = "select id, body from notes where id = 1"


def _pss_kib(pid: int) -> int:
    """Proportional set size of the postmaster and its children, in KiB."""
    total = 0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for child in pids:
        try:
            for line in Path(f"/proc/{child}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _load(url: str, tokens: list[str], seconds: float) -> int:
    """Requests completed by a separate process in `seconds`, tokens used round-robin."""
    result = subprocess.run([sys.executable, "-m", "bench.bench_tenancy", "load", url, str(seconds)],
                            input=json.dumps(tokens), capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent.parent)
    return int(result.stdout.strip().splitlines()[-1])


async def _load_main(url: str, seconds: float, tokens: list[str]) -> None:
    import aiohttp

    done, turn = 0, 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done, turn
        while time.perf_counter() < deadline:
            token = tokens[turn % len(tokens)]
            turn += 1
            async with session.post(url, json={"query": QUERY}, headers={
                    "Neon-Connection-String": "postgresql://authenticated@127.0.0.1/neondb",
                    "Authorization": f"Bearer {token}"}) as response:
                await response.read()
                assert response.status == 200, await response.text()
            done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    print(done)


async def _measure(root: Path) -> list[dict]:
    import httpx
    import psycopg

    from neon_local.app import Emulator
    from neon_local.settings import Settings, Tenancy

    emu = Emulator(Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, log_level="warning",
                            tenancy=Tenancy(claim="org_id")), write_state=False)
    await emu.start()
    try:
        async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url, autocommit=True) as owner:
            await owner.execute(MIGRATION)
        issuer = emu.services.issuer

        def token(org: str) -> str:
            return issuer.mint(sub=f"user_{org}", claims={"org_id": org}, lifetime=3600)

        async with httpx.AsyncClient() as client:
            async def timed(org: str) -> float:
                began = time.perf_counter()
                response = await client.post(emu.endpoints.sql_url, json={"query": QUERY}, headers={
                    "Neon-Connection-String": "postgresql://authenticated@127.0.0.1/neondb",
                    "Authorization": f"Bearer {token(org)}"})
                assert response.status_code == 200, response.text
                return (time.perf_counter() - began) * 1000
            firsts = [await timed(f"first{i}") for i in range(FIRSTS)]
            warm = [await timed("first0") for _ in range(20)]
            pss_before = _pss_kib(emu.cluster.pid)
            for i in range(TENANTS):
                await timed(f"t{i}")
            await asyncio.sleep(0.5)
            pss_after = _pss_kib(emu.cluster.pid)
            async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url) as owner:
                (disk,) = await (await owner.execute("select pg_database_size('tenant_t0')")).fetchone()

        many = [token(f"t{i}") for i in range(TENANTS)]
        one = [token("t0")]
        loop = asyncio.get_running_loop()
        single = await loop.run_in_executor(None, _load, emu.endpoints.sql_url, one, SECONDS)
        spread = await loop.run_in_executor(None, _load, emu.endpoints.sql_url, many, SECONDS)
    finally:
        await emu.stop()
    return [
        {"case": "first request, new tenant (median of 10)", "value": f"{statistics.median(firsts):.0f} ms",
         "vs baseline": f"{statistics.median(firsts) / statistics.median(warm):.1f}x a request to an existing tenant "
                        f"({statistics.median(warm):.1f} ms)"},
        {"case": "first request, new tenant (slowest of 10)", "value": f"{max(firsts):.0f} ms", "vs baseline": ""},
        {"case": f"/sql, {TENANTS} tenants round-robin, {CLIENTS} clients", "value": f"{spread / SECONDS:.0f} req/s",
         "vs baseline": f"{spread / single:.2f}x one tenant ({single / SECONDS:.0f} req/s)"},
        {"case": "idle tenant: disk", "value": f"{disk / 2**20:.1f} MiB", "vs baseline": "pg_database_size"},
        {"case": "idle tenant: Postgres memory (PSS)", "value": f"{(pss_after - pss_before) / TENANTS / 1024:.1f} MiB",
         "vs baseline": "one idle pooled connection each"},
    ]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-tenancy-") as tmp:
        return asyncio.run(_measure(Path(tmp)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        asyncio.run(_load_main(sys.argv[2], float(sys.argv[3]), json.loads(sys.stdin.read())))
    else:
        print(json.dumps(run(), indent=2))
