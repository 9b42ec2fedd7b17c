"""Fixtures for the SQL-over-HTTP tests: the /sql handlers on a free loopback port, a JWT issuer, a client.

The app routes as the emulator's does (POST/OPTIONS /sql, 400 elsewhere) in front of the session's
real Postgres with the real verifier. Tests use real HTTP (httpx) and real drivers (Node).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from aiohttp import web

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import Verifier
from neon_local.control_plane import ControlPlane
from neon_local.serverless.sql_over_http import SqlOverHttp

NODE_DIR = Path(__file__).parent / "node"
NOTES_SQL = """
drop table if exists notes;
create table notes (id serial primary key, user_id text not null default (auth.user_id()), body text not null);
alter table notes owner to {owner};
alter table notes enable row level security;
create policy "crud-authenticated-policy-select" on notes as permissive for select to authenticated
  using ((select auth.user_id() = notes.user_id));
create policy "crud-authenticated-policy-insert" on notes as permissive for insert to authenticated
  with check ((select auth.user_id() = notes.user_id));
create policy "crud-authenticated-policy-update" on notes as permissive for update to authenticated
  using ((select auth.user_id() = notes.user_id)) with check ((select auth.user_id() = notes.user_id));
create policy "crud-authenticated-policy-delete" on notes as permissive for delete to authenticated
  using ((select auth.user_id() = notes.user_id));
grant select, insert, update, delete on notes to authenticated, anonymous;
grant usage on sequence notes_id_seq to authenticated;
insert into notes (user_id, body) values ('user_alice', 'alice 1'), ('user_alice', 'alice 2'), ('user_bob', 'bob 1');
"""


@dataclass
class SqlHttp:
    handler: SqlOverHttp
    port: int
    issuer: Issuer
    settings: object
    cluster: object
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sql"

    def token(self, sub: str = "user_alice", **kwargs) -> str:
        return self.issuer.mint(sub=sub, **kwargs)

    def conn_string(self, user: str | None = None, password: str | None = None, dbname: str | None = None,
                    host: str = "localhost") -> str:
        user = self.settings.owner if user is None else user
        if password is None and user == self.settings.owner:
            password = self.settings.owner_password
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return f"postgresql://{auth}@{host}/{quote(dbname or self.settings.database, safe='')}"

    @staticmethod
    def issuer_claims(token: str) -> dict:
        """The claims of a token, unverified."""
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def jwt_conn_string(self, role: str = "authenticated") -> str:
        return self.conn_string(role)

    async def post(self, body, *, conn: str | None = None, token: str | None = None, headers: dict | None = None,
                   timeout: float = 60) -> httpx.Response:
        """POST /sql; `body` is a dict (sent as JSON) or raw bytes."""
        sent = {"Neon-Connection-String": conn or self.conn_string(), **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await self.client.post(self.url, content=content, headers=sent, timeout=timeout)

    async def query(self, sql: str, params: list | None = None, **kwargs) -> dict:
        """One query that must succeed; its JSON result."""
        response = await self.post({"query": sql, "params": params or []}, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    async def admin(self, dbname: str | None = None) -> psycopg.AsyncConnection:
        """A superuser connection straight to Postgres, for test setup."""
        return await psycopg.AsyncConnection.connect(
            self.cluster.conninfo(dbname=dbname or self.settings.database), autocommit=True)


def build_app(handler: SqlOverHttp, issuer: Issuer) -> web.Application:
    """The emulator's routing for /sql (the WebSocket upgrade is not this module's)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.add_routes(issuer.routes())

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if request.path == "/sql" and request.method == "POST":
            return await handler.handle_sql(request)
        if request.path == "/sql" and request.method == "OPTIONS":
            return await handler.handle_options(request)
        return await handler.not_supported(request)

    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


@asynccontextmanager
async def serve_sql_http(settings, cluster, directory, **handler_options):
    """The handlers on a free loopback port, with their own keys and issuer."""
    keyring = KeyRing.load_or_create(directory / "keys")
    verifier = Verifier(settings, keyring, ProviderCache(settings, directory / "jwks-cache"))
    handler = SqlOverHttp(settings, ControlPlane(cluster), verifier, **handler_options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    issuer = Issuer(settings, keyring, f"http://127.0.0.1:{port}")
    runner = web.AppRunner(build_app(handler, issuer), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as client:
            yield SqlHttp(handler, port, issuer, settings, cluster, client)
    finally:
        await runner.cleanup()
        await handler.close()
        await handler.control_plane.close()


@pytest.fixture(scope="session")
async def sql_http(settings, cluster, tmp_path_factory):
    """SQL over HTTP on a free loopback port, shared by the session."""
    async with serve_sql_http(settings, cluster, tmp_path_factory.mktemp("sql-http")) as started:
        yield started


async def run_node(script: str, env: dict[str, str], timeout: float = 120) -> dict:
    """Run a script in tests/node with Node; the JSON object it prints last."""
    if not (NODE_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True)
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node", script, cwd=NODE_DIR, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, f"{script} failed:\n{stdout.decode()}\n{stderr.decode()}"
    return json.loads(stdout.decode().strip().splitlines()[-1])


@pytest.fixture(scope="session")
async def notes(sql_http):
    """A table with the Drizzle-style crudPolicy for `authenticated`: each user sees only their rows."""
    async with await sql_http.admin() as conn:
        await conn.execute(NOTES_SQL.format(owner=sql_http.settings.owner))
    return "notes"
