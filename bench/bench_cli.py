"""CLI: each command's wall time from a fresh process, beside `python -c pass`, pg_ctl and initdb floors.

Every round runs each command and each floor once, so a floor is measured next to what it is the
floor of; medians of ROUNDS rounds with the range, ratios the median of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

from bench.common import bare_postgres, free_port, initdb, ratio, show, spread
from neon_local.postgres.cluster import SUPERUSER

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


def _first_sql_request(sql_url: str, owner_url: str) -> float:
    """POST /sql as the owner, as the serverless driver's first query does."""
    began = time.perf_counter()
    request = urllib.request.Request(sql_url, method="POST", headers={"Neon-Connection-String": owner_url},
                                     data=json.dumps({"query": "select 1", "params": []}).encode())
    with _LOOPBACK.open(request, timeout=10) as response:
        response.read()
    return time.perf_counter() - began


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy


def _printed(result: subprocess.CompletedProcess, label: str) -> str:
    """A URL from `up`'s banner."""
    return next(line.split()[-1] for line in result.stdout.splitlines() if line.strip().startswith(label))


def _floors() -> tuple[float, float]:
    """pg_ctl start -w + first query on an existing cluster, and initdb + that, as a script would do it."""
    binaries, run_as, root = bare_postgres()
    pgdata = root / "pgdata"
    url = f"host={root} user={SUPERUSER} dbname=postgres"
    pg_ctl = [*run_as.prefix(), binaries.tool("pg_ctl"), "-D", pgdata, "-l", root / "log", "-o",
              f"-c listen_addresses= -c unix_socket_directories={root}"]
    began = time.perf_counter()
    initdb(binaries, run_as, pgdata)
    subprocess.run([*pg_ctl, "start", "-w"], check=True, capture_output=True)
    _first_query(url)
    fresh = time.perf_counter() - began
    subprocess.run([*pg_ctl, "stop", "-m", "fast", "-w"], check=True, capture_output=True)
    began = time.perf_counter()
    subprocess.run([*pg_ctl, "start", "-w"], check=True, capture_output=True)
    _first_query(url)
    restart = time.perf_counter() - began
    subprocess.run([*pg_ctl, "stop", "-m", "immediate", "-w"], check=True, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
    return restart, fresh


def _row(what: str, samples: list[float], baseline: list[float] | None = None, baseline_name: str = "", note: str = "") -> dict:
    return {"what": what, "median (range) ms": spread(samples, 0, 1000),
            "vs baseline": f"{ratio(samples, baseline)} {baseline_name}" if baseline else "", "notes": note}


def run() -> list[dict]:
    project = Path(tempfile.mkdtemp())
    cache = Path(tempfile.mkdtemp())
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    env.update(NEON_LOCAL_CACHE_DIR=str(cache), NEON_LOCAL_LOG_LEVEL="warning")
    cli = [sys.executable, "-m", "neon_local"]
    ports = ["--http-port", str(free_port()), "--pg-port", str(free_port())]
    options = {"cwd": project, "env": env}

    _timed([*cli, "up", "-d", *ports], **options)  # builds the template and the data dir once
    _timed([*cli, "down"], **options)
    times: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    for _ in range(ROUNDS):
        add("python", _timed([sys.executable, "-c", "pass"])[0])
        add("version", _timed([*cli, "--version"], **options)[0])
        add("idle status", _timed([*cli, "status"], **options)[0])
        elapsed, result = _timed([*cli, "up", "-d", *ports], **options)
        add("restart up", elapsed)
        add("restart query", elapsed + _first_query(_printed(result, "Owner URL")))
        add("status", _timed([*cli, "status"], **options)[0])
        add("token", _timed([*cli, "token", "alice"], **options)[0])
        add("down", _timed([*cli, "down"], **options)[0])
        elapsed, result = _timed([*cli, "up", "-d", *ports], **options)  # ready comes before the HTTP side is up
        add("restart sql", elapsed + _first_sql_request(_printed(result, "SQL over HTTP"), _printed(result, "Owner URL")))
        _timed([*cli, "down"], **options)
        data_dir = Path(tempfile.mkdtemp()) / "data"
        elapsed, result = _timed([*cli, "up", "-d", "--data-dir", str(data_dir), *ports], **options)
        add("fresh up", elapsed + _first_query(_printed(result, "Owner URL")))
        _timed([*cli, "down", "--data-dir", str(data_dir)], **options)
        shutil.rmtree(data_dir.parent, ignore_errors=True)
        pg_restart, pg_fresh = _floors()
        add("pg restart", pg_restart)
        add("pg fresh", pg_fresh)
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)

    python = times["python"]
    return [
        _row("baseline: `python -c pass`", python),
        _row("`neon-local --version`", times["version"], python, "python", "target < 150 ms"),
        _row("`neon-local status`, nothing running", times["idle status"], python, "python", "target < 150 ms"),
        _row("`neon-local status`, running", times["status"], python, "python", "target < 150 ms"),
        _row("`neon-local token alice`, running", times["token"], python, "python", "signed by the running issuer; target < 150 ms"),
        _row("`neon-local down`", times["down"], python, "python", "includes the fast shutdown; target < 150 ms"),
        _row("floor: `pg_ctl start -w` + first query", times["pg restart"]),
        _row("`up -d` on an existing data dir + first query", times["restart query"], times["pg restart"], "floor",
             f"target <= 2x; `up -d` alone {spread(times['restart up'], 0, 1000)} ms"),
        _row("`up -d` on an existing data dir + first POST /sql", times["restart sql"], times["pg restart"], "floor",
             "the HTTP side finishes loading after ready; the request waits for it"),
        _row("floor: initdb + `pg_ctl start -w` + first query", times["pg fresh"]),
        _row("`up -d`, fresh data dir, cached template + first query", times["fresh up"], times["pg fresh"], "floor",
             "target <= 1.2x"),
    ]


if __name__ == "__main__":
    show(run())
