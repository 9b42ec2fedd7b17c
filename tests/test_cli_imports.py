"""The quick commands import none of the server's libraries, and `up -d` imports them once (in the server).

Checked in real processes by the modules each one loaded, not by timing (bench/bench_cli.py times them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from neon_local.auth.keys import ALGORITHMS as KEYRING_ALGORITHMS
from neon_local.cli.auth import ALGORITHMS as TOKEN_ALGORITHMS

# What the server needs and a command that only reads files must not pay for (~0.4 s together).
HEAVY = {"aiohttp", "psycopg", "joserfc", "cryptography", "asyncio", "uvloop", "httpx"}

# Runs the CLI in this process, then reports which of HEAVY it imported.
PROBE = f"""
import sys
from neon_local.cli import main
try:
    main(sys.argv[1:], prog_name="neon-local")
finally:
    loaded = sorted({{name.split(".")[0] for name in sys.modules}} & {HEAVY!r})
    print("\\nIMPORTED " + ",".join(loaded), file=sys.stderr)
"""


def probe(*args: str, cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    line = [line for line in result.stderr.splitlines() if line.startswith("IMPORTED ")][-1]
    return result, set(filter(None, line.removeprefix("IMPORTED ").split(",")))


def test_version_status_and_down_import_nothing_heavy(tmp_path):
    version, imported = probe("--version", cwd=tmp_path)
    assert version.stdout.startswith("neon-local, version ") and "PostgreSQL 1" in version.stdout
    assert imported == set()
    status, imported = probe("status", cwd=tmp_path)
    assert status.returncode == 3 and imported == set()
    down, imported = probe("down", cwd=tmp_path)
    assert "not running" in down.stdout and imported == set()


def test_up_detach_leaves_the_imports_to_the_server_and_quick_commands_stay_quick(tmp_path):
    up, imported = probe("up", "-d", "--http-port", "0", "--pg-port", "0", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        assert imported == set(), "the waiting parent of `up -d` imported the server's libraries too"
        assert "is ready in" in up.stdout
        status, imported = probe("status", "--json", cwd=tmp_path)
        assert json.loads(status.stdout)["running"] and imported == set()
        token, imported = probe("token", "alice", cwd=tmp_path)
        assert token.returncode == 0 and token.stdout.count(".") == 2
        assert imported == set(), "token should be signed by the running issuer"
    finally:
        down, imported = probe("down", cwd=tmp_path)
    assert "Stopped neon-local" in down.stdout and imported == set()


def test_token_offers_the_algorithms_the_keyring_signs_with():
    assert TOKEN_ALGORITHMS == KEYRING_ALGORITHMS


def test_the_servers_modules_leave_pglast_to_the_first_fingerprint():
    """`up` loads these on its start path (app._load_services); pglast (~25 ms) waits until the allow-list parses."""
    probe_imports = ("import sys, neon_local.postgres.bootstrap, neon_local.services as s; s.import_http_modules(); "
                     "from neon_local.limits.fingerprint import Fingerprinter; assert 'pglast' not in sys.modules; "
                     "Fingerprinter().statements('select 1'); print('pglast' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe_imports], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
