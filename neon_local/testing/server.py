"""A running emulator for a test session: started on a private thread, or one that `neon-local up` already runs.

The emulator is an asyncio server. Running it on its own thread and event loop keeps it serving while
a synchronous test blocks in a driver call, and keeps it independent of pytest-asyncio's loops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from neon_local.app import Emulator, Endpoints
from neon_local.errors import NeonLocalError
from neon_local.postgres.cluster import SOCKET_PORT, SUPERUSER, PostgresCluster
from neon_local.settings import Settings, load_settings
from neon_local.state import read_state
from neon_local.testing.tokens import TokenFactory
from neon_local.testing.websocket import WebSocketBridge

START_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0


class NotRunning(NeonLocalError):
    """Reuse was asked for, but no neon-local runs for the project's data directory."""


class EmulatorThread:
    """An `Emulator` on a daemon thread with its own event loop.

    Postgres is forked from this thread, and with `setpriv --pdeathsig` (root) it is tied to the thread,
    so the thread lives until the emulator has stopped.
    """

    def __init__(self, settings: Settings) -> None:
        self.emulator = Emulator(settings, write_state=False)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="neon-local", daemon=True)

    def start(self) -> Emulator:
        self._thread.start()
        try:
            self._call(self.emulator.start(), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self.emulator

    def stop(self) -> None:
        try:
            self._call(self.emulator.stop(), START_TIMEOUT)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclasses.dataclass
class NeonLocal:
    """What tests need from a running emulator: where it listens, how to reach Postgres directly, how to mint.

    `socket_dir` is Postgres's private Unix socket: the superuser (cloud_admin) and the owner connect
    there without going through the proxy, to build templates and to act as a user at SQL level.
    """

    settings: Settings = dataclasses.field(repr=False)  # holds the owner's password
    endpoints: Endpoints = dataclasses.field(repr=False)
    socket_dir: Path
    tls_ca: Path
    mint: Callable[..., str] = dataclasses.field(repr=False)
    started_in: float | None = None  # None when reused
    _thread: EmulatorThread | None = dataclasses.field(default=None, repr=False)
    _scratch: Path | None = dataclasses.field(default=None, repr=False)  # a data dir to remove at stop
    http: httpx.Client = dataclasses.field(default_factory=lambda: httpx.Client(timeout=HTTP_TIMEOUT), repr=False)
    sign: Callable[[dict, str], str] | None = dataclasses.field(default=None, repr=False)  # None when reused
    _bridge: WebSocketBridge | None = dataclasses.field(default=None, repr=False)
    _tokens: TokenFactory | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def start(cls, settings: Settings) -> NeonLocal:
        thread = EmulatorThread(settings)
        emulator = thread.start()
        cluster, services = emulator.cluster, emulator.services
        assert isinstance(cluster, PostgresCluster) and services is not None  # started, with its own Postgres
        issuer = services.issuer
        return cls(settings, emulator.endpoints, cluster.socket_dir, services.pg_proxy.tls_files.ca_cert,
                   issuer.mint, emulator.started_in, thread, sign=lambda claims, alg: issuer.sign(claims, alg=alg))

    @classmethod
    def attach(cls, settings: Settings) -> NeonLocal:
        data_dir = settings.resolved_data_dir
        state = read_state(data_dir)
        if state is None:
            raise NotRunning(
                f"no neon-local is running for {data_dir}. Start one with `neon-local up` in {settings.project_dir}, "
                f"or drop --neon-local-reuse / NEON_LOCAL_REUSE to let the plugin start its own."
            )
        if state["postgres"].get("upstream"):
            raise NotRunning(f"the neon-local running for {data_dir} fronts {state['postgres']['upstream']}; the plugin "
                             "needs one with its own Postgres. Drop --neon-local-reuse / NEON_LOCAL_REUSE.")
        endpoints = Endpoints(state["host"], state["http_port"], state["pg_port"],
                              settings.database, settings.owner, settings.owner_password)
        return cls(settings, endpoints, Path(state["postgres"]["socket_dir"]), Path(state["tls_ca"]),
                   _http_minter(endpoints.http_url))

    @classmethod
    def open(cls, rootdir: Path, config_file: Path | None, reuse: bool) -> NeonLocal:
        """Attach to the project's running emulator, or start a private one on free ports in a scratch data dir."""
        if reuse:
            return cls.attach(load_settings(cwd=rootdir, config_file=config_file))
        scratch = scratch_dir()
        # Its own Postgres even when the project fronts an upstream one: tests create and drop databases.
        overrides = {"data_dir": str(scratch), "ephemeral": False, "http_port": 0, "pg_port": 0, "upstream": ""}
        try:
            server = cls.start(load_settings(overrides, cwd=rootdir, config_file=config_file))
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        server._scratch = scratch
        return server

    @property
    def tokens(self) -> TokenFactory:
        """The session's one token factory, so every client knows which tokens it minted."""
        if self._tokens is None:
            self._tokens = TokenFactory(self.mint, self.sign)
        return self._tokens

    def ws_port(self) -> int:
        """The local port that carries Postgres connections over the emulator's WebSocket path (started once)."""
        if self._bridge is None:
            self._bridge = WebSocketBridge(self.endpoints.ws_url).start()
        return self._bridge.port

    def stop(self) -> None:
        self.http.close()
        if self._bridge is not None:
            self._bridge.stop()
        try:
            if self._thread is not None:
                self._thread.stop()
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        return f"host='{self.socket_dir}' port={SOCKET_PORT} user={SUPERUSER} dbname='{dbname}'"

    def direct_url(self, dbname: str, role: str | None = None) -> str:
        """A libpq URL over the Unix socket, for the owner by default: no proxy, no TLS, no password."""
        role = role or self.settings.owner
        where = f"host={quote(str(self.socket_dir))}&port={SOCKET_PORT}"
        return f"postgresql://{quote(role, safe='')}@/{quote(dbname, safe='')}?{where}"

    def proxy_url(self, dbname: str, role: str, password: str | None = None) -> str:
        """A URL through the TCP proxy (TLS), as an app would connect: a JWT or the owner's password."""
        return dataclasses.replace(self.endpoints, database=dbname).database_url(role, password)

    def owner_proxy_url(self, dbname: str) -> str:
        return self.proxy_url(dbname, self.settings.owner, self.settings.owner_password)


def scratch_dir() -> Path:
    """A temporary data directory, in memory where Linux offers one: test databases are throwaway, and
    creating and dropping one per test costs several times more on a disk (measured: 15 ms against 45-190)."""
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK)
    return Path(tempfile.mkdtemp(prefix="neon-local-test-", dir=shm if in_memory else None))


def _http_minter(http_url: str) -> Callable[..., str]:
    """Mint through the running emulator's test endpoint, which holds the signing keys."""

    def mint(user: str | None = None, **options: Any) -> str:
        # The endpoint takes only the options that are set, as JSON values of their own type.
        body = {key: value for key, value in {"user": user, **options}.items() if value is not None}
        response = httpx.post(f"{http_url}/oauth/mint", json=body, timeout=HTTP_TIMEOUT)
        answer = response.json()
        if response.status_code != 200:
            raise ValueError(f"minting a token failed: {answer.get('error_description') or answer}")
        token: str = answer["token"]
        return token

    return mint
