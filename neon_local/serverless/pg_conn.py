"""One Postgres connection driven at the libpq level (psycopg's `pq`), as Neon's proxy drives tokio-postgres.

Every statement goes through the extended protocol in pipeline mode (so `$1` and `%` pass untouched
and two statements in one query fail as on Neon), rows arrive in chunks (so a huge result can be
refused before it is all in memory), and values stay Postgres text (a TextLoader for every type OID).
Only Neon's reset between requests leaves pipeline mode: it is one simple-protocol message, as
tokio-postgres sends it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, cast

import psycopg
from psycopg import pq
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq.abc import PGresult
from psycopg.types.string import TextLoader

from neon_local.auth.scram import ClientCredential, ScramError, answer_authentication
from neon_local.errors import PostgresErrorResponse, PostgresUnavailable
from neon_local.postgres import session_jwt
from neon_local.postgres.client_tls import context_for
from neon_local.serverless.errors import NUL_FIELDS
from neon_local.serverless.json import Column
from neon_local.wire.messages import ssl_request

__all__ = ["RESET_STATEMENTS", "ConnectionLost", "PgConnection", "PgError", "ResultSink", "Statement", "connect"]

log = logging.getLogger(__name__)

# Neon's reset_session_background; no DISCARD ALL (query plans survive). Sent as one message, which
# Postgres runs as one implicit transaction: a fraction of the cost of one extended-protocol round per statement.
RESET_STATEMENTS = (
    b"CLOSE ALL", b"SET SESSION AUTHORIZATION DEFAULT", b"RESET ALL", b"DEALLOCATE ALL",
    b"UNLISTEN *", b"SELECT pg_advisory_unlock_all()", b"DISCARD TEMP", b"DISCARD SEQUENCES",
)
_RESET = b"; ".join(RESET_STATEMENTS)
# A transaction the request left open (or failed) is rolled back first. Only then: ROLLBACK with no
# transaction open is a WARNING, which Postgres would write to postgres.log on every request.
_ROLLBACK_AND_RESET = b"ROLLBACK; " + _RESET
CHUNK_ROWS = 1000

S = pq.ExecStatus


class _Busy(enum.Enum):
    """libpq has not got the whole next result yet (an enum, so the type checker can tell it from a result)."""

    BUSY = enum.auto()


_BUSY: Final = _Busy.BUSY
_ROW_STATUSES = frozenset((S.TUPLES_CHUNK, S.TUPLES_OK, S.SINGLE_TUPLE, S.COMMAND_OK, S.EMPTY_QUERY))
_TEXT = AdaptersMap()
_TEXT.register_loader(0, TextLoader)  # the fallback loader: every type comes back as its text


class PgError(PostgresErrorResponse):
    """Postgres answered with an ErrorResponse; `fields` maps its field codes (C, M, S, …) to text, and
    `statement` is the position, in the run, of the statement that failed."""

    def __init__(self, fields: dict[str, str], statement: int = 0) -> None:
        super().__init__(fields)
        self.statement = statement


class ConnectionLost(PostgresUnavailable):
    """The backend connection broke or misbehaved; the message is libpq's (or ours). `statement` is the
    position, in the run, of the statement whose results were awaited."""

    statement = 0


class ResultSink(Protocol):
    """Receives one statement's result: its columns once, its rows in chunks, then its command tag."""

    async def columns(self, columns: list[Column]) -> None: ...

    def rows(self, rows: list[tuple]) -> None: ...

    def end(self, tag: str) -> None: ...


@dataclass
class Statement:
    sql: str
    params: Sequence[str | None] = ()
    sink: ResultSink | None = None


class _FirstRow:
    """A sink that keeps the first row, for the proxy's own queries."""

    def __init__(self) -> None:
        self.row: tuple | None = None

    async def columns(self, columns: list[Column]) -> None:
        pass

    def rows(self, rows: list[tuple]) -> None:
        if self.row is None:
            self.row = rows[0]

    def end(self, tag: str) -> None:
        pass


def _error_fields(result: PGresult) -> dict[str, str]:
    fields = {}
    for code in "SVCMDHPpqWstcdnFLR":
        value = result.error_field(ord(code))
        if value is not None:
            fields[code] = value.decode(errors="replace")
    return fields or {"M": result.error_message.decode(errors="replace").strip()}


def _columns(result: PGresult) -> list[Column]:
    return [Column(cast(bytes, result.fname(i)).decode(), result.ftype(i), result.ftable(i), result.ftablecol(i),
                   result.fsize(i), result.fmod(i)) for i in range(result.nfields)]


class PgConnection:
    """One Postgres connection in non-blocking mode, driven from the event loop."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.pg = conn.pgconn
        self.pg.nonblocking = 1
        self.pid = self.pg.backend_pid
        self.signer: session_jwt.SessionSigner | None = None
        self.broken = False
        self.idle_since = 0.0
        self.reset_pending = False
        self._running = False
        self._reading = 0  # the position of the statement whose results run() awaits
        self._transformer = Transformer(_TEXT)
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future | None = None
        self._fd = self.pg.socket
        # Pipeline mode whenever requests run: every statement takes the extended protocol.
        self.pg.enter_pipeline_mode()
        # One reader for the connection's whole life: it wakes a waiting request, or, while the
        # connection idles, drains what arrives (the reset's results, notices) and notices a closed socket.
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def standard_strings(self) -> bool:
        """standard_conforming_strings as Postgres last reported it (libpq keeps each ParameterStatus)."""
        return self.pg.parameter_status(b"standard_conforming_strings") == b"on"

    def _on_readable(self) -> None:
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
            return
        try:
            self.pg.consume_input()
        except psycopg.OperationalError:
            self._mark_broken()

    def _mark_broken(self) -> None:
        if not self.broken:
            self.broken = True
            self._loop.remove_reader(self._fd)

    async def _readable(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _flush(self) -> None:
        while self.pg.flush():
            writable = self._loop.create_future()
            self._loop.add_writer(self._fd, writable.set_result, None)
            try:
                await writable
            finally:
                self._loop.remove_writer(self._fd)

    def _take(self) -> PGresult | Literal[_Busy.BUSY] | None:
        """The next result if libpq holds it whole, else _BUSY: lets loops skip a coroutine per result."""
        return _BUSY if self.pg.is_busy() else self.pg.get_result()

    async def _result(self) -> PGresult | None:
        try:
            while self.pg.is_busy():
                await self._readable()
                self.pg.consume_input()
            return self.pg.get_result()
        except psycopg.OperationalError as exc:
            self._mark_broken()
            raise ConnectionLost(str(exc).strip() or "connection closed") from None

    async def run(self, statements: Sequence[Statement], reset_after: bool = False) -> None:
        """Send the statements and one Sync in a single write, read every result; raise the first PgError.

        With `reset_after`, Neon's reset is sent as soon as the results are read (what it holds depends
        on whether the request left a transaction open), and its results are read when the connection
        is next taken from the pool. Anything escaping but a PgError (a sink's error, cancellation)
        leaves the connection mid-pipeline, so it is marked broken and must be discarded.
        A NUL in a statement's text or a parameter is refused (22021, as Postgres refuses a NUL it is sent)
        before anything is sent: libpq would cut the text at it, so it would pass one check and mean another.
        """
        for index, statement in enumerate(statements):
            if "\x00" in statement.sql or any(p is not None and "\x00" in p for p in statement.params):
                raise PgError(dict(NUL_FIELDS), index)
        self._running = True
        self._reading = 0
        try:
            self._send(statements)
            await self._flush()
            failed = await self._receive(statements)
            self._running = False
        except psycopg.OperationalError as exc:
            lost = ConnectionLost(str(exc).strip())
            lost.statement = self._reading
            raise lost from None
        except ConnectionLost as exc:
            exc.statement = self._reading
            raise
        finally:
            if self._running:
                self._mark_broken()
        if reset_after:
            self.queue_reset()
        if failed is not None:
            raise PgError(failed[1], failed[0])

    def _send(self, statements: Sequence[Statement]) -> None:
        for statement in statements:
            self.pg.send_query_params(statement.sql.encode(), [p if p is None else p.encode() for p in statement.params])
        self.pg.pipeline_sync()

    async def _receive(self, statements: Sequence[Statement]) -> tuple[int, dict[str, str]] | None:
        """Every statement's results, then the Sync's; the first error's position and fields, if any."""
        failed = None
        for index, statement in enumerate(statements):
            self._reading = index
            error = await self._read_statement(statement.sink)
            if failed is None and error is not None:
                failed = index, error
        await self._read_sync()
        return failed

    async def _read_sync(self) -> None:
        result = await self._result()
        if result is None or result.status != S.PIPELINE_SYNC:
            raise ConnectionLost("unexpected message from server")

    async def _read_statement(self, sink: ResultSink | None) -> dict[str, str] | None:
        """One statement's results, up to the NULL that ends them; returns its error fields, if any."""
        try:
            self.pg.set_chunked_rows_mode(CHUNK_ROWS)
        except psycopg.OperationalError:  # refused after an error aborted the pipeline: nothing to chunk
            pass
        error, tag, described, aborted = None, "", False, False
        while True:
            result = self._take()
            if result is _BUSY:
                result = await self._result()
            if result is None:
                break
            status = result.status
            if status in _ROW_STATUSES:
                tag = (result.command_status or b"").decode() or tag
                if sink is not None:
                    if not described:
                        await sink.columns(_columns(result))
                        described = True
                    if result.ntuples:
                        self._transformer.set_pgresult(result)
                        sink.rows(self._transformer.load_rows(0, result.ntuples, tuple))
            elif status == S.FATAL_ERROR:
                error = _error_fields(result)
            elif status == S.PIPELINE_ABORTED:  # skipped after an earlier statement's error: no result to end
                aborted = True
            else:  # COPY and friends: tokio-postgres fails on them too
                raise ConnectionLost("unexpected message from server")
        if sink is not None and error is None and not aborted:
            sink.end(tag)
        return error

    async def first_row(self, sql: str, params: Sequence[str | None] = ()) -> tuple | None:
        sink = _FirstRow()
        await self.run([Statement(sql, params, sink)])
        return sink.row

    def queue_reset(self) -> None:
        """Send Neon's reset now without waiting (locks and an open transaction go at once).

        Pipeline mode allows only the extended protocol, one statement per message, so the connection
        leaves it for the reset until finish_reset() has read the reset's results.
        """
        try:
            idle = self.pg.transaction_status == pq.TransactionStatus.IDLE
            self.pg.exit_pipeline_mode()
            self.pg.send_query(_RESET if idle else _ROLLBACK_AND_RESET)
            self.reset_pending = True
            if self.pg.flush():
                self._mark_broken()  # the socket is backed up: not worth keeping
        except psycopg.OperationalError:
            self._mark_broken()

    @property
    def reset_settled(self) -> bool:
        """Whether finish_reset() would not wait: no reset pending, or its results are in."""
        return not self.reset_pending or self.broken or not self.pg.is_busy()

    async def finish_reset(self) -> bool:
        """Read the pending reset's results: True if it ran cleanly and the session is idle (and the
        connection back in pipeline mode, ready for a request)."""
        if not self.reset_pending:
            return True
        self.reset_pending = False
        clean = True
        while True:
            result = self._take()
            if result is _BUSY:
                result = await self._result()
            if result is None:  # outside pipeline mode, the end of the whole message's results
                break
            clean = clean and result.status in (S.COMMAND_OK, S.TUPLES_OK)
        if not clean or self.pg.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            self.pg.enter_pipeline_mode()
        except psycopg.OperationalError:
            return False
        return True

    async def close(self) -> None:
        """Close; a query still running is cancelled first, so it neither finishes nor commits."""
        self._mark_broken()
        if self._running:
            try:
                await self.conn.cancel_safe(timeout=5.0)
            except psycopg.Error as exc:
                log.warning("could not cancel the query on backend %s: %s", self.pid, exc)
        await self.conn.close()


async def connect(conninfo: str) -> PgConnection:
    """Open a connection; a refusal raises PgError with Postgres's own fields (e.g. 3D000)."""
    if "\x00" in conninfo:  # libpq would read it up to the NUL, dropping the parameters after it
        raise PgError(dict(NUL_FIELDS))
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        fields = await _startup_error(conninfo)
        if fields is None:
            raise ConnectionLost(str(exc).strip()) from None
        raise PgError(fields) from None
    return PgConnection(conn)


async def _startup_error(conninfo: str) -> dict[str, str] | None:
    """Replay the startup by hand to read the ErrorResponse's fields, which libpq only gives as text."""
    params = conninfo_to_dict(conninfo)
    host, port = str(params["host"]), int(params.get("port") or 5432)
    startup = {"user": params.get("user"), "database": params.get("dbname"), "options": params.get("options")}
    body = struct.pack("!i", 196608) + b"".join(
        k.encode() + b"\0" + str(v).encode() + b"\0" for k, v in startup.items() if v) + b"\0"
    # An upstream Postgres (`--upstream`) is on TCP and asks for the password; our own is on a trusting Unix socket.
    password = params.get("password")
    credential = ClientCredential(password=str(password).encode()) if password is not None else None
    try:
        if host.startswith("/"):
            connecting = asyncio.open_unix_connection(os.path.join(host, f".s.PGSQL.{port}"))
        else:
            connecting = asyncio.open_connection(host, port)
        reader, writer = await asyncio.wait_for(connecting, 5)
        try:
            if not host.startswith("/") and not await _start_tls(reader, writer, host, params):
                return None
            writer.write(struct.pack("!i", len(body) + 4) + body)
            return await asyncio.wait_for(_read_startup_error(reader, writer, credential), 5)
        finally:
            writer.close()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, struct.error, PostgresUnavailable, ScramError):
        return None


async def _start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, params: dict) -> bool:
    """TLS as libpq started it for the same conninfo (an upstream's sslmode); False if the server will not have it."""
    context = context_for(str(params.get("sslmode") or "prefer"), str(params.get("sslrootcert") or ""))
    if context is None:
        return True
    writer.write(ssl_request())
    answer = await asyncio.wait_for(reader.readexactly(1), 5)
    if answer == b"S":
        await asyncio.wait_for(writer.start_tls(context, server_hostname=host), 5)
        return True
    return params.get("sslmode") in (None, "prefer")


async def _read_startup_error(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              credential: ClientCredential | None) -> dict[str, str] | None:
    """Log in if asked (with `credential`), skip ParameterStatus; the ErrorResponse's fields, or None at ReadyForQuery."""
    scram_client = None
    while True:
        kind, length = struct.unpack("!ci", await reader.readexactly(5))
        data = await reader.readexactly(length - 4)
        if kind == b"E":
            return {chr(item[0]): item[1:].decode(errors="replace") for item in data.split(b"\0") if item}
        if kind == b"Z":
            return None
        if kind == b"R" and data[:4] != b"\0\0\0\0":
            reply, scram_client = answer_authentication(struct.unpack("!i", data[:4])[0], data[4:], credential, scram_client)
            writer.write(reply)


