"""The README's neon-js Data API quick start works as printed: its shell lines and its script, run as they
stand against a copy of fixtures/todos (only the HTTP port changed, so the test cannot clash with an
emulator on 4444), print alice's rows; `neon-local status` names the Data API URL the script used."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
NODE_DIR = ROOT / "tests" / "node"
README = (ROOT / "README.md").read_text()


def quick_start() -> tuple[str, str]:
    """The shell block and the script block of the README's Data API section, in that order."""
    section = README[README.index("**The Data API**"):README.index("`neon-local data-api types --lang ts")]
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    script = re.search(r"```js\n(.*?)```", section, re.S)
    assert shell and script, "the Data API quick start lost its sh or js block"
    return shell.group(1), script.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_readme_quick_start_runs_as_printed(tmp_path):
    shell, script = quick_start()
    app = tmp_path / "fixtures" / "todos"
    shutil.copytree(ROOT / "fixtures" / "todos", app, ignore=shutil.ignore_patterns(".neon-local", "__pycache__"))
    port = free_port()
    (app / "quickstart.mjs").write_text(script.replace("127.0.0.1:4444", f"127.0.0.1:{port}"))
    if not (NODE_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True)
    (app / "node_modules").symlink_to(NODE_DIR / "node_modules")  # what `npm install @neondatabase/neon-js` gives
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "neon-local").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m neon_local "$@"\n')
    (bin_dir / "neon-local").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", NEON_LOCAL_HTTP_PORT=str(port), NEON_LOCAL_PG_PORT="0")
    try:
        run = subprocess.run(["sh", "-e", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.strip().splitlines()[-1] == "[ { id: 1, task: 'write tests' } ]", run.stdout + run.stderr
        status = subprocess.run(["neon-local", "status"], cwd=app, env=env, capture_output=True, text=True, timeout=60)
        assert re.search(rf"Data API +http://127\.0\.0\.1:{port}/neondb/rest/v1 ", status.stdout), status.stdout
    finally:
        subprocess.run(["neon-local", "down"], cwd=app, env=env, capture_output=True, timeout=60)
