"""Data API errors: PostgREST's `{code, details, hint, message}` body (or Neon's `detail`), and SQLSTATE → HTTP status."""

from __future__ import annotations

import json
from collections.abc import Mapping

from neon_local.errors import NeonLocalError

__all__ = ["ApiError", "pg_status"]


class ApiError(NeonLocalError):
    """A PGRST error (or a proxy-side one with `code=None`); `status` is the HTTP status."""

    def __init__(self, status: int, code: str | None, message: str, details: str | None = None,
                 hint: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.headers = dict(headers or {})

    @classmethod
    def postgres(cls, fields: Mapping[str, str]) -> ApiError:
        code = fields.get("C", "")
        message = fields.get("M", "")
        status = pg_status(code, message)
        if code.startswith("PT") and code[2:].isdigit():
            status = int(code[2:])
        return cls(status, code, message, fields.get("D"), fields.get("H"))

    def body(self, detail_key: str = "details") -> bytes:
        doc = {"code": self.code, detail_key: self.details, "hint": self.hint, "message": self.message}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


_EXACT = {"23503": 409, "23505": 409, "25006": 405, "42P17": 500, "42P01": 404, "42883": 404, "57P01": 503,
          "53400": 500, "P0001": 400, "42501": 403}
_PREFIX = (("08", 503), ("09", 500), ("0L", 403), ("0P", 403), ("25", 500), ("28", 403), ("2D", 500),
           ("38", 500), ("39", 500), ("3B", 500), ("40", 500), ("53", 503), ("54", 500), ("55", 500),
           ("57", 500), ("58", 500), ("F0", 500), ("HV", 500), ("XX", 500), ("P0", 500))


def pg_status(code: str, message: str = "") -> int:
    """PostgREST v13's SQLSTATE → HTTP status (42501 is always 403: the caller presented a token, as on Neon)."""
    if code == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if code == "22023":
        return 401 if message.startswith('role "') and message.endswith('" does not exist') else 400
    if code in _EXACT:
        return _EXACT[code]
    for prefix, status in _PREFIX:
        if code.startswith(prefix):
            return status
    return 400
