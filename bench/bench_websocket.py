"""WebSocket: @neondatabase/serverless's Pool over neon-local's /v2, beside node-postgres straight to Postgres, 16 clients.

One emulator (`bench.common.emulator`, in this process on uvloop) with pgbench's tables (scale 1). Both
sides run bench/ws_load.mjs in Node with the packages of tests/node: 16 workers, `pool.query` of
pgbench's select-only statement with a random key, as the owner, every connection opened before the
clock starts. node-postgres connects to Postgres' Unix socket (the floor); the serverless driver goes
through neon-local's WebSocket and proxy (SCRAM with its password pipelined, the driver's default).
A third row runs the driver with `coalesceWrites = false`: by default it holds every write for a
`setTimeout(0)` (at least 1 ms in Node) to merge it with others, which caps a worker's queries per
second whatever the server does; the row shows what the WebSocket path costs without that wait.
Medians of ROUNDS rounds with the range; the ratio is the median of per-round ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from bench.common import ROOT, ROUNDS, emulator, pgbench_init, ratio, run_async, show, spread

CLIENTS = 16
SECONDS = 5
SCRIPT = Path(__file__).parent / "ws_load.mjs"
NODE_PROJECT = ROOT / "tests" / "node"


async def _node(env: dict[str, str]) -> float:
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node", str(SCRIPT),
        env={**os.environ, "NODE_PROJECT": str(NODE_PROJECT / "package.json"), "CLIENTS": str(CLIENTS),
             "SECONDS": str(SECONDS), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"ws_load.mjs failed: {stderr.decode()}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"ws_load.mjs: {result['errors']} errors: {stderr.decode()[:300]}")
    return result["queries"] / result["seconds"]


async def _bench(directory: Path) -> list[dict]:
    if not (NODE_PROJECT / "node_modules" / "@neondatabase" / "serverless").is_dir():
        raise RuntimeError("tests/node/node_modules is missing: run `make install`")
    async with emulator(directory) as emu:
        await pgbench_init(emu)
        settings = emu.settings
        direct = {"MODE": "pg", "PG_CONFIG": json.dumps({"host": str(emu.cluster.socket_dir), "port": emu.cluster.port,
                                                         "user": settings.owner, "database": settings.database})}
        over_ws = {"MODE": "ws", "WS_PROXY": f"127.0.0.1:{emu.endpoints.http_port}/v2",
                   "URL": f"postgresql://{settings.owner}:{settings.owner_password}@localhost/{settings.database}"}
        floors, sockets, uncoalesced = [], [], []
        for _ in range(ROUNDS):
            floors.append(await _node(direct))
            sockets.append(await _node(over_ws))
            uncoalesced.append(await _node({**over_ws, "COALESCE_WRITES": "false"}))
    return [
        {"what": "node-postgres Pool, straight to Postgres (Unix socket)", "queries per second": spread(floors),
         "vs node-pg direct": "1.00x", "notes": f"{CLIENTS} clients, {SECONDS} s a round"},
        {"what": "@neondatabase/serverless Pool over neon-local's WebSocket", "queries per second": spread(sockets),
         "vs node-pg direct": ratio(sockets, floors), "notes": "target >= 0.7x"},
        {"what": "the same with neonConfig.coalesceWrites = false", "queries per second": spread(uncoalesced),
         "vs node-pg direct": ratio(uncoalesced, floors), "notes": "no 0 ms timer per write in the driver"},
    ]


def run() -> list[dict]:
    return run_async("bench-websocket-", _bench)


if __name__ == "__main__":
    show(run())
