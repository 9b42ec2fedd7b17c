"""Fault injection under load (issue 9): `make soak` runs this file (CI too); `make test` does not, for time.

Each scenario runs writers over /sql (owner and JWT) and TCP while a fault strikes: kill -9 of
Postgres, kill -9 of neon-local itself, a full disk (a small tmpfs) that is then freed, and 1,000
concurrent requests and connections. Every id is written once and never retried, so afterwards the
table shows what was lost (acknowledged but absent) and what was duplicated. Each scenario prints
one report line (run with -s) and asserts: 0 acknowledged writes lost, 0 duplicates, 0 error answers
that were not Neon's JSON, and that writes were acknowledged again after the fault (time to recover).
Slowloris and half-open clients are in test_hardening_limits.py. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import psycopg
import pytest

from hardening_support import NEON_ERROR_KEYS, running_emulator
from neon_local.settings import Settings

RECOVERY_BOUND = 90  # seconds a scenario may wait for writes to be acknowledged again
CANCELLED_KEYS = ["message", "code"]
TABLE = "create table soak (id bigint not null, via text not null, pad text)"


@dataclass
class Tally:
    """What the writers saw."""

    acked: set[int] = field(default_factory=set)
    ok_times: list[float] = field(default_factory=list)  # when each acknowledged write was sent
    json_errors: collections.Counter = field(default_factory=collections.Counter)
    non_json: list[str] = field(default_factory=list)
    unreachable: int = 0

    def recovered_after(self, fault: float) -> float | None:
        later = [t for t in self.ok_times if t > fault]
        return min(later) - fault if later else None


class Load:
    """Writers that each insert fresh ids until stopped; over /sql as owner and as a JWT user, and over TCP."""

    def __init__(self, http_port: int, pg_port: int, settings, token: str, pad_sql: str = "null") -> None:
        self.sql_url = f"http://127.0.0.1:{http_port}/sql"
        self.pg_port = pg_port
        self.settings = settings
        self.token = token
        self.pad_sql = pad_sql
        self.ids = itertools.count(1)
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def start(self, http_writers: int = 6, jwt_writers: int = 2, tcp_writers: int = 3) -> None:
        loop = asyncio.get_running_loop()
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=30)
        s = self.settings
        owner = {"Neon-Connection-String": f"postgresql://{s.owner}:{s.owner_password}@localhost/{s.database}"}
        jwt = {"Neon-Connection-String": f"postgresql://authenticated@localhost/{s.database}",
               "Authorization": f"Bearer {self.token}"}
        self.tasks += [loop.create_task(self._http_writer(owner, "owner")) for _ in range(http_writers)]
        self.tasks += [loop.create_task(self._http_writer(jwt, "jwt")) for _ in range(jwt_writers)]
        self.tasks += [loop.create_task(self._tcp_writer()) for _ in range(tcp_writers)]

    async def finish(self) -> Tally:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.client.aclose()
        return self.tally

    async def wait_recovered(self, fault: float) -> None:
        async with asyncio.timeout(RECOVERY_BOUND):
            while self.tally.recovered_after(fault) is None:
                await asyncio.sleep(0.1)

    async def _http_writer(self, headers: dict, via: str) -> None:
        while not self.stop.is_set():
            ident, sent = next(self.ids), time.monotonic()
            body = {"query": f"insert into soak (id, via, pad) values ($1, $2, {self.pad_sql})", "params": [ident, via]}
            try:
                response = await self.client.post(self.sql_url, json=body, headers=headers)
            except httpx.TransportError:
                self.tally.unreachable += 1
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 200:
                self.tally.acked.add(ident)
                self.tally.ok_times.append(sent)
            else:
                self._note_error(response)
                await asyncio.sleep(0.02)

    def _note_error(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            keys = list(body) if isinstance(body, dict) else None
        except ValueError:
            keys = None
        if keys not in (NEON_ERROR_KEYS, CANCELLED_KEYS) or not response.headers.get("content-type", "").startswith("application/json"):
            self.tally.non_json.append(f"{response.status_code} {response.text[:200]}")
        else:
            self.tally.json_errors[f"{response.status_code} {body['code'] or body['message'][:60]}"] += 1

    async def _tcp_writer(self) -> None:
        s = self.settings
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(host="127.0.0.1", port=self.pg_port, user=s.owner, password=s.owner_password,
                                                 database=s.database, ssl=False, timeout=10)
                ident, sent = next(self.ids), time.monotonic()
                await conn.execute(f"insert into soak (id, via, pad) values ($1, 'tcp', {self.pad_sql})", ident)
                self.tally.acked.add(ident)
                self.tally.ok_times.append(sent)
            except Exception as exc:  # refused, reset, or asyncpg's own state errors after a broken connection
                self.tally.json_errors[f"tcp {getattr(exc, 'sqlstate', None) or type(exc).__name__}"] += 1
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.1)
        if conn is not None:
            await conn.close()


async def _rows(conninfo: str) -> collections.Counter:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        return collections.Counter(dict(await (await conn.execute("select id, count(*) from soak group by id")).fetchall()))


def _report(name: str, tally: Tally, rows: collections.Counter, recovery: float | None) -> tuple[int, int]:
    lost = len(tally.acked - set(rows))
    duplicates = sum(1 for count in rows.values() if count > 1)
    print(f"\nsoak {name}: {len(tally.acked)} writes acknowledged, lost {lost}, duplicates {duplicates}, "
          f"time to recover {recovery if recovery is None else round(recovery, 2)} s, non-JSON errors {len(tally.non_json)}, "
          f"unreachable {tally.unreachable}, errors {dict(tally.json_errors)}")
    return lost, duplicates


def _assert_clean(name: str, tally: Tally, rows: collections.Counter, recovery: float | None) -> None:
    lost, duplicates = _report(name, tally, rows, recovery)
    assert (lost, duplicates, tally.non_json) == (0, 0, [])
    assert recovery is not None and tally.acked


async def _setup(emulator) -> None:
    async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="neondb"), autocommit=True) as admin:
        await admin.execute(TABLE)
        await admin.execute("grant insert, select on soak to authenticated")


async def test_kill_9_postgres_under_write_load(tmp_path):
    async with running_emulator(tmp_path) as emulator:
        await _setup(emulator)
        e = emulator.endpoints
        load = Load(e.http_port, e.pg_port, emulator.settings, emulator.services.issuer.mint(sub="user_soak"))
        load.start()
        await asyncio.sleep(1.5)
        fault = time.monotonic()
        os.kill(emulator.cluster.pid, signal.SIGKILL)
        await load.wait_recovered(fault)
        await asyncio.sleep(1.0)
        tally = await load.finish()
        _assert_clean("kill -9 postgres", tally, await _rows(emulator.cluster.conninfo(dbname="neondb")),
                      tally.recovered_after(fault))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _neon_local(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "neon_local", *args, cwd=project, env=env,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def test_kill_9_neon_local_under_write_load(tmp_path):
    http_port, pg_port = _free_port(), _free_port()
    up_args = ("up", "--detach", "--http-port", str(http_port), "--pg-port", str(pg_port))
    up = await _neon_local(tmp_path, *up_args)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads((await _neon_local(tmp_path, "status", "--json")).stdout)
        async with await psycopg.AsyncConnection.connect(state["urls"]["owner"], autocommit=True) as owner:
            await owner.execute(TABLE)
            await owner.execute("grant insert, select on soak to authenticated")
        token = (await _neon_local(tmp_path, "token", "alice")).stdout.strip()
        load = Load(http_port, pg_port, Settings(), token)
        load.start()
        await asyncio.sleep(1.5)
        fault = time.monotonic()
        os.kill(state["pid"], signal.SIGKILL)
        again = await _neon_local(tmp_path, *up_args)
        assert again.returncode == 0, again.stderr
        await load.wait_recovered(fault)
        await asyncio.sleep(1.0)
        tally = await load.finish()
        state = json.loads((await _neon_local(tmp_path, "status", "--json")).stdout)
        _assert_clean("kill -9 neon-local", tally, await _rows(state["urls"]["owner"]), tally.recovered_after(fault))
    finally:
        await _neon_local(tmp_path, "down")


@pytest.fixture
def small_disk(tmp_path):
    """A 96 MB tmpfs (the emulator's data fits in about 40 MB); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0755", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


async def test_disk_full_then_freed(small_disk):
    async with running_emulator(small_disk) as emulator:
        await _setup(emulator)
        async with await psycopg.AsyncConnection.connect(emulator.cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
            await admin.execute(f"create database fresh owner {emulator.settings.owner}")
        free = shutil.disk_usage(small_disk).free
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # leave ~12 MB for the writers to fill
            f.truncate(0)
            os.posix_fallocate(f.fileno(), 0, max(free - 12 * 1024 * 1024, 1))
        e = emulator.endpoints
        incompressible = "(select string_agg(md5(random()::text), '') from generate_series(1, 600))"
        load = Load(e.http_port, e.pg_port, emulator.settings, emulator.services.issuer.mint(sub="user_soak"), incompressible)
        load.start()
        async with asyncio.timeout(RECOVERY_BOUND):  # until Postgres reports the disk full (or crashes on it)
            while not any(key.split()[-1] in ("53100", "58030") or key.startswith("500") for key in load.tally.json_errors):
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        # A JWT request to a database not yet prepared for JWTs: the real cause, not the extension-setup text.
        async with httpx.AsyncClient(timeout=60) as client:
            fresh = await client.post(e.sql_url, json={"query": "select 1"}, headers={
                "Neon-Connection-String": "postgresql://authenticated@localhost/fresh", "Authorization": f"Bearer {load.token}"})
        if fresh.status_code != 200:
            load._note_error(fresh)
            assert fresh.json()["message"] != "could not set up the JWT authorization database extension"
        fault = time.monotonic()
        filler.unlink()
        await load.wait_recovered(fault)
        await asyncio.sleep(1.0)
        tally = await load.finish()
        _assert_clean("disk full, then freed", tally, await _rows(emulator.cluster.conninfo(dbname="neondb")),
                      tally.recovered_after(fault))


async def test_a_thousand_concurrent_requests_and_connections(tmp_path):
    async with running_emulator(tmp_path) as emulator, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000), timeout=aiohttp.ClientTimeout(total=120)) as client:
        await _setup(emulator)
        s, e = emulator.settings, emulator.endpoints
        token = emulator.services.issuer.mint(sub="user_crowd")
        load = Load(e.http_port, e.pg_port, s, token)
        owner = {"Neon-Connection-String": f"postgresql://{s.owner}:{s.owner_password}@localhost/neondb"}
        jwt = {"Neon-Connection-String": "postgresql://authenticated@localhost/neondb", "Authorization": f"Bearer {token}"}

        async def request(i: int):
            body = {"query": "insert into soak (id, via) values ($1, 'crowd') returning id", "params": [i]}
            async with client.post(e.sql_url, json=body, headers=owner if i % 2 else jwt) as response:
                return i, httpx.Response(response.status, headers=dict(response.headers), content=await response.read())

        async def connection():
            try:
                conn = await asyncpg.connect(host="127.0.0.1", port=e.pg_port, user="authenticated", password=token,
                                             database="neondb", ssl=False, timeout=60)
            except asyncpg.exceptions.TooManyConnectionsError as exc:
                return exc.sqlstate
            try:
                return await conn.fetchval("select auth.user_id()")
            finally:
                await conn.close()

        started = time.monotonic()
        answers, sessions = await asyncio.gather(asyncio.gather(*(request(i) for i in range(1, 1001))),
                                                 asyncio.gather(*(connection() for _ in range(1000))))
        for i, response in answers:
            if response.status_code == 200:
                load.tally.acked.add(i)
                load.tally.ok_times.append(started)
            else:
                load._note_error(response)
        print(f"\nsoak 1,000 connections: {dict(collections.Counter(sessions))}")
        assert set(sessions) <= {"user_crowd", "53300"} and "user_crowd" in sessions
        _assert_clean("1,000 concurrent requests", load.tally, await _rows(emulator.cluster.conninfo(dbname="neondb")), 0.0)
        assert len(load.tally.acked) == 1000
