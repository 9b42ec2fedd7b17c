"""Neon's SQL-over-HTTP error answers: the 17-key body (absent fields null), its status, client-safe text only.

A Postgres error from the user's SQL keeps Postgres's own fields; an error of ours (bad header,
failed auth, too large) has `code` and `severity` "" and every other field null, as Neon sends them.
"""

from __future__ import annotations

import json
from typing import Mapping

__all__ = ["SqlOverHttpError", "cancelled_body", "not_supported_body", "PG_FIELDS"]

# Body key → Postgres ErrorResponse field code, in Neon's key order (after "message").
PG_FIELDS = {
    "code": "C", "detail": "D", "hint": "H", "position": "P", "internalPosition": "p", "internalQuery": "q",
    "severity": "S", "where": "W", "table": "t", "column": "c", "schema": "s", "dataType": "d",
    "constraint": "n", "file": "F", "line": "L", "routine": "R",
}
CANCELLED_MESSAGE = "Query cancelled, connection was terminated"


class SqlOverHttpError(Exception):
    """An answer other than 200: `status` plus the body's fields; `message` is safe to show the client."""

    def __init__(self, status: int, message: str, pg_fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.pg_fields = pg_fields

    @classmethod
    def postgres(cls, fields: Mapping[str, str], status: int = 400) -> "SqlOverHttpError":
        """An error Postgres raised for the user's SQL (or while connecting): its bare message and fields."""
        return cls(status, fields.get("M", ""), fields)

    @classmethod
    def internal_postgres(cls, fields: Mapping[str, str]) -> "SqlOverHttpError":
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
