"""Wire the client-facing services of a started emulator: issuer, verifier, HTTP app, TCP proxy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import Verifier
from neon_local.control_plane import ControlPlane
from neon_local.proxy.server import PgProxyServer
from neon_local.serverless.sql_over_http import SqlOverHttp
from neon_local.serverless.websocket import WebSocketAdapter

if TYPE_CHECKING:
    from neon_local.app import Emulator

# /sql bodies up to Neon's 10 MiB limit must reach the handler, which answers 413 itself beyond it.
CLIENT_MAX_SIZE = 16 * 1024 * 1024


async def start_services(emulator: "Emulator", keyring: KeyRing, http_sock, pg_sock) -> None:
    settings, data_dir = emulator.settings, emulator.data_dir
    emulator.keyring = keyring
    emulator.issuer = Issuer(settings, emulator.keyring, emulator.endpoints.issuer_url)
    emulator.providers = ProviderCache(settings, data_dir / "jwks-cache")
    emulator.verifier = Verifier(settings, emulator.keyring, emulator.providers)
    emulator.control_plane = ControlPlane(emulator.cluster)
    emulator.add_closer(emulator.control_plane.close)
    emulator.sql = SqlOverHttp(settings, emulator.control_plane, emulator.verifier)
    emulator.add_closer(emulator.sql.close)
    emulator.pg_proxy = PgProxyServer(settings, emulator.control_plane, emulator.verifier, data_dir / "tls")
    emulator.websocket = WebSocketAdapter(emulator.pg_proxy)
    await emulator.pg_proxy.start(pg_sock)
    emulator.add_closer(emulator.pg_proxy.close)

    app = build_http_app(emulator)
    # keepalive_timeout also bounds how long a new connection may take to send its headers (slowloris).
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=settings.http_idle_timeout or 3630)
    await runner.setup()
    await web.SockSite(runner, http_sock).start()
    emulator.add_closer(runner.cleanup)


def build_http_app(emulator: "Emulator") -> web.Application:
    """Neon's routing on one port: a WebSocket upgrade on any path, POST/OPTIONS /sql, 400 for the rest;
    plus neon-local's own issuer and console paths."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.add_routes(emulator.issuer.routes())

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await emulator.websocket.handle(request)
        if request.path == "/sql":
            if request.method == "POST":
                return await emulator.sql.handle_sql(request)
            if request.method == "OPTIONS":
                return await emulator.sql.handle_options(request)
        return await emulator.sql.not_supported(request)

    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
