"""Fixtures and a raw wire client shared by the proxy tests (imported by each test_proxy_* module).

The proxy runs in the test process on a free port, in front of the session's real Postgres, with
the real JWT verifier and issuer. `RawClient` speaks bytes, for the tests that check exact
messages; everything else uses real drivers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import Verifier
from neon_local.control_plane import ControlPlane
from neon_local.proxy.server import PgProxyServer
from neon_local.wire import messages as m

NODE_DIR = Path(__file__).parent / "node"


@dataclass
class Proxy:
    server: PgProxyServer
    port: int
    issuer: Issuer
    settings: object
    cluster: object

    @property
    def ca(self) -> str:
        return str(self.server.tls_files.ca_cert)

    def token(self, sub: str = "user_alice", **kwargs) -> str:
        return self.issuer.mint(sub=sub, **kwargs)

    def url(self, user: str, password: str = "", sslmode: str = "require", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"sslmode": sslmode, **params}.items())
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{self.settings.database}?{query}"

    def owner_url(self, sslmode: str = "require", **params: str) -> str:
        return self.url(self.settings.owner, self.settings.owner_password, sslmode, **params)

    async def admin(self) -> psycopg.AsyncConnection:
        """A superuser connection straight to Postgres's private socket, for test setup."""
        return await psycopg.AsyncConnection.connect(self.cluster.conninfo(dbname=self.settings.database), autocommit=True)


async def start_proxy(settings, cluster, directory: Path) -> Proxy:
    keyring = KeyRing.load_or_create(directory / "keys")
    verifier = Verifier(settings, keyring, ProviderCache(settings, directory / "jwks-cache"))
    server = PgProxyServer(settings, ControlPlane(cluster), verifier, directory / "tls")
    port = await server.start("127.0.0.1", 0)
    return Proxy(server, port, Issuer(settings, keyring, "http://127.0.0.1:4444"), settings, cluster)


@pytest.fixture(scope="session")
async def proxy(settings, cluster, tmp_path_factory):
    """The Postgres proxy on a free loopback port, shared by the session."""
    started = await start_proxy(settings, cluster, tmp_path_factory.mktemp("proxy"))
    yield started
    await started.server.close()
    await started.server.context.control_plane.close()


@pytest.fixture(scope="session")
async def todos(proxy):
    """A table with Neon's documented RLS policy: each user sees only rows whose user_id is their sub."""
    async with await proxy.admin() as conn:
        await conn.execute(
            "drop table if exists todos; "
            "create table todos (id serial primary key, user_id text not null default auth.user_id(), task text); "
            f"alter table todos owner to {proxy.settings.owner}; "
            "alter table todos enable row level security; "
            "create policy own on todos for all to authenticated using (auth.user_id() = user_id) with check (auth.user_id() = user_id); "
            "grant select, insert, update, delete on todos to authenticated; grant usage on sequence todos_id_seq to authenticated; "
            "insert into todos (user_id, task) values ('user_alice', 'alice 1'), ('user_alice', 'alice 2'), ('user_bob', 'bob 1')"
        )
    return "todos"


def scram_secret(password: str, iterations: int = 4096) -> str:
    """A role's SCRAM verifier as Postgres stores it in pg_authid.rolpassword (scram_build_secret)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    salt_text, stored_text, server_text = (base64.b64encode(part).decode() for part in (salt, stored, server))
    return f"SCRAM-SHA-256${iterations}:{salt_text}${stored_text}:{server_text}"


class ScramClient:
    """The client side of SCRAM-SHA-256 as libpq runs it: an empty SCRAM username (the startup packet names the
    role) and, given the server certificate's hash, tls-server-end-point channel binding (-PLUS)."""

    def __init__(self, password: str, binding: bytes | None = None, flag: bytes | None = None) -> None:
        self.password, self.binding = password.encode(), binding
        self.gs2_header = (flag or (b"p=tls-server-end-point" if binding is not None else b"n")) + b",,"
        self.first_bare = b"n=,r=" + base64.b64encode(os.urandom(18))
        self.expected_final = b""  # the server's `v=` once `final()` has run

    @property
    def mechanism(self) -> str:
        return "SCRAM-SHA-256-PLUS" if self.gs2_header.startswith(b"p=") else "SCRAM-SHA-256"

    def first(self) -> bytes:
        return self.gs2_header + self.first_bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        binding = self.gs2_header + ((self.binding or b"") if self.gs2_header.startswith(b"p=") else b"")
        without_proof = b"c=" + base64.b64encode(binding) + b",r=" + attrs[b"r"]
        auth_message = b",".join((self.first_bare, server_first, without_proof))
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.expected_final = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest())
        return without_proof + b",p=" + base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature)))


class RawClient:
    """A byte-level Postgres client over TCP: send what you like, read messages back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int | None = None, path: str | None = None) -> RawClient:
        if path is not None:
            return cls(*await asyncio.open_unix_connection(path))
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_message(self, timeout: float = 10) -> m.Message:
        header = await asyncio.wait_for(self.reader.readexactly(5), timeout)
        body = await asyncio.wait_for(self.reader.readexactly(m.int32(header, 1) - 4), timeout)
        return m.Message(header[:1], body)

    async def read_until_ready(self, count: int = 1, timeout: float = 10) -> list[m.Message]:
        out = []
        while count:
            out.append(await self.read_message(timeout))
            count -= out[-1].type == b"Z"
        return out

    async def read_to_end(self, timeout: float = 10) -> bytes:
        """Everything until the server closes the connection (a reset counts as a close)."""
        try:
            return await asyncio.wait_for(self.reader.read(-1), timeout)
        except ConnectionResetError:
            return b""

    async def login_jwt(self, user: str, token: str, **params: str) -> list[m.Message]:
        await self.send(m.startup_message({"user": user, "database": "neondb", **params}))
        assert await self.read_message() == m.Message(b"R", b"\0\0\0\x03")
        await self.send(m.password_message(token))
        return await self.read_until_ready()

    async def login_scram(self, user: str, password: str, **params: str) -> list[m.Message]:
        """Log in with SCRAM-SHA-256 (no channel binding), checking the server's signature too."""
        await self.send(m.startup_message({"user": user, "database": "neondb", **params}))
        assert "SCRAM-SHA-256" in m.cstrings((await self.read_message()).body[4:])
        scram = ScramClient(password)
        await self.send(m.sasl_initial_response(scram.mechanism, scram.first()))
        await self.send(m.sasl_response(scram.final((await self.read_message()).body[4:])))
        final = await self.read_message()
        if final.type == b"E":
            return [final]
        assert final.body[4:] == scram.expected_final
        return await self.read_until_ready()

    def close(self) -> None:
        self.writer.close()


async def wait_until_running(proxy: Proxy, sql: str, count: int = 1) -> None:
    """Wait until `count` backends are running `sql`, so a cancel cannot arrive before the query."""
    async with await proxy.admin() as admin:
        for _ in range(1000):
            cur = await admin.execute("select count(*) from pg_stat_activity where state = 'active' and query = %s", (sql,))
            if (await cur.fetchone())[0] >= count:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"{sql!r} never started")


async def raw_trust_login(cluster, user: str, database: str = "neondb", **params: str) -> tuple[RawClient, list[m.Message]]:
    """A raw connection straight to Postgres's private socket (trust), for differential tests."""
    client = await RawClient.connect(path=str(Path(cluster.socket_dir) / f".s.PGSQL.{cluster.port}"))
    await client.send(m.startup_message({"user": user, "database": database, **params}))
    return client, await client.read_until_ready()


async def run_node(script: str, env: dict[str, str], timeout: float = 90) -> dict:
    """Run a script in tests/node with Node and return the JSON object it prints last."""
    if not (NODE_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True)
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node", script, cwd=NODE_DIR, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, f"{script} failed:\n{stdout.decode()}\n{stderr.decode()}"
    return json.loads(stdout.decode().strip().splitlines()[-1])


def now() -> int:
    return int(time.time())
