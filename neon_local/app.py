"""The emulator: one asyncio process that runs Postgres, the JWT issuer and Neon's three client protocols."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from neon_local._version import __version__
from neon_local.errors import NeonLocalError
from neon_local.ports import bind
from neon_local.postgres.binaries import PgBinaries, find_binaries
from neon_local.postgres.cluster import PostgresCluster, PostgresError
from neon_local.postgres.template import neon_template
from neon_local.settings import ConfigError, Settings, file_version, load_settings, url_host
from neon_local.state import STATE_FILENAME, read_state

# The server's libraries (aiohttp, psycopg, joserfc, pglast: ~0.35 s) are imported in start(), on a thread beside
# the copy of the template and Postgres' start-up.
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from neon_local.auth.keys import KeyRing
    from neon_local.migrations import MigrationWatcher
    from neon_local.postgres.upstream import Upstream
    from neon_local.proxy.server import PgProxyServer
    from neon_local.reload import ConfigReloader
    from neon_local.services import Services

__all__ = ["AlreadyRunning", "Emulator", "Endpoints"]

log = logging.getLogger(__name__)

START_SWITCH_INTERVAL = 0.0005  # seconds: see start()


class AlreadyRunning(NeonLocalError):
    """Another neon-local serves this data directory."""


@dataclass(frozen=True)
class Endpoints:
    """Where clients reach a running emulator; what `up` prints and `status --json` returns."""

    host: str
    http_port: int
    pg_port: int
    database: str
    owner: str
    owner_password: str
    console_key: str = ""  # the secret in the console's URL

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def console_url(self) -> str:
        return f"{self.http_url}/console?key={self.console_key}"

    @property
    def sql_url(self) -> str:
        return f"{self.http_url}/sql"

    @property
    def data_api_url(self) -> str:
        return f"{self.http_url}/{quote(self.database, safe='')}/rest/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.http_port}/v2"

    @property
    def issuer_url(self) -> str:
        return self.http_url

    def database_url(self, role: str, password: str | None = None) -> str:
        credentials = quote(role, safe="") + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{credentials}@{self.host}:{self.pg_port}/{quote(self.database, safe='')}?sslmode=require"

    @property
    def owner_url(self) -> str:
        return self.database_url(self.owner, self.owner_password)

    @property
    def authenticated_url(self) -> str:
        return self.database_url("authenticated")


def _memory_dir() -> str | None:
    """tmpfs for --ephemeral data when the machine has it: copying the template there is ~5x faster than to disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _load_services(keys_dir: Path, tcp_loaded: Callable[[tuple[Callable[..., Awaitable[Services]], KeyRing]], object]) -> None:
    """For a worker thread during start(): import the services and read (or make) the keyring, hand them to
    `tcp_loaded`, then import the HTTP side, which start_services() waits for once the TCP proxy serves."""
    importlib.import_module("neon_local.postgres.bootstrap")  # first: psycopg, what the starting thread needs soonest
    from neon_local.auth.keys import KeyRing
    from neon_local.services import import_http_modules, start_services

    tcp_loaded((start_services, KeyRing.load_or_create(keys_dir)))
    import_http_modules()


def _settle(pending: asyncio.Future, result: object) -> None:
    if not pending.done():  # not cancelled with the start that awaited it
        pending.set_result(result)


def _fail_pending(pending: asyncio.Future, done: asyncio.Future) -> None:
    """`done` finished (a loading thread): `pending`, if it still waits for that thread's result, fails with it."""
    if pending.done():
        return
    if done.cancelled():
        pending.cancel()
    else:
        pending.set_exception(done.exception() or RuntimeError("the services were not loaded"))


class Emulator:
    """Start with `await emulator.start()`, stop with `await emulator.stop()`, or run it for a block with
    `async with Emulator(settings) as emulator:`; `endpoints` says where it listens."""

    def __init__(self, settings: Settings, *, write_state: bool = True) -> None:
        self.settings = settings
        self.write_state = write_state
        self._endpoints: Endpoints | None = None
        self.started_in: float | None = None  # seconds until clients could connect
        self._tls_ca: Path | None = None  # the proxy's CA certificate, once it serves
        self._temp_dir: Path | None = None
        self._stack: list = []  # things to close, in reverse order
        self.services: Services | None = None  # once started: issuer, verifier, control plane, /sql, proxy
        self._supervisor: asyncio.Task | None = None
        self._state_written = False
        self.started_at: float | None = None
        self.reloader: ConfigReloader | None = None  # while neon_local.toml is watched
        self.migrator: MigrationWatcher | None = None  # with --migrations
        self.cluster: PostgresCluster | Upstream  # once started
        self.binaries: PgBinaries  # once started, with the embedded Postgres

    @property
    def data_dir(self) -> Path:
        return self._temp_dir or self.settings.resolved_data_dir

    @property
    def endpoints(self) -> Endpoints:
        """Where clients reach it, once started."""
        if self._endpoints is None:
            raise self._not_running()
        return self._endpoints

    async def __aenter__(self) -> Emulator:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # what did start (Postgres, a temporary data dir) is closed again
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def mint(self, user: str | None = None, **options: Any) -> str:
        """A JWT from the built-in issuer, as `neon-local token` makes: for a user of neon_local.toml, or
        `sub=...`, with the same options (claims, lifetime, alg, audience, not_before, expired)."""
        if self.services is None:
            raise self._not_running()
        return self.services.issuer.mint(user, **options)

    def _not_running(self) -> NeonLocalError:
        return NeonLocalError("the emulator has not started: use it inside `async with Emulator(settings)`, "
                              "or after `await emulator.start()`.")

    async def start(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start everything; `on_ready()` is called as soon as clients can use what `state()` lists: Postgres is
        shaped, the TCP proxy serves and the HTTP socket listens. HTTP connections made before start() returns
        wait in that socket's backlog while the HTTP side finishes its imports."""
        began = time.perf_counter()
        self.started_at = time.time()
        settings = self.settings
        # Even an --ephemeral instance keeps its state.json in the project's data dir, so that
        # `status`, `psql` and `down` run from the project find it.
        project_dir = settings.resolved_data_dir
        if self.write_state:
            running = read_state(project_dir)
            if running:
                raise AlreadyRunning(
                    f"neon-local is already running for {project_dir} (pid {running['pid']}, "
                    f"HTTP port {running['http_port']}). Use it, or stop it with `neon-local down`."
                )
        if settings.ephemeral:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="neon-local-", dir=_memory_dir()))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        http_sock = bind(settings.host, settings.http_port, "http_port")
        pg_sock = bind(settings.host, settings.pg_port, "pg_port")
        # Closed again by stop() if the start fails (the services' servers close them otherwise): `up` may retry
        # at once on the same ports (an --upstream the user agreed to change).
        self._stack += [http_sock.close, pg_sock.close]
        config_read = self._read_config_file() if settings.live_reload and settings.config_file is not None else None
        # The services' libraries (psycopg, aiohttp, joserfc, cryptography, pglast: ~0.35 s of imports) and the keys
        # (made on the first start: ~60 ms of CPU) on a thread, while this one copies the template, launches Postgres
        # and waits for it (subprocesses and sockets, which release the GIL).
        loop = asyncio.get_running_loop()
        tcp_loaded: asyncio.Future[tuple[Callable[..., Awaitable[Services]], KeyRing]] = loop.create_future()
        loading = loop.run_in_executor(None, _load_services, self.data_dir / "keys",
                                       lambda loaded: loop.call_soon_threadsafe(_settle, tcp_loaded, loaded))
        loading.add_done_callback(lambda done: _fail_pending(tcp_loaded, done))
        # This thread's steps are short and many (polls, bootstrap's round trips): by default each would wait up
        # to 5 ms for the importing thread to hand over the GIL.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, START_SWITCH_INTERVAL))
        try:
            if settings.upstream_url is None:
                await self._launch_postgres()
                await self._shape_postgres()
            else:
                from neon_local.postgres.upstream import Upstream

                self.cluster = Upstream(settings.upstream_url)
                await self.cluster.start(settings)
            self._endpoints = Endpoints(url_host(settings.host), http_sock.getsockname()[1], pg_sock.getsockname()[1],
                                       settings.database, settings.owner, settings.owner_password, secrets.token_urlsafe(24))
            start_services, keyring = await tcp_loaded
        except BaseException:
            # Its thread cannot be stopped, and a start that may follow at once (`up` asking about --upstream's
            # changes) must not write the keyring beside it.
            await asyncio.gather(loading, return_exceptions=True)
            raise
        finally:
            sys.setswitchinterval(switch_interval)

        # With --migrations, once they are applied (after the HTTP side, below). A watched neon_local.toml is watched
        # only then too, but it was read above: an edit made right after `up -d` returns is found by comparing.
        ready_early = settings.migrations is None

        def accepting(pg_proxy: PgProxyServer) -> None:
            self._tls_ca = pg_proxy.tls_files.ca_cert
            if on_ready is not None and ready_early:
                self._ready(began, on_ready)

        sys.setswitchinterval(min(switch_interval, START_SWITCH_INTERVAL))  # the HTTP side imports on a thread
        try:
            self.services = await start_services(settings, self.cluster, self.data_dir, self.endpoints.issuer_url,
                                                 keyring, http_sock, pg_sock, self._stack.append,
                                                 console_key=self.endpoints.console_key, on_accepting=accepting)
            await loading  # done by now (start_services waited for its imports); raises what it raised
        finally:
            sys.setswitchinterval(switch_interval)
        if config_read is not None:
            from neon_local.reload import ConfigReloader  # watchdog's thread only when there is a file to watch

            self.reloader = ConfigReloader(self, config_read)
            self.reloader.start()
            self._stack.append(self.reloader.stop)
        if settings.migrations is not None:
            from neon_local.migrations import MigrationWatcher

            self.migrator = MigrationWatcher(self, settings.migrations, settings.migrations_watch)
            self._stack.append(self.migrator.stop)
            await self.migrator.start()
        if isinstance(self.cluster, PostgresCluster):
            self._supervisor = asyncio.create_task(self._supervise_postgres())
        if self.started_in is None:  # on_ready waited (see ready_early), or nobody asked
            self._ready(began, on_ready)
        elif self.write_state:
            self._write_state()  # the live reload's and the migrations' parts

    def _read_config_file(self) -> tuple[tuple[int, int] | None, Settings]:
        """The watched config file's version and its settings without CLI flags, as live reload compares edits with.
        A file changed or broken since `up` read it gets no version, so the reloader reads it again at once."""
        path = self.settings.config_file
        assert path is not None  # only called with a config file
        try:
            version = file_version(path)
            return version, load_settings(config_file=path)
        except (OSError, ConfigError):
            return None, self.settings

    def _ready(self, began: float, on_ready: Callable[[], None] | None) -> None:
        self.started_in = time.perf_counter() - began
        if self.write_state:
            self._write_state()
        if on_ready is not None:
            on_ready()

    async def _launch_postgres(self) -> None:
        """The embedded Postgres: a copy of the cached template, its postmaster started (not yet ready)."""
        settings = self.settings
        self.binaries = find_binaries(settings.pg_bin)
        self.cluster = cluster = PostgresCluster(self.binaries, self.data_dir / "pgdata", self.data_dir / "postgres.log",
                                                 settings.max_connections)
        # An existing data dir needs no template: none is built (initdb, ~1 s) when the settings it is keyed by changed.
        cluster.prepare(None if cluster.exists else await neon_template(self.binaries, settings))
        await cluster.launch()
        self._stack.append(cluster.stop)

    async def _shape_postgres(self) -> None:
        """Once the launched Postgres is ready: its stub brought up to date, shaped like a Neon branch."""
        from neon_local.postgres.bootstrap import bootstrap
        from neon_local.postgres.stub_upgrade import upgrade_stub

        assert isinstance(self.cluster, PostgresCluster)
        await self.cluster.wait_ready()
        await upgrade_stub(self.cluster)  # a data dir from an older neon-local
        await bootstrap(self.cluster, self.settings)

    async def bootstrap(self, settings: Settings) -> None:
        """Shape the Postgres for `settings` again (live reload with new roles)."""
        from neon_local.postgres.bootstrap import bootstrap

        if isinstance(self.cluster, PostgresCluster):
            await bootstrap(self.cluster, settings)
        else:
            await self.cluster.start(settings)

    def _postgres_state(self) -> dict:
        if not isinstance(self.cluster, PostgresCluster):
            return {"version": self.cluster.version, "source": f"upstream {self.cluster.url.display}",
                    "upstream": self.cluster.url.display, "pid": None, "socket_dir": None}
        return {"version": self.binaries.version, "source": self.binaries.source,
                "pid": self.cluster.pid, "socket_dir": str(self.cluster.socket_dir)}

    def state(self) -> dict:
        """What `status --json` prints: URLs, ports, pids, data dir, Postgres version."""
        e = self.endpoints
        assert self._tls_ca is not None  # the proxy serves, as endpoints says
        return {
            "pid": os.getpid(), "version": __version__, "started_at": self.started_at,
            "data_dir": str(self.data_dir), "ephemeral": self.settings.ephemeral,
            "config_file": str(self.settings.config_file) if self.settings.config_file else None,
            "database": e.database, "owner": e.owner,
            "postgres": self._postgres_state(),
            "host": e.host, "http_port": e.http_port, "pg_port": e.pg_port,
            "urls": {"owner": e.owner_url, "authenticated": e.authenticated_url, "sql": e.sql_url,
                     "websocket": e.ws_url, "issuer": e.issuer_url, "console": e.console_url,
                     "data_api": e.data_api_url if self.settings.data_api else None},
            "tls_ca": str(self._tls_ca),
            "started_in": round(self.started_in or 0, 3),
            "config_error": self.reloader.error if self.reloader else None,
            "migration_error": self.migrator.error if self.migrator else None,
        }

    def config_changed(self) -> None:
        """The live configuration, or its error, changed: `status` reads it from the state file."""
        if self.write_state and self._state_written:
            self._write_state()

    def _write_state(self) -> None:
        path = self.settings.resolved_data_dir / STATE_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written again while running (once the HTTP side is up, on a config change): replaced whole, so that
        # `status` and `down` never read half of it. mkstemp's file is this user's only: the console URL in it
        # carries the console's secret.
        descriptor, temporary = tempfile.mkstemp(prefix=STATE_FILENAME + ".", dir=path.parent)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(self.state(), indent=2) + "\n")
        os.replace(temporary, path)
        if not self._state_written:
            self._state_written = True
            self._stack.append(lambda: path.unlink(missing_ok=True))

    async def _supervise_postgres(self) -> None:
        """Restart Postgres if it dies under us; clients get errors meanwhile, nobody has to restart neon-local."""
        cluster = self.cluster
        assert isinstance(cluster, PostgresCluster)  # an upstream Postgres is not ours to restart
        delay = 0.2
        while True:
            code = await cluster.wait_exit()
            if cluster.stopping:
                return
            log.error("Postgres exited unexpectedly (code %s); restarting it. Last log lines:\n%s", code, cluster.log_tail(5))
            while True:
                await asyncio.sleep(delay)
                try:
                    await cluster.start()
                    log.warning("Postgres is back (pid %s)", cluster.pid)
                    if self.write_state:
                        self._write_state()  # status shows the new pid
                    delay = 0.2
                    break
                except PostgresError as exc:
                    delay = min(delay * 2, 5.0)
                    log.error("Postgres did not restart yet (%s); retrying in %.1f s", str(exc).splitlines()[0], delay)

    async def stop(self) -> None:
        if self._supervisor:
            self._supervisor.cancel()
        while self._stack:
            closer = self._stack.pop()
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # one failing closer must not keep the others (and Postgres) running
                log.exception("error while stopping")
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
