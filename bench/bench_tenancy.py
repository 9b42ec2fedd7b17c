"""Tenancy ([tenancy] mode "database"): a new tenant's first /sql request, and /sql throughput over 100 tenants vs one.

The emulator runs in this process with [tenancy] claim = "org_id"; the template (neondb) holds a small
migrated table. "first request" times a /sql request whose tenant has no database yet, against a request
to an existing tenant, three ways: with the spare copy of the template ready (tenants arriving apart: the
spare is renamed, neon_local/tenant_spare.py); back to back (each waits for the spare being copied after
the previous one); and after the owner changed the template over TCP (the spare is stale: the template
is copied then, CREATE DATABASE ... TEMPLATE, as without a spare).
Throughput comes from the common load generator (a separate process) with CLIENTS keep-alive clients
for SECONDS, each request's token picked round-robin from 100 tenants, or always the same tenant (the
baseline); medians of ROUNDS rounds with the range.
"Idle tenant" is what one more tenant with one idle pooled connection costs: disk (pg_database_size)
and Postgres memory (proportional set size of all its processes, so shared buffers count once).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from bench.common import ROUNDS, emulator, http_load, post_sql, ratio, run_async, show, spread

CLIENTS = 16
SECONDS = 5
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


async def _measure(root: Path) -> list[dict]:
    import httpx
    import psycopg

    from neon_local.settings import Tenancy

    async with emulator(root, tenancy=Tenancy(claim="org_id")) as emu:
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
            changed = []
            for i in range(3):
                assert await emu.services.control_plane.spare_ready()  # then the template changes under it
                async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url, autocommit=True) as owner:
                    await owner.execute(f"comment on table notes is 'change {i}'")
                changed.append(await timed(f"changed{i}"))
            firsts = []
            for i in range(FIRSTS):
                assert await emu.services.control_plane.spare_ready()
                firsts.append(await timed(f"first{i}"))
            assert await emu.services.control_plane.spare_ready()
            bursts = [await timed(f"burst{i}") for i in range(FIRSTS)]
            warm = [await timed("first0") for _ in range(20)]
            pss_before = _pss_kib(emu.cluster.pid)
            for i in range(TENANTS):
                await timed(f"t{i}")
            await asyncio.sleep(0.5)
            pss_after = _pss_kib(emu.cluster.pid)
            async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url) as owner:
                (disk,) = await (await owner.execute("select pg_database_size('tenant_t0')")).fetchone()

        def request(org: str) -> bytes:
            return post_sql(port, QUERY, [], "postgresql://authenticated@127.0.0.1/neondb", token(org))

        port = emu.endpoints.http_port
        many, one = [request(f"t{i}") for i in range(TENANTS)], [request("t0")]
        singles, spreads = [], []
        for _ in range(ROUNDS):
            singles.append((await http_load(port, one, CLIENTS, SECONDS))["per_second"])
            spreads.append((await http_load(port, many, CLIENTS, SECONDS))["per_second"])
    return [
        {"case": "first request, new tenant, spare ready (median of 10)", "value": f"{statistics.median(firsts):.0f} ms",
         "vs baseline": f"{statistics.median(firsts) / statistics.median(warm):.1f}x a request to an existing tenant "
                        f"({statistics.median(warm):.1f} ms)"},
        {"case": "first request, new tenant, spare ready (slowest of 10)", "value": f"{max(firsts):.0f} ms", "vs baseline": ""},
        {"case": "first request, new tenants back to back (median of 10)", "value": f"{statistics.median(bursts):.0f} ms",
         "vs baseline": f"slowest {max(bursts):.0f} ms; each waits for the spare copied after the previous one"},
        {"case": "first request, new tenant, template changed since the spare (median of 3)",
         "value": f"{statistics.median(changed):.0f} ms", "vs baseline": "the template copied then, as without a spare"},
        {"case": f"/sql, {TENANTS} tenants round-robin, {CLIENTS} clients", "value": f"{spread(spreads)} req/s",
         "vs baseline": f"{ratio(spreads, singles)} one tenant ({spread(singles)} req/s)"},
        {"case": "idle tenant: disk", "value": f"{disk / 2**20:.1f} MiB", "vs baseline": "pg_database_size"},
        {"case": "idle tenant: Postgres memory (PSS)", "value": f"{(pss_after - pss_before) / TENANTS / 1024:.1f} MiB",
         "vs baseline": "one idle pooled connection each"},
    ]


def run() -> list[dict]:
    return run_async("bench-tenancy-", _measure)


if __name__ == "__main__":
    show(run())
