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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import psycopg
from aiohttp import web
from multidict import CIMultiDict

from neon_local.auth.verifier import JwtError, VerifiedToken, Verifier
from neon_local.console.request_log import RequestLog
from neon_local.control_plane import ControlPlane
from neon_local.errors import ClientGone, NeonLocalError, PostgresErrorResponse
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
from neon_local.settings import Settings

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


class _InitFailed(NeonLocalError):
    """The session init (the proxy's own SQL) failed with `error`, a PgError; the user's SQL did not run."""

    def __init__(self, error: PgError) -> None:
        super().__init__(error.fields.get("M", ""))
        self.error = error


class _RefusedInPipeline(NeonLocalError):
    """The user's first statement refused to run after the session init in one transaction; `error` is its answer."""

    def __init__(self, error: SqlOverHttpError) -> None:
        super().__init__(error.message)
        self.error = error


# Where Postgres raises 25001 for a statement that must come first in its transaction or outside one
# (the error's routine field): VACUUM, CREATE DATABASE, ...; SET TRANSACTION ISOLATION LEVEL, READ WRITE,
# DEFERRABLE; SET TRANSACTION SNAPSHOT. Not a RAISE of the same SQLSTATE in the user's own code.
_FIRST_IN_TRANSACTION = frozenset(("PreventInTransactionBlock", "call_enum_check_hook", "call_bool_check_hook",
                                   "ImportSnapshot"))


def _refused_after_a_query(fields: Mapping[str, str]) -> bool:
    return fields.get("C") == "25001" and fields.get("R") in _FIRST_IN_TRANSACTION


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
    length = request.content_length
    buffered = b""
    if length is not None and length <= MAX_REQUEST_BYTES:
        buffered = request.content.read_nowait(length)  # most bodies arrive with their headers: no timer, no wait
        if len(buffered) == length:
            return buffered
    try:
        async with asyncio.timeout(timeout or None):  # a body trickled in slowly must not hold a task forever
            return buffered + await _read_limited(request, len(buffered))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:  # the client went away mid-body
        raise SqlOverHttpError(400, f"could not read the HTTP request body: {exc}") from None
    except TimeoutError:
        raise SqlOverHttpError(408, f"the request body did not arrive within {timeout} s (http_idle_timeout)") from None


async def _read_limited(request: web.Request, read: int) -> bytes:
    """The rest of the body, `read` bytes of it already taken."""
    too_large = SqlOverHttpError(413, f"request is too large (max is {MAX_REQUEST_BYTES} bytes)")
    length = request.content_length
    if length is not None:
        if length > MAX_REQUEST_BYTES:
            raise too_large
        return await request.content.readexactly(length - read)
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
        self._task = cast("asyncio.Task[Any]", asyncio.current_task())  # made inside the request's task
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

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.cancel()


class _QuerySink:
    """Writes one query's result into the response as it streams in."""

    def __init__(self, owner: SqlOverHttp, writer: ResponseWriter, dbname: str, raw: bool, array_mode: bool) -> None:
        self._owner = owner
        self._writer = writer
        self._dbname = dbname
        self._raw = raw
        self._array_mode = array_mode
        self._encode: Callable[[Sequence[tuple[Any, ...]]], str] | None = None

    async def columns(self, columns: list[Column]) -> None:
        elements = {} if self._raw else await self._owner.control_plane.array_elements(self._dbname, [c.type_oid for c in columns])
        self._writer.begin_result(columns)
        self._encode = row_encoder(columns, self._raw, self._array_mode, elements)

    def rows(self, rows: list[tuple[Any, ...]]) -> None:
        encode = self._encode
        assert encode is not None  # columns() came first
        self._writer.add_rows(encode(rows), len(rows), lambda: encode(rows[-1:]))

    def end(self, tag: str) -> None:
        self._writer.end_result(tag, self._array_mode)


class SqlOverHttp:
    """The /sql handlers; `close()` closes every pooled connection."""

    def __init__(self, settings: Settings, control_plane: ControlPlane, verifier: Verifier, *,
                 max_connections_per_pool: int = MAX_PER_POOL, request_log: RequestLog | None = None) -> None:
        self.settings = settings
        self.request_log = request_log or RequestLog()
        self.control_plane = control_plane
        self.pools = ConnPool(control_plane, max_connections_per_pool)
        self._verifier = verifier
        self._jwt_roles = frozenset(settings.jwt_roles)
        self._origins = OriginPolicy(settings.allowed_origins)
        self._body_timeout = settings.http_idle_timeout
        self.limits = ClientLimits.of(settings)

    def use_settings(self, settings: Settings, limits: ClientLimits) -> None:
        """Serve requests with the JWT roles and limits of `settings` from now on (live reload); pooled
        connections and requests in flight carry on."""
        self.settings = settings
        self._jwt_roles = frozenset(settings.jwt_roles)
        self.limits = limits

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
        except ClientGone:
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
        if info.jwt is None and origin is not None and not self._origins.allows(origin):
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
                cast("asyncio.Task[Any]", asyncio.current_task()).uncancel()
                raise ClientGone() from None
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
        try:
            return await self._execute(info, verified, headers, payload)
        except _InitFailed as exc:
            # The session set-up failed for want of the extension or its grant (the user reset the schema):
            # the database is prepared again and the request goes on, on a fresh connection.
            if not ControlPlane.unprepared(exc.error):
                raise SqlOverHttpError.internal_postgres(exc.error.fields) from None
        await self.pools.repair(info.dbname, info.user)
        try:
            return await self._execute(info, verified, headers, payload)
        except _InitFailed as exc:
            raise SqlOverHttpError.internal_postgres(exc.error.fields) from None

    def _admit(self, info: ConnInfo, verified: VerifiedToken | None, payload: Payload) -> None:
        """Rate limits and the allow-list, before a connection is taken: Neon's status and body for each."""
        try:
            self.limits.admit("http", info.user, verified.claims.get("sub") if verified is not None else None, verified is not None)
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
                matched = await self.control_plane.check_password(info.user, cast(bytes, info.password))  # no JWT: a password
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

    async def _execute(self, info: ConnInfo, verified: VerifiedToken | None, headers: Headers, payload: Payload) -> bytes:
        """The request on a pooled connection, a JWT role's behind local_proxy's per-request session init.

        The init goes in the same pipeline as the user's SQL, before it and up to the same Sync, so an
        init that fails makes Postgres skip the SQL. In one pipeline they share a transaction, which a
        few statements refuse (VACUUM, SET TRANSACTION ISOLATION LEVEL, ...: SQLSTATE 25001): those
        run again behind an init of their own, as on Neon. So does a batch whose BEGIN sets an
        isolation level (it must come before any query).
        """
        backend = await self._connect(info, verified is not None)
        try:  # the allow-list's check that needs the connection: what it says of standard_conforming_strings
            self.limits.check_strings(info.user, verified is not None, backend.standard_strings,
                                      [q.text for q in payload.queries], "http")
        except Refused as exc:
            self.pools.release(backend)
            raise SqlOverHttpError.postgres(exc.fields()) from None
        has_nul = payload.has_nul
        try:
            if has_nul:  # libpq would cut the text at the NUL: refused as Postgres does, after the init
                if verified is not None:
                    await self._run(backend, [self._init(backend, verified)], init_at=0)
                body = b""
            else:
                body = await self._pipelined(backend, verified, info.dbname, headers, payload)
        except BaseException:
            self.pools.discard(backend)
            raise
        self.pools.release(backend)
        if has_nul:
            raise nul_byte_error()
        return body

    async def _pipelined(self, backend: PgConnection, verified: VerifiedToken | None, dbname: str, headers: Headers,
                         payload: Payload) -> bytes:
        apart = payload.batch and headers.isolation_level not in (None, "ReadCommitted")
        try:
            return await self._statements(backend, verified, dbname, headers, payload, apart)
        except _RefusedInPipeline as exc:  # the refused statement's transaction is gone: reset, then again
            if not backend.reset_pending:
                backend.queue_reset()
            try:
                settled = await backend.finish_reset()
            except ConnectionLost:
                settled = False
            if not settled:
                raise exc.error from None
        return await self._statements(backend, verified, dbname, headers, payload, apart=True)

    @staticmethod
    def _init(backend: PgConnection, verified: VerifiedToken) -> Statement:
        """local_proxy's per-request step: the verified claims, re-signed with the next jti."""
        signer = backend.signer
        assert signer is not None  # ConnPool gives a JWT role's connection its signer
        return Statement(session_jwt.INIT_QUERY, [signer.token_for(verified.payload)])

    async def _statements(self, backend: PgConnection, verified: VerifiedToken | None, dbname: str, headers: Headers,
                          payload: Payload, apart: bool) -> bytes:
        """The user's SQL with the session init (if any) ahead of it: in the same pipeline, or `apart` in a
        round trip of its own. A batch is one transaction: COMMIT only once every result is in."""
        writer = ResponseWriter(MAX_RESPONSE_BYTES)
        init = [] if verified is None else [self._init(backend, verified)]
        if init and apart:
            await self._run(backend, init, init_at=0)
            init = []
        init_at = 0 if init else None
        if not payload.batch:
            await self._run(backend, [*init, self._statement(payload.queries[0], writer, dbname, headers)], init_at,
                            first_query=len(init), reset_after=True)
            return writer.body()
        writer.begin_batch()
        statements = [self._statement(query, writer, dbname, headers) for query in payload.queries]
        await self._run(backend, [*init, Statement(headers.begin_statement()), *statements], init_at, len(init) + 1)
        await self._run(backend, [Statement("COMMIT")], reset_after=True)
        writer.end_batch()
        return writer.body()

    def _statement(self, query: Query, writer: ResponseWriter, dbname: str, headers: Headers) -> Statement:
        array_mode = headers.array_mode if query.array_mode is None else query.array_mode
        return Statement(query.text, query.params, _QuerySink(self, writer, dbname, headers.raw_output, array_mode))

    async def _run(self, backend: PgConnection, statements: list[Statement], init_at: int | None = None,
                   first_query: int = 0, reset_after: bool = False) -> None:
        """Run the statements; `init_at` is the session init's position among them, if it is there, and
        `first_query` the user's first statement's (only a BEGIN of ours between them)."""
        try:
            await backend.run(statements, reset_after)
        except PgError as exc:
            if exc.statement == init_at:
                raise _InitFailed(exc) from None
            error = SqlOverHttpError.postgres(exc.fields)
            if init_at is not None and init_at < exc.statement <= first_query and _refused_after_a_query(exc.fields):
                raise _RefusedInPipeline(error) from None
            raise error from None
        except ConnectionLost as exc:  # in the proxy's own SQL, a 500 as tokio-postgres' error; in the user's, a 400
            raise SqlOverHttpError(500 if init_at is not None and exc.statement <= init_at else 400, str(exc)) from None
        except ResponseTooLarge as exc:
            raise SqlOverHttpError(507, str(exc)) from None
        except PgTextError:
            raise SqlOverHttpError(500, "could not parse postgres response") from None
