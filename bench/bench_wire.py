"""Postgres wire proxy: pgbench TPS through neon-local's proxy beside PgBouncer (plain and with client TLS); connect times.

One emulator (`bench.common.emulator`: the proxy runs in this process on uvloop) with pgbench's tables
(scale 1), and Debian's PgBouncer (session pooling) in front of the same Postgres socket. Both take
the owner with SCRAM; PgBouncer allows client TLS with the proxy's certificate, so each path is
compared like with like: plain TCP with plain TCP, TLS with TLS. "direct" is pgbench on Postgres's
Unix socket (it has no TCP listener), for scale. Workloads: `-S` (select only) and `-N` (pgbench's
simple-update write transaction: update, select, insert), at 1/4/16/64 clients. Cells are the median
TPS of ROUNDS rounds with the range; ratios are the median of per-round ratios.
The connect table times a fresh psycopg connection plus `select 1`, as an app would see it; PgBouncer
hands out a pooled server connection, the proxy starts a new backend each time. These are the TCP
figures issue 9 asks to hold across the control-plane change.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import (
    ROUNDS,
    direct_args,
    emulator,
    percentile,
    pgbench,
    pgbench_init,
    pgbouncer,
    pgbouncer_version,
    ratio,
    run_async,
    show,
    spread,
    superuser,
)

CLIENTS = (1, 4, 16, 64)
SECONDS = 2
WORKLOADS = (("-S", "select only (-S)"), ("-N", "write: simple-update (-N)"))
CONNECTS = 60


def _targets(emu, bouncer_port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    settings, proxy_port = emu.settings, emu.endpoints.pg_port
    scram = {"PGPASSWORD": settings.owner_password}
    return {
        "direct": (direct_args(emu), {}),
        "PgBouncer": (["-h", "127.0.0.1", "-p", str(bouncer_port), "-U", settings.owner], {**scram, "PGSSLMODE": "disable"}),
        "proxy": (["-h", "127.0.0.1", "-p", str(proxy_port), "-U", settings.owner], {**scram, "PGSSLMODE": "disable"}),
        "PgBouncer TLS": (["-h", "127.0.0.1", "-p", str(bouncer_port), "-U", settings.owner], {**scram, "PGSSLMODE": "require"}),
        "proxy TLS": (["-h", "127.0.0.1", "-p", str(proxy_port), "-U", settings.owner], {**scram, "PGSSLMODE": "require"}),
    }


async def _tps_rows(emu, bouncer_port: int) -> list[dict]:
    targets = _targets(emu, bouncer_port)
    rows = []
    for flag, label in WORKLOADS:
        for clients in CLIENTS:
            tps: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(ROUNDS):  # every target once per round, so noise on the shared cores hits all alike
                for name, (args, env) in targets.items():
                    if name == "direct" and flag != "-S":
                        continue
                    result = await pgbench([*args, flag, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(SECONDS),
                                            emu.settings.database], env)
                    tps[name].append(result["tps"])
            rows.append({
                "workload": label, "clients": clients,
                "direct": spread(tps["direct"]) if tps["direct"] else "",
                "PgBouncer": spread(tps["PgBouncer"]), "proxy": spread(tps["proxy"]),
                "proxy / PgBouncer": ratio(tps["proxy"], tps["PgBouncer"]),
                "PgBouncer TLS": spread(tps["PgBouncer TLS"]), "proxy TLS": spread(tps["proxy TLS"]),
                "proxy TLS / PgBouncer TLS": ratio(tps["proxy TLS"], tps["PgBouncer TLS"]),
            })
    return rows


async def _connect_samples(conninfo: str, password: str | None) -> list[float]:
    import psycopg

    samples = []
    for _ in range(CONNECTS):
        began = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(conninfo, password=password) as conn:
            await conn.execute("select 1")
        samples.append((time.perf_counter() - began) * 1e3)
    return samples


async def _connect_rows(emu, bouncer_port: int) -> list[dict]:
    settings = emu.settings
    token = emu.services.issuer.mint(sub="user_bench", lifetime=3600)
    proxy = f"host=127.0.0.1 port={emu.endpoints.pg_port} dbname={settings.database}"
    bouncer = f"host=127.0.0.1 port={bouncer_port} dbname={settings.database} user={settings.owner}"
    cases = {
        "Postgres directly (Unix socket, trust)": (emu.cluster.conninfo(user=settings.owner, dbname=settings.database), None, None),
        "PgBouncer, owner SCRAM, plain": (f"{bouncer} sslmode=disable", settings.owner_password, None),
        "PgBouncer, owner SCRAM, TLS": (f"{bouncer} sslmode=require", settings.owner_password, None),
        "proxy, JWT, plain": (f"{proxy} user=authenticated sslmode=disable", token, "PgBouncer, owner SCRAM, plain"),
        "proxy, JWT, TLS": (f"{proxy} user=authenticated sslmode=require", token, "PgBouncer, owner SCRAM, TLS"),
        "proxy, owner SCRAM, TLS": (f"{proxy} user={settings.owner} sslmode=require", settings.owner_password,
                                    "PgBouncer, owner SCRAM, TLS"),
    }
    samples = {name: [] for name in cases}
    for _ in range(ROUNDS):  # rounds alternate the cases, CONNECTS each
        for name, (conninfo, password, _) in cases.items():
            samples[name].append(await _connect_samples(conninfo, password))
    rows = []
    for name, (_, _, baseline) in cases.items():
        flat = [s for round_ in samples[name] for s in round_]
        medians = [statistics.median(round_) for round_ in samples[name]]
        rows.append({"connect + select 1": name, "median (ms)": spread(medians, 2), "p95 (ms)": f"{percentile(flat, 0.95):.2f}",
                     "vs PgBouncer": ratio(medians, [statistics.median(r) for r in samples[baseline]]) if baseline else "",
                     "target": "<= 1.2x" if baseline and "JWT" in name else ""})
    return rows


async def _bench(directory: Path) -> dict:
    async with emulator(directory) as emu:
        await pgbench_init(emu)
        async with await superuser(emu) as conn:
            await conn.execute("grant select on pgbench_accounts to authenticated")
        async with pgbouncer(emu, directory / "bouncer") as bouncer_port:
            return {
                f"TPS: neon-local's proxy vs {pgbouncer_version()} (session pooling), median (range) of {ROUNDS} × {SECONDS} s":
                    await _tps_rows(emu, bouncer_port),
                f"Connect + first query (psycopg), median of each round's {CONNECTS} (range over rounds)":
                    await _connect_rows(emu, bouncer_port),
            }


def run() -> dict:
    return run_async("bench-wire-", _bench)


if __name__ == "__main__":
    show(run())
