"""What the benchmark modules share: a fresh emulator, pgbench, PgBouncer, an HTTP load generator, medians.

Every module starts its servers the same way (`emulator()`: neon-local's own start-up, in this process on
the running loop, with a fresh data dir and free ports), drives them from separate processes (pgbench,
Node, `python -m bench.common load`), and reports each figure as the median over ROUNDS repeats with the
range beside it, and each ratio against a baseline measured in the same rounds.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

ROUNDS = 3  # repeats behind every median and range
ROOT = Path(__file__).parent.parent


# --- medians and ranges ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(samples: Sequence[float], digits: int = 0, scale: float = 1.0) -> str:
    """`median (min-max)` of the samples, times scale."""
    median, low, high = (scale * v for v in (statistics.median(samples), min(samples), max(samples)))
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def ratio(measured: Sequence[float], baseline: Sequence[float]) -> str:
    """The median of the per-round ratios, with their range: rounds pair a figure with the baseline taken
    next to it, so a burst of noise on the shared cores moves both and cancels."""
    ratios = [m / b for m, b in zip(measured, baseline)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def run_async(prefix: str, bench: Callable[[Path], Awaitable]):
    """Run `bench(directory)` on uvloop in a fresh temporary directory that Postgres' user can enter."""
    import uvloop

    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        os.chmod(directory, 0o755)
        return uvloop.run(bench(Path(directory)))


def show(result) -> None:
    """Print what a module's run() returned (one table's rows, or {subtitle: rows}), for running it alone."""
    for subtitle, rows in (result.items() if isinstance(result, dict) else [("", result)]):
        if subtitle:
            print(f"## {subtitle}")
        for row in rows:
            print(row)


# --- neon-local ---------------------------------------------------------------------------------------


@asynccontextmanager
async def emulator(directory: Path, setup_sql: str = "", **overrides):
    """neon-local started as `up` starts it (Postgres, /sql, WebSocket, Data API, the TCP proxy), in this
    process, on free loopback ports; `setup_sql` runs as the superuser in the app's database first."""
    from neon_local.app import Emulator
    from neon_local.settings import Settings

    settings = Settings(project_dir=directory, data_dir=directory / "data", http_port=0, pg_port=0,
                        log_level="warning", **overrides)
    emu = Emulator(settings, write_state=False)
    await emu.start()
    try:
        if setup_sql:
            async with await superuser(emu) as conn:
                await conn.execute(setup_sql)
        yield emu
    finally:
        await emu.stop()


async def superuser(emu, dbname: str | None = None):
    """An autocommit psycopg connection as Postgres' superuser over the Unix socket."""
    import psycopg

    return await psycopg.AsyncConnection.connect(emu.cluster.conninfo(dbname=dbname or emu.settings.database),
                                                 autocommit=True)


@asynccontextmanager
async def services(emu, settings, directory: Path):
    """A second set of neon-local's services (own settings, own ports) on the emulator's Postgres."""
    from neon_local.services import start_services

    http_sock, pg_sock = socket.socket(), socket.socket()
    http_sock.bind(("127.0.0.1", 0))
    pg_sock.bind(("127.0.0.1", 0))
    closers: list = []
    directory.mkdir(parents=True, exist_ok=True)
    http_url = f"http://127.0.0.1:{http_sock.getsockname()[1]}"
    try:
        started = await start_services(settings, emu.cluster, directory, http_url, emu.services.keyring,
                                       http_sock, pg_sock, closers.append)
        yield started, http_sock.getsockname()[1], pg_sock.getsockname()[1]
    finally:
        for closer in reversed(closers):
            result = closer()
            if asyncio.iscoroutine(result):
                await result


# --- Postgres by hand: the floors a script could reach -------------------------------------------------


def bare_postgres():
    """Postgres' binaries (where Postgres' user can run them), that user, and a fresh directory it owns."""
    from neon_local.postgres.binaries import find_binaries
    from neon_local.postgres.cluster import RunAs

    run_as = RunAs()
    root = Path(tempfile.mkdtemp())
    run_as.give(root)
    return run_as.reachable(find_binaries()), run_as, root


def initdb(binaries, run_as, pgdata: Path) -> None:
    """initdb as a script that only needs a throw-away cluster would run it: trust, no fsync, C locale."""
    import subprocess

    from neon_local.postgres.cluster import SUPERUSER

    subprocess.run([*run_as.prefix(), binaries.tool("initdb"), "-D", pgdata, "-U", SUPERUSER, "--auth=trust",
                    "--no-sync", "--locale=C", "-E", "UTF8"], check=True, capture_output=True)


# --- pgbench ------------------------------------------------------------------------------------------


def pgbench_path() -> str:
    """Debian's pgbench (built with TLS, which sslmode=require needs), else the embedded one."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    if debian:
        return debian[-1]
    from neon_local.postgres.binaries import find_binaries

    return str(find_binaries().tool("pgbench"))


async def _run_pgbench(args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        pgbench_path(), *args, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    text = stdout.decode()
    if process.returncode != 0 or "aborted" in text:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {text} {stderr.decode()}")
    return text


async def pgbench(args: Sequence[str], env: dict[str, str] | None = None, log_dir: Path | None = None) -> dict:
    """Run pgbench; its TPS (without connection time) and mean latency, and with `log_dir` p50/p99 from
    its per-transaction log."""
    extra: list[str] = []
    if log_dir is not None:
        for old in log_dir.glob("pgbench_log*"):
            old.unlink()
        extra = ["-l", "--log-prefix", str(log_dir / "pgbench_log")]
    text = await _run_pgbench(["-n", *extra, *args], env, log_dir)
    at = list(args).index("-T") + 1 if "-T" in args else 0
    if "actually processed: 0\n" in text and at and int(args[at]) < 30:
        # -T counts from before the clients connect: on a busy machine, 64 TLS logins can use it all up.
        return await pgbench([*args[:at], str(2 * int(args[at])), *args[at + 1:]], env, log_dir)
    tps, latency = (re.search(pattern, text) for pattern in (r"tps = ([\d.]+) \(without initial connection time\)",
                                                            r"latency average = ([\d.]+) ms"))
    if not (tps and latency):
        raise RuntimeError(f"pgbench {' '.join(args)} printed no figures: {text}")
    result = {"tps": float(tps.group(1)), "latency_ms": float(latency.group(1))}
    if log_dir is not None:
        latencies = [int(line.split()[2]) / 1e3 for log in log_dir.glob("pgbench_log*") for line in log.read_text().splitlines()]
        result.update(p50_ms=percentile(latencies, 0.5), p99_ms=percentile(latencies, 0.99))
    return result


def direct_args(emu, user: str | None = None) -> list[str]:
    """pgbench's connection options for Postgres' Unix socket (it has no TCP listener)."""
    return ["-h", str(emu.cluster.socket_dir), "-p", str(emu.cluster.port), "-U", user or emu.settings.owner]


async def pgbench_init(emu, scale: int = 1) -> None:
    await _run_pgbench(["-i", "-q", "-s", str(scale), *direct_args(emu), emu.settings.database])


# --- PgBouncer ----------------------------------------------------------------------------------------


def pgbouncer_version() -> str:
    import subprocess

    out = subprocess.run([pgbouncer_path(), "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "PgBouncer"


def pgbouncer_path() -> str:
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@asynccontextmanager
async def pgbouncer(emu, directory: Path, pool_size: int = 100):
    """Debian's PgBouncer in front of the emulator's Postgres socket: session pooling, the owner with
    SCRAM (its password in the auth file), client TLS allowed with neon-local's own certificate, so
    one instance serves sslmode=disable and sslmode=require alike. Yields its port."""
    from neon_local.proxy.tls import ensure_tls

    directory.mkdir(parents=True)
    tls = ensure_tls(directory / "tls")
    for source, name in ((tls.server_cert, "server.crt"), (tls.server_key, "server.key")):
        shutil.copy(source, directory / name)
    settings, cluster = emu.settings, emu.cluster
    port = free_port()
    (directory / "users.txt").write_text(f'"{settings.owner}" "{settings.owner_password}"\n')
    (directory / "pgbouncer.ini").write_text(
        f"[databases]\n{settings.database} = host={cluster.socket_dir} port={cluster.port} dbname={settings.database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {directory / 'users.txt'}\n"
        f"pool_mode = session\ndefault_pool_size = {pool_size}\nmax_client_conn = {pool_size * 2}\n"
        f"client_tls_sslmode = allow\nclient_tls_cert_file = {directory / 'server.crt'}\n"
        f"client_tls_key_file = {directory / 'server.key'}\nlogfile = {directory / 'pgbouncer.log'}\n")
    cluster.run_as.give(directory, recursive=True)  # PgBouncer refuses to run as root, like Postgres
    process = await asyncio.create_subprocess_exec(
        *cluster.run_as.prefix(), pgbouncer_path(), str(directory / "pgbouncer.ini"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"pgbouncer did not start: {(directory / 'pgbouncer.log').read_text()}")
        yield port
    finally:
        process.terminate()
        await process.wait()


# --- HTTP load (a separate process, so the client's CPU is not the server's) ---------------------------


async def http_load(port: int, requests: Sequence[bytes], clients: int, seconds: float | None = None,
                    count: int | None = None) -> dict:
    """Keep-alive HTTP/1.1 clients sending `requests` round-robin for `seconds` (or `count` requests in
    all); requests, errors, latency p50/p99 in ms. Runs `python -m bench.common load` and waits."""
    spec = {"port": port, "requests": [r.decode() for r in requests], "clients": clients, "seconds": seconds, "count": count}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.common", "load", cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await process.communicate(json.dumps(spec).encode())
    if process.returncode != 0:
        raise RuntimeError("the HTTP load generator failed")
    return json.loads(stdout)


def post_sql(port: int, query: str, params: list, connection_string: str, token: str | None = None,
             headers: dict[str, str] | None = None) -> bytes:
    """A raw POST /sql request as Neon's driver sends it."""
    body = json.dumps({"query": query, "params": params}).encode()
    head = {"Host": f"127.0.0.1:{port}", "Neon-Connection-String": connection_string, **(headers or {})}
    if token:
        head["Authorization"] = f"Bearer {token}"
    head["Content-Length"] = str(len(body))
    return ("POST /sql HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() + body


def load_errors(runs: Sequence[dict]) -> str:
    count = sum(run["errors"] for run in runs)
    first = next((run["first_error"][0] for run in runs if run["first_error"]), "")
    return f"{count} errors" + (f" (first: {first[:200]})" if count else "")


async def _client(port: int, requests: list[bytes], turn: list[int], until: float, left: list[int],
                  latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.perf_counter() < until and left[0] != 0:
        left[0] -= 1
        request = requests[turn[0] % len(requests)]
        turn[0] += 1
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(body.decode(errors="replace"))
    writer.close()


async def _load(spec: dict) -> dict:
    requests = [r.encode() for r in spec["requests"]]
    latencies: list[float] = []
    errors: list[str] = []
    seconds, count = spec["seconds"], spec["count"]
    began = time.perf_counter()
    until = began + seconds if seconds else float("inf")
    left, turn = [count if count else -1], [0]  # shared by the clients: requests go round-robin
    await asyncio.gather(*(_client(spec["port"], requests, turn, until, left, latencies, errors)
                           for _ in range(spec["clients"])))
    elapsed = time.perf_counter() - began
    return {"requests": len(latencies), "seconds": seconds or elapsed, "per_second": len(latencies) / (seconds or elapsed),
            "errors": len(errors), "first_error": errors[:1],
            "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3}


if __name__ == "__main__" and sys.argv[1:2] == ["load"]:
    import uvloop

    print(json.dumps(uvloop.run(_load(json.loads(sys.stdin.read())))))
