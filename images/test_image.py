"""Smoke test of the container image (`make image-test`): its entry point run with `buildah run --isolation
chroot`, which shares the host's network, then real clients from the host: /sql with a JWT, psql over
TLS, the image's own HEALTHCHECK command, and the data left in the volume by the non-root user.

Where this runs, `podman run` fails on cgroups, so buildah stands in for a container runtime. The test
listens on 127.0.0.1 and free ports (NEON_LOCAL_HOST/…_PORT), not the image's 0.0.0.0:4444/5444, since the
host's network is shared. `buildah run` gives a path the image declares as a VOLUME a scratch copy of its
own, whatever `-v` says, so the test's volume is mounted at /volume and NEON_LOCAL_DATA_DIR points there.
Start time and image size are printed, not asserted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

IMAGE = os.environ.get("IMAGE", "localhost/neon-local:dev")
USER_ID = 10001  # images/Containerfile's `neon` user


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check, timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Container:
    """A working container of the image, and `buildah run` in it with the volume and settings of the test."""

    def __init__(self, name: str, volume: Path, http_port: int, pg_port: int):
        self.name, self.http_port, self.pg_port = name, http_port, pg_port
        self.options = ["--isolation", "chroot", "-v", f"{volume}:/volume", "--env", "NEON_LOCAL_DATA_DIR=/volume",
                        "--env", "NEON_LOCAL_HOST=127.0.0.1",
                        "--env", f"NEON_LOCAL_HTTP_PORT={http_port}", "--env", f"NEON_LOCAL_PG_PORT={pg_port}"]

    def command(self, *args: str) -> list[str]:
        return ["buildah", "run", *self.options, self.name, "--", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60)


def image_config() -> dict:
    return json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)["Docker"]["config"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("volume")
    os.chown(path, USER_ID, USER_ID)  # as a named volume starts: a copy of the image's /data, owned by neon
    return path


@pytest.fixture(scope="module")
def container(volume):
    name = buildah("from", "--quiet", IMAGE).stdout.strip()
    box = Container(name, volume, free_port(), free_port())
    config = image_config()
    started = time.monotonic()
    server = subprocess.Popen(box.command(*config["Entrypoint"], *config["Cmd"]), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        while server.poll() is None and not answers_sql(box):
            time.sleep(0.02)
        assert server.poll() is None, server.stdout.read()
        print(f"\nimage {IMAGE}: {image_size()}; `buildah run` to a /sql answer: {time.monotonic() - started:.2f} s")
        box.server = server
        yield box
    finally:
        if server.poll() is None:
            box.run("neon-local", "down")
            server.wait(timeout=30)
        buildah("rm", name)


def answers_sql(box: Container) -> bool:
    try:
        return httpx.post(f"http://127.0.0.1:{box.http_port}/sql", json={"query": "select 1", "params": []},
                          headers={"Neon-Connection-String": "postgresql://neondb_owner:npg_neonlocal@localhost/neondb"},
                          timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def image_size() -> str:
    return buildah("images", "--format", "{{.Size}}", IMAGE).stdout.strip()


def test_the_image_declares_its_ports_volume_user_and_healthcheck():
    config = image_config()
    assert set(config["ExposedPorts"]) == {"4444/tcp", "5444/tcp"}
    assert set(config["Volumes"]) == {"/data"}
    assert config["User"] == "neon"
    assert "NEON_LOCAL_HOST=0.0.0.0" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"


def test_python_runs_the_image_bytecode_without_compiling(container):
    imported = container.run("python3", "-v", "-c", "import neon_local.services")  # the server and its libraries
    assert imported.returncode == 0, imported.stderr
    assert "bytecode is stale" not in imported.stderr
    assert imported.stderr.count("code object from '/opt/neon-local/") > 100


def test_a_jwt_from_the_container_queries_over_sql(container):
    token = container.run("neon-local", "token", "alice").stdout.strip()
    answer = httpx.post(f"http://127.0.0.1:{container.http_port}/sql",
                        json={"query": "select auth.user_id() as who", "params": []},
                        headers={"Neon-Connection-String": "postgresql://authenticated@localhost/neondb",
                                 "Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [{"who": "user_alice"}]


def test_psql_on_the_host_connects_over_tls_with_a_jwt(container):
    token = container.run("neon-local", "token", "bob").stdout.strip()
    result = subprocess.run(
        ["psql", f"postgresql://authenticated@127.0.0.1:{container.pg_port}/neondb?sslmode=require",
         "-XAt", "-c", r"\conninfo", "-c", "select auth.user_id()"],
        env={**os.environ, "PGPASSWORD": token}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "SSL connection" in result.stdout and result.stdout.splitlines()[-1] == "user_bob"


def test_the_compiled_pgcrypto_module_loads_on_the_image_libraries(container):
    result = subprocess.run(
        ["psql", f"postgresql://neondb_owner:npg_neonlocal@127.0.0.1:{container.pg_port}/neondb?sslmode=require",
         "-XAtq", "-c", "create extension if not exists pgcrypto", "-c", "select length(gen_random_bytes(8))"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8"]


def test_the_healthcheck_passes_and_the_data_belongs_to_the_non_root_user(container, volume):
    healthcheck = image_config()["Healthcheck"]["Test"][1:]
    result = container.run(*healthcheck)
    assert result.returncode == 0, result.stdout + result.stderr
    owners = {path.stat().st_uid for path in volume.rglob("*")}
    assert (volume / "pgdata").is_dir() and owners == {USER_ID}


def test_the_healthcheck_fails_once_the_server_is_down(container):
    healthcheck = image_config()["Healthcheck"]["Test"][1:]
    assert container.run("neon-local", "down").returncode == 0
    assert container.server.wait(timeout=30) == 0
    result = container.run(*healthcheck)
    assert result.returncode == 1
    assert "not running" in result.stderr
