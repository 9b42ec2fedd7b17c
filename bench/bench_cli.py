"""CLI: each command's wall time from a fresh process, beside `python -c pass`, pg_ctl and initdb floors."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import free_port
from neon_local.postgres.binaries import find_binaries
from neon_local.postgres.cluster import SUPERUSER, RunAs

ROUNDS = 5


def _timed(argv: list, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - began
    if result.returncode not in (0, 3):  # status exits 3 when nothing runs
        raise RuntimeError(f"{argv} failed: {result.stderr}")
    return elapsed, result


def _first_query(url: str) -> float:
    began = time.perf_counter()
    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.execute("select 1").fetchone()
    return time.perf_counter() - began


def _floors(rounds: int) -> tuple[list[float], list[float]]:
    """pg_ctl start -w + first query on an existing cluster, and initdb + that, as a script would do it."""
    binaries, run_as = find_binaries(), RunAs()
    binaries = run_as.reachable(binaries)
    restarts, fresh = [], []
    for _ in range(rounds):
        root = Path(tempfile.mkdtemp())
        run_as.give(root)
        pgdata = root / "pgdata"
        url = f"host={root} user={SUPERUSER} dbname=postgres"
        pg_ctl = [*run_as.prefix(), binaries.tool("pg_ctl"), "-D", pgdata, "-l", root / "log", "-o",
                  f"-c listen_addresses= -c unix_socket_directories={root}"]
        began = time.perf_counter()
        subprocess.run([*run_as.prefix(), binaries.tool("initdb"), "-D", pgdata, "-U", SUPERUSER, "--auth=trust",
                        "--no-sync", "--locale=C", "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run([*pg_ctl, "start", "-w"], check=True, capture_output=True)
        _first_query(url)
        fresh.append(time.perf_counter() - began)
        subprocess.run([*pg_ctl, "stop", "-m", "fast", "-w"], check=True, capture_output=True)
        began = time.perf_counter()
        subprocess.run([*pg_ctl, "start", "-w"], check=True, capture_output=True)
        _first_query(url)
        restarts.append(time.perf_counter() - began)
        subprocess.run([*pg_ctl, "stop", "-m", "immediate", "-w"], check=True, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    return restarts, fresh


def _row(what: str, samples: list[float], baseline: float | None, baseline_name: str, note: str = "") -> dict:
    median = statistics.median(samples)
    spread = f"{min(samples) * 1000:.0f}-{max(samples) * 1000:.0f}"
    return {"what": what, "median (ms)": f"{median * 1000:.0f}", "range (ms)": spread,
            "vs baseline": f"{median / baseline:.2f}x {baseline_name}" if baseline else "", "notes": note}


def run() -> list[dict]:
    project = Path(tempfile.mkdtemp())
    cache = Path(tempfile.mkdtemp())
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    env.update(NEON_LOCAL_CACHE_DIR=str(cache), NEON_LOCAL_LOG_LEVEL="warning")
    cli = [sys.executable, "-m", "neon_local"]
    ports = ["--http-port", str(free_port()), "--pg-port", str(free_port())]
    options = {"cwd": project, "env": env}

    python = [_timed([sys.executable, "-c", "pass"])[0] for _ in range(ROUNDS)]
    version = [_timed([*cli, "--version"], **options)[0] for _ in range(ROUNDS)]
    idle_status = [_timed([*cli, "status"], **options)[0] for _ in range(ROUNDS)]
    _timed([*cli, "up", "-d", *ports], **options)  # builds the template and the data dir once
    _timed([*cli, "down"], **options)

    restart_up, restart_query, status, token, down = [], [], [], [], []
    for _ in range(ROUNDS):
        elapsed, result = _timed([*cli, "up", "-d", *ports], **options)
        restart_up.append(elapsed)
        url = next(line.split()[-1] for line in result.stdout.splitlines() if "Owner URL" in line)
        restart_query.append(elapsed + _first_query(url))
        status.append(_timed([*cli, "status"], **options)[0])
        token.append(_timed([*cli, "token", "alice"], **options)[0])
        down.append(_timed([*cli, "down"], **options)[0])

    fresh_up = []
    for _ in range(ROUNDS):
        data_dir = Path(tempfile.mkdtemp()) / "data"
        elapsed, result = _timed([*cli, "up", "-d", "--data-dir", str(data_dir), *ports], **options)
        url = next(line.split()[-1] for line in result.stdout.splitlines() if "Owner URL" in line)
        fresh_up.append(elapsed + _first_query(url))
        _timed([*cli, "down", "--data-dir", str(data_dir)], **options)
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    pg_restart, pg_fresh = _floors(ROUNDS)
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)

    base = statistics.median(python)
    return [
        _row("baseline: `python -c pass`", python, None, ""),
        _row("`neon-local --version`", version, base, "python", "target < 150 ms"),
        _row("`neon-local status`, nothing running", idle_status, base, "python", "target < 150 ms"),
        _row("`neon-local status`, running", status, base, "python", "target < 150 ms"),
        _row("`neon-local token alice`, running", token, base, "python", "signed by the running issuer; target < 150 ms"),
        _row("`neon-local down`", down, base, "python", "includes the fast shutdown; target < 150 ms"),
        _row("floor: `pg_ctl start -w` + first query", pg_restart, None, ""),
        _row("`up -d` on an existing data dir + first query", restart_query, statistics.median(pg_restart), "floor",
             f"target <= 2x; `up -d` alone {statistics.median(restart_up) * 1000:.0f} ms"),
        _row("floor: initdb + `pg_ctl start -w` + first query", pg_fresh, None, ""),
        _row("`up -d`, fresh data dir, cached template + first query", fresh_up, statistics.median(pg_fresh), "floor",
             "target <= 1.2x"),
    ]
