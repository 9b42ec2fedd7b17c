"""Statement fingerprints with pglast (libpg_query): one hash for `id = 1`, `id = $1` and `IN (1, 2, 3)`.

Parsing costs tens of microseconds, so results are cached by exact text in a bounded LRU: the hot
path never parses the same text twice. Text longer than MAX_PARSE_CHARS is not parsed at all.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from pglast import ast, parser

__all__ = ["MAX_PARSE_CHARS", "Fingerprinter", "ParsedStatement", "StatementError"]

MAX_PARSE_CHARS = 100_000
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z]+)", re.S)
_TRANSACTION_WORDS = {"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"}
CACHE_SIZE = 4096


@dataclass(frozen=True)
class ParsedStatement:
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

    def statements(self, text: str) -> tuple[ParsedStatement, ...]:
        found = self._cache.get(text)
        if found is None:
            found = self._parse(text)
            self._cache[text] = found
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
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


def _is_transaction_control(statement: str) -> bool:
    # The cheap look at the first word only picks candidates; the parse tree decides (comments nest in SQL).
    first = _FIRST_WORD.match(statement)
    if first is None or first[1].lower() not in _TRANSACTION_WORDS:
        return False
    return isinstance(parser.parse_sql(statement)[0].stmt, ast.TransactionStmt)
