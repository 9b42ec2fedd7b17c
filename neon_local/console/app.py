"""The console's routes: the page, its static files and the JSON API behind the guard.

Every SQL statement typed in the editor goes through the /sql machinery in-process (token from the
built-in issuer, the verifier, the pooled session set-up), so what it shows is what the app gets.
Catalog reads, policy changes and lint fixes run as the owner, on a connection of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

import psycopg
from aiohttp import web
from psycopg.conninfo import make_conninfo

from neon_local.advisor import check
from neon_local.auth.verifier import JwtError, parse_token
from neon_local.console import catalog
from neon_local.console.guard import ConsoleGuard
from neon_local.console.identities import IdentityError, defined, resolve, token_factory
from neon_local.errors import NeonLocalError
from neon_local.settings import Settings, url_host
from neon_local.testing.explain import Explainer
from neon_local.testing.tokens import claims_of

__all__ = ["Console"]

log = logging.getLogger(__name__)

_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_MIGRATION_NAME = re.compile(r"[a-z0-9_]{1,60}")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsoleRequestError(NeonLocalError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _static(name: str) -> bytes:
    return resources.files("neon_local.console").joinpath(name).read_bytes()


class Console:
    """`install(app)` adds its routes; `url` is what `up` prints (with the secret)."""

    def __init__(self, settings: Settings, services, http_port: int, pg_port: int, secret: str | None = None) -> None:
        """`services`: neon_local.services.Services (not imported: services imports this module); `secret`: the
        key of the console's URL (default: a new one)."""
        self.settings = settings
        self.services = services
        self.host = url_host(settings.host)
        self.http_url = f"http://{self.host}:{http_port}"
        self.pg_port = pg_port
        self.guard = ConsoleGuard(http_port, secret)
        self.tokens = token_factory(services.issuer)
        self.requests = services.sql.request_log
        self.database = self.settings.database
        self._closing = asyncio.Event()
        self._type_cache: dict[int, str] = {}

    @property
    def url(self) -> str:
        return f"{self.http_url}/console?key={self.guard.secret}"

    def install(self, app: web.Application) -> None:
        """Add the routes (before any catch-all route), and end open log streams when the server shuts down."""
        app.add_routes(self.routes())
        app.on_shutdown.append(self._close_streams)

    async def _close_streams(self, app: web.Application) -> None:
        self._closing.set()

    def routes(self) -> list[web.RouteDef]:
        api = {
            ("GET", "info"): self._info, ("POST", "sql"): self._sql, ("GET", "rls"): self._rls,
            ("GET", "templates"): self._templates, ("POST", "policy/preview"): self._policy_preview,
            ("POST", "owner-sql"): self._owner_sql, ("POST", "policy/migration"): self._migration,
            ("POST", "matrix"): self._matrix, ("GET", "lints"): self._lints, ("POST", "tokens/mint"): self._mint,
            ("POST", "tokens/decode"): self._decode, ("GET", "log"): self._log_entries,
            ("GET", "limits"): self._limits,
        }
        return [
            web.get("/console", self._page),
            web.get("/console/static/{name}", self._asset),
            web.get("/console/api/log/stream", self._log_stream),
            *(web.route(method, f"/console/api/{path}", self._api(handler)) for (method, path), handler in api.items()),
        ]

    # --- page -----------------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        refused = self.guard.refusal(request, need_secret=False)
        if refused:
            return refused
        key = request.query.get("key")
        if key is not None:
            if not self.guard.key_matches(key):
                return _text_page(401, "This console key is not the running instance's: `neon-local status` shows the current URL.")
            response = web.Response(status=302, headers={"Location": "/console"})  # the key leaves the address bar
            self.guard.set_cookie(response)
            return response
        if not self.guard.has_secret(request):
            return _text_page(401, "Open the console with the URL that `neon-local up` printed (it carries ?key=...); "
                                   "`neon-local status` shows it again.")
        return web.Response(body=_static("templates/console.html"), content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP,
                                     "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        refused = self.guard.refusal(request)
        if refused:
            return refused
        name = request.match_info["name"]
        kind = _STATIC_TYPES.get(name[name.rfind("."):]) if "." in name else None
        if kind is None or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        try:
            body = _static(f"static/{name}")
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})

    # --- API plumbing -----------------------------------------------------------------------------------

    def _api(self, handler: Callable[[web.Request, Any], Awaitable[Any]]) -> _Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            refused = self.guard.refusal(request)
            if refused:
                return refused
            body: Any = None
            if request.method == "POST":
                try:
                    body = await request.json()
                except ValueError:
                    return web.json_response({"error": "the body must be JSON"}, status=400)
                if not isinstance(body, dict):
                    return web.json_response({"error": "the body must be a JSON object"}, status=400)
            try:
                return web.json_response(await handler(request, body), dumps=_dumps)
            except (ConsoleRequestError, IdentityError, catalog.MatrixError, ValueError) as exc:
                return web.json_response({"error": str(exc)}, status=getattr(exc, "status", 400))
            except psycopg.Error as exc:
                return web.json_response({"error": _pg_message(exc)}, status=400)
            except Exception as exc:  # a bug of ours: the page still gets JSON, the log the traceback
                log.exception("console request %s failed", request.path)
                return web.json_response({"error": f"neon-local failed on this request ({type(exc).__name__}); "
                                                   f"its log has the details"}, status=500)
        return wrapped

    async def _owner(self) -> psycopg.AsyncConnection:
        """A fresh connection as the owner, over the local socket (as `neon-local psql` would act)."""
        conninfo = self.services.control_plane.conninfo(self.settings.owner, self.database)
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)

    def _superuser_conninfo(self) -> str:
        return self.services.control_plane.cluster.conninfo(dbname=self.database)

    # --- handlers -------------------------------------------------------------------------------------

    async def _info(self, request: web.Request, body: Any) -> dict:
        return {"database": self.database, "owner": self.settings.owner, "identities": defined(self.settings),
                "jwt_roles": list(self.settings.jwt_roles), "sql_url": self.http_url + "/sql", "http_url": self.http_url}

    async def _sql(self, request: web.Request, body: dict) -> dict:
        """One statement as one identity, through POST /sql's code; `explain` prefixes EXPLAIN."""
        identity = resolve(body.get("identity"), self.settings, self.tokens)
        text = body.get("sql")
        if not isinstance(text, str) or not text.strip():
            raise ConsoleRequestError("type a statement first")
        if body.get("explain"):
            text = "EXPLAIN " + text
        headers = identity.sql_headers(self.settings, self.database) | {"Neon-Array-Mode": "true"}
        began = time.perf_counter()
        status, answer = await self.services.sql.run_in_process(headers, json.dumps({"query": text, "params": []}).encode())
        elapsed = (time.perf_counter() - began) * 1000
        result = json.loads(answer)
        error = result.get("message") if status != 200 else None
        self.requests.record("console", identity.role, token=identity.token, statement=text, began=began,
                        rows=result.get("rowCount") if status == 200 else None, error=error)
        if status == 200:
            result["types"] = await self._type_names([f["dataTypeID"] for f in result.get("fields", [])])
        return {"status": status, "result": result, "ms": round(elapsed, 2), "identity": identity.describe(),
                "explain": bool(body.get("explain"))}

    async def _type_names(self, oids: list[int]) -> list[str]:
        """Type names for the grid's headers, remembered by OID (a type renamed later keeps its old name here)."""
        missing = sorted(set(oids) - set(self._type_cache))
        if missing:
            async with await self._owner() as conn:
                cur = await conn.execute("select oid::int, format_type(oid, null) from pg_type where oid = any(%s)", (missing,))
                self._type_cache.update(await cur.fetchall())
        return [self._type_cache.get(oid, str(oid)) for oid in oids]

    async def _rls(self, request: web.Request, body: Any) -> dict:
        async with await self._owner() as conn:
            tables = await catalog.overview(conn, [self.settings.owner, *self.settings.jwt_roles])
        return {"tables": tables}

    async def _templates(self, request: web.Request, body: Any) -> dict:
        return {"templates": [{"name": n, "label": label, "params": params}
                              for n, (label, params, _) in catalog.TEMPLATES.items()]}

    async def _policy_preview(self, request: web.Request, body: dict) -> dict:
        schema, _, table = str(body.get("table", "")).rpartition(".")
        if not table:
            raise ConsoleRequestError("choose a table")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise ConsoleRequestError("params must be a JSON object of name: value")
        return {"sql": catalog.template_sql(str(body.get("template")), schema or "public", table, params)}

    async def _owner_sql(self, request: web.Request, body: dict) -> dict:
        """Statements as the owner in one transaction (a policy, a lint's fix): all or nothing."""
        text = body.get("sql")
        if not isinstance(text, str) or not text.strip():
            raise ConsoleRequestError("nothing to run")
        began = time.perf_counter()
        async with await self._owner() as conn, conn.transaction():
            await conn.execute(text)
        self.requests.record("console", self.settings.owner, statement=text, began=began)
        return {"ok": True}

    async def _migration(self, request: web.Request, body: dict) -> dict:
        name, text = str(body.get("name") or "policy"), body.get("sql")
        if not _MIGRATION_NAME.fullmatch(name):
            raise ConsoleRequestError("a migration name is lower-case letters, digits and _ (at most 60)")
        if not isinstance(text, str) or not text.strip():
            raise ConsoleRequestError("nothing to write")
        folder = self.settings.migrations or self.settings.project_dir / "migrations"  # where `up --migrations` reads
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        path = folder / f"{stamp}_{name}.sql"
        try:
            await asyncio.to_thread(_write_new, path, text.rstrip() + "\n")
        except FileExistsError:
            raise ConsoleRequestError(f"{path} exists already (written this second): choose another name") from None
        return {"path": str(path)}

    async def _matrix(self, request: web.Request, body: dict) -> dict:
        table = body.get("table")
        new_row = body.get("new_row")
        if not isinstance(table, str) or not table:
            raise ConsoleRequestError("choose a table")
        if new_row is not None and not isinstance(new_row, dict):
            raise ConsoleRequestError("the new row must be a JSON object of column: value")
        specs = [{"kind": "user", "name": n} for n in self.settings.users] + [{"kind": "anonymous"}, {"kind": "owner"}]
        sessions = []
        for spec in specs:
            identity = resolve(spec, self.settings, self.tokens)
            sessions.append((identity, self._proxy_conninfo(identity)))
        async with await self._owner() as conn:
            return await catalog.measure_matrix(conn, table, sessions, new_row, Explainer(self._superuser_conninfo()))

    def _proxy_conninfo(self, identity) -> str:
        password = identity.token if identity.token is not None else self.settings.owner_password
        return make_conninfo(host=self.host.strip("[]"), port=self.pg_port, user=identity.role,
                                              password=password, dbname=self.database, sslmode="require")

    async def _lints(self, request: web.Request, body: Any) -> dict:
        def run() -> list[dict]:
            with psycopg.connect(self._superuser_conninfo()) as conn:
                return [f.as_dict() for f in check(conn, roles=self.settings.jwt_roles, users=self.settings.users)]
        return {"findings": await asyncio.to_thread(run)}

    async def _mint(self, request: web.Request, body: dict) -> dict:
        options: dict[str, Any] = {}
        claims = body.get("claims") or {}
        if not isinstance(claims, dict):
            raise ConsoleRequestError("claims must be a JSON object")
        for name, kind in (("lifetime", int), ("alg", str), ("expired", bool)):
            if body.get(name) is not None:
                if not isinstance(body[name], kind):
                    raise ConsoleRequestError(f"{name} must be a {kind.__name__}")
                options[name] = body[name]
        user, sub = body.get("user") or None, body.get("sub") or None
        try:
            token = self.tokens(user, sub=sub, claims=claims, **options)
        except Exception as exc:  # the issuer's refusals (unknown user, bad alg) are for the page
            raise ConsoleRequestError(str(exc)) from None
        return self._token_views(token, str(body.get("role") or "authenticated"))

    def _token_views(self, token: str, role: str) -> dict:
        database = quote(self.database, safe="")
        return {"token": token, "claims": claims_of(token), "authorization": f"Authorization: Bearer {token}",
                "connection_string": f"postgresql://{quote(role, safe='')}:{token}@{self.host}:{self.pg_port}/{database}?sslmode=require",
                "curl": (f"curl -s {self.http_url}/sql -H 'Neon-Connection-String: postgresql://{role}@{self.host}/{database}' "
                         f"-H 'Authorization: Bearer {token}' -d '{{\"query\": \"select auth.user_id()\", \"params\": []}}'")}

    async def _decode(self, request: web.Request, body: dict) -> dict:
        """Decode a pasted token and verify it as the proxy would for `role`: Neon's error text when it fails."""
        token = str(body.get("token") or "").strip()
        role = str(body.get("role") or "authenticated")
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        answer: dict[str, Any] = {"role": role}
        try:
            parsed = parse_token(token, self.settings.compat == "extended")
            answer |= {"header": parsed.header, "claims": parsed.claims}
        except JwtError as exc:
            return answer | {"valid": False, "error": exc.message, "detail": exc.detail}
        try:
            verified = await self.services.verifier.verify(token, role)
        except JwtError as exc:
            return answer | {"valid": False, "error": exc.message, "detail": exc.detail}
        return answer | {"valid": True, "provider": verified.provider_id, "kid": parsed.header.get("kid"),
                         "expires_at": verified.expires_at}

    async def _limits(self, request: web.Request, body: Any) -> dict:
        """The allow-list's mode and fingerprints, the rate limits, and what each path refused since start
        (also what `neon-local status` prints)."""
        return self.services.sql.limits.summary()

    async def _log_entries(self, request: web.Request, body: Any) -> dict:
        return {"entries": self.requests.entries(int(request.query.get("after", 0) or 0))}

    async def _log_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the entries so far, then each new one as it is recorded."""
        refused = self.guard.refusal(request)
        if refused:
            return refused
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        with self.requests.subscribe() as queue:
            for entry in self.requests.entries():
                await response.write(_event(entry))
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                while not self._closing.is_set():
                    getting = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getting, closing}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                    if getting in done:
                        await response.write(_event(self.requests.shown(getting.result())))
                    else:
                        getting.cancel()
                        await response.write(b": keep-alive\n\n")  # finds a closed page, which ends the loop
            finally:
                closing.cancel()
        return response


_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _event(entry: dict) -> bytes:
    return b"data: " + _dumps(entry).encode() + b"\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _pg_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    return text + (f" ({diag.message_detail})" if diag.message_detail else "")


def _write_new(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as handle:  # never overwrite a migration
        handle.write(text)


def _text_page(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=f"neon-local console\n\n{message}\n", content_type="text/plain")
