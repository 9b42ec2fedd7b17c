"""Client SQL limits: the query allow-list (enforce) and the rate limiter against neither, on /sql and TCP, in one run.

One fresh Postgres. TCP rows are `pgbench -S` as `authenticated` (a JWT as the password, plain
loopback) through three proxies in this process that differ only in their limits; `-M simple` sends
a new text per transaction (a fingerprint each: nothing to cache), `-M prepared` one Parse per client.
/sql rows reuse bench_http's load generator (16 keep-alive clients, one RLS select). The rate limiter
runs Neon's three-bucket shape with numbers the load never reaches, so what is measured is its cost.
Rounds alternate between variants and the best of each counts: the 2 cores are shared.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.bench_http import QUERY, _cluster, _run_load, _sql_endpoint
from bench.bench_wire import _pgbench, _pgbench_path, _start_proxy

ROUNDS = 2
SQL_SECONDS = 8
PGBENCH_CLIENTS = 4
PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
UNREACHED = "100000@1s,100000@1m,100000@10m"  # Neon's bucket shape, never full


async def _micro() -> list[dict]:
    """Per-call costs on the hot path, in this process's event loop (as the server calls them)."""
    from neon_local.limits.allowlist import AllowList
    from neon_local.limits.fingerprint import Fingerprinter
    from neon_local.limits.rate import RateLimiter

    with tempfile.TemporaryDirectory() as directory:
        _approve(Path(directory) / "list.toml")
        guard = AllowList(Path(directory) / "list.toml", "enforce")
        rate = RateLimiter(UNREACHED, UNREACHED)
        texts = [f"select abalance from pgbench_accounts where aid = {n}" for n in range(20_000)]
        cases = [
            ("allow-list check, text seen before (cache hit)", lambda i: guard.check("authenticated", True, QUERY, "http")),
            ("fingerprint of a new text (pglast)", lambda i: Fingerprinter().statements(texts[i])),
            ("rate limiter: endpoint + sub + role", lambda i: (rate.check_endpoint("http"), rate.check_identity("authenticated", "u"))),
        ]
        rows = []
        for name, call in cases:
            began = time.perf_counter()
            for i in range(len(texts)):
                call(i)
            rows.append({"what": name, "per call (µs)": f"{(time.perf_counter() - began) / len(texts) * 1e6:.2f}"})
        return rows


def _approve(path: Path) -> None:
    from neon_local.limits.fingerprint import Fingerprinter
    from neon_local.limits.store import Entry, ListFile, write_list

    content = ListFile()
    for text in (QUERY, PGBENCH_SELECT, "select count(*) from pgbench_branches"):
        for statement in Fingerprinter().statements(text):
            content.statements[statement.fingerprint] = Entry(statement.normalized(), ["authenticated"])
    write_list(path, content)


def _variants(settings, directory: Path) -> dict:
    _approve(directory / "approved.toml")
    return {
        "limits off": settings.with_overrides(allowlist_file=directory / "off.toml"),
        "allow-list enforce": settings.with_overrides(allowlist="enforce", allowlist_file=directory / "approved.toml"),
        "rate limiter on": settings.with_overrides(rate_limit=UNREACHED, rate_limit_identity=UNREACHED,
                                                   allowlist_file=directory / "rate.toml"),
    }


async def _tcp_rows(variants: dict, binaries, cluster, directory: Path) -> list[dict]:
    proxies = {}
    for name, settings in variants.items():
        if name != "rate limiter on":  # a session pays the limiter once, at connect: nothing to see in pgbench
            proxies[name] = await _start_proxy(settings, cluster, directory / name.replace(" ", "-"))
    best: dict[tuple[str, str], float] = {}
    try:
        for _ in range(ROUNDS):
            for protocol in ("simple", "prepared"):
                for name, (_server, port, issuer) in proxies.items():
                    token = issuer.mint(sub="user_bench", lifetime=3600)
                    args = ["-h", "127.0.0.1", "-p", str(port), "-U", "authenticated", "-M", protocol, "neondb"]
                    tps = await _pgbench(binaries, args, PGBENCH_CLIENTS, {"PGPASSWORD": token, "PGSSLMODE": "disable"})
                    best[(protocol, name)] = max(best.get((protocol, name), 0.0), tps)
    finally:
        for server, _, _ in proxies.values():
            await server.close()
    rows = []
    for protocol in ("simple", "prepared"):
        base = best[(protocol, "limits off")]
        for name in proxies:
            tps = best[(protocol, name)]
            rows.append({"what": f"TCP pgbench -S -M {protocol} c={PGBENCH_CLIENTS}, {name}", "per second": f"{tps:.0f}",
                         "vs limits off": f"{tps / base:.3f}x", "goal": "" if name == "limits off" else ">= 0.95x"})
    return rows


async def _sql_rows(variants: dict, cluster, directory: Path) -> list[dict]:
    from contextlib import AsyncExitStack

    best: dict[str, float] = {}
    errors: dict[str, int] = {}
    async with AsyncExitStack() as stack:
        endpoints = {name: await stack.enter_async_context(_sql_endpoint(settings, cluster, directory / f"http-{i}"))
                     for i, (name, settings) in enumerate(variants.items())}
        conn_string = "postgresql://authenticated@localhost/neondb"
        for url, token in endpoints.values():
            await _run_load(url, conn_string, token, 1)  # warm the pools
        for _ in range(ROUNDS):
            for name, (url, token) in endpoints.items():
                run = await _run_load(url, conn_string, token, SQL_SECONDS)
                best[name] = max(best.get(name, 0.0), run["requests"] / run["seconds"])
                errors[name] = errors.get(name, 0) + run["errors"]
    base = best["limits off"]
    goals = {"limits off": "", "allow-list enforce": ">= 0.95x", "rate limiter on": ">= 0.98x"}
    return [{"what": f"POST /sql, {name}", "per second": f"{rps:.0f}", "vs limits off": f"{rps / base:.3f}x",
             "goal": goals[name], "errors": errors[name]} for name, rps in best.items()]


def _share(rows: list[dict], call: str, request: str) -> dict:
    """A per-call cost as a share of one request's time: steadier than two throughputs on shared cores."""
    micro = float(next(r for r in rows if r["what"] == call)["per call (µs)"])
    per_second = float(next(r for r in rows if r["what"] == request)["per second"])
    return {"what": f"{call}, share of one {request}", "per call (µs)": f"{micro * per_second / 1e6 * 100:.2f}%"}


async def _bench(directory: Path) -> list[dict]:
    import psycopg

    async with _cluster(directory) as (settings, binaries, cluster):
        init = await asyncio.create_subprocess_exec(
            _pgbench_path(binaries), "-i", "-q", "-s", "1", "-h", str(cluster.socket_dir), "-p", str(cluster.port),
            "-U", settings.owner, settings.database, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await init.wait()
        async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=settings.database), autocommit=True) as conn:
            await conn.execute("grant select on pgbench_accounts to authenticated")
        variants = _variants(settings, directory)
        rows = await _micro()
        rows += await _tcp_rows(variants, binaries, cluster, directory)
        rows += await _sql_rows(variants, cluster, directory)
    rows.append(_share(rows, "rate limiter: endpoint + sub + role", "POST /sql, limits off"))
    rows.append(_share(rows, "allow-list check, text seen before (cache hit)", "POST /sql, limits off"))
    rows.append(_share(rows, "fingerprint of a new text (pglast)", f"TCP pgbench -S -M simple c={PGBENCH_CLIENTS}, limits off"))
    return rows


def run() -> list[dict]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-limits-") as directory:
        os.chmod(directory, 0o755)
        return uvloop.run(_bench(Path(directory)))


if __name__ == "__main__":
    for row in run():
        print(row)
