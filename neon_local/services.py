"""Wire the client-facing services of a started emulator: issuer, verifier, control plane, HTTP app, TCP proxy.

The TCP proxy starts first; the HTTP side's libraries (aiohttp and the modules serving /sql, WebSocket, the
Data API, the issuer and the console: ~0.2 s of imports) are imported on a thread while it serves, and
HTTP connections made meanwhile wait in the listening socket's backlog.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import Verifier
from neon_local.console.request_log import RequestLog
from neon_local.control_plane import ControlPlane
from neon_local.postgres.cluster import PostgresCluster
from neon_local.postgres.upstream import Upstream
from neon_local.proxy.server import PgProxyServer
from neon_local.settings import Settings

if TYPE_CHECKING:
    from aiohttp import web

    from neon_local.auth.issuer import Issuer
    from neon_local.console.app import Console
    from neon_local.data_api.handler import DataApi
    from neon_local.serverless.sql_over_http import SqlOverHttp
    from neon_local.serverless.websocket import WebSocketAdapter

# What the HTTP side imports, on a thread (see start_services).
HTTP_MODULES = ("aiohttp.web", "neon_local.auth.issuer", "neon_local.console.app", "neon_local.data_api.handler",
                "neon_local.serverless.sql_over_http", "neon_local.serverless.websocket")

# asyncio listens again with its own small default backlog; a burst of connections beyond it is reset.
LISTEN_BACKLOG = 4096
# /sql bodies up to Neon's 10 MiB limit must reach the handler, which answers 413 itself beyond it.
CLIENT_MAX_SIZE = 16 * 1024 * 1024


@dataclass
class Services:
    """Everything that serves clients, built once by `start_services` and closed by the emulator."""

    keyring: KeyRing
    issuer: Issuer
    providers: ProviderCache
    verifier: Verifier
    control_plane: ControlPlane
    sql: SqlOverHttp
    pg_proxy: PgProxyServer
    websocket: WebSocketAdapter
    console: Console | None = None
    data_api: DataApi | None = None


async def start_services(settings: Settings, cluster: PostgresCluster | Upstream, data_dir: Path, issuer_url: str,
                         keyring: KeyRing, http_sock: socket.socket, pg_sock: socket.socket,
                         add_closer: Callable[[Callable[[], Any]], None], *, console_key: str | None = None,
                         on_accepting: Callable[[PgProxyServer], None] | None = None) -> Services:
    """Build the services, listen on the two bound sockets; `add_closer` receives what must be closed, in order.
    `on_accepting(pg_proxy)` is called once the TCP proxy serves, before the HTTP side is imported and started;
    `console_key` is the console's secret (default: a new one)."""
    providers = ProviderCache(settings, data_dir / "jwks-cache")
    verifier = Verifier(settings, keyring, providers)
    control_plane = ControlPlane(cluster, settings.session_jwt_version,
                                 stub_installer=cluster.install_stub if isinstance(cluster, Upstream) else None)
    add_closer(control_plane.close)
    await control_plane.use_tenancy(settings)  # mode "upstream": every tenant's Postgres checked and prepared first
    request_log = RequestLog()  # every path's requests and sessions, for the console's live log
    pg_proxy = PgProxyServer(settings, control_plane, verifier, data_dir / "tls", request_log=request_log)
    await pg_proxy.start(pg_sock)
    add_closer(pg_proxy.close)
    if on_accepting is not None:
        on_accepting(pg_proxy)
    await asyncio.to_thread(import_http_modules)
    from aiohttp import web

    from neon_local.auth.issuer import Issuer
    from neon_local.console.app import Console
    from neon_local.data_api.handler import DataApi
    from neon_local.serverless.sql_over_http import SqlOverHttp
    from neon_local.serverless.websocket import WebSocketAdapter

    sql = SqlOverHttp(settings, control_plane, verifier, request_log=request_log)
    add_closer(sql.close)
    services = Services(keyring, Issuer(settings, keyring, issuer_url), providers, verifier, control_plane, sql,
                        pg_proxy, WebSocketAdapter(pg_proxy))
    if settings.data_api:
        services.data_api = DataApi(settings, control_plane, verifier, request_log=request_log)
        add_closer(services.data_api.close)
    services.console = Console(settings, services, http_sock.getsockname()[1], pg_sock.getsockname()[1], secret=console_key)

    # keepalive_timeout also bounds how long a new connection may take to send its headers (slowloris).
    runner = web.AppRunner(build_http_app(services), access_log=None, handle_signals=False,
                           keepalive_timeout=settings.http_idle_timeout or 3630)
    await runner.setup()
    await web.SockSite(runner, http_sock, backlog=LISTEN_BACKLOG).start()
    add_closer(runner.cleanup)
    return services


def import_http_modules() -> None:
    """What the HTTP side imports (also started early by the emulator's loading thread: a second call waits for it)."""
    for module in HTTP_MODULES:
        importlib.import_module(module)


def build_http_app(services: Services) -> web.Application:
    """Neon's routing on one port: a WebSocket upgrade on any path, POST/OPTIONS /sql, 400 for the rest;
    plus neon-local's own issuer and console paths."""
    from aiohttp import web

    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.add_routes(services.issuer.routes())
    if services.console:
        services.console.install(app)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await services.websocket.handle(request)
        if request.path == "/" and request.method == "GET":
            raise web.HTTPFound("/console")
        if request.path == "/sql":
            if request.method == "POST":
                return await services.sql.handle_sql(request)
            if request.method == "OPTIONS":
                return await services.sql.handle_options(request)
        if request.path == "/data-api/refresh" and request.method == "POST" and services.data_api is not None:
            return await services.data_api.handle_refresh(request)
        # Neon's rest broker takes every path whose second segment starts with "rest": /<db>/rest/v1/...
        if services.data_api is not None and request.path.split("/")[2:3] and request.path.split("/")[2].startswith("rest"):
            return await services.data_api.handle(request)
        return await services.sql.not_supported(request)

    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
