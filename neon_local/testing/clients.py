"""Clients that act as one identity on one database: SQL over HTTP, psycopg through the TCP proxy, or directly.

Rows come back as dicts with values decoded by psycopg's type loaders on every path, so the same query
gives equal results over HTTP and over TCP. A refused query carries a note (PEP 678, shown by pytest)
saying which role and claims it ran with and which policy or grant Postgres points at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Self

import httpx
import psycopg
from psycopg import sql
from psycopg.adapt import Transformer
from psycopg.pq import Format, TransactionStatus
from psycopg.rows import DictRow, dict_row

from neon_local.errors import NeonLocalError
from neon_local.testing.explain import Explainer, Identity, is_refusal

HTTP_TIMEOUT = 30.0
TEST_SAVEPOINT = "neon_local_test"
_TRANSACTION_CONTROL = re.compile(r"^\s*(commit|end|rollback|abort|begin|start)(?:\s+(?:work|transaction))?\s*;?\s*$", re.I)
AUTH_REFUSED = "28000"  # invalid_authorization_specification, as the TCP proxy sends it


class QueryError(NeonLocalError):
    """SQL over HTTP or the Data API answered with an error: the message, the SQLSTATE (or PGRST code) as `code`,
    the HTTP `status` and `body`.

    A refused token has code 28000 here, as over TCP (Neon's body leaves `code` empty; `body` keeps it as sent).
    """

    def __init__(self, status: int, body: Any) -> None:
        fields = body if isinstance(body, dict) else {"message": str(body)}
        super().__init__(fields.get("message") or f"HTTP {status}")
        self.status = status
        self.body = body
        self.code: str = fields.get("code") or ""
        self.detail: str | None = fields.get("detail", fields.get("details"))  # PostgREST's key is "details"
        self.hint: str | None = fields.get("hint")


class HttpClient:
    """Neon's SQL over HTTP as one identity, sent the way the serverless driver sends it (raw text, array mode)."""

    def __init__(self, url: str, connection_string: str, token: str, identity: Identity, explainer: Explainer,
                 http: httpx.Client) -> None:
        self.url = url
        self.connection_string = connection_string
        self.token = token
        self.identity = identity
        self._explainer = explainer
        self._http = http

    def __repr__(self) -> str:
        return f"<HttpClient {self.identity.describe(accepted=False)} token=[secure]>"

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run one query with $1, $2 ... bound to `params`; rows as dicts."""
        return self._rows(self._http.post(self.url, **self._request(query, params)), query)

    async def asql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            response = await http.post(self.url, **self._request(query, params))
        return self._rows(response, query)

    def _request(self, query: str, params: tuple[Any, ...]) -> dict[str, Any]:
        headers = {"Neon-Connection-String": self.connection_string, "Authorization": f"Bearer {self.token}",
                   "Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "true", "Content-Type": "application/json"}
        # Dates, UUIDs and decimals go as their text, as the JS driver sends Date objects as ISO strings.
        return {"headers": headers, "content": json.dumps({"query": query, "params": list(params)}, default=str)}

    def _rows(self, response: httpx.Response, query: str) -> list[dict[str, Any]]:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code != 200:
            error = QueryError(response.status_code, body)
            if not error.code and response.status_code == 400:
                # Neon's proxy refuses a bad, expired or unknown JWT before Postgres, with an empty code;
                # over TCP the same refusal is SQLSTATE 28000, which is what a test wants to match.
                error.code = AUTH_REFUSED
            if is_refusal(error.code):
                error.add_note(self._explainer.explain(str(error), self.identity, query, error.code))
            raise error
        return decode_rows(body["fields"], body["rows"])


class RestClient:
    """Neon's Data API (PostgREST) as one identity: `get("todos", select="id,task", user_id="eq.u1")`,
    `post("todos", {...})`, `patch(...)`, `delete(...)`, `rpc("fn", {...})`; JSON in, JSON out.

    Writes ask for `return=representation`, so they return the rows they wrote. An error raises `QueryError`.
    """

    def __init__(self, url: str, token: str, identity: Identity, explainer: Explainer, http: httpx.Client) -> None:
        self.url = url
        self.token = token
        self.identity = identity
        self._explainer = explainer
        self._http = http

    def __repr__(self) -> str:
        return f"<RestClient {self.identity.describe(accepted=False)} token=[secure]>"

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, params=params, body=body)

    def patch(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("PATCH", path, params=params, body=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def rpc(self, function: str, args: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", f"rpc/{function}", body=dict(args or {}))

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
                headers: Mapping[str, str] | None = None) -> Any:
        sent = {"Authorization": f"Bearer {self.token}", "Prefer": "return=representation", **(headers or {})}
        content = None if body is None else json.dumps(body, default=str)
        if content is not None:
            sent["Content-Type"] = "application/json"
        response = self._http.request(method, f"{self.url}/{path.lstrip('/')}", params=params, headers=sent,
                                      content=content)
        answer = response.json() if response.content else None
        if response.status_code >= 400:
            error = QueryError(response.status_code, answer)
            if is_refusal(error.code):
                error.add_note(self._explainer.explain(str(error), self.identity, _REST_COMMAND[method], error.code))
            raise error
        return answer


# What a refused request ran, for the note; writes return their rows, so SELECT policies apply to them too.
_REST_COMMAND = {"GET": "SELECT", "HEAD": "SELECT", "POST": "INSERT RETURNING", "PATCH": "UPDATE RETURNING",
                 "PUT": "INSERT RETURNING", "DELETE": "DELETE RETURNING"}


def decode_rows(fields: list[dict[str, Any]], rows: list[list[str | None]]) -> list[dict[str, Any]]:
    """Text values to Python values by type OID, with psycopg's loaders (unknown types stay text)."""
    transformer = Transformer()
    transformer.set_loader_types([f["dataTypeID"] for f in fields], Format.TEXT)
    names = [f["name"] for f in fields]
    return [dict(zip(names, transformer.load_sequence([None if v is None else v.encode() for v in row]))) for row in rows]


def _note(exc: psycopg.Error, connection: Any, query: Any) -> None:
    identity, explainer = getattr(connection, "identity", None), getattr(connection, "explainer", None)
    if identity is not None and explainer is not None and is_refusal(exc.sqlstate):
        text = query if isinstance(query, str) else ""
        exc.add_note(explainer.explain(exc.diag.message_primary or str(exc), identity, text, exc.sqlstate or ""))


class ExplainingCursor(psycopg.Cursor[DictRow]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        try:
            return super().execute(query, params, **kwargs)
        except psycopg.Error as exc:
            _note(exc, self.connection, query)
            raise

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        try:
            return super().executemany(query, params_seq, **kwargs)
        except psycopg.Error as exc:
            _note(exc, self.connection, query)
            raise


class AsyncExplainingCursor(psycopg.AsyncCursor[DictRow]):
    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        try:
            return await super().execute(query, params, **kwargs)
        except psycopg.Error as exc:
            _note(exc, self.connection, query)
            raise

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        try:
            return await super().executemany(query, params_seq, **kwargs)
        except psycopg.Error as exc:
            _note(exc, self.connection, query)
            raise


class NeonConnection(psycopg.Connection[DictRow]):
    """A psycopg connection that knows whom it acts as (`identity`), so refused queries explain themselves."""

    identity: Identity | None = None
    explainer: Explainer | None = None


class AsyncNeonConnection(psycopg.AsyncConnection[DictRow]):
    identity: Identity | None = None
    explainer: Explainer | None = None


class SharedSession(NeonConnection):
    """Rollback mode's one session, in a transaction the test's end rolls back: what the test calls a commit
    (`commit()`, leaving `with conn:`, COMMIT sent as SQL) keeps a savepoint instead, and a rollback returns to it."""

    def commit(self) -> None:
        self.execute(f"RELEASE SAVEPOINT {TEST_SAVEPOINT}; SAVEPOINT {TEST_SAVEPOINT}")

    def rollback(self) -> None:
        self.execute(f"ROLLBACK TO SAVEPOINT {TEST_SAVEPOINT}")

    def close(self) -> None:
        """The session outlives the test; `end_session` closes it."""

    def begin_test(self, owner: str) -> None:
        """As the owner, after a savepoint to return to; the previous test's end has usually done it already."""
        self._owner = owner
        if self.info.transaction_status == TransactionStatus.IDLE:  # the session's first test: psycopg sends BEGIN
            self.execute(self._prepare())

    def end_test(self) -> None:
        """Roll the test back and open the next test's transaction, in one round trip."""
        self.execute(sql.SQL("ROLLBACK; BEGIN; ") + self._prepare())

    def _prepare(self) -> sql.Composed:
        return sql.SQL("SET LOCAL ROLE {}; SAVEPOINT {}").format(sql.Identifier(self._owner), sql.SQL(TEST_SAVEPOINT))

    def end_session(self) -> None:
        psycopg.Connection.close(self)


class SharedSessionCursor(ExplainingCursor):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        control = _TRANSACTION_CONTROL.match(query) if isinstance(query, str) and params is None else None
        if control is None:
            return super().execute(query, params, **kwargs)
        verb = control[1].lower()
        if verb in ("commit", "end"):
            self.connection.commit()
        elif verb in ("rollback", "abort"):
            self.connection.rollback()
        return self


def connect(url: str, identity: Identity, explainer: Explainer, cls: type[NeonConnection] = NeonConnection,
            **kwargs: Any) -> NeonConnection:
    """psycopg.connect, with dict rows and explained refusals."""
    cursor = SharedSessionCursor if issubclass(cls, SharedSession) else ExplainingCursor
    try:
        conn = cls.connect(url, row_factory=dict_row, cursor_factory=cursor, **kwargs)
    except psycopg.OperationalError as exc:
        exc.add_note(f"neon-local: connecting {identity.describe(accepted=False)} failed.")
        raise
    conn.identity, conn.explainer = identity, explainer
    return conn


async def aconnect(url: str, identity: Identity, explainer: Explainer, **kwargs: Any) -> AsyncNeonConnection:
    try:
        conn = await AsyncNeonConnection.connect(url, row_factory=dict_row, cursor_factory=AsyncExplainingCursor, **kwargs)
    except psycopg.OperationalError as exc:
        exc.add_note(f"neon-local: connecting {identity.describe(accepted=False)} failed.")
        raise
    conn.identity, conn.explainer = identity, explainer
    return conn
