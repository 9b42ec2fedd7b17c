"""codegen: `neon-local codegen` for 100 statements against a running emulator (goal < 2 s), beside `status`;
`--watch` from one file's change to the module rewritten (goal < 300 ms), beside one generation in process."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from neon_local.codegen.generate import generate

ROUNDS = 5
STATEMENTS = 100
FIXTURE = Path(__file__).parent.parent / "fixtures" / "todos"
SHAPES = [
    "-- name: List{n} :many\nSELECT id, task, is_complete, inserted_at FROM todos WHERE is_complete = @done AND id > {n};\n",
    "-- name: Count{n} :one\n-- nonnull: total\nSELECT count(*) AS total, max(inserted_at) AS latest FROM todos WHERE id > @after;\n",
    "-- name: Create{n} :one\nINSERT INTO todos (task) VALUES (@task) RETURNING id, task, user_id;\n",
    "-- name: Complete{n} :execrows\nUPDATE todos SET is_complete = true WHERE id = @id;\n",
]


def _cli(project: Path, *args: str) -> float:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "neon_local", *args], cwd=project, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if result.returncode not in (0, 3):
        raise RuntimeError(f"neon-local {' '.join(args)} failed: {result.stderr}")
    return elapsed


def run() -> list[dict]:
    project = Path(tempfile.mkdtemp())
    shutil.copy(FIXTURE / "neon_local.toml", project)
    queries = project / "queries"
    queries.mkdir()
    for file in range(4):
        (queries / f"q{file}.sql").write_text("\n".join(SHAPES[n % len(SHAPES)].format(n=n)
                                                        for n in range(file * 25, file * 25 + 25)))
    _cli(project, "up", "--detach", "--http-port", "0", "--pg-port", "0")
    try:
        state = json.loads(subprocess.run([sys.executable, "-m", "neon_local", "status", "--json"], cwd=project,
                                          capture_output=True, text=True).stdout)
        with psycopg.connect(state["urls"]["owner"], autocommit=True) as conn:
            conn.execute((FIXTURE / "migrations" / "0000_todos.sql").read_text())
            in_process = []
            for _ in range(ROUNDS):
                began = time.perf_counter()
                generate(conn, queries)
                in_process.append(time.perf_counter() - began)
        status = statistics.median(_cli(project, "status") for _ in range(ROUNDS))
        command = statistics.median(_cli(project, "codegen") for _ in range(ROUNDS))
        inside = statistics.median(in_process)
        rewrite = statistics.median(_watch_rounds(project, queries / "q0.sql"))
    finally:
        try:
            _cli(project, "down")
        finally:
            shutil.rmtree(project, ignore_errors=True)
    return [
        {"case": "`neon-local status` (baseline: a command's start-up)", "median ms": f"{status * 1000:.0f}", "× baseline": "1.00"},
        {"case": f"`neon-local codegen`, {STATEMENTS} statements (goal < 2000 ms)", "median ms": f"{command * 1000:.0f}",
         "× baseline": f"{command / status:.2f}"},
        {"case": f"generate() in process, {STATEMENTS} statements, connection open", "median ms": f"{inside * 1000:.0f}",
         "× baseline": f"{inside / status:.2f}"},
        {"case": "`codegen --watch`: one .sql file changed → module rewritten (goal < 300 ms)",
         "median ms": f"{rewrite * 1000:.0f}", "× baseline": f"{rewrite / status:.2f}"},
    ]


def _watch_rounds(project: Path, changed: Path) -> list[float]:
    """Seconds from a file's change to the watcher's "wrote" line, per round."""
    process = subprocess.Popen([sys.executable, "-m", "neon_local", "codegen", "--watch"], cwd=project,
                               stdout=subprocess.PIPE, text=True)
    try:
        while "Watching" not in process.stdout.readline():
            pass
        times = []
        for round_ in range(ROUNDS):
            began = time.perf_counter()
            with changed.open("a") as file:
                file.write(f"-- touched {round_}\n")
            while "wrote" not in process.stdout.readline():
                pass
            times.append(time.perf_counter() - began)
        return times
    finally:
        process.terminate()
        process.wait()
