"""The built wheel, installed as a user installs it: `python -m build`, a fresh venv outside the checkout
(no editable install, no checkout on sys.path, run from a temporary directory), then the emulator, its
clients and the pytest plugin on the sample app. Package data is checked by using it, and by comparing
the installed package with the source tree, so a new data folder cannot be forgotten."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.tags import sys_tags

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "neon_local"
SOURCE_ONLY = {".py", ".pyc", ".c"}  # Python is checked by importing it; the C source ships in the sdist only


def run(*args, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict:
    """An environment with nothing of the checkout or of this test run's venv in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "NEON_LOCAL_", "PYTEST"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT)))
    env["HOME"] = str(tmp_path_factory.mktemp("home"))  # the user's caches start empty, as on a fresh machine
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or os.path.expanduser("~/.cache/pip")  # but not pip's
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory, user_env) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out, env=user_env)
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory, dist, user_env) -> Path:
    """A fresh venv with the wheel (and pytest, as an app's test suite brings it); no editable install."""
    home = tmp_path_factory.mktemp("user")
    path = home / "venv"
    run(sys.executable, "-m", "venv", path, cwd=home, env=user_env)
    wheel, = dist.glob("neon_local-*.whl")
    run(path / "bin" / "pip", "install", "--quiet", wheel, "pytest>=8", "pytest-asyncio>=0.24", cwd=home, env=user_env)
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


def test_build_makes_a_wheel_and_an_sdist_that_carries_the_module_source(dist):
    sdist, = dist.glob("neon_local-*.tar.gz")
    listing = subprocess.run(["tar", "tzf", sdist], capture_output=True, text=True, check=True).stdout.split()
    assert any(name.endswith("neon_local/postgres/contrib/src/neon_local_contrib.c") for name in listing)
    assert any(name.endswith("/setup.py") for name in listing)


def test_the_wheel_is_tagged_manylinux_for_the_newest_glibc_its_module_needs(dist, tmp_path):
    wheel, = dist.glob("neon_local-*.whl")
    tag = wheel.name.removesuffix(".whl").split("-", 2)[2]
    with zipfile.ZipFile(wheel) as archive:
        metadata, = (name for name in archive.namelist() if name.endswith(".dist-info/WHEEL"))
        assert f"Tag: {tag}" in archive.read(metadata).decode().splitlines()
        modules = [Path(archive.extract(name, tmp_path)) for name in archive.namelist() if name.endswith(".so")]
    assert modules, "the wheel carries no compiled module: was it built without a C compiler?"
    # binutils' reading of the symbol versions, independent of setup.py's own
    references = subprocess.run(["objdump", "-p", *modules], capture_output=True, text=True, check=True).stdout
    needed = max((int(major), int(minor)) for major, minor in re.findall(r"\bGLIBC_(\d+)\.(\d+)", references))
    platform = re.fullmatch(r"py3-none-manylinux_(\d+)_(\d+)_x86_64", tag)
    assert platform, tag
    assert (int(platform[1]), int(platform[2])) == max(needed, (2, 17)), (tag, needed)
    assert tag in {str(t) for t in sys_tags()}  # pip on this machine installs it


def test_the_installed_package_is_the_wheel_and_carries_every_data_file(venv, project, user_env):
    where = run(venv / "bin" / "python", "-c", "import neon_local, sys; print(neon_local.__file__); print(sys.path)",
                cwd=project, env=user_env).stdout.splitlines()
    installed = Path(where[0]).parent
    assert installed.is_relative_to(venv), where
    assert str(ROOT) not in where[1]
    expected = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*")
                if p.is_file() and p.suffix not in SOURCE_ONLY and "__pycache__" not in p.parts and p.suffix != ".so"}
    missing = sorted(str(p) for p in expected if not (installed / p).is_file())
    assert not missing, f"the wheel lacks {missing}: MANIFEST.in or pyproject's package data leaves them out"
    modules = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")}
    assert not sorted(str(p) for p in modules if not (installed / p).is_file())


def test_up_detached_answers_jwt_queries_over_http_and_tls_then_goes_down(venv, project, user_env):
    cli = venv / "bin" / "neon-local"
    started = run(cli, "up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project, env=user_env)
    try:
        assert "is ready in" in started.stdout
        state = json.loads(run(cli, "status", "--json", cwd=project, env=user_env).stdout)
        token = run(cli, "token", "alice", cwd=project, env=user_env).stdout.strip()

        answer = httpx.post(state["urls"]["sql"], json={"query": "select auth.user_id() as who", "params": []},
                            headers={"Neon-Connection-String": f"postgresql://authenticated@localhost/{state['database']}",
                                     "Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [{"who": "user_alice"}]

        over_tls = run("psql", f"postgresql://authenticated@127.0.0.1:{state['pg_port']}/{state['database']}?sslmode=require",
                       "-XAt", "-c", r"\conninfo", "-c", "select auth.user_id()",
                       cwd=project, env={**user_env, "PGPASSWORD": token})
        assert "SSL connection" in over_tls.stdout and over_tls.stdout.splitlines()[-1] == "user_alice"

        contrib = run("psql", state["urls"]["owner"], "-XAtq", "-c", "create extension if not exists pgcrypto",
                      "-c", "select length(gen_random_bytes(8))", cwd=project, env=user_env)
        assert contrib.stdout.split() == ["8"]  # the compiled module and its SQL came with the wheel
    finally:
        run(cli, "down", cwd=project, env=user_env)
    assert run(cli, "status", cwd=project, env=user_env, check=False).returncode == 3


def test_the_pytest_plugin_runs_the_sample_app_from_the_wheel(venv, tmp_path, user_env):
    app = tmp_path / "todos"
    shutil.copytree(ROOT / "fixtures" / "todos", app)
    result = run(venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=app, env=user_env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout and "error" not in result.stdout
