"""Neon's SQL-over-HTTP error answers: the 17-key body (absent fields null), its status, client-safe text only.

A Postgres error from the user's SQL keeps Postgres's own fields; an error of ours (bad header,
failed auth, too large) has `code` and `severity` "" and every other field null, as Neon sends them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import psycopg

from neon_local.errors import NeonLocalError

__all__ = [
    "PG_FIELDS",
    "SqlOverHttpError",
    "cancelled_body",
    "internal_error",
    "not_supported_body",
    "nul_byte_error",
    "postgres_unavailable",
]

# Body key → Postgres ErrorResponse field code, in Neon's key order (after "message").
PG_FIELDS = {
    "code": "C", "detail": "D", "hint": "H", "position": "P", "internalPosition": "p", "internalQuery": "q",
    "severity": "S", "where": "W", "table": "t", "column": "c", "schema": "s", "dataType": "d",
    "constraint": "n", "file": "F", "line": "L", "routine": "R",
}
CANCELLED_MESSAGE = "Query cancelled, connection was terminated"
# What Postgres answers (from report_invalid_encoding) for a NUL byte in query text or a text parameter.
NUL_FIELDS = {
    "S": "ERROR", "V": "ERROR", "C": "22021", "M": 'invalid byte sequence for encoding "UTF8": 0x00',
    "F": "mbutils.c", "R": "report_invalid_encoding",
}
# psycopg's Diagnostic attribute for each ErrorResponse field code.
_DIAG = {
    "S": "severity", "V": "severity_nonlocalized", "C": "sqlstate", "M": "message_primary", "D": "message_detail",
    "H": "message_hint", "P": "statement_position", "p": "internal_position", "q": "internal_query", "W": "context",
    "s": "schema_name", "t": "table_name", "c": "column_name", "d": "datatype_name", "n": "constraint_name",
    "F": "source_file", "L": "source_line", "R": "source_function",
}


class SqlOverHttpError(NeonLocalError):
    """An answer other than 200: `status` plus the body's fields; `message` is safe to show the client."""

    def __init__(self, status: int, message: str, pg_fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.pg_fields = pg_fields
        self.headers: Mapping[str, str] | None = None  # extra response headers (Retry-After)

    @classmethod
    def postgres(cls, fields: Mapping[str, str], status: int = 400) -> SqlOverHttpError:
        """An error Postgres raised for the user's SQL (or while connecting): its bare message and fields."""
        return cls(status, fields.get("M", ""), fields)

    @classmethod
    def internal_postgres(cls, fields: Mapping[str, str]) -> SqlOverHttpError:
        """SQL the proxy runs itself failed (session init): 500 with tokio-postgres's `db error: …` text."""
        text = f"db error: {fields.get('S', 'ERROR')}: {fields.get('M', '')}"
        for label, key in (("DETAIL", "D"), ("HINT", "H")):
            if fields.get(key) is not None:
                text += f"\n{label}: {fields[key]}"
        return cls(500, text)

    def body(self) -> bytes:
        fields = self.pg_fields
        doc: dict[str, str | None] = {"message": self.message}
        for key, code in PG_FIELDS.items():
            if fields is not None:
                doc[key] = fields.get(code, "" if key in ("code", "severity") else None)
            else:
                doc[key] = "" if key in ("code", "severity") else None
        if fields is not None and fields.get("P") is not None:
            doc["internalPosition"] = doc["internalQuery"] = None  # tokio-postgres keeps one position kind
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def cancelled_body() -> bytes:
    """What Neon answers (400) when the client's disconnect cancelled its query: two keys only."""
    return json.dumps({"message": CANCELLED_MESSAGE, "code": "08P01"}, separators=(",", ":")).encode()


def not_supported_body() -> bytes:
    return b'"query is not supported"'


def nul_byte_error() -> SqlOverHttpError:
    """Query text or a parameter held U+0000, which Postgres text cannot: 400 with Postgres's own error."""
    return SqlOverHttpError.postgres(NUL_FIELDS)


def postgres_unavailable(exc: BaseException | None) -> SqlOverHttpError:
    """A failure reaching Postgres outside the user's SQL (restarting, disk full, out of connections): 500 with
    Postgres's own fields when it sent an error, else what went wrong and the next step."""
    fields = getattr(exc, "fields", None)  # pg_conn.PgError
    if fields is None and isinstance(exc, psycopg.Error) and exc.sqlstate:
        fields = {code: value for code, name in _DIAG.items() if (value := getattr(exc.diag, name)) is not None}
    if fields is not None:
        return SqlOverHttpError.postgres(fields, 500)
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else type(exc).__name__
    return SqlOverHttpError(500, f"neon-local could not reach Postgres ({text}); it may be restarting, try again in a moment")


def internal_error(exc: BaseException) -> SqlOverHttpError:
    """An error neon-local did not expect (a bug): still Neon's body, naming the exception for the bug report."""
    return SqlOverHttpError(500, f"internal error in neon-local ({type(exc).__name__}: {exc}); see its log")
