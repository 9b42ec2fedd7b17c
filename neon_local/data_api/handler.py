"""`/<db>/rest/v1/...`: route, authenticate, plan, run on a pooled `authenticator` session, answer.

One request runs as Neon's rest broker has local_proxy run it: a pooled connection logged in as
`authenticator` with the caller's claims installed in pg_session_jwt, then one READ COMMITTED
transaction (READ ONLY for GET/HEAD and non-volatile RPC) holding the `set_config` statement (role,
request.jwt.claims, request.method/path/headers/get, search_path) and the main query.

Beyond Neon, the client limits of the other paths apply (neon_local.limits): Neon's per-endpoint rate
limit (the `http` protocol's buckets) and the per-identity one, and the query allow-list on the main
query the request generates (its fingerprint follows the request's shape, not its values). Each
request is recorded in the console's live log.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_plus, urlencode

import psycopg
from aiohttp import web

from neon_local.auth.verifier import JwtError
from neon_local.console.request_log import RequestLog
from neon_local.data_api import setup
from neon_local.data_api.errors import ApiError
from neon_local.data_api.grammar import (
    CSV,
    JSON,
    OBJECT,
    Filter,
    parse_accept,
    parse_payload,
    parse_prefer,
    parse_query,
    parse_range,
)
from neon_local.data_api.listener import Listeners
from neon_local.data_api.openapi import openapi
from neon_local.data_api.schema import INTROSPECTION_SQL, Schema
from neon_local.data_api.sql import Builder, Plan, env_query, ident
from neon_local.errors import NeonLocalError, PostgresErrorResponse
from neon_local.limits import ClientLimits, RateLimited, Refused
from neon_local.origins import PNA_ALLOW, PNA_REQUEST, OriginPolicy
from neon_local.postgres import session_jwt
from neon_local.serverless.conn_pool import ConnPool
from neon_local.serverless.pg_conn import ConnectionLost, PgError, Statement, connect

__all__ = ["DataApi"]

log = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024
MISSING_CREDENTIALS = "missing authentication credentials: required authorization bearer token in JWT format"
EXPOSE = ("Content-Encoding, Content-Location, Content-Range, Content-Type, Date, Location, Server, "
          "Transfer-Encoding, Range-Unit")
METHODS = "GET, POST, PATCH, PUT, DELETE, OPTIONS"
STALE_RETRIES = 3  # plannings again after DDL raced the request
# The database lost what the set-up put there: schema pgrst, its functions or its sequence.
_UNPREPARED = frozenset(("3F000", "42883", "42P01"))
_VERSION_SQL = "select pgrst.schema_version()::text"
_ASSERT_VERSION_SQL = "select pgrst.assert_schema_version_is($1)"
# The keys pre_config() set in this transaction; json_strip_nulls drops the unset ones.
_CONFIG_SQL = ("select pg_catalog.json_strip_nulls(pg_catalog.json_build_object("
               + ", ".join(f"'{key}', pg_catalog.current_setting('pgrst.{key}', true)" for key in setup.CONFIG_KEYS)
               + "))::text")
_ROLE_CONFIG_SQL = (
    "select coalesce(pg_catalog.json_agg(c order by s.setdatabase), '[]')::text "
    "from pg_catalog.pg_db_role_setting s join pg_catalog.pg_roles r on r.oid = s.setrole, "
    "pg_catalog.unnest(s.setconfig) c where r.rolname = 'authenticator' and c like 'pgrst.%' "
    "and s.setdatabase in (0, (select oid from pg_catalog.pg_database where datname = pg_catalog.current_database()))")


@dataclass
class ApiConfig:
    schemas: tuple[str, ...]
    anon_role: str | None
    max_rows: int | None
    extra_search_path: tuple[str, ...]
    cors_origins: tuple[str, ...] | None

    @classmethod
    def from_values(cls, values: dict[str, str]) -> ApiConfig:
        def listed(key: str) -> tuple[str, ...]:
            return tuple(v.strip() for v in values.get(key, "").split(",") if v.strip())
        max_rows = values.get("db_max_rows", "").strip()
        return cls(listed("db_schemas") or ("public",), values.get("db_anon_role") or None,
                   int(max_rows) if max_rows.isdigit() and int(max_rows) > 0 else None,
                   listed("db_extra_search_path"), listed("server_cors_allowed_origins") or None)


@dataclass
class _Cached:
    schema: Schema
    config: ApiConfig
    version: str


class _StaleSchema(NeonLocalError):
    """DDL ran since the schema cache was read: plan the request again on a fresh cache."""


class _Row:
    """Keeps the main query's one row."""

    def __init__(self) -> None:
        self.row: Any = None  # the row, read once the statement has run

    async def columns(self, columns) -> None:
        pass

    def rows(self, rows: list[tuple]) -> None:
        self.row = rows[0]

    def end(self, tag: str) -> None:
        pass


class DataApi:
    """The Data API handlers for every database; `close()` closes the pooled connections."""

    def __init__(self, settings, control_plane, verifier, *, request_log: RequestLog | None = None) -> None:
        self.settings = settings
        self.request_log = request_log or RequestLog()
        self.limits = ClientLimits.of(settings)  # the instance /sql and the proxy share
        self.control_plane = control_plane
        self.pools = ConnPool(control_plane)
        self._verifier = verifier
        # data_api_compat = "neon": the answers of Neon's rest broker where they differ from PostgREST's (README)
        self._neon = settings.data_api_compat == "neon"
        self._detail_key = "detail" if self._neon else "details"
        self._charset = None if self._neon else "utf-8"  # Neon's Content-Type carries no charset
        self._openapi = settings.data_api_openapi_mode != "disabled"
        self._origins = OriginPolicy(settings.allowed_origins)
        self._listeners = Listeners(lambda dbname: control_plane.conninfo("cloud_admin", dbname), self.forget)
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._set_up: dict[str, asyncio.Future] = {}

    def use_settings(self, settings, limits: ClientLimits) -> None:
        """Serve with the tenancy, users and limits of `settings` from now on (live reload)."""
        self.settings = settings
        self.limits = limits

    @property
    def _verify_role(self) -> str:
        # Neon takes tokens for the Data API from the providers whose role_names list authenticator;
        # neon-local's providers list the JWT roles, so a provider serving `authenticated` serves the Data API too.
        # Read from `settings` each time, since a live reload replaces them.
        return setup.AUTHENTICATOR if any(
            setup.AUTHENTICATOR in p.role_names for p in self.settings.providers) else "authenticated"

    async def close(self) -> None:
        await self._listeners.stop()
        await self.pools.close()

    def forget(self, dbname: str | None = None) -> None:
        """Drop the schema cache of one database (or all): the next request introspects again."""
        for name in [dbname] if dbname else list(self._cache):
            self._cache.pop(name, None)
            self._loading.pop(name, None)  # a load already under way may have read the schema before the change

    # --- HTTP -------------------------------------------------------------------------------------

    async def handle_refresh(self, request: web.Request) -> web.Response:
        """`POST /data-api/refresh[?db=NAME]`, neon-local only (Neon: the Console's "Refresh schema cache" or the
        management API's PATCH): that database's schema and pgrst.* settings (or every one's) are read again on
        its next request. Web pages get it only from the origins `allowed_origins` admits."""
        origin = request.headers.get("Origin")
        if origin is not None and not self._origins.allows(origin):
            message = OriginPolicy.refusal(origin, "refreshing the Data API's schema cache")
            return web.json_response({"message": message}, status=403)
        dbname = request.query.get("db") or None
        self.forget(dbname)
        log.info("the Data API reloads the schema cache of %s on the next request (POST /data-api/refresh)",
                 dbname or "every database")
        return web.json_response({"message": "The Data API reloads its schema cache on the next request.", "db": dbname})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        began = time.perf_counter()
        cors = self._cors(request)
        error: str | None = None
        who: dict[str, str | None] = {}
        try:
            response = await self._serve(request, who)
        except ApiError as exc:
            body = exc.body(self._detail_key)
            response = web.Response(status=exc.status, body=body, headers=exc.headers,
                                    content_type="application/json", charset=self._charset)
            error = exc.message
        except Exception as exc:  # a bug of ours still answers PostgREST's JSON
            log.exception("unexpected error in a Data API request")
            error = f"internal error in neon-local ({type(exc).__name__}: {exc}); see its log"
            response = web.Response(status=500, body=ApiError(500, "PGRST000", error).body(self._detail_key),
                                    content_type="application/json")
        response.headers.update(cors)
        response.headers["neon-request-id"] = request_id
        if request.method != "OPTIONS":  # a browser's preflight is not a request of the app's
            self.request_log.record(request.path, who.get("role"), token=who.get("token"), statement=unquote_plus(request.query_string),
                                    began=began, rows=_rows(request.method, response), error=error,
                                    method=request.method, status=response.status)
        return response

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        headers = {"Access-Control-Expose-Headers": EXPOSE}
        if origin is None:
            return headers
        dbname = request.path.split("/")[1] if request.path.count("/") >= 2 else ""
        cached = self._cache.get(dbname)
        allowed = cached.config.cors_origins if cached else None
        if allowed is None:
            headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        return headers

    async def _serve(self, request: web.Request, who: dict) -> web.StreamResponse:
        """The response; `who` receives the request's role and token once known (for the request log)."""
        parts = request.path.split("/")
        dbname = parts[1]
        if parts[2:4] != ["rest", "v1"]:
            raise ApiError(404, "PGRST125", "Invalid path specified in request URL")
        resource = "/".join(parts[4:])
        if request.method == "OPTIONS":
            requested = request.headers.get("Access-Control-Request-Headers")
            headers = {"Allow": METHODS, "Access-Control-Allow-Methods": METHODS, "Access-Control-Max-Age": "86400",
                       "Access-Control-Allow-Headers": f"{requested}, Authorization" if requested else "Authorization"}
            # Private Network Access: only pages the origin policy admits may reach this machine's data
            # (a request without a token runs as the anonymous role).
            if request.headers.get(PNA_REQUEST) == "true" and self._origins.allows(request.headers.get("Origin")):
                headers[PNA_ALLOW] = "true"
            return web.Response(status=200, headers=headers)
        if self.limits.rate.enabled:
            try:
                self.limits.admit_endpoint("http", "data_api")
            except RateLimited as exc:  # Neon's endpoint limit: 500 with its text, as on /sql
                raise ApiError(500, None, exc.message) from None
        token = self._bearer(request)
        dbname = await self._tenant_database(token, dbname)
        cached = await self._schema(dbname)
        self._listeners.touch(dbname)
        config = cached.config
        claims_payload, role, sub = await self._identity(token, config)
        who.update(role=role, token=token)
        if self.limits.rate.enabled:
            try:  # every Data API role is a token's (or the anonymous one): the per-identity limit applies
                self.limits.admit_identity("data_api", role, sub)
            except RateLimited as exc:
                raise ApiError(429, None, exc.message,
                               headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from None
        if resource in ("", "openapi.json") and request.method in ("GET", "HEAD"):
            if not self._openapi:
                if resource:  # Neon's answer with openapi_mode off (its troubleshooting page)
                    raise ApiError(404, None, "Entry 'openapi.json' not found")
                raise ApiError(404, "PGRST126", "Root endpoint metadata is disabled")
            # The path the client used: with [tenancy] `dbname` is the tenant's database (or upstream route) behind it
            document = openapi(cached.schema, self._profile(request, config), request.host, f"/{parts[1]}/rest/v1")
            return web.Response(body=json.dumps(document).encode(), content_type="application/openapi+json",
                                charset="utf-8")
        if ("/" in resource and not resource.startswith("rpc/")) or resource.count("/") > 1:
            raise ApiError(404, "PGRST125", "Invalid path specified in request URL")
        method = request.method
        schema_name = self._profile(request, config)
        media = parse_accept(request.headers.get("Accept"))
        prefs = parse_prefer(request.headers.getall("Prefer", []))
        pairs = parse_qsl(request.query_string, keep_blank_values=True)
        body = b"" if method in ("GET", "HEAD") else await self._body(request)
        settings = {
            "role": role, "request.jwt.claims": claims_payload, "request.method": method,
            "request.path": request.raw_path, "request.headers": json.dumps({k.lower(): v for k, v in request.headers.items()}),
            "request.cookies": "{}", "request.get": json.dumps(dict(pairs)),
            "search_path": ", ".join(ident(s) for s in (schema_name, *config.extra_search_path)),
        }
        for attempt in range(STALE_RETRIES + 1):
            if resource.startswith("rpc/"):
                plan, extra = await self._rpc_plan(dbname, cached, schema_name, resource[4:], method, pairs, body, media, prefs)
            else:
                plan, extra = await self._table_plan(dbname, cached, schema_name, resource, method, pairs, body, media,
                                                     prefs, request.headers.get("Range"))
            self._check_allowlist(role, plan, method, resource, pairs)
            try:
                row = await self._run(dbname, role, claims_payload, plan, settings, cached.version)
                break
            except ApiError as exc:
                if exc.code == "42501" and token is None and not self._neon:
                    exc.status = 401  # PostgREST: a request without a token lacks a privilege unauthenticated
                raise
            except _StaleSchema:
                if attempt == STALE_RETRIES:
                    raise ApiError(503, "PGRST002", "Could not query the database for the schema cache. Retrying.",
                                   "the schema kept changing while this request was planned") from None
                log.info("database %s changed its schema: the Data API reloads its schema cache (neon-local only; "
                         "on Neon, refresh it from the Console)", dbname)
                self.forget(dbname)
                cached = await self._schema(dbname)
        return self._respond(request, method, plan, row, media, prefs, extra, schema_name, config)

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        if not header.startswith("Bearer "):
            raise ApiError(401, None, MISSING_CREDENTIALS)
        return header[len("Bearer "):].strip()

    async def _identity(self, token: str | None, config: ApiConfig) -> tuple[str, str, object]:
        """(claims JSON, role, sub) as Neon picks them: the token's `role` string, else the anonymous role."""
        if token is None:
            if config.anon_role is None:
                raise ApiError(401, None, MISSING_CREDENTIALS)
            return json.dumps({"role": config.anon_role}), config.anon_role, None
        try:
            verified = self._verifier.verify_cached(token, self._verify_role) or await self._verifier.verify(
                token, self._verify_role)
        except JwtError as exc:
            raise ApiError(401, None, exc.message) from None
        role = verified.claims.get("role")
        if not isinstance(role, str):
            if config.anon_role is None:
                raise ApiError(401, "PGRST302", "Anonymous access is disabled")
            role = config.anon_role
        return verified.payload.decode(), role, verified.claims.get("sub")

    def _check_allowlist(self, role: str, plan: Plan, method: str, resource: str, pairs) -> None:
        """The main query the request generated, against the allow-list as the role's other statements are."""
        allowlist = self.limits.allowlist
        if allowlist.mode_for(role, True) == "off":
            return
        shape = request_shape(method, resource, pairs)
        try:
            allowlist.check(role, True, plan.sql, "data_api", note=shape)
        except Refused as exc:
            fields = exc.fields()
            fields["D"] = f"request: {shape}; " + fields.get("D", "")
            raise _pg_error(fields, self._detail_key) from None

    async def _tenant_database(self, token: str | None, dbname: str) -> str:
        """With [tenancy], the database the token's tenant claim names, whatever the URL says (neon-local only)."""
        if self.control_plane.tenancy is None:
            return dbname
        try:
            verified = token and (self._verifier.verify_cached(token, self._verify_role)
                                  or await self._verifier.verify(token, self._verify_role))
            return await self.control_plane.tenant_database(verified and verified.claims, dbname)
        except JwtError as exc:
            raise ApiError(401, None, exc.message) from None
        except PostgresErrorResponse as exc:
            raise ApiError(401 if exc.sqlstate == "28000" else 503, None, exc.fields.get("M", ""),
                           hint=exc.fields.get("H")) from None

    def _profile(self, request: web.Request, config: ApiConfig) -> str:
        header = "Accept-Profile" if request.method in ("GET", "HEAD") else "Content-Profile"
        wanted = request.headers.get(header)
        if wanted is None:
            return config.schemas[0]
        if wanted not in config.schemas:
            raise ApiError(406, "PGRST106", f"Invalid schema: {wanted}", None,
                           f"Only the following schemas are exposed: {', '.join(config.schemas)}")
        return wanted

    @staticmethod
    async def _body(request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(413, None, f"request is too large (max is {MAX_BODY} bytes)")
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, None, f"request is too large (max is {MAX_BODY} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- planning ------------------------------------------------------------------------------------

    async def _lookup(self, dbname: str, cached: _Cached, find):
        """`find(schema)`; when a name is unknown and DDL ran since the cache was read, reload and try again."""
        try:
            return find(cached.schema)
        except ApiError as exc:
            if exc.code not in ("PGRST200", "PGRST202", "PGRST205") or await self._version(dbname) == cached.version:
                raise
            log.info("database %s changed its schema: the Data API reloads its schema cache (neon-local only; "
                     "on Neon, refresh it from the Console)", dbname)
            self.forget(dbname)
            fresh = await self._schema(dbname)
            return find(fresh.schema)

    async def _version(self, dbname: str) -> str | None:
        admin = await connect(self.control_plane.conninfo("cloud_admin", dbname))
        try:
            row = await admin.first_row(_VERSION_SQL)
        except PgError:  # no schema pgrst (yet): the cache cannot be current
            return None
        finally:
            await admin.close()
        return row[0] if row else None

    async def _table_plan(self, dbname, cached, schema_name, name, method, pairs, body, media, prefs, range_header):
        query = parse_query(pairs)
        table = await self._lookup(dbname, cached, lambda s: s.table(schema_name, name))
        singular = media == OBJECT
        if method in ("GET", "HEAD"):
            if range_header and query.root.limit is None and query.root.offset is None:
                span = parse_range(range_header)
                if span is not None:
                    query.root.offset, query.root.limit = span
            builder = Builder(cached.schema, query, cached.config.max_rows)
            plan = await self._lookup(dbname, cached, lambda s: _rebuild(builder, s).read(table, prefs.count is not None, singular))
            return plan, {"offset": query.root.offset or 0}
        if method not in ("POST", "PATCH", "DELETE", "PUT"):
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}")
        rows, columns = None, []
        if method in ("POST", "PATCH"):
            rows, columns, _ = parse_payload(body, query.columns)
            if method == "PATCH" and len(rows) != 1:
                raise ApiError(400, "PGRST102", "Empty or invalid json")
        representation = prefs.representation == "representation"
        resolution = prefs.resolution if method == "POST" else None
        if method == "PUT":
            rows, columns, _ = parse_payload(body, query.columns)
            _check_put(table, query, rows)
            query.on_conflict, resolution, query.nodes[()].filters = list(table.pk), "merge-duplicates", []
        builder = Builder(cached.schema, query, cached.config.max_rows)
        plan = await self._lookup(dbname, cached, lambda s: _rebuild(builder, s).write(
            table, "POST" if method == "PUT" else method, rows, columns, representation, singular, resolution,
            prefs.missing_default, location=prefs.representation == "headers-only" and not self._neon))
        return plan, {"offset": 0, "table": table, "patched": method == "PATCH" and bool(columns)}

    async def _rpc_plan(self, dbname, cached, schema_name, name, method, pairs, body, media, prefs):
        if method not in ("GET", "HEAD", "POST"):
            raise ApiError(405, "PGRST101", f"Cannot use the {method} method on RPC")
        candidates = cached.schema.functions.get((schema_name, name), [])
        arg_names = frozenset(a.name for f in candidates for a in f.inputs if a.name)
        query = parse_query(pairs, arg_names)
        raw_json = None
        if method == "POST":
            try:
                doc = json.loads(body) if body.strip() else {}
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise ApiError(400, "PGRST102", "Empty or invalid json") from None
            args = doc if isinstance(doc, dict) else None
            given = set(args) if args is not None else set()
        else:
            args = dict(query.args)
            given = set(args)
        function = await self._lookup(dbname, cached, lambda s: s.function(schema_name, name, given, args is None or method == "POST"))
        if args is None or (method == "POST" and function.inputs and function.inputs[0].name == "" and len(function.inputs) == 1):
            raw_json, args = body.decode() if body.strip() else "{}", None
        read_only = method in ("GET", "HEAD") or function.volatility != "v"
        builder = Builder(cached.schema, query, cached.config.max_rows)
        plan = builder.call(function, args, raw_json, read_only, prefs.count is not None, media == OBJECT)
        return plan, {"offset": query.root.offset or 0, "function": function}

    # --- running -------------------------------------------------------------------------------------

    async def _run(self, dbname: str, role: str, claims: str, plan: Plan, settings: dict, version: str) -> tuple:
        if role in self.settings.jwt_roles:  # USAGE on schema auth, as local_proxy grants a JWT role on first use
            await self.control_plane.prepare_jwt_role(dbname, role)
        backend = await self._acquire(dbname)
        env_sql, env_params = env_query(settings)
        begin = "begin isolation level read committed" + (" read only" if plan.read_only else "")
        main = _Row()
        statements = [Statement(session_jwt.INIT_QUERY, [backend.signer.token_for(claims.encode())]),
                      Statement(_ASSERT_VERSION_SQL, [version]), Statement(begin), Statement(env_sql, env_params),
                      Statement(plan.sql, plan.params, main)]
        check_single = plan.singular and not plan.scalar
        try:
            if check_single:
                await backend.run(statements)
                total = int(main.row[1])
                if total != 1:
                    await backend.run([Statement("rollback")], reset_after=True)
                    self.pools.release(backend)
                    raise ApiError(406, "PGRST116", "Cannot coerce the result to a single JSON object",
                                   f"The result contains {total} rows")
                await backend.run([Statement("commit")], reset_after=True)
            else:
                await backend.run([*statements, Statement("commit")], reset_after=True)
        except ApiError:
            raise
        except PgError as exc:
            self.pools.discard(backend)
            if exc.sqlstate == setup.STALE_SCHEMA:
                raise _StaleSchema() from None
            if exc.sqlstate in _UNPREPARED and "pgrst" in exc.fields.get("M", ""):
                self._set_up.pop(dbname, None)  # schema pgrst went away: set it up again, then re-plan
                raise _StaleSchema() from None
            if exc.sqlstate == "42P01":
                self.forget(dbname)
            raise _pg_error(exc.fields, self._detail_key) from None
        except BaseException:
            self.pools.discard(backend)
            raise
        self.pools.release(backend)
        return main.row

    async def _acquire(self, dbname: str):
        await self._ensure_setup(dbname)
        try:
            return await self.pools.acquire(dbname, setup.AUTHENTICATOR, True)
        except PostgresErrorResponse as exc:
            if exc.sqlstate == "3D000":
                await self._forget_database(dbname)
                raise ApiError(404, None, exc.fields.get("M", "database does not exist")) from None
            raise _pg_error(exc.fields, self._detail_key) from None
        except (ConnectionLost, psycopg.OperationalError, OSError) as exc:
            raise ApiError(503, "PGRST001", f"neon-local could not reach Postgres ({exc}); try again in a moment") from None

    # --- schema cache --------------------------------------------------------------------------------

    async def _ensure_setup(self, dbname: str) -> None:
        """The Data API objects in `dbname` (roles, schema pgrst, pre_config), once per database per run."""
        future = self._set_up.get(dbname)
        if future is None or (future.done() and future.exception() is not None):
            future = self._set_up[dbname] = asyncio.ensure_future(self._apply_setup(dbname))
        await asyncio.shield(future)

    async def _apply_setup(self, dbname: str) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.control_plane.conninfo("cloud_admin", dbname), autocommit=True)
        except psycopg.OperationalError as exc:
            if "does not exist" in str(exc):
                raise ApiError(404, None, f'database "{dbname}" does not exist') from None
            raise
        async with conn:
            exists = await (await conn.execute("select to_regproc('pgrst.assert_schema_version_is') is not null")).fetchone()
            if not cast(tuple, exists)[0]:
                await setup.apply(conn, self.settings)

    async def _schema(self, dbname: str) -> _Cached:
        cached = self._cache.get(dbname)
        if cached is not None:
            return cached
        future = self._loading.get(dbname)
        if future is None or future.done():
            future = self._loading[dbname] = asyncio.ensure_future(self._load(dbname))
        return await asyncio.shield(future)

    async def _load(self, dbname: str) -> _Cached:
        for attempt in range(2):
            try:
                return await self._load_once(dbname)
            except PgError as exc:
                if exc.sqlstate == "3D000":
                    await self._forget_database(dbname)
                    raise ApiError(404, None, exc.fields.get("M", f'database "{dbname}" does not exist')) from None
                if exc.sqlstate not in _UNPREPARED or attempt:
                    raise ApiError(500, "PGRST002", "Could not query the database for the schema cache.",
                                   exc.fields.get("M")) from None
                self._set_up.pop(dbname, None)  # the database lost schema pgrst (or was dropped and made again)
        raise AssertionError("unreachable")

    async def _forget_database(self, dbname: str) -> None:
        await self._listeners.stop(dbname)
        self._set_up.pop(dbname, None)
        self._cache.pop(dbname, None)
        await self.pools.forget_database(dbname)

    async def _load_once(self, dbname: str) -> _Cached:
        await self._ensure_setup(dbname)
        admin = await connect(self.control_plane.conninfo("cloud_admin", dbname))
        try:
            config_row, role_row, version_row = _Row(), _Row(), _Row()
            await admin.run([Statement("begin"), Statement("select pgrst.pre_config()"),
                             Statement(_CONFIG_SQL, [], config_row), Statement(_ROLE_CONFIG_SQL, [], role_row),
                             Statement(_VERSION_SQL, [], version_row), Statement("commit")])
            values = json.loads(config_row.row[0])
            for entry in json.loads(role_row.row[0]):  # global first, then this database's
                key, _, value = entry.partition("=")
                values[key[len("pgrst."):]] = value
            config = ApiConfig.from_values(values)
            schema_row = _Row()
            await admin.run([Statement(INTROSPECTION_SQL, ["{" + ",".join(
                '"' + s.replace('"', '\\"') + '"' for s in config.schemas) + "}"], schema_row)])
        finally:
            await admin.close()
        cached = _Cached(Schema.from_json(config.schemas, schema_row.row[0]), config, version_row.row[0])
        self._cache[dbname] = cached
        self._listeners.touch(dbname)
        return cached

    # --- responses -------------------------------------------------------------------------------------

    def _respond(self, request, method, plan: Plan, row: tuple, media, prefs, extra, schema_name, config) -> web.Response:
        total_text, page_text, body, headers_text, status_text = row[:5]
        page_total = int(page_text)
        total = int(total_text) if total_text is not None else None
        headers: dict[str, str] = {}
        if len(config.schemas) > 1:
            headers["Content-Profile"] = schema_name
        # Neon's rest broker names only the resolution it was asked for
        applied = [p for p in prefs.applied if p.startswith("resolution=")] if self._neon else prefs.applied
        if applied and method in ("POST", "PATCH", "DELETE", "PUT"):
            headers["Preference-Applied"] = ", ".join(applied)
        offset = extra.get("offset", 0)
        status = 200
        if method in ("GET", "HEAD") or "function" in extra:
            if total is not None and offset > 0 and offset >= total and page_total == 0 and total >= 0:  # noqa: SIM102 (an empty page; an error when:)
                if offset > total or (total == 0 and offset > 0):
                    raise ApiError(416, "PGRST103", "Requested range not satisfiable",
                                   f"An offset of {offset} was requested, but there are only {total} rows.",
                                   headers={"Content-Range": f"*/{total}"})
            upper = offset + page_total - 1
            headers["Content-Range"] = (f"{offset}-{upper}" if page_total else "*") + f"/{'*' if total is None else total}"
            if total is not None and page_total < total and not plan.scalar:
                status = 206
            if plan.void:
                status = 204
        elif method in ("POST", "DELETE"):
            # As PostgREST: no range for an insert or a delete, and the rows written as the total when counted.
            status = 201 if method == "POST" else 200 if prefs.representation == "representation" else 204
            headers["Content-Range"] = f"*/{page_total if prefs.count else '*'}"
            if plan.location_keys and row[5] is not None:  # one row inserted, return=headers-only
                keys = zip(plan.location_keys, json.loads(row[5]), strict=True)
                headers["Location"] = f"/{extra['table'].name}?" + urlencode(
                    [(k, "is.null" if v is None else f"eq.{v}") for k, v in keys])
        else:
            status = 200 if prefs.representation == "representation" else 204
            if self._neon and method == "PATCH" and extra.get("patched") and page_total == 0:
                status = 404  # Neon: an update with columns that matched no row
            headers["Content-Range"] = (f"0-{page_total - 1}" if page_total else "*") + f"/{page_total if prefs.count else '*'}"
        if headers_text:
            try:
                for item in json.loads(headers_text):
                    for key, value in item.items():
                        headers.setdefault(key, str(value))
            except (ValueError, AttributeError):
                raise ApiError(500, "PGRST111", "response.headers guc must be a JSON array composed of objects "
                               "with a single key and a string value") from None
        if status_text:
            if not status_text.strip().isdigit():
                raise ApiError(500, "PGRST112", "response.status guc must be a valid status code")
            status = int(status_text)
        content_type = {JSON: "application/json", OBJECT: "application/vnd.pgrst.object+json", CSV: "text/csv"}[media]
        if plan.singular and media == JSON and not plan.scalar:
            content_type = "application/json"
        text = body
        if media == CSV and body:
            text = _csv(body)
        if method == "HEAD" or status == 204 or (method in ("POST", "PATCH", "DELETE") and "function" not in extra
                                                and prefs.representation != "representation"):
            text = None
        response = web.Response(status=status, headers=headers)
        if text is not None:
            response.body = text.encode()
            response.content_type = content_type
            response.charset = self._charset
        return response


_OPERATOR = re.compile(r"^((?:not\.)?(?:[a-z]+)(?:\([^)]*\))?)\.")
_SHAPE_KEYS = frozenset(("select", "order", "columns", "on_conflict"))


def request_shape(method: str, resource: str, pairs) -> str:
    """The request without its values (`GET todos?select=id,task&done=eq.…`): what a reviewer reads next to the
    fingerprint of the SQL it generates, which changes with the shape and not with the values."""
    parts = []
    for key, value in pairs:
        if key in _SHAPE_KEYS or key.endswith((".order", ".select")):
            parts.append(f"{key}={value}")
        else:
            operator = _OPERATOR.match(value)
            parts.append(f"{key}={operator[1] + '.' if operator else ''}…")
    return f"Data API: {method} {resource}" + ("?" + "&".join(parts) if parts else "")


def _rows(method: str, response: web.StreamResponse) -> int | None:
    """Rows in the answer, from its Content-Range (`0-9/*`, or `*/...` for none), for the request log."""
    span = response.headers.get("Content-Range", "")
    first, dash, last = span.partition("/")[0].partition("-")
    if dash and first.isdigit() and last.isdigit():
        return int(last) - int(first) + 1
    return 0 if span.startswith("*") and method in ("GET", "HEAD") and response.status < 400 else None


def _check_put(table, query, rows: list[dict]) -> None:
    """PUT upserts the one row its filters name: `eq` on every primary key column and nothing else, no paging,
    one row in the body whose key matches the URL (PGRST105, PGRST114, PGRST115)."""
    root = query.root
    if root.limit is not None or root.offset is not None:
        raise ApiError(400, "PGRST114", "limit/offset querystring parameters are not allowed for PUT")
    filters = root.filters
    named = {f.field.name: f.value for f in filters
             if isinstance(f, Filter) and f.op == "eq" and not f.negate and not f.field.path and not f.quantifier}
    if not table.pk or len(named) != len(filters) or set(named) != set(table.pk):
        raise ApiError(405, "PGRST105", "Filters must include all and only primary key columns with 'eq' operators")
    if len(rows) != 1 or any(k not in rows[0] or _text(rows[0][k]) != v for k, v in named.items()):
        raise ApiError(400, "PGRST115", "Payload values do not match URL in primary key column(s)")


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _rebuild(builder: Builder, schema: Schema) -> Builder:
    """The builder against a (possibly reloaded) schema cache, its parameters reset."""
    return Builder(schema, builder.query, builder.max_rows)


def _pg_error(fields: dict, detail_key: str) -> ApiError:
    error = ApiError.postgres(fields)
    if detail_key == "detail" and error.code is not None and error.code.startswith("PT"):
        error.message, error.code = "Postgres error", None
    return error


def _csv(body: str) -> str:
    rows = json.loads(body)
    if isinstance(rows, dict):
        rows = [rows]
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = list(rows[0])
    writer.writerow(keys)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else (json.dumps(row[k]) if isinstance(row[k], (dict, list))
                                                         else str(row[k]).lower() if isinstance(row[k], bool) else row[k])
                         for k in keys])
    return out.getvalue()
