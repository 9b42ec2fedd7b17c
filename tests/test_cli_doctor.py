"""`neon-local doctor`: each check is broken for real and must say FAIL (or WARN) with its fix; healthy means exit 0."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from urllib.request import urlopen

import pytest

from neon_local.auth.keys import KeyRing
from neon_local.cli.doctor import check_root
from neon_local.postgres.binaries import find_binaries


def doctor(project: Path, *args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> tuple[int, dict]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    full_env.update(env or {})
    result = subprocess.run([*prefix, sys.executable, "-m", "neon_local", "doctor", "--json", *args], cwd=project,
                            env=full_env, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0), result.stderr
    return result.returncode, {c["check"]: c for c in report["checks"]}


@pytest.fixture
def project(tmp_path):
    (tmp_path / "neon_local.toml").write_text("http_port = 0\npg_port = 0\n")
    return tmp_path


def test_a_healthy_project_passes(project):
    code, checks = doctor(project)
    assert code == 0
    assert [c["status"] for c in checks.values()].count("FAIL") == 0
    assert checks["postgres"]["message"].startswith("PostgreSQL 18.")
    assert checks["tls"]["status"] == "WARN" and "first `up` creates it" in checks["tls"]["fix"]


def test_missing_postgres_binaries(project, tmp_path_factory):
    code, checks = doctor(project, env={"NEON_LOCAL_PG_BIN": "/nonexistent/bin"})
    assert code == 1 and checks["postgres"]["status"] == "FAIL" and "--pg-bin" in checks["postgres"]["fix"]
    assert checks["template"]["status"] == "WARN"
    only_server = tmp_path_factory.mktemp("pg") / "bin"
    only_server.mkdir()
    (only_server / "postgres").symlink_to(find_binaries().tool("postgres"))
    code, checks = doctor(project, env={"NEON_LOCAL_PG_BIN": str(only_server)})
    assert code == 1 and "lacks initdb, pg_ctl" in checks["postgres"]["message"]


@pytest.fixture
def cache():
    """An empty cache directory that `nobody` can reach (as root, Postgres runs as nobody from it)."""
    path = Path(tempfile.mkdtemp(prefix="neon-local-cache-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_template_cache_missing_then_broken(project, cache):
    code, checks = doctor(project, env={"NEON_LOCAL_CACHE_DIR": str(cache)})
    assert code == 0 and checks["template"]["status"] == "WARN" and "first `up` builds one" in checks["template"]["fix"]
    broken = cache / "templates" / f"pg{find_binaries().version}-0123456789ab"
    broken.mkdir(parents=True)
    (broken / "PG_VERSION").write_text("18\n")  # a build that stopped before the cluster was complete
    code, checks = doctor(project, env={"NEON_LOCAL_CACHE_DIR": str(cache)})
    assert code == 1 and checks["template"]["status"] == "FAIL" and f"rm -rf {broken}" in checks["template"]["fix"]


def test_a_taken_port_names_the_process_that_holds_it(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, checks = doctor(project, env={"NEON_LOCAL_HTTP_PORT": str(port)})
    assert code == 1 and checks["http_port"]["status"] == "FAIL"
    assert f"{port} on 127.0.0.1 is taken by pid {os.getpid()} (" in checks["http_port"]["message"]
    assert "config set http_port PORT" in checks["http_port"]["fix"]
    assert checks["pg_port"]["status"] == "OK"


def test_data_dir_that_is_a_file_or_a_cluster_postgres_would_refuse(project):
    (project / "data").write_text("not a directory")
    code, checks = doctor(project, env={"NEON_LOCAL_DATA_DIR": str(project / "data")})
    assert code == 1 and "is not a directory" in checks["data dir"]["message"]
    pgdata = project / ".neon-local" / "pgdata"
    pgdata.mkdir(parents=True)
    if os.geteuid() == 0:  # Postgres runs as nobody then; give it the directory so only the mode is wrong
        shutil.chown(pgdata, "nobody")
    pgdata.chmod(0o777)
    code, checks = doctor(project)
    assert code == 1 and "has mode 0777" in checks["data dir"]["message"] and checks["data dir"]["fix"] == f"chmod 700 {pgdata}"


def test_running_as_root_needs_setpriv_and_a_reachable_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no setpriv here
    refused = check_root(euid=0)
    assert refused.status == "FAIL" and "util-linux" in refused.fix
    monkeypatch.undo()
    closed = tmp_path / "private"
    (closed / "cache").mkdir(parents=True)
    closed.chmod(0o700)
    monkeypatch.setenv("NEON_LOCAL_CACHE_DIR", str(closed / "cache"))
    refused = check_root(euid=0)
    assert refused.status == "FAIL" and f"nobody cannot enter {closed}" in refused.message
    assert check_root(euid=1000).status == "OK"


def test_a_damaged_tls_ca(project):
    ca = project / ".neon-local" / "tls" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    code, checks = doctor(project)
    assert code == 1 and checks["tls"]["status"] == "FAIL" and f"delete {ca.parent}" in checks["tls"]["fix"]


@pytest.fixture
def jwks_server(tmp_path_factory):
    """A real HTTP server with a JWKS, as an external provider's would be."""
    root = tmp_path_factory.mktemp("jwks")
    (root / "jwks.json").write_text(json.dumps(KeyRing.load_or_create(root / "keys").jwks()))
    server = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


def test_providers_reachable_cached_or_lost(project, jwks_server):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{closed.getsockname()[1]}/jwks.json"  # nothing listens there
    (project / "neon_local.toml").write_text(
        f'http_port = 0\npg_port = 0\n\n[[jwks]]\nid = "up"\njwks_url = "{jwks_server}"\n\n[[jwks]]\nid = "gone"\njwks_url = "{gone}"\n')
    code, checks = doctor(project)
    assert checks["provider up"]["status"] == "OK" and "reachable, 3 keys" in checks["provider up"]["message"]
    assert code == 1 and checks["provider gone"]["status"] == "FAIL" and "never cached" in checks["provider gone"]["message"]
    # What `up` keeps after fetching the keys once: the provider is then usable offline.
    cache = project / ".neon-local" / "jwks-cache"
    cache.mkdir(parents=True)
    with urlopen(jwks_server) as response:
        jwks = json.loads(response.read())
    (cache / "gone.json").write_text(json.dumps({"id": "gone", "jwks_url": gone, "fetched_at": time.time() - 3600, "jwks": jwks}))
    code, checks = doctor(project)
    assert code == 0 and checks["provider gone"]["status"] == "WARN" and "keys cached at" in checks["provider gone"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_clock_before_this_release_fails(project):
    code, checks = doctor(project, prefix=("faketime", "1999-01-01 00:00:00"))
    assert code == 1 and checks["clock"]["status"] == "FAIL" and "1999-01-01" in checks["clock"]["message"]


def test_with_neon_local_running_its_ports_pass_and_clock_skew_against_its_issuer_fails(project):
    http_port, pg_port = _free_port(), _free_port()
    (project / "neon_local.toml").write_text(f"http_port = {http_port}\npg_port = {pg_port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    up = subprocess.run([sys.executable, "-m", "neon_local", "up", "-d"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        code, checks = doctor(project)
        assert code == 0, checks
        assert "served by this project's neon-local" in checks["http_port"]["message"]
        assert "served by this project's neon-local" in checks["pg_port"]["message"]
        assert checks["clock"]["status"] == "OK" and "iat agrees" in checks["clock"]["message"]
        assert checks["tls"]["status"] == "OK"
        code, checks = doctor(project, prefix=("faketime", "-f", "+2m"))  # this shell's clock runs 2 minutes ahead
        assert code == 1 and checks["clock"]["status"] == "FAIL"
        skew = int(re.search(r"iat is (-\d+) s from this machine's clock", checks["clock"]["message"]).group(1))
        assert -125 <= skew <= -115  # two minutes, give or take a slow request
    finally:
        subprocess.run([sys.executable, "-m", "neon_local", "down"], cwd=project, env=env, capture_output=True, timeout=60)
