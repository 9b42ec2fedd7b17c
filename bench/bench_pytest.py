"""pytest plugin: session start-up, and each test's isolation: a fresh database (clone mode) beside a bare
CREATE DATABASE ... TEMPLATE, and a rolled-back transaction (rollback mode)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from neon_local.testing.database import Database, RollbackDatabase
from neon_local.testing.janitor import Janitor
from neon_local.testing.migrations import steps_from
from neon_local.testing.server import NeonLocal

SAMPLE = Path(__file__).parent.parent / "fixtures" / "todos"
ROUNDS = 3  # session start-ups, and pytest runs of each kind
CLONES = 50  # databases per way of making them
ROLLBACKS = 500  # rollback-mode tests
E2E_TESTS = 100  # tests in the end-to-end pytest runs
E2E_ROLLBACK_TESTS = 500


def _row(measure: str, seconds: list[float], goal: str = "") -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"measure": measure, "n": len(ms), "median ms": round(statistics.median(ms), 1),
            "p95 ms": round(ms[max(0, round(len(ms) * 0.95) - 1)], 1), "goal": goal}


def _session_start() -> tuple[list[float], list[float]]:
    """Emulator start and template build (the sample app's migrations and seed), each round from scratch."""
    starts, templates = [], []
    steps = steps_from([SAMPLE / "migrations", SAMPLE / "seed.sql"])
    for _ in range(ROUNDS):
        began = time.perf_counter()
        server = NeonLocal.open(SAMPLE, None, reuse=False)
        starts.append(time.perf_counter() - began)
        janitor = Janitor(server, "nl_bench")
        janitor.build_template(steps)
        templates.append(janitor.template_seconds)
        janitor.close()
        server.stop()
    return starts, templates


def _per_test(server: NeonLocal, janitor: Janitor) -> tuple[list[float], list[float], list[float]]:
    """What neon_db costs a test in clone mode (clone, the Database, an owner query, close, drop), the bare SQL
    alone, and rollback mode (begin, an owner query, roll back)."""
    fixture, bare, rollback = [], [], []
    for _ in range(CLONES):
        began = time.perf_counter()
        name = janitor.clone()
        database = Database(name, server)
        database.owner().execute("select 1")
        database.close()
        janitor.drop(name)
        fixture.append(time.perf_counter() - began)
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as admin:
        for i in range(CLONES):
            name = sql.Identifier(f"nl_bench_bare_{i}")
            began = time.perf_counter()
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(name, sql.Identifier(janitor.template)))
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
            bare.append(time.perf_counter() - began)
    janitor.shared()  # the session's one clone and connection, made by the first rollback-mode test
    for _ in range(ROLLBACKS):
        began = time.perf_counter()
        name, session = janitor.shared()
        database = RollbackDatabase(name, server, session)
        database.owner().execute("select 1")
        database.close()
        rollback.append(time.perf_counter() - began)
    return fixture, bare, rollback


def _pytest_run(app: Path, fixture: str, tests: int, *options: str) -> tuple[float, str]:
    """Wall time and output of a pytest run of `tests` empty tests that each take `fixture`."""
    (app / "tests" / "test_bench.py").write_text(
        f"import pytest\n\n@pytest.mark.parametrize('i', range({tests}))\ndef test_one({fixture}, i):\n    pass\n")
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, "tests/test_bench.py"],
                          cwd=app, check=True, capture_output=True, text=True)
    return time.perf_counter() - began, done.stdout


def _extra_seconds(app: Path, tests: int) -> float:
    """Median over ROUNDS of (run with neon_db - run with pytestconfig; tmp_path would add its own clean-up of old
    temp dirs), the two run back to back against drift."""
    return statistics.median(_pytest_run(app, "neon_db", tests)[0] - _pytest_run(app, "pytestconfig", tests)[0]
                             for _ in range(ROUNDS))


def _rollback_summary(app: Path) -> dict:
    """A real pytest run in rollback mode: the plugin's own summary line gives the per-test median and p95 (a
    millisecond is lost in the noise of subtracting two whole runs)."""
    output = _pytest_run(app, "neon_db", E2E_ROLLBACK_TESTS, "--neon-local-isolation=rollback")[1]
    found = re.search(r"(\d+) rolled-back test\(s\), ([\d.]+) ms median, ([\d.]+) ms p95", output)
    return {"measure": f"pytest run: per test with neon_db, rollback mode (the summary line of {E2E_ROLLBACK_TESTS} tests: "
                       f"begin, roll back)", "n": int(found[1]), "median ms": float(found[2]), "p95 ms": float(found[3]),
            "goal": "< 2 ms"}


def _end_to_end() -> list[dict]:
    """Whole pytest runs of the sample app: the plugin's cost for 1 test and, per test, for E2E_TESTS; rollback mode."""
    app = Path(tempfile.mkdtemp(prefix="neon-local-bench-"))
    try:
        shutil.copytree(SAMPLE, app, dirs_exist_ok=True)
        one, many = _extra_seconds(app, 1), _extra_seconds(app, E2E_TESTS)
        rollback = _rollback_summary(app)
    finally:
        shutil.rmtree(app, ignore_errors=True)
    return [{"measure": "pytest run: session cost of the plugin (1 test with neon_db minus 1 with pytestconfig, a fixture with no I/O)",
             "n": ROUNDS, "median ms": round(one * 1000), "p95 ms": "", "goal": "about 1 s"},
            {"measure": f"pytest run: per test with neon_db, clone mode ({E2E_TESTS} tests, minus the same with pytestconfig)",
             "n": ROUNDS, "median ms": round((many - one) / (E2E_TESTS - 1) * 1000, 1), "p95 ms": "", "goal": "< 50 ms"},
            rollback]


def run() -> list[dict]:
    starts, templates = _session_start()
    server = NeonLocal.open(SAMPLE, None, reuse=False)
    janitor = Janitor(server, "nl_bench")
    try:
        janitor.build_template(steps_from([SAMPLE / "migrations", SAMPLE / "seed.sql"]))
        fixture, bare, rollback = _per_test(server, janitor)
    finally:
        janitor.close()
        server.stop()
    return [
        _row("session: emulator start (neon_local)", starts, "about 1 s"),
        _row("session: template from the sample's migrations + seed (neon_template, once)", templates),
        _row("per test, clone mode: neon_db (clone, owner query, drop)", fixture, "< 50 ms"),
        _row("per test: bare CREATE DATABASE ... TEMPLATE + DROP ... WITH (FORCE)", bare),
        _row("per test, rollback mode: neon_db (begin, owner query, roll back)", rollback, "< 2 ms"),
        *_end_to_end(),
    ]
