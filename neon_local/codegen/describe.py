"""Parse/Describe each statement on the running Postgres: parameter and result types, nullability from the catalog.

Types do not depend on the role, so codegen describes as the owner (the emulator's owner URL); statements are
only prepared (unnamed), never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from psycopg import Connection
from psycopg.pq import DiagnosticField, ExecStatus

from neon_local.codegen.analysis import Tables, analyse
from neon_local.codegen.annotations import NamedStatement
from neon_local.codegen.errors import CodegenError
from neon_local.codegen.typemap import PgType, param_type, result_type

_TYPES_SQL = """
select t.oid::int, t.typname, t.typtype, t.typelem::int, t.typbasetype::int,
       coalesce((select array_agg(e.enumlabel order by e.enumsortorder) from pg_enum e where e.enumtypid = t.oid), '{}')
from pg_type t where t.oid = any(%s::oid[])
"""
_NOT_NULL_SQL = """
select a.attrelid::int, a.attnum::int from pg_attribute a
where a.attnotnull and (a.attrelid, a.attnum) in (select * from unnest(%s::oid[], %s::int2[]))
"""
_RELATIONS_SQL = """
select n, c.oid::int, c.oid::regclass::text from unnest(%s::text[]) n join pg_class c on c.oid = to_regclass(n)
"""
# The relations under each view (views in views too), from the dependencies of its SELECT rule: a query on a view
# reads them, and a write through an updatable view writes them. Materialized views change only on REFRESH.
_UNDER_VIEWS_SQL = """
with recursive under(top, rel) as (
  select oid, oid from pg_class where oid = any(%s::oid[])
  union
  select under.top, d.refobjid from under
  join pg_class v on v.oid = under.rel and v.relkind = 'v'
  join pg_rewrite r on r.ev_class = v.oid and r.ev_type = '1'
  join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
                  and d.refclassid = 'pg_class'::regclass and d.refobjid <> v.oid
)
select top::int, rel::regclass::text from under join pg_class c on c.oid = under.rel
where rel <> top and c.relkind in ('r', 'p', 'v', 'm', 'f')
"""


@dataclass(frozen=True)
class ResultColumn:
    name: str
    type: str  # TypeScript
    nullable: bool


@dataclass(frozen=True)
class Described:
    statement: NamedStatement
    params: tuple[tuple[str, str], ...]  # (name, TypeScript type)
    columns: tuple[ResultColumn, ...]
    reads: frozenset[str]  # tables, as regclass text
    writes: frozenset[str]


@dataclass(frozen=True)
class _Raw:
    statement: NamedStatement
    tables: Tables
    param_oids: tuple[int, ...]
    fields: tuple[tuple[str, int, int, int], ...]  # name, type OID, table OID, column number


def describe_all(conn: Connection, statements: list[NamedStatement]) -> list[Described]:
    raws = [_describe(conn, statement) for statement in statements]
    types = _types(conn, {oid for raw in raws for oid in (*raw.param_oids, *(f[1] for f in raw.fields))})
    pairs = {(f[2], f[3]) for raw in raws for f in raw.fields if f[2]}
    not_null = {tuple(row) for row in conn.execute(_NOT_NULL_SQL, ([p[0] for p in pairs], [p[1] for p in pairs]))}
    names = {name for raw in raws for name in raw.tables.read | raw.tables.written | raw.tables.outer_nullable}
    relations = {name: (oid, text) for name, oid, text in conn.execute(_RELATIONS_SQL, (sorted(names),))}
    under: dict[int, set[str]] = {}
    for view, relation in conn.execute(_UNDER_VIEWS_SQL, (sorted({oid for oid, _ in relations.values()}),)):
        under.setdefault(view, set()).add(relation)
    return [_typed(raw, types, not_null, relations, under) for raw in raws]


def _describe(conn: Connection, statement: NamedStatement) -> _Raw:
    tables = analyse(statement)
    _check(statement, conn.pgconn.prepare(b"", statement.sql.encode()))
    result = conn.pgconn.describe_prepared(b"")
    _check(statement, result)
    if result.nparams != len(statement.params):
        raise CodegenError(statement.path, statement.line, f"{statement.name} has {result.nparams} parameters "
                                                           f"but names {len(statement.params)}.")
    fields = tuple((cast(bytes, result.fname(i)).decode(), result.ftype(i), result.ftable(i), result.ftablecol(i))
                   for i in range(result.nfields))
    return _Raw(statement, tables, tuple(result.param_type(i) for i in range(result.nparams)), fields)


def _check(statement: NamedStatement, result) -> None:
    if result.status != ExecStatus.COMMAND_OK:
        message = (result.error_field(DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
        position = int(result.error_field(DiagnosticField.STATEMENT_POSITION) or 0)
        line = statement.line_of(position) if position else statement.line
        raise CodegenError(statement.path, line, f"{statement.name} does not describe: {message}")


def _types(conn: Connection, oids: set[int]) -> dict[int, PgType]:
    """pg_type rows for `oids` and every type they lead to (array elements, domain bases)."""
    types: dict[int, PgType] = {}
    wanted = oids
    while wanted:
        for row in conn.execute(_TYPES_SQL, (sorted(wanted),)):
            types[row[0]] = PgType(row[0], row[1], row[2], row[3], row[4], tuple(row[5]))
        wanted = {t.element or t.base for t in types.values()} - set(types) - {0}
    return types


def _typed(raw: _Raw, types: dict[int, PgType], not_null: set, relations: dict[str, tuple[int, str]],
           under: dict[int, set[str]]) -> Described:
    statement = raw.statement
    outer = {relations[name][0] for name in raw.tables.outer_nullable if name in relations}
    names = [f[0] for f in raw.fields]
    for name in names:
        if names.count(name) > 1:
            raise CodegenError(statement.path, statement.line, f"{statement.name} returns two columns named "
                                                               f"{name!r}; give one an alias (as ...).")
    for name in sorted(statement.nonnull - set(names)):
        raise CodegenError(statement.path, statement.line, f"`-- nonnull: {name}`: {statement.name} returns no column {name!r}.")
    columns = tuple(
        ResultColumn(name, result_type(oid, types),
               name not in statement.nonnull and (not table or table in outer or (table, attnum) not in not_null))
        for name, oid, table, attnum in raw.fields)
    params = tuple((name, param_type(oid, types) + (" | null" if name in statement.nullable_params else ""))
                   for name, oid in zip(statement.params, raw.param_oids))

    def regclass(names: frozenset[str]) -> frozenset[str]:
        """The relations named, and those under the views among them."""
        found = [relations[name] for name in names if name in relations]
        return frozenset(text for oid, text in found).union(*(under.get(oid, set()) for oid, _ in found))

    return Described(statement, params, columns, regclass(raw.tables.read), regclass(raw.tables.written))
