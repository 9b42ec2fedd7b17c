"""Statement fingerprints with pglast (libpg_query): one hash for `id = 1`, `id = $1` and `IN (1, 2, 3)`.

Parsing costs tens of microseconds, so results are cached by exact text in a bounded LRU: the hot
path never parses the same text twice. Text longer than MAX_PARSE_CHARS is not parsed at all.

A client that writes its values into the text (`pgbench -M simple`, psql) sends a new text each
time, so a second cache is keyed by the text's *shape*: a plain DML statement with its numeric and
quoted-string literals replaced by `?`. The fingerprint ignores every literal of such a statement
(libpg_query hashes an A_Const by its node type alone), so texts of one shape share one fingerprint
and a regex pass (a few µs) stands in for a parse. Only texts whose lexing that regex gets right
take this path: no comments, dollar quotes, parameters or backslashes, one statement, and no
`float(p)` (whose precision picks the type, real or double precision, so it is not a mere literal).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import NamedTuple

from pglast import ast, parser

__all__ = ["MAX_PARSE_CHARS", "Fingerprinter", "ParsedStatement", "StatementError", "shape"]

MAX_PARSE_CHARS = 100_000
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z]+)", re.S)
_TRANSACTION_WORDS = {"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"}
CACHE_SIZE = 4096
SHAPES_SIZE = 4096
# What a shape may start with: a DML statement, whose numbers and strings are all A_Const literals.
_DML = re.compile(r"\s*(?:select|insert|update|delete|with|values|table)\b", re.I)
# A quoted identifier (kept), a string or a number (each replaced by `?`). A number is not part of a
# name or of another number (`t1`, `1.2.3`; hex `0x1F` stays as written). Each branch starts with a
# plain character (the lookbehinds come second) so that the engine skips other characters fast.
_QUOTED_NAME = r'"(?:[^"]|"")*"'
_LITERALS = (r"'[^']*(?:''[^']*)*'"
             r"|\d(?<![\w$.]\d)[\d_]*(?:\.[\d_]*)?(?:[eE][+-]?\d+)?(?![\w$.])"
             r"|\.(?<![\w$.]\.)\d[\d_]*(?:[eE][+-]?\d+)?(?![\w$.])")
_LITERAL = re.compile(_LITERALS)
_LITERAL_OR_NAME = re.compile(f"({_QUOTED_NAME})|{_LITERALS}")


class ParsedStatement(NamedTuple):  # a tuple: made for every new text on the hot path, cheaper than a dataclass
    fingerprint: str
    text: str  # the statement as sent, one of a `;`-joined string's parts
    transaction_control: bool = False  # BEGIN, COMMIT, SAVEPOINT...: no data, always allowed

    def normalized(self) -> str:
        """The statement with its literals as $n, for people to review (computed only when recorded)."""
        try:
            return " ".join(parser.normalize(self.text).split())
        except parser.ParseError:
            return self.text


class StatementError(Exception):
    """Text the allow-list cannot check: `code` and `message` are what Postgres would say, or ours."""

    def __init__(self, code: str, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.position = code, message, position


class Fingerprinter:
    """`statements(text)`: the fingerprinted statements of a query string, or StatementError."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._cache: OrderedDict[str, tuple[ParsedStatement, ...] | StatementError] = OrderedDict()
        self._shapes: dict[str, str] = {}  # shape -> fingerprint; the oldest shape goes first

    def statements(self, text: str) -> tuple[ParsedStatement, ...]:
        found = self._cache.get(text)
        if found is None:
            key = shape(text)
            fingerprint = self._shapes.get(key) if key is not None else None
            if fingerprint is not None:  # a new text of a known shape: no parse, and no text cached (one-off values)
                return (ParsedStatement(fingerprint, text),)
            found = self._parse(text)
            self._cache[text] = found
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
            if key is not None and isinstance(found, tuple) and len(found) == 1:
                self._shapes[key] = found[0].fingerprint
                if len(self._shapes) > SHAPES_SIZE:
                    del self._shapes[next(iter(self._shapes))]
        else:
            self._cache.move_to_end(text)
        if isinstance(found, StatementError):
            raise found
        return found

    @staticmethod
    def _parse(text: str) -> tuple[ParsedStatement, ...] | StatementError:
        if len(text) > MAX_PARSE_CHARS:
            return StatementError("54000", f"statement is too long for the allow-list check ({len(text)} characters, "
                                           f"at most {MAX_PARSE_CHARS}); split it, or move it into a function")
        try:
            body = text.rstrip().rstrip(";")  # no `;` left: at most one statement, no need to split
            parts = parser.split(text) if ";" in body else (text,) if body.strip() else ()
            return tuple(ParsedStatement(parser.fingerprint(part), part, _is_transaction_control(part)) for part in parts)
        except parser.ParseError as exc:  # Postgres' own syntax error text, with its 1-based position
            position = exc.args[1] + 1 if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
            return StatementError("42601", exc.args[0], position)


def shape(text: str) -> str | None:
    """A plain DML statement with its literals as `?` (`select a from t where id = ?`), or None when the
    text is not one that the literal regex lexes exactly as Postgres does."""
    if len(text) > MAX_PARSE_CHARS or not _DML.match(text):
        return None
    # What the literal regex cannot lex as Postgres does, or a number that is more than a value: the parser decides.
    if "$" in text or "\\" in text or "--" in text or "/*" in text or ("(" in text and "float" in text.lower()):
        return None
    key = _LITERAL.sub("?", text) if '"' not in text else _LITERAL_OR_NAME.sub(lambda m: m[1] or "?", text)
    if "'" in key or key.count('"') % 2 or ";" in key.rstrip().rstrip(";"):
        return None  # an unterminated quote, or more than one statement: the parser decides
    return key


def _is_transaction_control(statement: str) -> bool:
    # The cheap look at the first word only picks candidates; the parse tree decides (comments nest in SQL).
    first = _FIRST_WORD.match(statement)
    if first is None or first[1].lower() not in _TRANSACTION_WORDS:
        return False
    return isinstance(parser.parse_sql(statement)[0].stmt, ast.TransactionStmt)
