"""sqlc-style annotated SQL files: `-- name: ListTodos :many` heads each statement.

Parameters are named `@task` or `sqlc.arg(task)` in the text (numbered $1, $2... in order of first use;
`sqlc.narg(task)` also accepts null),
or written `$1`, `$2` with one `-- param: name` line per number. `-- nonnull: col, col` marks result
columns Postgres cannot prove non-null (expressions, aggregates) as never null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from neon_local.codegen.errors import CodegenError

KINDS = ("many", "one", "exec", "execrows")
_NAME = re.compile(r"--\s*name:\s*(\S+)(?:\s+:(\S+))?\s*$")
_OPTION = re.compile(r"--\s*(param|nonnull):\s*(.*?)\s*$")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PASCAL = re.compile(r"[A-Z][A-Za-z0-9]*\Z")
# Things a parameter marker must not be found inside: quoted text, quoted names, comments, dollar quotes.
_SKIP = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|(\$[A-Za-z_]*\$).*?\1", re.S)
_MARKER = re.compile(r"sqlc\.(n?)arg\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)|(?<![\w@])@([A-Za-z_][A-Za-z0-9_]*)|\$(\d+)")


@dataclass(frozen=True)
class NamedStatement:
    name: str  # PascalCase, as annotated
    kind: str  # many | one | exec | execrows
    sql: str  # with $1, $2 ... in place of named parameters
    params: tuple[str, ...]  # the name of $1, $2, ...
    nullable_params: frozenset[str]  # those named with sqlc.narg()
    nonnull: frozenset[str]
    path: Path
    line: int  # of the `-- name:` comment
    body_line: int  # of the SQL's first line

    def line_of(self, position: int) -> int:
        """The file line of a 1-based character position in `sql` (Postgres' error position)."""
        return self.body_line + self.sql.count("\n", 0, max(position - 1, 0))


def read_queries(folder: Path) -> list[NamedStatement]:
    """Every annotated statement in folder/*.sql (sorted by file name), names unique across files."""
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise CodegenError(folder, 0, "no .sql files here; write queries like `-- name: ListTodos :many` + SQL.")
    statements: list[NamedStatement] = []
    seen: dict[str, NamedStatement] = {}
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise CodegenError(path, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
        for statement in parse_file(path, text):
            if statement.name in seen:
                first = seen[statement.name]
                raise CodegenError(path, statement.line, f"the name {statement.name} is already used at {first.path}:{first.line}.")
            seen[statement.name] = statement
            statements.append(statement)
    return statements


def parse_file(path: Path, text: str) -> list[NamedStatement]:
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if _NAME.match(line.strip())]
    before = "\n".join(lines[: heads[0]] if heads else lines)
    if _has_sql(before):
        line = next(i for i, text in enumerate(lines) if _has_sql(text)) + 1
        raise CodegenError(path, line, "a statement without a `-- name: Name :kind` comment above it.")
    ends = [*heads[1:], len(lines)]
    return [_statement(path, lines[start:end], start + 1) for start, end in zip(heads, ends)]


def _has_sql(text: str) -> bool:
    return bool(_SKIP.sub(" ", text).strip(" \t\n;"))


def _statement(path: Path, lines: list[str], line: int) -> NamedStatement:
    name, kind = cast(re.Match[str], _NAME.match(lines[0].strip())).groups()  # the caller split on this line
    if not _PASCAL.match(name):
        raise CodegenError(path, line, f"name {name!r} must be PascalCase letters and digits, like ListTodos.")
    if kind not in KINDS:
        raise CodegenError(path, line, f"{name} needs a kind after its name: one of {', '.join(':' + k for k in KINDS)}.")
    declared: list[str] = []
    nonnull: set[str] = set()
    head = 1
    while head < len(lines) and (match := _OPTION.match(lines[head].strip())):
        option, value = match.groups()
        names = [v.strip() for v in value.split(",") if v.strip()]
        if option == "param":
            for param in names:
                if not _IDENTIFIER.match(param):
                    raise CodegenError(path, line + head, f"parameter name {param!r} is not an identifier.")
            declared.extend(names)
        else:
            nonnull.update(names)
        head += 1
    while head < len(lines) and not lines[head].strip():
        head += 1
    body = "\n".join(lines[head:]).rstrip()
    sql, params, nullable = _number_params(path, line + head, body, declared)
    if not _has_sql(sql):
        raise CodegenError(path, line, f"{name} has no SQL under its annotation.")
    return NamedStatement(name, kind, sql.rstrip().rstrip(";").rstrip(), tuple(params), nullable, frozenset(nonnull), path, line,
                     line + head)


def _number_params(path: Path, first_line: int, body: str, declared: list[str]) -> tuple[str, list[str], frozenset[str]]:
    """Replace @name and sqlc.arg(name) with $n; $n markers take their names from `-- param:` lines."""
    names: list[str] = []
    nullable: set[str] = set()
    numbered: set[int] = set()
    out: list[str] = []
    for chunk, skipped in _chunks(body):
        def replace(match: re.Match) -> str:
            named = match.group(2) or match.group(3)
            if named is None:
                numbered.add(int(match.group(4)))
                return match.group(0)
            if match.group(1):
                nullable.add(named)
            if named not in names:
                names.append(named)
            return f"${names.index(named) + 1}"
        out.append(chunk if skipped else _MARKER.sub(replace, chunk))
    line = first_line
    if names and numbered:
        raise CodegenError(path, line, "use either named parameters (@name) or $1 with `-- param:` lines, not both.")
    if numbered:
        if sorted(numbered) != list(range(1, len(numbered) + 1)) or len(declared) != len(numbered):
            raise CodegenError(path, line, f"$1..${max(numbered)} need one `-- param: name` line each, in order "
                                           f"({len(declared)} given).")
        names = declared
    elif declared:
        raise CodegenError(path, line, "`-- param:` names $1, $2...; this statement has none (named @params need no `-- param:`).")
    return "".join(out), names, frozenset(nullable)


def _chunks(text: str):
    """(piece, is_quoted_or_comment) in order, covering all of `text`."""
    position = 0
    for match in _SKIP.finditer(text):
        yield text[position:match.start()], False
        yield match.group(0), True
        position = match.end()
    yield text[position:], False
