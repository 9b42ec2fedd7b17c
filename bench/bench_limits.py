"""Client SQL limits: the query allow-list (enforce) and the rate limiter against neither, on /sql and TCP, in one run.

One emulator's Postgres (`bench.common.emulator`) and three sets of neon-local's services on it
(`bench.common.services`: /sql and the TCP proxy, in this process) that differ only in their limits.
TCP rows are `pgbench -S` as `authenticated` (a JWT as the password, plain loopback); `-M simple` sends
a new text per transaction (all of one shape: no parse after the first), `-M prepared` one Parse per
client, then Bind/Execute/Sync that the relay only frames. The proxy runs in this process, so its CPU
per transaction is measured too: steadier than throughput when the cores are shared.
/sql rows use the common load generator (16 keep-alive clients, bench_http's one-row RLS select). The
rate limiter runs Neon's three-bucket shape with numbers the load never reaches, so what is measured is
its cost. Rounds alternate between variants; medians of ROUNDS rounds, ratios per round.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from bench.bench_http import CLIENTS, QUERY, SETUP_SQL, jwt_connection_string
from bench.common import ROUNDS, emulator, http_load, pgbench, pgbench_init, post_sql, ratio, run_async, services, show, spread, superuser

SQL_SECONDS = 5
PGBENCH_SECONDS = 3
PGBENCH_CLIENTS = 4
PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
UNREACHED = "100000@1s,100000@1m,100000@10m"  # Neon's bucket shape, never full
RELAY_CHECK = "allow-list on the TCP relay: a Query of a new text, known shape"


class _Sink:
    """Postgres's side of the relay, for the relay's own cost."""

    def write(self, data: bytes) -> None:
        pass


async def _micro() -> list[dict]:
    """Per-call costs on the hot path, in this process's event loop (as the server calls them)."""
    from neon_local.limits.allowlist import AllowList
    from neon_local.limits.fingerprint import Fingerprinter
    from neon_local.limits.rate import RateLimiter
    from neon_local.limits.relay import StatementFilter
    from neon_local.wire import messages as m

    with tempfile.TemporaryDirectory() as directory:
        _approve(Path(directory) / "list.toml")
        guard = AllowList(Path(directory) / "list.toml", "enforce")
        guard.mode_for("authenticated", True)  # as a session does before its relay starts
        rate = RateLimiter(UNREACHED, UNREACHED)
        texts = [f"select abalance from pgbench_accounts where aid = {n}" for n in range(20_000)]
        # What pgbench -S -M simple sends: a Query message with a new aid each time (the relay gets one per read).
        queries = [m.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {n * 7919 % 100_000 + 1};")
                   for n in range(20_000)]
        relay = StatementFilter(_Sink(), guard.wire_check("authenticated", True, "tcp"), lambda: None)
        relay.write(queries[-1])  # its shape seen once
        cases = [
            ("allow-list check, text seen before (cache hit)", lambda i: guard.check("authenticated", True, QUERY, "http")),
            (RELAY_CHECK, lambda i: relay.write(queries[i])),
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


async def _tcp_rows(stacks: dict, database: str) -> list[dict]:
    # A session pays the rate limiter once, at connect: nothing to see in pgbench.
    proxies = {name: stack for name, stack in stacks.items() if name != "rate limiter on"}
    tps: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}  # this process's (the proxy's) CPU µs per transaction
    for _ in range(ROUNDS):
        for protocol in ("simple", "prepared"):
            for name, (started, _, pg_port) in proxies.items():
                token = started.issuer.mint(sub="user_bench", lifetime=3600)
                args = ["-h", "127.0.0.1", "-p", str(pg_port), "-U", "authenticated", "-M", protocol, "-S",
                        "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(PGBENCH_SECONDS), database]
                began = time.process_time()
                result = await pgbench(args, {"PGPASSWORD": token, "PGSSLMODE": "disable"})
                tps.setdefault((protocol, name), []).append(result["tps"])
                cpu.setdefault((protocol, name), []).append(
                    (time.process_time() - began) / (result["tps"] * PGBENCH_SECONDS) * 1e6)
    rows = []
    for protocol in ("simple", "prepared"):
        base = tps[(protocol, "limits off")]
        for name in proxies:
            rows.append({"what": f"TCP pgbench -S -M {protocol} c={PGBENCH_CLIENTS}, {name}", "per second": spread(tps[(protocol, name)]),
                         "vs limits off": ratio(tps[(protocol, name)], base), "goal": "" if name == "limits off" else ">= 0.95x"})
        # CPU per transaction: what a throughput ratio shows on a quiet machine, steadier on shared cores.
        for name in proxies:
            rows.append({"what": f"TCP pgbench -S -M {protocol} c={PGBENCH_CLIENTS}, {name}: proxy CPU per transaction",
                         "per call (µs)": spread(cpu[(protocol, name)], 1),
                         "vs limits off": "" if name == "limits off" else ratio(cpu[(protocol, name)], cpu[(protocol, "limits off")])})
    return rows


async def _sql_rows(stacks: dict, emu) -> list[dict]:
    runs: dict[str, list[dict]] = {name: [] for name in stacks}
    requests = {}
    for name, (started, http_port, _) in stacks.items():
        token = started.issuer.mint(sub="user_7", lifetime=3600)
        requests[name] = (http_port, [post_sql(http_port, QUERY, [], jwt_connection_string(emu), token)])
        await http_load(*requests[name], CLIENTS, 1)  # warm the pools
    for _ in range(ROUNDS):
        for name, (http_port, request) in requests.items():
            runs[name].append(await http_load(http_port, request, CLIENTS, SQL_SECONDS))
    base = [run["per_second"] for run in runs["limits off"]]
    goals = {"limits off": "", "allow-list enforce": ">= 0.95x", "rate limiter on": ">= 0.98x"}
    return [{"what": f"POST /sql, {name}", "per second": spread([r["per_second"] for r in done]),
             "vs limits off": ratio([r["per_second"] for r in done], base), "goal": goals[name],
             "errors": sum(r["errors"] for r in done)} for name, done in runs.items()]


def _share(rows: list[dict], call: str, request: str) -> dict:
    """A per-call cost as a share of one request's time: steadier than two throughputs on shared cores."""
    micro = float(next(r for r in rows if r["what"] == call)["per call (µs)"])
    per_second = float(next(r for r in rows if r["what"] == request)["per second"].split()[0])  # the median
    return {"what": f"{call}, share of one {request}", "per call (µs)": f"{micro * per_second / 1e6 * 100:.2f}%"}


async def _bench(directory: Path) -> list[dict]:
    async with emulator(directory, SETUP_SQL) as emu:
        await pgbench_init(emu)
        async with await superuser(emu) as conn:
            await conn.execute("grant select on pgbench_accounts to authenticated")
        rows = await _micro()
        async with AsyncExitStack() as exits:
            stacks = {name: await exits.enter_async_context(services(emu, settings, directory / f"variant-{i}"))
                      for i, (name, settings) in enumerate(_variants(emu.settings, directory).items())}
            rows += await _tcp_rows(stacks, emu.settings.database)
            rows += await _sql_rows(stacks, emu)
    rows.append(_share(rows, "rate limiter: endpoint + sub + role", "POST /sql, limits off"))
    rows.append(_share(rows, "allow-list check, text seen before (cache hit)", "POST /sql, limits off"))
    rows.append(_share(rows, RELAY_CHECK, f"TCP pgbench -S -M simple c={PGBENCH_CLIENTS}, limits off"))
    return rows


def run() -> list[dict]:
    return run_async("bench-limits-", _bench)


if __name__ == "__main__":
    show(run())
