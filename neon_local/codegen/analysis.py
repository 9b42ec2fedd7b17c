"""What a statement touches, from its parse tree (pglast): tables read and written, and which tables sit on
the nullable side of an outer join (their columns may come back null even where the column is NOT NULL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from pglast import ast, parse_sql
from pglast.enums import JoinType
from pglast.parser import ParseError

from neon_local.codegen.annotations import NamedStatement
from neon_local.codegen.errors import CodegenError

_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


@dataclass(frozen=True)
class Tables:
    read: frozenset[str]  # relation names, quoted for to_regclass() (schema-qualified where the SQL is)
    written: frozenset[str]
    outer_nullable: frozenset[str]


def analyse(statement: NamedStatement) -> Tables:
    try:
        parsed = parse_sql(statement.sql)
    except ParseError as exc:
        raise CodegenError(statement.path, statement.line_of(exc.args[1] + 1), f"{statement.name}: {exc.args[0]}") from None
    if len(parsed) != 1:
        line = statement.line_of(cast(int, parsed[1].stmt_location) + 1) if len(parsed) > 1 else statement.line
        raise CodegenError(statement.path, line, f"{statement.name} holds {len(parsed)} statements; give each its own "
                                                 "`-- name:` comment.")
    walk = _Walk()
    walk.visit(parsed[0].stmt, nullable=False)
    return Tables(frozenset(walk.read - walk.ctes), frozenset(walk.written), frozenset(walk.nullable - walk.ctes))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _name(range_var: ast.RangeVar) -> str:
    """The relation as to_regclass() reads it: each part quoted, as the parser already folded case."""
    relation = _quote(cast(str, range_var.relname))  # the parser always names the relation
    return f"{_quote(range_var.schemaname)}.{relation}" if range_var.schemaname else relation


class _Walk:
    def __init__(self) -> None:
        self.read: set[str] = set()
        self.written: set[str] = set()
        self.nullable: set[str] = set()
        self.ctes: set[str] = set()
        self._cte_tables: dict[str, set[str]] = {}

    def visit(self, node, nullable: bool) -> None:
        if isinstance(node, (list, tuple)):
            for item in node:
                self.visit(item, nullable)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.CommonTableExpr):
            inner = _Walk()
            inner.visit(node.ctequery, False)
            self.read |= inner.read
            self.written |= inner.written
            self.nullable |= inner.nullable
            name = _quote(cast(str, node.ctename))  # a CTE always has a name
            self._cte_tables[name] = inner.read | inner.written
            self.ctes.add(name)
            return
        if isinstance(node, _WRITES):
            self.written.add(_name(cast(ast.RangeVar, node.relation)))  # INSERT/UPDATE/DELETE name their target
        if isinstance(node, ast.RangeVar):
            name = _name(node)
            self.read.add(name)
            if nullable:
                self.nullable.add(name)
                self.nullable |= self._cte_tables.get(name, set())
            return
        if isinstance(node, ast.JoinExpr):
            kind = node.jointype
            self.visit(node.larg, nullable or kind in (JoinType.JOIN_RIGHT, JoinType.JOIN_FULL))
            self.visit(node.rarg, nullable or kind in (JoinType.JOIN_LEFT, JoinType.JOIN_FULL))
            self.visit(node.quals, nullable)
            return
        # the WITH clause first, so that a CTE named in FROM is known as one
        slots = node.__slots__  # type: ignore[attr-defined]  # every pglast node has them; its stubs do not say so
        for slot in sorted(slots, key=lambda slot: slot != "withClause"):
            if isinstance(node, _WRITES) and slot == "relation":
                continue
            self.visit(getattr(node, slot), nullable)
