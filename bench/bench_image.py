"""Container image: its size, and a container's start to the first /sql answer beside `neon-local up` on the host.

The image is the one `make image` built (IMAGE, default localhost/neon-local:dev); this module does not
build it (minutes). Its entry point runs with `buildah run --isolation chroot` (where `podman run` cannot
run), on a fresh volume each round, so every start copies the initdb template baked into the image, as
a new container's does. Each round also times, beside it, `neon-local up` on the host on a fresh data
dir (same template copy) and `buildah run ... true` (what the container runtime itself costs here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port, ratio, show, spread

ROUNDS = 5
IMAGE = os.environ.get("IMAGE", "localhost/neon-local:dev")
IMAGE_USER = 10001  # images/Containerfile's `neon`
OWNER = "postgresql://neondb_owner:npg_neonlocal@localhost/neondb"


def _answers(http_port: int) -> bool:
    try:
        return httpx.post(f"http://127.0.0.1:{http_port}/sql", json={"query": "select 1", "params": []},
                          headers={"Neon-Connection-String": OWNER}, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _start_to_answer(argv: list[str], env: dict, http_port: int, stop: list[str]) -> float:
    """Seconds from spawning `argv` to its first /sql answer; then `stop` ends it."""
    began = time.perf_counter()
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not _answers(http_port):
            if server.poll() is not None:
                raise RuntimeError(f"{argv} exited {server.returncode}: {server.stdout.read()}")
            time.sleep(0.01)
        return time.perf_counter() - began
    finally:
        subprocess.run(stop, env=env, capture_output=True, timeout=60)
        server.communicate(timeout=60)


def _container_round(container: str, volume: Path) -> tuple[float, float]:
    http_port, pg_port = free_port(), free_port()
    run = ["buildah", "run", "--isolation", "chroot", "-v", f"{volume}:/volume", "--env", "NEON_LOCAL_DATA_DIR=/volume",
           "--env", "NEON_LOCAL_HOST=127.0.0.1", "--env", f"NEON_LOCAL_HTTP_PORT={http_port}",
           "--env", f"NEON_LOCAL_PG_PORT={pg_port}", container, "--"]
    start = _start_to_answer([*run, "neon-local", "up"], dict(os.environ), http_port, [*run, "neon-local", "down"])
    began = time.perf_counter()
    subprocess.run([*run, "true"], check=True, capture_output=True)
    return start, time.perf_counter() - began


def _host_round(data_dir: Path) -> float:
    http_port = free_port()
    env = {**os.environ, "NEON_LOCAL_DATA_DIR": str(data_dir), "NEON_LOCAL_HTTP_PORT": str(http_port),
           "NEON_LOCAL_PG_PORT": str(free_port())}
    cli = str(Path(sys.executable).parent / "neon-local")
    return _start_to_answer([cli, "up"], env, http_port, [cli, "down"])


def run() -> list[dict]:
    if shutil.which("buildah") is None or subprocess.run(["buildah", "inspect", "--type", "image", IMAGE],
                                                         capture_output=True).returncode != 0:
        return [{"measure": f"image {IMAGE}", "result": "not measured: build it with `make image` first"}]
    size = subprocess.run(["buildah", "images", "--format", "{{.Size}}", IMAGE], capture_output=True, text=True,
                          check=True).stdout.strip()
    container = subprocess.run(["buildah", "from", "--quiet", IMAGE], capture_output=True, text=True, check=True).stdout.strip()
    starts, runtime, host = [], [], []
    try:
        for _ in range(ROUNDS):
            with tempfile.TemporaryDirectory(prefix="bench-image-") as directory:
                volume = Path(directory) / "volume"
                volume.mkdir()
                os.chown(volume, IMAGE_USER, IMAGE_USER)  # as a named volume starts: owned by the image's user
                start, bare = _container_round(container, volume)
                starts.append(start)
                runtime.append(bare)
                host.append(_host_round(Path(directory) / "host"))
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    return [
        {"measure": f"image {IMAGE}", "result": size, "vs baseline": ""},
        {"measure": "container start to first /sql answer (s)", "result": spread(starts, 2),
         "vs baseline": f"{ratio(starts, host)} of `neon-local up` on the host"},
        {"measure": "`neon-local up` on the host, fresh data dir (s)", "result": spread(host, 2), "vs baseline": ""},
        {"measure": "`buildah run ... true`: the runtime alone (s)", "result": spread(runtime, 2),
         "vs baseline": f"{ratio(runtime, starts)} of the container start"},
    ]


if __name__ == "__main__":
    show(run())
