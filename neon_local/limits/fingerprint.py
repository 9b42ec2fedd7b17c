"""Statement fingerprints with pglast (libpg_query): one hash for `id = 1`, `id = $1` and `IN (1, 2, 3)`.

Parsing costs tens of microseconds, so what a text parsed to is kept, by the text's UTF-8 bytes as
the wire carries them (a bounded FIFO): the hot path never parses the same text twice. Text longer
than MAX_PARSE_CHARS is not parsed at all.

A client that writes its values into the text (`pgbench -M simple`, psql) sends a new text each
time, so a plain DML statement's fingerprint is also kept by the text's *shape*: the text with its
literal values blanked out. The fingerprint ignores every literal of such a statement (libpg_query
hashes an A_Const by its node type alone), so all texts of one shape are one statement with one
fingerprint, as long as the blanking keeps everything else that the parse depends on. Two shapes
do that for different texts: `quick_shape` (digits as 0: a C-level translation, no regex) and
`lexed_shape` (strings and numbers lexed by a regex); the parser decides for the rest.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from typing import Generic, NamedTuple, TypeVar

from neon_local.errors import NeonLocalError

__all__ = ["MAX_PARSE_CHARS", "Fingerprinter", "ParsedStatement", "StatementError", "lexed_shape", "quick_shape"]

MAX_PARSE_CHARS = 100_000
CACHE_SIZE = 8192  # texts kept, and as many shapes of each kind
CACHE_BYTES = 16 << 20  # at most this much text kept in each, however long the texts (up to MAX_PARSE_CHARS)
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z]+)", re.S)
_TRANSACTION_WORDS = {"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"}
V = TypeVar("V")
_Parsed = tuple[tuple["ParsedStatement", ...], tuple[str, ...]]  # statements, and the fingerprints the list checks

# What a shape may start with: a DML statement, whose numbers and strings are all A_Const literals.
_DML = re.compile(rb"\s*(?:select|insert|update|delete|with|values|table)(?![\w\x80-\xff])", re.I)

# The quick shape: every digit 1-9 as 0, so `aid = 48213` and `aid = 77` differ only in length (a few keys per
# statement). Sound when every digit is part of a literal's value, which holds unless the text has one of these:
# a name with a digit (`t1`, `"a 1"`, `$1`, `x$1`, a `$q1$` tag), a number that runs into letters (`0x1F`, `1e5`,
# `1_000`, a trailing-junk error), `float(p)` (p picks real or double precision, or is out of range), a `[` (a type's
# array bounds, `int[3]`, are hashed), 10 digits in a row (where the grammar wants an integer, `varchar(3)`, one
# past int4 is a syntax error), an escape in a string (`E'\101'`, `U&'\0041'`, `U&'!0041' UESCAPE '!'`:
# its digits decide whether the string is valid), or a NUL (where libpg_query stops reading). Other digits in strings
# and comments are values or nothing; strings, comments and `;` need no lexing, since texts of one quick shape differ
# only in their digits and so lex alike. Every one of those conditions holds for a text exactly when it holds for its
# quick shape. The look for them (only when a text is parsed) translates the text into classes (a name's byte, a
# digit, one of `$"[\` or NUL) and searches for a few substrings: a regex would cost ~10 ns a byte.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NAME_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_" + bytes(range(0x80, 0x100))
_CLASSES = bytes.maketrans(_NAME_BYTES + b"0123456789" + b'$"[\\\0', b"a" * len(_NAME_BYTES) + b"0" * 10 + b"$" * 5)

# The lexed shape, for DML that the quick one leaves out (quoted names, `t1`, a UUID or a timestamp in a string):
# quoted names kept, a string as \x01, an integer of up to 9 digits (an int4) as NUL, a number that Postgres reads as
# numeric (`1.5`, `1e5`, 11 digits or more) as \x02, any other number as written (`0x1F`, `1_000`, 10 digits: int4 or
# not). Where the grammar wants an integer (`varchar(3)`) the others are syntax errors. A number is not part of a
# name or of another number (`t1`, `1.2.3`).
_NOT_NAME = rb"(?![\w\x80-\xff$.])"
_EXPONENT = rb"(?:[eE][+-]?\d+)"
_LEXEMES = re.compile(  # the lookahead first: most characters start none of the branches
    rb"""(?=["'\d.])(?:"""
    rb'("(?:[^"]|"")*")'
    rb"|('[^']*(?:''[^']*)*')"
    rb"|(\d(?<![\w\x80-\xff$.]\d)\d{0,8}" + _NOT_NAME + rb")"
    rb"|(\d(?<![\w\x80-\xff$.]\d)(?:\d{10,}|\d*\.\d*" + _EXPONENT + rb"?|\d*" + _EXPONENT + rb")" + _NOT_NAME
    + rb"|\.(?<![\w\x80-\xff$.]\.)\d+" + _EXPONENT + rb"?" + _NOT_NAME + rb"))")
_MARKERS = (b"", b"", b"\x01", b"\0", b"\x02")  # by the number of the group that matched
# What the literal regex cannot lex as Postgres does (`$`, `\`, comments), a marker, a string whose escapes its digits
# may make invalid (`U&'!0000' UESCAPE '!'`), or a number that is more than a value (`float(p)`, `int[3]`): the parser
# decides. Substring searches first, a regex only where they found a candidate (a regex costs ~10 ns a byte).
_UNLEXABLE = bytes.maketrans(b"$\\\0\x01\x02", b"$" * 5)
_FLOAT_PRECISION = re.compile(rb"float\s*\(")  # in the lowered text
_ARRAY_BOUNDS = re.compile(rb"\[\s*\d")


@functools.cache
def _pglast():
    """pglast's parser and ast modules, imported on the first parse: ~25 ms that a start with the allow-list off
    never pays (only texts not seen before are parsed, so the call costs nothing on the hot path)."""
    from pglast import ast, parser

    return parser, ast


class ParsedStatement(NamedTuple):  # a tuple: made for every new text on the hot path, cheaper than a dataclass
    fingerprint: str
    text: str  # the statement as sent, one of a `;`-joined string's parts
    transaction_control: bool = False  # BEGIN, COMMIT, SAVEPOINT...: no data, always allowed

    def normalized(self) -> str:
        """The statement with its literals as $n, for people to review (computed only when recorded)."""
        parser, _ = _pglast()
        try:
            return " ".join(parser.normalize(self.text).split())
        except parser.ParseError:
            return self.text


class StatementError(NeonLocalError):
    """Text the allow-list cannot check: `code` and `message` are what Postgres would say, or ours."""

    def __init__(self, code: str, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.position = code, message, position


class Fingerprinter:
    """`statements(text)`: the fingerprinted statements of a query string, or StatementError;
    `known(raw)`: the fingerprints to check in a text (UTF-8 bytes) whose text or shape was parsed before."""

    def __init__(self, size: int = CACHE_SIZE, budget: int = CACHE_BYTES) -> None:
        # What a text parsed to: its statements, and the fingerprints of those but transaction control.
        self._texts: _Fifo[_Parsed | StatementError] = _Fifo(size, budget)
        # The same for a shape's one DML statement (parsed from the first text of that shape), by each kind of shape.
        self._quick: _Fifo[_Parsed] = _Fifo(size, budget)
        self._lexed: _Fifo[_Parsed] = _Fifo(size, budget)

    def known(self, raw: bytes) -> tuple[str, ...] | None:
        """The fingerprints of `raw`'s statements but transaction control, or None when it needs `statements`."""
        found, _ = self._lookup(raw)
        return None if found is None or isinstance(found, StatementError) else found[1]

    def _lookup(self, raw: bytes) -> tuple[_Parsed | StatementError | None, bytes | None]:
        """What `raw`, or a text of its shape, parsed to before (None: nothing yet), and its lexed shape if that was
        needed. Only texts fit for a quick shape have theirs kept, and a text is fit exactly when its quick shape is:
        a hit needs no look at the text itself."""
        found = self._quick.get(raw.translate(_ZEROS)) or self._texts.get(raw)
        if found is not None:
            return found, None
        lexed = lexed_shape(raw)
        return (self._lexed.get(lexed) if lexed is not None else None), lexed

    def statements(self, text: str) -> tuple[ParsedStatement, ...]:
        raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate (refused by the parse) keeps texts apart too
        found, lexed = self._lookup(raw)
        if isinstance(found, StatementError):
            raise found
        if found is not None:
            statements = found[0]
            if len(statements) == 1 and statements[0].text != text:  # another text of its shape: no parse
                return (ParsedStatement(statements[0].fingerprint, text),)
            return statements
        parsed = self._parse(text)
        if isinstance(parsed, StatementError):
            if len(text) <= MAX_PARSE_CHARS:  # a longer one's error costs nothing to make again
                self._texts.add(raw, parsed)
            raise parsed
        kept = (parsed, tuple(s.fingerprint for s in parsed if not s.transaction_control))
        if len(parsed) == 1 and (quick := quick_shape(raw)) is not None:
            self._quick.add(quick, kept)
        elif len(parsed) == 1 and lexed is not None:
            self._lexed.add(lexed, kept)
        else:
            self._texts.add(raw, kept)
        return parsed

    @staticmethod
    def _parse(text: str) -> tuple[ParsedStatement, ...] | StatementError:
        if len(text) > MAX_PARSE_CHARS:
            return StatementError("54000", f"statement is too long for the allow-list check ({len(text)} characters, "
                                           f"at most {MAX_PARSE_CHARS}); split it, or move it into a function")
        parser, _ = _pglast()
        try:
            body = text.rstrip().rstrip(";")  # no `;` left: at most one statement, no need to split
            parts = parser.split(text) if ";" in body else (text,) if body.strip() else ()
            return tuple(ParsedStatement(parser.fingerprint(part), part, _is_transaction_control(part)) for part in parts)
        except parser.ParseError as exc:  # Postgres' own syntax error text, with its 1-based position
            position = exc.args[1] + 1 if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
            return StatementError("42601", exc.args[0], position)
        except UnicodeEncodeError as exc:  # a lone surrogate (what Python's json reads): Postgres' own refusal
            sequence = " ".join(f"0x{b:02x}" for b in exc.object[exc.start:exc.end].encode("utf-8", "surrogatepass"))
            return StatementError("22021", f'invalid byte sequence for encoding "UTF8": {sequence}')


class _Fifo(Generic[V]):
    """At most `size` entries and `budget` bytes of keys; the oldest entry goes first (a hit is one dict lookup)."""

    def __init__(self, size: int, budget: int) -> None:
        self._items: OrderedDict[bytes, V] = OrderedDict()
        self.get = self._items.get
        self._size, self._budget, self._bytes = size, budget, 0

    def add(self, key: bytes, value: V) -> None:
        self._items[key] = value
        self._bytes += len(key)
        while len(self._items) > self._size or self._bytes > self._budget:
            old, _ = self._items.popitem(last=False)
            self._bytes -= len(old)


def quick_shape(raw: bytes) -> bytes | None:
    """A plain DML statement (UTF-8) with every digit as 0, or None when its digits may be more than values."""
    if len(raw) > MAX_PARSE_CHARS or not _DML.match(raw):
        return None
    classes = raw.translate(_CLASSES)
    if (b"$" in classes or b"a0" in classes or b"0a" in classes or b"a&" in classes or b"0" * 10 in classes
            or b"float" in raw.lower()):
        return None
    return raw.translate(_ZEROS)


def lexed_shape(raw: bytes) -> bytes | None:
    """A plain DML statement (UTF-8) with its strings and numbers as markers, or None when the regex may lex it wrong."""
    if len(raw) > MAX_PARSE_CHARS or not _DML.match(raw):
        return None
    lowered = raw.lower()
    if (b"$" in raw.translate(_UNLEXABLE) or b"--" in raw or b"/*" in raw or b"u&" in lowered
            or (b"float" in lowered and _FLOAT_PRECISION.search(lowered)) or (b"[" in raw and _ARRAY_BOUNDS.search(raw))):
        return None
    key = _LEXEMES.sub(lambda m: m[1] or _MARKERS[m.lastindex or 0], raw)
    if b"'" in key or key.count(b'"') % 2 or b";" in key.rstrip().rstrip(b";"):
        return None  # an unterminated quote, or more than one statement: the parser decides
    return key


def _is_transaction_control(statement: str) -> bool:
    # The cheap look at the first word only picks candidates; the parse tree decides (comments nest in SQL).
    first = _FIRST_WORD.match(statement)
    if first is None or first[1].lower() not in _TRANSACTION_WORDS:
        return False
    parser, ast = _pglast()
    return isinstance(parser.parse_sql(statement)[0].stmt, ast.TransactionStmt)
