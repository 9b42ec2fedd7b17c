"""Parse a POST /sql request (headers, Neon-Connection-String, JSON body) into typed values, with Neon's error texts.

Sans-io: headers come in as a mapping, the body as bytes. Facts follow Neon's `http_util.rs`
(`get_conn_info`), `sql_over_http.rs` (`HttpHeaders::try_parse`, `Payload`) and `error.rs`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import unquote_to_bytes, urlsplit

from neon_local.errors import NeonLocalError
from neon_local.serverless.errors import SqlOverHttpError, nul_byte_error
from neon_local.serverless.json import params_to_pg_text

__all__ = ["MAX_REQUEST_BYTES", "ConnInfo", "Headers", "Payload", "Query", "parse_body", "parse_conn_info", "parse_headers"]

MAX_REQUEST_BYTES = 10 * 1024 * 1024
CONN_STRING = "Neon-Connection-String"
ISOLATION_LEVELS = {
    "Serializable": "SERIALIZABLE", "ReadUncommitted": "READ UNCOMMITTED",
    "ReadCommitted": "READ COMMITTED", "RepeatableRead": "REPEATABLE READ",
}
UNTAGGED = "data did not match any variant of untagged enum Payload"
MAX_JSON_DEPTH = 127  # serde_json's recursion limit: the 128th nested array or object is refused
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# A \u escape (four hex digits) preceded by an even number of backslashes (so it is an escape, not an escaped backslash).
_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING)
_STRING_OR_BRACKET = re.compile(_STRING + r"|[\[\]{}]")
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_CURLY_AS_SQUARE = str.maketrans("{}", "[]")  # for depth only the nesting counts, not the kind
_FORBIDDEN_HOST = frozenset(" \t\n\r#/<>?@[\\]^|")


def _bad_request(message: str) -> SqlOverHttpError:
    return SqlOverHttpError(400, message)


@dataclass(frozen=True)
class ConnInfo:
    """Who to connect as and how they prove it: a password (bytes, URL-decoded) or a bearer JWT."""

    user: str
    dbname: str
    password: bytes | None = None
    jwt: str | None = None

    def __repr__(self) -> str:
        return f"ConnInfo(user={self.user!r}, dbname={self.dbname!r}, [secure])"


@dataclass(frozen=True)
class Headers:
    """The output and batch options; a flag is on only when its header is exactly `true`."""

    raw_output: bool = False
    array_mode: bool = False
    isolation_level: str | None = None
    read_only: bool = False
    deferrable: bool = False

    def begin_statement(self) -> str:
        """tokio-postgres's START TRANSACTION text for these options (Neon sets only the true flags)."""
        options = []
        if self.isolation_level:
            options.append(" ISOLATION LEVEL " + ISOLATION_LEVELS[self.isolation_level])
        if self.read_only:
            options.append(" READ ONLY")
        if self.deferrable:
            options.append(" DEFERRABLE")
        return "START TRANSACTION" + ",".join(options)

    def echo(self) -> dict[str, str]:
        """The batch headers Neon echoes in the response: the level if set, the flags only when true."""
        echoed = {}
        if self.read_only:
            echoed["Neon-Batch-Read-Only"] = "true"
        if self.deferrable:
            echoed["Neon-Batch-Deferrable"] = "true"
        if self.isolation_level:
            echoed["Neon-Batch-Isolation-Level"] = self.isolation_level
        return echoed


@dataclass(frozen=True)
class Query:
    text: str
    params: list[str | None]
    array_mode: bool | None


@dataclass(frozen=True)
class Payload:
    """One query (`batch` False, one item) or a batch run in one transaction."""

    queries: list[Query]
    batch: bool

    @property
    def has_nul(self) -> bool:
        """Whether any query text or text parameter holds U+0000 (arrays and objects carry it escaped)."""
        return any("\x00" in q.text or any(p is not None and "\x00" in p for p in q.params) for q in self.queries)


def _header_text(value: str) -> bool:
    """What http's `HeaderValue::to_str` accepts: visible ASCII, space and tab."""
    return value.isascii() and (value.isprintable() or value.replace("\t", " ").isprintable())


def parse_headers(headers: Mapping[str, str]) -> Headers:
    level = headers.get("Neon-Batch-Isolation-Level")
    if level is not None and level not in ISOLATION_LEVELS:
        raise _bad_request("invalid isolation level")
    return Headers(
        raw_output=headers.get("Neon-Raw-Text-Output") == "true",
        array_mode=headers.get("Neon-Array-Mode") == "true",
        isolation_level=level,
        read_only=headers.get("Neon-Batch-Read-Only") == "true",
        deferrable=headers.get("Neon-Batch-Deferrable") == "true",
    )


def parse_conn_info(headers: Mapping[str, str], jwt_roles: Collection[str]) -> ConnInfo:
    """Neon's checks in Neon's order; the emulator serves both paths, so the role decides which one applies."""
    text = headers.get(CONN_STRING)
    if text is None or not _header_text(text):
        raise _bad_request("invalid header: neon-connection-string")
    user, dbname, url_password, has_host = _parse_conn_string(text)
    password, jwt = _credentials(headers, url_password, user in jwt_roles)
    if not has_host:
        raise _bad_request("missing hostname")
    return ConnInfo(user, dbname, password, jwt)


@lru_cache(maxsize=1024)  # clients send the same few strings over and over
def _parse_conn_string(text: str) -> tuple[str, str, str | None, bool]:
    """(user, database, the URL's raw password, whether it has a host), after the checks that precede credentials."""
    url = _parse_url(text)
    if url.scheme not in ("postgres", "postgresql"):
        raise _bad_request("incorrect scheme")
    if not url.path.startswith("/"):
        raise _bad_request("missing database name")
    dbname = _decode(url.path[1:].split("/", 1)[0])
    user = _decode(url.username or "")
    if not user:
        raise _bad_request("missing username")
    return user, dbname, url.password or None, bool(url.hostname)  # rust-url has no empty password


def _credentials(headers: Mapping[str, str], url_password: str | None, jwt_role: bool) -> tuple[bytes | None, str | None]:
    authorization = headers.get("Authorization")
    if authorization is not None:
        if not _header_text(authorization):
            raise _bad_request("invalid header: authorization")
        if not authorization.startswith("Bearer "):
            raise _bad_request("missing authentication credentials: required authorization bearer token in JWT format")
        return None, authorization[len("Bearer "):]
    if jwt_role:  # Neon's JWT roles live behind local_proxy, which takes nothing but a bearer token
        raise _bad_request("missing authentication credentials: required authorization bearer token in JWT format")
    if url_password is None:
        raise _bad_request("missing authentication credentials: required password")
    return unquote_to_bytes(url_password), None


def _parse_url(text: str):
    """urlsplit plus the rust-url failures clients meet most, with rust-url's words."""
    scheme, colon, _ = text.partition(":")
    if not colon or not scheme[:1].isalpha() or not all(ch.isalnum() or ch in "+-." for ch in scheme):
        raise _bad_request("invalid connection string: relative URL without a base")
    url = urlsplit(text)
    host = url.netloc.rpartition("@")[2]
    if host.startswith("[") and "]" not in host:
        raise _bad_request("invalid connection string: invalid IPv6 address")
    if any(ch in _FORBIDDEN_HOST for ch in host.rpartition("]")[2].partition(":")[0]):
        raise _bad_request("invalid connection string: invalid domain character")
    try:
        url.port  # noqa: B018 (reading it validates the port)
    except ValueError:
        raise _bad_request("invalid connection string: invalid port number") from None
    return url


def _decode(component: str) -> str:
    raw = unquote_to_bytes(component)
    if b"\0" in raw:  # libpq would cut the name at it: a session elsewhere, or without its startup options
        raise nul_byte_error()
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise _bad_request(f"invalid username: invalid utf-8 sequence of 1 bytes from index {exc.start}") from None


# --- body -----------------------------------------------------------------------------------------------


class _Constant(NeonLocalError, ValueError):
    """NaN or ±Infinity, which Python's json reads and serde_json refuses."""


def parse_body(body: bytes) -> Payload:
    """Neon's untagged `Payload`: a single query is tried first, then a batch."""
    try:
        text = body.decode()
        _check_serde_limits(text)
        doc = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_request("could not parse the HTTP request body: " + _serde_message(exc, body)) from None
    single = _query(doc)
    if single is not None:
        return Payload([single], batch=False)
    batch = _fields(doc, ("queries",))
    if batch is not None and isinstance(batch.get("queries"), list):
        queries = [_query(item) for item in batch["queries"]]
        if all(q is not None for q in queries):
            return Payload(cast("list[Query]", queries), batch=True)
    raise _bad_request("could not parse the HTTP request body: " + UNTAGGED)


class _SerdeError(NeonLocalError, ValueError):
    """What serde_json refuses and Python's json reads: nesting past its limit, lone UTF-16 surrogates."""

    def __init__(self, message: str, text: str, end: int) -> None:
        line = text.count("\n", 0, end) + 1
        column = end - (text.rfind("\n", 0, end) + 1)
        super().__init__(f"{message} at line {line} column {column}")


def _check_serde_limits(text: str) -> None:
    """Raise _SerdeError where serde_json would stop; the scans run only when a body could fail them."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(text):
        depth = 0
        for match in _STRING_OR_BRACKET.finditer(text):  # only now, in Python: where the limit was passed
            bracket = match.group()
            if bracket in "[{":
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise _SerdeError("recursion limit exceeded", text, match.end())
            elif bracket in "]}":
                depth -= 1
    if ("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text):
        _check_surrogates(text)


def _too_deep(text: str) -> bool:
    """Whether arrays and objects nest past the limit, in C-speed passes: each removes one innermost level."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text)).translate(_CURLY_AS_SQUARE)
    if "[" * (MAX_JSON_DEPTH + 1) in brackets:  # the usual attack, found at once
        return True
    for _ in range(MAX_JSON_DEPTH):
        inner_removed = brackets.replace("[]", "")  # one pass over the original: no cascade into the next level
        if len(inner_removed) == len(brackets):  # all gone, or unbalanced (which the JSON parser reports)
            return False
        brackets = inner_removed
    return bool(brackets)


def _check_surrogates(text: str) -> None:
    """A high surrogate escape must be followed at once by a low one; a low one alone is refused."""
    high_end = None  # where the escape of an unpaired high surrogate ended
    for match in _ESCAPE.finditer(text):
        unit = int(match.group(2), 16)
        if high_end is not None:
            if match.end() - 6 != high_end:
                raise _SerdeError("unexpected end of hex escape", text, high_end + 1)
            if not 0xDC00 <= unit <= 0xDFFF:
                raise _SerdeError("lone leading surrogate in hex escape", text, match.end())
            high_end = None
        elif 0xD800 <= unit <= 0xDBFF:
            high_end = match.end()
        elif 0xDC00 <= unit <= 0xDFFF:
            raise _SerdeError("lone leading surrogate in hex escape", text, match.end())
    if high_end is not None:
        raise _SerdeError("unexpected end of hex escape", text, high_end + 1)


def _refuse_constant(name: str) -> None:
    raise _Constant(name)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # one for all: json.loads with options builds one per call


def _fields(doc: object, names: tuple[str, ...]) -> dict | None:
    """serde's derived struct visitor: a JSON object, or an array read positionally."""
    if isinstance(doc, dict):
        return doc
    if isinstance(doc, list) and 0 < len(doc) <= len(names):
        return dict(zip(names, doc))
    return None


def _query(doc: object) -> Query | None:
    fields = _fields(doc, ("query", "params", "arrayMode"))
    if fields is None or not isinstance(fields.get("query"), str):
        return None
    params = fields.get("params", [])
    array_mode = fields.get("arrayMode")
    if not isinstance(params, list) or not (array_mode is None or isinstance(array_mode, bool)):
        return None
    return Query(fields["query"], params_to_pg_text(params), array_mode)


def _serde_message(exc: Exception, body: bytes) -> str:
    """serde_json's wording for the common syntax errors, with its 1-based line and column."""
    if isinstance(exc, UnicodeDecodeError):
        return "invalid unicode code point"
    if isinstance(exc, _SerdeError):
        return str(exc)
    if isinstance(exc, _Constant):  # approximate: the first place the word appears
        text = body.decode()
        pos = text.find(str(exc))
        exc = json.JSONDecodeError("Expecting value", text, pos)
    exc = cast(json.JSONDecodeError, exc)  # all that is left: the json module's own errors
    where = f" at line {exc.lineno} column {exc.colno}"
    if exc.pos >= len(exc.doc.rstrip()):
        return "EOF while parsing a value" + (f" at line {exc.lineno} column {exc.colno - 1}")
    if exc.msg == "Extra data":
        return "trailing characters" + where
    if exc.msg.startswith("Expecting property name"):
        return "key must be a string" + where
    if exc.msg.startswith("Invalid control character"):
        return "control character (\\u0000-\\u001F) found while parsing a string" + where
    return "expected value" + where
