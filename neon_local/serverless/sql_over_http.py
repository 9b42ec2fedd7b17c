"""POST /sql, OPTIONS /sql and the catch-all 400: Neon's SQL over HTTP on the pools and the JWT verifier.

One request: parse (connection string, option headers, body), authenticate (bearer JWT for the JWT
roles, the role's SCRAM verifier otherwise), take a pooled connection, initialise the session JWT
as Neon's local_proxy does, run the query or the batch, answer Neon's JSON. Any error or a client
that went away drops the connection (cancelling its query); a clean one goes back behind the reset.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

import psycopg
from aiohttp import web
from multidict import CIMultiDict

from neon_local.auth.verifier import JwtError, VerifiedToken
from neon_local.console.request_log import RequestLog
from neon_local.control_plane import ControlPlane
from neon_local.errors import PostgresErrorResponse
from neon_local.limits import ClientLimits, RateLimited, Refused
from neon_local.origins import PNA_ALLOW, PNA_REQUEST, OriginPolicy
from neon_local.postgres import session_jwt
from neon_local.serverless.conn_pool import MAX_PER_POOL, ConnPool
from neon_local.serverless.errors import (
    SqlOverHttpError,
    cancelled_body,
    internal_error,
    not_supported_body,
    nul_byte_error,
    postgres_unavailable,
)
from neon_local.serverless.http_request import (
    MAX_REQUEST_BYTES,
    ConnInfo,
    Headers,
    Payload,
    Query,
    parse_body,
    parse_conn_info,
    parse_headers,
)
from neon_local.serverless.json import Column, PgTextError, ResponseTooLarge, ResponseWriter, row_encoder
from neon_local.serverless.pg_conn import ConnectionLost, PgConnection, PgError, Statement

__all__ = ["SqlOverHttp"]

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DISCONNECT_POLL = 0.1  # how often a running request checks that its client is still there
OPTIONS_HEADERS = {
    "Allow": "OPTIONS, POST",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Neon-Connection-String, Neon-Raw-Text-Output, Neon-Array-Mode, "
                                    "Neon-Pool-Opt-In, Neon-Batch-Read-Only, Neon-Batch-Isolation-Level",
    "Access-Control-Max-Age": "86400",
}


def _unavailable(exc: BaseException | None) -> bool:
    """Whether a failure says Postgres is out of a resource or not there, rather than a problem of the SQL itself."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.OperationalError) if sqlstate is None else sqlstate[:2] in ("08", "53", "57", "58")


class _ClientGone(Exception):
    """The HTTP client disconnected while its request ran."""


def _request_id(request: web.Request) -> str:
    """Neon's local_proxy keeps a valid neon-request-id from the request; otherwise a new one."""
    given = request.headers.get("neon-request-id")
    if given:
        try:
            return str(uuid.UUID(given))
        except ValueError:
            pass
    return str(uuid.uuid4())


def _json_response(status: int, body: bytes, request: web.Request, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Access-Control-Allow-Origin": "*", "neon-request-id": _request_id(request), **(extra or {})}
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


async def _read_body(request: web.Request, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout or None):  # a body trickled in slowly must not hold a task forever
            return await _read_limited(request)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:  # the client went away mid-body
        raise SqlOverHttpError(400, f"could not read the HTTP request body: {exc}") from None
    except TimeoutError:
        raise SqlOverHttpError(408, f"the request body did not arrive within {timeout} s (http_idle_timeout)") from None


async def _read_limited(request: web.Request) -> bytes:
    too_large = SqlOverHttpError(413, f"request is too large (max is {MAX_REQUEST_BYTES} bytes)")
    length = request.content_length
    if length is not None:
        if length > MAX_REQUEST_BYTES:
            raise too_large
        return await request.content.readexactly(length)
    chunks, size = [], 0  # chunked transfer encoding: count as it comes
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _DisconnectWatch:
    """Cancels the request's task if its client disconnects (Neon cancels the query then)."""

    def __init__(self, request: web.Request) -> None:
        self.fired = False
        self._request = request
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None

    def __enter__(self) -> _DisconnectWatch:
        self._handle = asyncio.get_running_loop().call_later(DISCONNECT_POLL, self._check)
        return self

    def _check(self) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self.fired = True
            self._task.cancel()
        else:
            self._handle = asyncio.get_running_loop().call_later(DISCONNECT_POLL, self._check)

    def __exit__(self, *exc_info) -> None:
        self._handle.cancel()


class _QuerySink:
    """Writes one query's result into the response as it streams in."""

    def __init__(self, owner: SqlOverHttp, writer: ResponseWriter, dbname: str, raw: bool, array_mode: bool) -> None:
        self._owner = owner
        self._writer = writer
        self._dbname = dbname
        self._raw = raw
        self._array_mode = array_mode
        self._encode = None

    async def columns(self, columns: list[Column]) -> None:
        elements = {} if self._raw else await self._owner.control_plane.array_elements(self._dbname, [c.type_oid for c in columns])
        self._writer.begin_result(columns)
        self._encode = row_encoder(columns, self._raw, self._array_mode, elements)

    def rows(self, rows: list[tuple]) -> None:
        self._writer.add_rows(self._encode(rows), len(rows), lambda: self._encode(rows[-1:]))

    def end(self, tag: str) -> None:
        self._writer.end_result(tag, self._array_mode)


class SqlOverHttp:
    """The /sql handlers; `close()` closes every pooled connection."""

    def __init__(self, settings, control_plane: ControlPlane, verifier, *, max_connections_per_pool: int = MAX_PER_POOL,
                 request_log: RequestLog | None = None) -> None:
        self.settings = settings
        self.request_log = request_log or RequestLog()
        self.control_plane = control_plane
        self.pools = ConnPool(control_plane, max_connections_per_pool)
        self._verifier = verifier
        self._jwt_roles = frozenset(settings.jwt_roles)
        self._origins = OriginPolicy(settings.allowed_origins)
        self._body_timeout = settings.http_idle_timeout
        self.limits = ClientLimits.of(settings)

    async def handle_options(self, request: web.Request) -> web.Response:
        headers = {**OPTIONS_HEADERS, "neon-request-id": _request_id(request)}
        # Private Network Access: a public page may reach this machine only from an allowed origin.
        if request.headers.get(PNA_REQUEST) == "true" and self._origins.allows(request.headers.get("Origin")):
            headers[PNA_ALLOW] = "true"
        return web.Response(status=200, headers=headers)

    async def not_supported(self, request: web.Request) -> web.Response:
        return _json_response(400, not_supported_body(), request)

    async def close(self) -> None:
        await self.pools.close()

    async def handle_sql(self, request: web.Request) -> web.Response:
        try:
            body, extra = await self._serve(request)
        except SqlOverHttpError as exc:
            return _json_response(exc.status, exc.body(), request, getattr(exc, "headers", None))
        except _ClientGone:
            return _json_response(400, cancelled_body(), request)
        except Exception as exc:  # a bug of ours still answers Neon's JSON, never aiohttp's plain-text 500
            log.exception("unexpected error in a /sql request")
            return _json_response(500, internal_error(exc).body(), request)
        return _json_response(200, body, request, extra)

    async def run_in_process(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        """POST /sql for a caller inside this process (the console): the same parsing, authentication, session
        set-up and JSON answer, without an HTTP request (so no Origin check: the caller vouches for itself)."""
        headers = CIMultiDict(headers)
        try:
            info = parse_conn_info(headers, self._jwt_roles)
            return 200, await self._authorized(info, parse_headers(headers), parse_body(body))
        except SqlOverHttpError as exc:
            return exc.status, exc.body()

    async def _serve(self, request: web.Request) -> tuple[bytes, dict[str, str]]:
        info = parse_conn_info(request.headers, self._jwt_roles)
        origin = request.headers.get("Origin")
        if info.jwt is None and not self._origins.allows(origin):
            raise SqlOverHttpError(400, OriginPolicy.refusal(origin, f"password requests (as {info.user})"))
        headers = parse_headers(request.headers)
        payload = parse_body(await _read_body(request, self._body_timeout))
        with _DisconnectWatch(request) as watch:
            began = time.perf_counter()
            try:
                body = await self._authorized(info, headers, payload)
            except SqlOverHttpError as exc:
                self.request_log.record_sql(info.user, info.jwt, [q.text for q in payload.queries], began, error=exc.message)
                raise
            except asyncio.CancelledError:
                if not watch.fired:
                    raise
                asyncio.current_task().uncancel()
                raise _ClientGone() from None
            self.request_log.record_sql(info.user, info.jwt, [q.text for q in payload.queries], began, body=body)
            return body, headers.echo() if payload.batch else {}

    async def _authorized(self, info: ConnInfo, headers: Headers, payload: Payload) -> bytes:
        verified = await self._authenticate(info)
        if verified is not None and self.control_plane.tenancy is not None:  # the claim picks the database
            try:
                info = replace(info, dbname=await self.control_plane.tenant_database(verified.claims, info.dbname))
            except PostgresErrorResponse as exc:
                raise SqlOverHttpError.postgres(exc.fields, 400) from None
        self._admit(info, verified, payload)
        backend = await self._session(info, verified)
        if payload.has_nul:  # libpq would cut the text at the NUL: refuse it as Postgres does
            self.pools.release(backend)
            raise nul_byte_error()
        try:
            body = await (self._batch if payload.batch else self._single)(backend, info.dbname, headers, payload.queries)
        except BaseException:
            self.pools.discard(backend)
            raise
        self.pools.release(backend)
        return body

    def _admit(self, info: ConnInfo, verified: VerifiedToken | None, payload: Payload) -> None:
        """Rate limits and the allow-list, before a connection is taken: Neon's status and body for each."""
        try:
            self.limits.admit("http", info.user, verified and verified.claims.get("sub"), verified is not None)
            self.limits.check_statements(info.user, verified is not None, [q.text for q in payload.queries], "http")
        except RateLimited as exc:  # Neon: a RateLimit connect error, not the user's, so 500; ours per identity: 429
            if exc.endpoint:
                raise SqlOverHttpError(500, exc.message) from None
            error = SqlOverHttpError(429, exc.message)
            error.headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
            raise error from None
        except Refused as exc:
            raise SqlOverHttpError.postgres(exc.fields()) from None

    async def _authenticate(self, info: ConnInfo) -> VerifiedToken | None:
        if info.jwt is None:
            try:
                matched = await self.control_plane.check_password(info.user, info.password)
            except (PgError, ConnectionLost, psycopg.Error, OSError) as exc:
                raise postgres_unavailable(exc) from None
            if not matched:
                raise SqlOverHttpError(400, f"password authentication failed for user '{info.user}'")
            return None
        try:
            return self._verifier.verify_cached(info.jwt, info.user) or await self._verifier.verify(info.jwt, info.user)
        except JwtError as exc:
            raise SqlOverHttpError(400, exc.message) from None

    async def _connect(self, info: ConnInfo, jwt: bool) -> PgConnection:
        try:
            return await self.pools.acquire(info.dbname, info.user, jwt)
        except PostgresErrorResponse as exc:
            if exc.sqlstate == "3D000":
                await self.pools.forget_database(info.dbname)
            if _unavailable(exc):  # disk full, too many connections, restarting: say so
                raise postgres_unavailable(exc) from None
            # A wrong database name or a template database is the user's mistake; anything else is ours.
            raise SqlOverHttpError.postgres(exc.fields, 400 if exc.sqlstate in ("3D000", "42501") else 500) from None
        except (ConnectionLost, psycopg.OperationalError, OSError) as exc:
            raise postgres_unavailable(exc) from None

    async def _session(self, info: ConnInfo, verified: VerifiedToken | None) -> PgConnection:
        """A pooled connection ready for the user's SQL: a JWT role's with this request's claims installed.

        A pooled session whose set-up fails for want of the extension or its grant (the user reset the
        schema) makes the database be prepared again, and the request goes on, on a fresh connection.
        """
        backend = await self._connect(info, verified is not None)
        if verified is None:
            return backend
        try:
            return await self._init_session(backend, verified)
        except PgError as exc:
            if not ControlPlane.unprepared(exc):
                raise SqlOverHttpError.internal_postgres(exc.fields) from None
        await self.pools.repair(info.dbname, info.user)
        try:
            return await self._init_session(await self._connect(info, True), verified)
        except PgError as exc:
            raise SqlOverHttpError.internal_postgres(exc.fields) from None

    async def _init_session(self, backend: PgConnection, verified: VerifiedToken) -> PgConnection:
        """local_proxy's per-request step: the verified claims, re-signed with the next jti, before any user SQL.
        A connection whose set-up failed is dropped."""
        token = backend.signer.token_for(verified.payload)
        try:
            await backend.run([Statement(session_jwt.INIT_QUERY, [token])])
        except ConnectionLost as exc:
            self.pools.discard(backend)
            raise SqlOverHttpError(500, str(exc)) from None
        except BaseException:
            self.pools.discard(backend)
            raise
        return backend

    def _statement(self, query: Query, writer: ResponseWriter, dbname: str, headers: Headers) -> Statement:
        array_mode = headers.array_mode if query.array_mode is None else query.array_mode
        return Statement(query.text, query.params, _QuerySink(self, writer, dbname, headers.raw_output, array_mode))

    async def _single(self, backend: PgConnection, dbname: str, headers: Headers, queries: Sequence[Query]) -> bytes:
        writer = ResponseWriter(MAX_RESPONSE_BYTES)
        await self._run(backend, [self._statement(queries[0], writer, dbname, headers)], reset_after=True)
        return writer.body()

    async def _batch(self, backend: PgConnection, dbname: str, headers: Headers, queries: Sequence[Query]) -> bytes:
        """One transaction: the first error fails the whole batch; COMMIT only once every result is in."""
        writer = ResponseWriter(MAX_RESPONSE_BYTES)
        writer.begin_batch()
        statements = [self._statement(query, writer, dbname, headers) for query in queries]
        await self._run(backend, [Statement(headers.begin_statement()), *statements])
        await self._run(backend, [Statement("COMMIT")], reset_after=True)
        writer.end_batch()
        return writer.body()

    async def _run(self, backend: PgConnection, statements: list[Statement], reset_after: bool = False) -> None:
        try:
            await backend.run(statements, reset_after)
        except PgError as exc:
            raise SqlOverHttpError.postgres(exc.fields) from None
        except ConnectionLost as exc:
            raise SqlOverHttpError(400, str(exc)) from None
        except ResponseTooLarge as exc:
            raise SqlOverHttpError(507, str(exc)) from None
        except PgTextError:
            raise SqlOverHttpError(500, "could not parse postgres response") from None
