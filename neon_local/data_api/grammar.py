"""PostgREST v13's request grammar, sans-io: query string pairs, headers and body → a request model.

Nothing here touches SQL: names stay names and values stay strings until `sql` quotes and binds them.
Every malformed input raises ApiError with PostgREST's code (PGRST100 for the query string).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from neon_local.data_api.errors import ApiError

__all__ = [
    "AGGREGATES",
    "OPERATORS",
    "Embed",
    "Field",
    "Filter",
    "Logic",
    "Node",
    "OrderTerm",
    "Preferences",
    "QueryParams",
    "SelectColumn",
    "parse_accept",
    "parse_filter_value",
    "parse_logic",
    "parse_order",
    "parse_payload",
    "parse_prefer",
    "parse_query",
    "parse_range",
    "parse_select",
]

OPERATORS = {
    "eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE", "ilike": "ILIKE",
    "match": "~", "imatch": "~*", "in": "IN", "is": "IS", "isdistinct": "IS DISTINCT FROM", "cs": "@>",
    "cd": "<@", "ov": "&&", "sl": "<<", "sr": ">>", "nxl": "&<", "nxr": "&>", "adj": "-|-",
    "fts": "to_tsquery", "plfts": "plainto_tsquery", "phfts": "phraseto_tsquery", "wfts": "websearch_to_tsquery",
}
QUANTIFIABLE = frozenset(("eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "match", "imatch"))
FTS = frozenset(("fts", "plfts", "phfts", "wfts"))
IS_VALUES = {"null": "NULL", "not_null": "NOT NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}
AGGREGATES = frozenset(("count", "sum", "avg", "min", "max"))
_INT = re.compile(r"-?\d+\Z")


def _syntax(what: str, text: str, column: int, details: str) -> ApiError:
    return ApiError(400, "PGRST100", f'"failed to parse {what} ({text})" (line 1, column {column})', details)


@dataclass(frozen=True)
class Field:
    """A column, optionally followed by a JSON path: `meta->tags->>0` is ("meta", (("->","tags"),("->>","0")))."""
    name: str
    path: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """The output key PostgREST gives it: the last path element, else the column name."""
        return self.path[-1][1] if self.path else self.name


@dataclass
class SelectColumn:
    field: Field | None  # None: `*` (or `count()` with an aggregate)
    alias: str | None = None
    cast: str | None = None
    aggregate: str | None = None
    aggregate_cast: str | None = None

    @property
    def key(self) -> str:
        if self.alias:
            return self.alias
        if self.aggregate:
            return self.aggregate
        assert self.field is not None  # `*` alone has no key
        return self.field.key


@dataclass
class Embed:
    name: str
    alias: str | None = None
    hint: str | None = None
    inner: bool = False
    spread: bool = False
    select: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass
class Filter:
    field: Field
    op: str
    value: str | list[str] | None
    negate: bool = False
    quantifier: str | None = None  # "any" / "all"
    config: str | None = None  # text search configuration


@dataclass
class Logic:
    op: str  # "and" / "or"
    children: list
    negate: bool = False


@dataclass
class OrderTerm:
    field: Field
    desc: bool = False
    nulls: str | None = None  # "first" / "last"
    relation: str | None = None  # order by a to-one embed's column: `authors(name).desc`


@dataclass
class Node:
    """Filters and paging for one level: the root (path ()) or an embed (path ("books",) ...)."""
    filters: list = field(default_factory=list)
    order: list = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


@dataclass
class QueryParams:
    select: list
    nodes: dict[tuple[str, ...], Node]
    columns: list[str] | None = None
    on_conflict: list[str] | None = None
    args: list[tuple[str, str]] = field(default_factory=list)  # RPC arguments from the query string

    @property
    def root(self) -> Node:
        return self.nodes[()]


# --- lexing helpers ---------------------------------------------------------------------------------

def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside double quotes and parentheses."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\" and i + 1 < len(text):
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


class _Cursor:
    """A position in one parameter's text, for recursive descent with PostgREST-style error positions."""

    def __init__(self, what: str, text: str) -> None:
        self.what, self.text, self.pos = what, text, 0

    def error(self, expecting: str) -> ApiError:
        got = f'unexpected "{self.text[self.pos]}"' if self.pos < len(self.text) else "unexpected end of input"
        return _syntax(self.what, self.text, self.pos + 1, f"{got} expecting {expecting}")

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def take(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.take(s):
            raise self.error(f'"{s}"')

    @property
    def done(self) -> bool:
        return self.pos >= len(self.text)

    def name(self, expecting: str = "field name") -> str:
        """An identifier: "double quoted" (with \\ escapes), or up to a reserved character."""
        if self.take('"'):
            out = []
            while not self.done and not self.peek('"'):
                if self.peek("\\") and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            self.expect('"')
            return "".join(out)
        start = self.pos
        while not self.done:
            c = self.text[self.pos]
            if c in ',.:()!"' or self.peek("->"):
                break
            self.pos += 1
        if self.pos == start:
            raise self.error(expecting)
        return self.text[start:self.pos].strip()

    def json_path(self) -> tuple[tuple[str, str], ...]:
        path: list[tuple[str, str]] = []
        while self.peek("->"):
            arrow = "->>" if self.take("->>") else cast(str, self.take("->") and "->")  # peek said "->" is next
            if self.peek('"'):
                path.append((arrow, self.name()))
                continue
            start = self.pos
            if self.peek("-"):
                self.pos += 1
            while not self.done and self.text[self.pos] not in ',.:()!"' and not self.peek("->"):
                self.pos += 1
            key = self.text[start:self.pos]
            if not key:
                raise self.error("a JSON key or index")
            path.append((arrow, key))
        return tuple(path)

    def field(self) -> Field:
        return Field(self.name(), self.json_path())

    def cast(self) -> str | None:
        if not self.take("::"):
            return None
        start = self.pos
        while not self.done and (self.text[self.pos].isalnum() or self.text[self.pos] in "_ []"):
            self.pos += 1
        if self.pos == start:
            raise self.error("a type name")
        return self.text[start:self.pos].strip()


# --- select --------------------------------------------------------------------------------------------

def parse_select(text: str) -> list:
    cursor = _Cursor("select parameter", text)
    items = _select_items(cursor)
    if not cursor.done:
        raise cursor.error('"," or end of input')
    return items


def _select_items(cursor: _Cursor) -> list:
    items = [_select_item(cursor)]
    while cursor.take(","):
        items.append(_select_item(cursor))
    return items


def _select_item(cursor: _Cursor):
    if cursor.take("*"):
        return SelectColumn(None)
    if cursor.take("..."):
        embed = _embed(cursor, cursor.name("embedded resource name"), None)
        if embed is None:
            raise cursor.error('"(" after a spread resource')
        embed.spread = True
        return embed
    if cursor.peek("count()"):
        cursor.pos += len("count()")
        return SelectColumn(None, aggregate="count", aggregate_cast=cursor.cast())
    start = cursor.pos
    name = cursor.name()
    alias = None
    if cursor.peek(":") and not cursor.peek("::"):
        cursor.pos += 1
        alias = name
        if cursor.take("..."):
            raise cursor.error("a field name")  # an aliased spread has no key to take the alias
        if cursor.peek("count()"):
            cursor.pos += len("count()")
            return SelectColumn(None, alias=alias, aggregate="count", aggregate_cast=cursor.cast())
        start = cursor.pos
        name = cursor.name()
    embed = _embed(cursor, name, alias)
    if embed is not None:
        return embed
    cursor.pos = start
    column = SelectColumn(cursor.field(), alias=alias)
    column.cast = cursor.cast()
    if cursor.peek("."):
        cursor.pos += 1
        aggregate = cursor.name("an aggregate function")
        if aggregate not in AGGREGATES or not cursor.take("()"):
            raise _syntax(cursor.what, cursor.text, cursor.pos, f'unknown aggregate "{aggregate}": expecting '
                          + ", ".join(f"{a}()" for a in sorted(AGGREGATES)))
        column.aggregate = aggregate
        column.aggregate_cast = cursor.cast()
    return column


def _embed(cursor: _Cursor, name: str, alias: str | None) -> Embed | None:
    """`name[!hint][!inner](...)` after the name; None (cursor unmoved) when no embed follows."""
    mark = cursor.pos
    hint, inner = None, False
    while cursor.peek("!"):
        cursor.pos += 1
        word = cursor.name("a hint or join type")
        if word in ("inner", "left"):
            inner = word == "inner"
        elif hint is None:
            hint = word
        else:
            raise _syntax(cursor.what, cursor.text, cursor.pos, "expecting inner or left after the hint")
    if not cursor.take("("):
        if hint is not None or inner:
            raise cursor.error('"("')
        cursor.pos = mark
        return None
    select = [] if cursor.peek(")") else _select_items(cursor)
    cursor.expect(")")
    return Embed(name, alias, hint, inner, False, select)


# --- order ----------------------------------------------------------------------------------------------

def parse_order(text: str) -> list[OrderTerm]:
    terms = []
    for part in split_top(text):
        cursor = _Cursor("order", part)
        name = cursor.name()
        relation = None
        if cursor.take("("):
            relation, name = name, cursor.name()
            term_field = Field(name, cursor.json_path())
            cursor.expect(")")
        else:
            term_field = Field(name, cursor.json_path())
        term = OrderTerm(term_field, relation=relation)
        while cursor.take("."):
            word = cursor.name("asc, desc, nullsfirst or nullslast")
            if word in ("asc", "desc"):
                term.desc = word == "desc"
            elif word in ("nullsfirst", "nullslast"):
                term.nulls = word[5:]
            else:
                raise _syntax("order", part, cursor.pos - len(word) + 1,
                              f'unexpected "{word}" expecting asc, desc, nullsfirst or nullslast')
        if not cursor.done:
            raise cursor.error('"." or ","')
        terms.append(term)
    return terms


# --- filters ------------------------------------------------------------------------------------------

def _in_list(text: str, what: str, whole: str) -> list[str]:
    if not (text.startswith("(") and text.endswith(")")):
        raise _syntax(what, whole, len(whole) - len(text) + 1, 'expecting "(" and ")" around the list')
    inner = text[1:-1]
    if inner == "":
        return []
    return [_unquote(item.strip()) if item.strip().startswith('"') else item for item in split_top(inner)]


def parse_filter_value(text: str, what: str = "filter") -> tuple[bool, str, str | None, str | None, str | list[str]]:
    """`[not.]op[(any|all|config)].value` → (negate, op, quantifier, config, value)."""
    rest, negate = text, False
    if rest.startswith("not."):
        negate, rest = True, rest[4:]
    match = re.match(r"([a-z]+)(?:\(([^)]*)\))?\.", rest)
    if match is None or match.group(1) not in OPERATORS:
        column = len(text) - len(rest) + (len(match.group(1)) + 1 if match else 1)
        raise _syntax(what, text, column, "expecting an operator: " + ", ".join(OPERATORS))
    op, modifier = match.group(1), match.group(2)
    value: str | list[str]  # the text after the operator; a list for in, any and all
    value = rest[match.end():]
    quantifier = config = None
    if modifier is not None:
        if op in FTS:
            config = modifier
        elif op in QUANTIFIABLE and modifier in ("any", "all"):
            quantifier = modifier
        else:
            raise _syntax(what, text, len(text) - len(rest) + len(op) + 2,
                          f'"{modifier}" is not a modifier of {op} (any and all go with '
                          + ", ".join(sorted(QUANTIFIABLE)) + "; a text search configuration with fts)")
    if op == "in":
        value = _in_list(value, what, text)
    elif quantifier is not None:
        if not (value.startswith("{") and value.endswith("}")):
            raise _syntax(what, text, len(text) - len(value) + 1, 'expecting "{" and "}" around the values')
        value = [_unquote(v.strip()) for v in split_top(value[1:-1])] if value[1:-1] else []
    elif op == "is":
        normal = value.lower().replace(" ", "_")
        if normal not in IS_VALUES:
            raise _syntax(what, text, len(text) - len(value) + 1, "expecting null, not_null, true, false or unknown")
        value = normal
    return negate, op, quantifier, config, value


def _filter(name_part: Field, text: str, what: str) -> Filter:
    negate, op, quantifier, config, value = parse_filter_value(text, what)
    return Filter(name_part, op, value, negate, quantifier, config)


def parse_logic(op: str, text: str, negate: bool = False) -> Logic:
    if not (text.startswith("(") and text.endswith(")")):
        raise _syntax("logic tree", text, 1, 'expecting "(" ... ")"')
    children = []
    for item in split_top(text[1:-1]):
        children.append(_logic_item(item, text))
    return Logic(op, children, negate)


def _logic_item(item: str, whole: str):
    negate, rest = (True, item[4:]) if item.startswith("not.") else (False, item)
    for op in ("and", "or"):
        if rest.startswith(op + "("):
            return parse_logic(op, rest[len(op):], negate)
    cursor = _Cursor("logic tree", item)
    item_field = cursor.field()
    if not cursor.take("."):
        raise _syntax("logic tree", whole, 1, f'expecting "." after the field in ({item})')
    value = item[cursor.pos:]
    if value.startswith("not.") or re.match(r"[a-z]+(\([^)]*\))?\.", value):
        result = _filter(item_field, value, "logic tree")
    else:
        raise _syntax("logic tree", whole, 1, f"expecting an operator in ({item})")
    if isinstance(result.value, str) and result.value.startswith('"') and result.op not in ("is",):
        result.value = _unquote(result.value)
    return result


# --- the whole query string -----------------------------------------------------------------------

def _key_parts(key: str) -> list[str]:
    """`books.authors.name` → parts split on dots outside quotes and JSON paths."""
    parts, current, quoted, i = [], "", False, 0
    while i < len(key):
        c = key[i]
        if c == '"':
            quoted = not quoted
            current += c
        elif c == "." and not quoted and "->" not in current:
            parts.append(current)
            current = ""
        else:
            current += c
        i += 1
    parts.append(current)
    return parts


def _non_negative(key: str, value: str) -> int:
    if not re.fullmatch(r"\d+", value):
        raise ApiError(400, "PGRST100", f'"failed to parse {key} parameter ({value})" (line 1, column 1)',
                       "expecting a whole number from 0")
    return int(value)


def parse_query(pairs: Iterable[tuple[str, str]], rpc_args: frozenset[str] = frozenset()) -> QueryParams:
    params = QueryParams(select=[SelectColumn(None)], nodes={(): Node()})

    def node(path: tuple[str, ...]) -> Node:
        return params.nodes.setdefault(path, Node())

    for key, value in pairs:
        if key in rpc_args:
            params.args.append((key, value))
        elif key == "select":
            params.select = parse_select(value) if value != "" else [SelectColumn(None)]
        elif key == "columns":
            params.columns = [_unquote(c.strip()) for c in split_top(value) if c.strip()]
        elif key == "on_conflict":
            params.on_conflict = [_unquote(c.strip()) for c in split_top(value) if c.strip()]
        else:
            parts = _key_parts(key)
            last = parts[-1]
            if last in ("or", "and"):
                negate = len(parts) >= 2 and parts[-2] == "not"
                path = tuple(parts[:-2] if negate else parts[:-1])
                node(path).filters.append(parse_logic(last, value, negate))
            elif last == "order" and len(parts) >= 1:
                node(tuple(parts[:-1])).order = parse_order(value)
            elif last == "limit":
                node(tuple(parts[:-1])).limit = _non_negative("limit", value)
            elif last == "offset":
                node(tuple(parts[:-1])).offset = _non_negative("offset", value)
            else:
                cursor = _Cursor("filter", last)
                target = cursor.field()
                if not cursor.done:
                    raise cursor.error("a field name, an optional JSON path and \"=\"")
                node(tuple(_unquote(p) for p in parts[:-1])).filters.append(_filter(target, value, "filter"))
    return params


# --- headers ------------------------------------------------------------------------------------------

@dataclass
class Preferences:
    representation: str = "minimal"  # minimal | representation | headers-only
    count: str | None = None
    resolution: str | None = None
    missing_default: bool = False
    applied: list[str] = field(default_factory=list)


def parse_prefer(values: Iterable[str]) -> Preferences:
    prefs = Preferences()
    for value in values:
        for item in value.split(","):
            name, _, setting = item.strip().partition("=")
            name, setting = name.strip(), setting.strip()
            if name == "return" and setting in ("minimal", "representation", "headers-only"):
                prefs.representation = setting
                prefs.applied.append(f"return={setting}")
            elif name == "count" and setting in ("exact", "planned", "estimated"):
                prefs.count = setting
                prefs.applied.append(f"count={setting}")
            elif name == "resolution" and setting in ("merge-duplicates", "ignore-duplicates"):
                prefs.resolution = setting
                prefs.applied.append(f"resolution={setting}")
            elif name == "missing" and setting in ("default", "null"):
                prefs.missing_default = setting == "default"
                prefs.applied.append(f"missing={setting}")
    return prefs


JSON, OBJECT, CSV = "application/json", "application/vnd.pgrst.object+json", "text/csv"
_OFFERED = {"application/json": JSON, "application/vnd.pgrst.array+json": JSON, "application/*": JSON, "*/*": JSON,
            "application/vnd.pgrst.object+json": OBJECT, "application/vnd.pgrst.object": OBJECT, "text/csv": CSV,
            "text/*": CSV}


def parse_accept(value: str | None) -> str:
    """The response media type: JSON, OBJECT or CSV; anything else → 406 PGRST107."""
    if not value or not value.strip():
        return JSON
    ranked = []
    for index, item in enumerate(value.split(",")):
        media, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        extra = False
        for p in params:
            k, _, v = p.partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
            elif k.strip():
                extra = True  # nulls=stripped, for=..., options=...: not offered on Neon
        if media.lower() in _OFFERED and not extra and q > 0:
            ranked.append((-q, index, _OFFERED[media.lower()]))
    if not ranked:
        raise ApiError(406, "PGRST107", f"None of these media types are available: {value.strip()}")
    return min(ranked)[2]


def parse_range(value: str | None) -> tuple[int, int | None] | None:
    """`Range: 0-24` (items) → (offset, limit or None for an open range)."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(?:items=)?(\d+)-(\d*)\s*", value)
    if match is None:
        return None
    low = int(match.group(1))
    if match.group(2) == "":
        return low, None
    high = int(match.group(2))
    if high < low:
        raise ApiError(416, "PGRST103", "Requested range not satisfiable",
                       "The lower boundary must be lower than or equal to the upper boundary in the Range header.")
    return low, high - low + 1


def parse_payload(body: bytes, columns: list[str] | None) -> tuple[list[dict], list[str], bool]:
    """A JSON object or array of objects → (rows, the columns written, was_array)."""
    try:
        doc = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if doc is None and not (body.strip() == b"null"):
        raise ApiError(400, "PGRST102", "Empty or invalid json")
    if isinstance(doc, dict):
        rows, was_array = [doc], False
    elif isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
        rows, was_array = doc, True
    else:
        raise ApiError(400, "PGRST102", "Empty or invalid json")
    if columns is not None:
        return rows, columns, was_array
    keys = list(rows[0]) if rows else []
    if any(set(r) != set(keys) for r in rows[1:]):
        raise ApiError(400, "PGRST102", "All object keys must match")
    return rows, keys, was_array
