"""Start-up: `neon-local up` to first query, cold and warm, against initdb + start by hand; memory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import ROUNDS, bare_postgres, free_port, initdb, ratio, show, spread


def _wait_ready(pgdata: Path, proc: subprocess.Popen) -> None:
    while proc.poll() is None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().split("\n")
            if len(lines) > 7 and lines[7].strip() == "ready":
                return
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("postgres exited")


def floor_by_hand() -> tuple[float, float]:
    """initdb, then postgres started and polled for readiness as tightly as a script could."""
    binaries, run_as, root = bare_postgres()
    pgdata = root / "pgdata"
    began = time.perf_counter()
    initdb(binaries, run_as, pgdata)
    made = time.perf_counter() - began
    began = time.perf_counter()
    proc = subprocess.Popen([*run_as.prefix(), binaries.tool("postgres"), "-D", pgdata, "-c", "listen_addresses=",
                             "-c", f"unix_socket_directories={root}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(pgdata, proc)
    start = time.perf_counter() - began
    proc.send_signal(signal.SIGINT)
    proc.wait()
    shutil.rmtree(root, ignore_errors=True)
    return made, start


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # a short-lived backend that exited meanwhile
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children + [d for c in children for d in _descendants(c)]


def up_to_first_query(cache: Path, data_dir: Path | None) -> tuple[float, int, int]:
    """Seconds from spawning `neon-local up` to a query answered through the TCP proxy; RSS of it and of Postgres."""
    http_port, pg_port = free_port(), free_port()
    env = dict(os.environ, NEON_LOCAL_CACHE_DIR=str(cache), NEON_LOCAL_LOG_LEVEL="warning")
    where = ["--data-dir", str(data_dir)] if data_dir else ["--ephemeral"]
    url = f"postgresql://neondb_owner:npg_neonlocal@127.0.0.1:{pg_port}/neondb?sslmode=require"
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "neon_local", "up", *where, "--http-port", str(http_port),
                             "--pg-port", str(pg_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=tempfile.gettempdir())
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("neon-local up exited")
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    conn.execute("select 1").fetchone()
                break
            except psycopg.OperationalError:
                time.sleep(0.005)
        elapsed = time.perf_counter() - began
        rss_self = _rss_kib(proc.pid)
        rss_pg = sum(_rss_kib(p) for p in _descendants(proc.pid))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    return elapsed, rss_self, rss_pg


def run() -> list[dict]:
    """Each round: the floor, then cold, warm and restart starts, so each sits beside the floor of its round."""
    floors, colds, warms, restarts = [], [], [], []
    for _ in range(ROUNDS):
        floors.append(floor_by_hand())
        cache = Path(tempfile.mkdtemp())
        colds.append(up_to_first_query(cache, None))
        warms.append(up_to_first_query(cache, None))
        data_dir = Path(tempfile.mkdtemp()) / "data"
        up_to_first_query(cache, data_dir)
        restarts.append(up_to_first_query(cache, data_dir))
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    floor = [initdb + start for initdb, start in floors]
    rows = [{"what": "floor: initdb + postgres start by hand", "median (range) s": spread(floor, 3), "vs floor": "1.00x",
             "notes": f"initdb {spread([i for i, _ in floors], 3)} s, start {spread([s for _, s in floors], 3)} s"}]
    for label, runs, note in [
        ("cold: `up --ephemeral`, empty template cache", colds, "runs initdb"),
        ("warm: `up --ephemeral`, cached template", warms, "copies the cached cluster"),
        ("restart: `up` on an existing data dir", restarts, "no copy"),
    ]:
        seconds = [r[0] for r in runs]
        rows.append({"what": label, "median (range) s": spread(seconds, 3), "vs floor": ratio(seconds, floor), "notes": note})
    rss_self, rss_pg = warms[-1][1], warms[-1][2]
    rows.append({"what": "memory after start (RSS)", "median (range) s": "", "vs floor": "",
                 "notes": f"neon-local {rss_self / 1024:.0f} MiB, Postgres processes {rss_pg / 1024:.0f} MiB (shared memory counted per process)"})
    return rows


if __name__ == "__main__":
    show(run())
