"""Neon's JSON rules for SQL over HTTP: JSON params to Postgres text, Postgres text to JSON, result shaping.

Sans-io and per row, so kept lean: values arrive as Postgres text (`str`) or None, and every
encoder returns JSON *text*, which lets raw JSON (json/jsonb columns) pass through untouched, as
Neon's serializer does. Facts follow `proxy/src/serverless/json.rs` and `sql_over_http.rs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from json.encoder import encode_basestring  # escapes like serde_json: '"', '\\', controls; not non-ASCII
from typing import NamedTuple

from neon_local.errors import NeonLocalError

__all__ = [
    "Column", "PgTextError", "ResponseTooLarge", "ResponseWriter",
    "command_and_count", "fields_json", "params_to_pg_text", "row_encoder",
]

BOOL, INT2, INT4, FLOAT4, FLOAT8, JSON, JSONB = 16, 21, 23, 700, 701, 114, 3802
_NON_FINITE = frozenset(("NaN", "Infinity", "-Infinity"))
_WHITESPACE = " \t\n\r\v\f"
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_raw_rows = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1
# What JSON strings must escape ('"', '\\', controls below 0x20), all mapped to '"': one search over a
# chunk's UTF-8 tells whether plain quotes make every value valid JSON (multi-byte UTF-8 never hits these).
_ESCAPES_AS_QUOTE = bytes(34 if byte < 32 or byte == 92 else byte for byte in range(256))

Encoder = Callable[[str], str]


class PgTextError(NeonLocalError, ValueError):
    """Postgres sent text we cannot shape into JSON; Neon answers 500 `could not parse postgres response`."""


class ResponseTooLarge(NeonLocalError):
    """The JSON response passed the size limit; Neon answers 507."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response is too large (max is {limit} bytes)")


# --- params: JSON → Postgres text (json_to_pg_text) -------------------------------------------------


def params_to_pg_text(params: Sequence[object]) -> list[str | None]:
    """Each JSON param as the untyped text Neon binds: strings verbatim, arrays as array literals."""
    return [_param_text(value) for value in params]


def _param_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return _array_literal(value)
    return _json_text(value)


def _json_text(value: object) -> str:
    """serde_json's text: sorted object keys, and numbers past 64 bits read as floats."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _compact(value)
    if isinstance(value, int) and _I64_MIN <= value <= _U64_MAX:
        return str(value)
    return _float_text(float(value))


def _float_text(value: float) -> str:
    # serde_json writes exponents without '+' or leading zeros ("1e20", "1e-7"); Python writes "1e+20".
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def _array_literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "{" + ",".join(_array_literal(item) for item in value) + "}"
    if isinstance(value, str):
        return encode_basestring(value)
    if isinstance(value, dict):
        return encode_basestring(_compact(value))
    return _json_text(value)


# --- values: Postgres text → JSON text (pg_text_to_json) --------------------------------------------


def _bool(text: str) -> str:
    return "true" if text == "t" else "false"


def _verbatim(text: str) -> str:
    # int2/int4 text and json/jsonb text are already valid JSON
    return text


def _float(text: str) -> str:
    # NaN and the infinities have no JSON number, so Neon sends them as strings
    return '"' + text + '"' if text in _NON_FINITE else text


_SCALARS: dict[int, Encoder] = {
    BOOL: _bool, INT2: _verbatim, INT4: _verbatim, FLOAT4: _float, FLOAT8: _float, JSON: _verbatim, JSONB: _verbatim,
}


def value_encoder(type_oid: int, array_elements: Mapping[int, int]) -> Encoder:
    """The text → JSON-text function for one column type; every type Neon does not special-case is a string."""
    element = array_elements.get(type_oid)
    if element:  # 0 marks a type known not to be an array
        scalar = _SCALARS.get(element, encode_basestring)
        return lambda text: parse_array(text, scalar)
    return _SCALARS.get(type_oid, encode_basestring)


def parse_array(text: str, element: Encoder) -> str:
    """A Postgres array literal as a JSON array: bounds dropped, quotes undone, NULL → null, `{}` → []."""
    if text.startswith("["):
        equals = text.find("=")
        if equals < 0:
            raise PgTextError("unbalanced array")
        text = text[equals + 1:]
    out: list[str] = []
    end = _parse_list(text, _skip_space(text, 0), element, out)
    if end != len(text):
        raise PgTextError("unbalanced array")
    return "".join(out)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _parse_list(text: str, pos: int, element: Encoder, out: list[str]) -> int:
    if not text.startswith("{", pos):
        raise PgTextError("unbalanced array")
    out.append("[")
    pos += 1
    if text.startswith("}", _skip_space(text, pos)):  # Neon's older `[]` for an empty array
        out.append("]")
        return _skip_space(text, _skip_space(text, pos) + 1)
    while True:
        pos = _parse_item(text, pos, element, out)
        if not text.startswith(",", pos):
            break
        out.append(",")
        pos += 1
    if not text.startswith("}", pos):
        raise PgTextError("unbalanced array")
    out.append("]")
    return _skip_space(text, pos + 1)


def _parse_item(text: str, pos: int, element: Encoder, out: list[str]) -> int:
    pos = _skip_space(text, pos)
    if text.startswith("{", pos):
        return _parse_list(text, pos, element, out)
    if text.startswith('"', pos):
        value, pos = _parse_quoted(text, pos + 1)
        out.append(element(value))
        return _skip_space(text, pos)
    end = min((i for i in (text.find(",", pos), text.find("}", pos)) if i >= 0), default=-1)
    if end < 0:
        raise PgTextError("unbalanced array")
    item = text[pos:end].rstrip(_WHITESPACE)
    out.append("null" if item == "NULL" else element(item))
    return end


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    chunks = []
    while True:
        quote, backslash = text.find('"', pos), text.find("\\", pos)
        if quote < 0:
            raise PgTextError("unbalanced quoted string")
        if backslash < 0 or quote < backslash:
            chunks.append(text[pos:quote])
            return "".join(chunks), quote + 1
        if backslash + 1 >= len(text):
            raise PgTextError("unbalanced quoted string")
        chunks.append(text[pos:backslash])
        chunks.append(text[backslash + 1])
        pos = backslash + 2


# --- result shaping (query_to_json) -----------------------------------------------------------------


class Column(NamedTuple):
    """One RowDescription field, as Neon's `fields` entries name them."""

    name: str
    type_oid: int
    table_oid: int
    column_id: int
    type_size: int
    type_modifier: int


_FIELD = '{"name":%s,"dataTypeID":%d,"tableID":%d,"columnID":%d,"dataTypeSize":%d,"dataTypeModifier":%d,"format":"text"}'


def fields_json(columns: Sequence[Column]) -> str:
    """The `fields` array with all seven keys; `format` is always "text"."""
    return "[" + ",".join(_FIELD % (encode_basestring(c.name), *c[1:]) for c in columns) + "]"


def command_and_count(tag: str) -> tuple[str, int | None]:
    """`command` is the tag's first word; `rowCount` its 2nd word (3rd for `INSERT oid n`) when numeric."""
    words = tag.split(" ")
    index = 2 if words[0] == "INSERT" else 1
    count = words[index] if len(words) > index else ""
    return words[0], int(count) if count.isascii() and count.isdigit() else None


def row_encoder(columns: Sequence[Column], raw: bool, array_mode: bool,
                array_elements: Mapping[int, int]) -> Callable[[Sequence[tuple]], str]:
    """A function from row tuples (text or None) to their JSON rows joined by commas."""
    if raw and array_mode:  # what the driver asks for: one C-level dumps per chunk
        return lambda rows: _raw_rows(rows)[1:-1]
    encoders = [encode_basestring if raw else value_encoder(c.type_oid, array_elements) for c in columns]
    # Per chunk, not per row (the per-row Python was most of a large result's time): each column's values
    # encoded by one map(), then one %-format fills a row template repeated once per row.
    template, quoted = _row_template(columns, array_mode, "%s"), _row_template(columns, array_mode, '"%s"')
    strings_only = all(f is encode_basestring for f in encoders)

    def encode(rows: Sequence[tuple]) -> str:
        if strings_only:  # every value a JSON string: the chunk's values as one sequence, unless a NULL stops it
            values = tuple(chain.from_iterable(rows))
            try:
                text = "".join(values)
            except TypeError:
                pass
            else:
                if b'"' not in text.encode().translate(_ESCAPES_AS_QUOTE):  # the usual case: quotes suffice
                    return ",".join([quoted] * len(rows)) % values
                return ",".join([template] * len(rows)) % tuple(map(encode_basestring, values))
        encoded = [_encode_column(f, column) for f, column in zip(encoders, zip(*rows))]
        return ",".join([template] * len(rows)) % tuple(chain.from_iterable(zip(*encoded)))
    return encode


def _row_template(columns: Sequence[Column], array_mode: bool, slot: str) -> str:
    if array_mode:
        return "[" + ",".join([slot] * len(columns)) + "]"
    # duplicate names stay duplicated, as on Neon
    return "{" + ",".join(encode_basestring(c.name).replace("%", "%%") + ":" + slot for c in columns) + "}"


def _encode_column(encoder: Encoder, column: tuple) -> list[str]:
    if None in column:
        return ["null" if v is None else encoder(v) for v in column]
    return list(map(encoder, column))


class ResponseWriter:
    """Builds the response body as UTF-8 chunks in Neon's key order, enforcing its per-row size check."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._parts: list[bytes] = []
        self._results = 0
        self._rows = 0

    def _write(self, text: str) -> None:
        data = text.encode()
        self._parts.append(data)
        self.size += len(data)

    def begin_batch(self) -> None:
        self._write('{"results":[')

    def end_batch(self) -> None:
        self._write("]}")

    def begin_result(self, columns: Sequence[Column]) -> None:
        self._write(("," if self._results else "") + '{"fields":' + fields_json(columns) + ',"rows":[')
        self._results += 1
        self._rows = 0

    def add_rows(self, rows_json: str, count: int, last_row_json: Callable[[], str]) -> None:
        """Append `count` encoded rows; raises ResponseTooLarge as Neon would while writing them."""
        if not count:
            return
        data = (("," if self._rows else "") + rows_json).encode()
        if self.size + len(data) > self.limit:
            # Neon checks the buffer's length before writing each row; the check before the last row is
            # the strictest, and it sees everything but that row and the comma in front of it.
            last = len(last_row_json().encode()) + 1 if count > 1 or self._rows else len(data)
            if self.size + len(data) - last > self.limit:
                raise ResponseTooLarge(self.limit)
        self._parts.append(data)
        self.size += len(data)
        self._rows += count

    def end_result(self, tag: str, row_as_array: bool) -> None:
        command, count = command_and_count(tag)
        row_count = "null" if count is None else str(count)
        self._write(f'],"command":{encode_basestring(command)},"rowCount":{row_count},'
                    f'"rowAsArray":{"true" if row_as_array else "false"}}}')

    def body(self) -> bytes:
        return b"".join(self._parts)
