"""The request model → one main query returning PostgREST's single row
(total_result_set, page_total, body, response_headers, response_status).

Every identifier goes through `ident` (double-quoted, quotes doubled) and every value from the URL or the
body is a bind parameter (`$n`, text). The only other text spliced in comes from the catalog (function
argument types, already quoted by format_type) or from fixed tables here (operators, cast type names).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import cast

from neon_local.data_api.errors import ApiError
from neon_local.data_api.grammar import (
    FTS,
    IS_VALUES,
    OPERATORS,
    Embed,
    Field,
    Filter,
    Logic,
    Node,
    OrderTerm,
    QueryParams,
    SelectColumn,
)
from neon_local.data_api.schema import Function, Relationship, Schema, Table

__all__ = ["Builder", "Params", "Plan", "array_literal", "env_query", "ident"]

_CAST_ALIASES = {
    "int": "int4", "integer": "int4", "bigint": "int8", "smallint": "int2", "float": "float8",
    "double precision": "float8", "real": "float4", "boolean": "bool", "decimal": "numeric",
    "character varying": "varchar", "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp", "time with time zone": "timetz",
    "time without time zone": "time", "character": "bpchar", "char": "bpchar",
}
_CAST_NAME = re.compile(r"[a-z_][a-z0-9_ ]*?(\[\])?\Z")


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def array_literal(values: list[str]) -> str:
    """A Postgres array literal with every element quoted, for `= ANY($n)`."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def cast_type(name: str) -> str:
    """A cast's type, quoted: `int` → "int4", `text[]` → "text"[]. Unknown names are left to Postgres."""
    lowered = " ".join(name.lower().split())
    if not _CAST_NAME.match(lowered):
        raise ApiError(400, "PGRST100", f'"failed to parse cast ({name})" (line 1, column 1)', "expecting a type name")
    array = lowered.endswith("[]")
    base = lowered[:-2].strip() if array else lowered
    return ident(_CAST_ALIASES.get(base, base)) + ("[]" if array else "")


class Params:
    def __init__(self) -> None:
        self.values: list[str | None] = []

    def add(self, value: str | None) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


@dataclass
class Plan:
    """A main query and what the response needs to know about it."""
    sql: str
    params: list
    read_only: bool
    singular: bool = False  # the body is one object (object+json, or a non-SETOF function)
    scalar: bool = False
    void: bool = False
    location_keys: tuple[str, ...] = ()  # the primary key the sixth column holds, for the Location header


_TAIL = (", nullif(pg_catalog.current_setting('response.headers', true), '') as response_headers"
         ", nullif(pg_catalog.current_setting('response.status', true), '') as response_status")


def env_query(settings: dict[str, str]) -> tuple[str, list[str | None]]:
    """`select set_config($1,$2,true), ...`: every name and value a parameter, as Neon's rest broker sends it."""
    params = Params()
    calls = [f"pg_catalog.set_config({params.add(k)}, {params.add(v)}, true)" for k, v in settings.items()]
    return "select " + (", ".join(calls) or "null"), params.values


@dataclass
class _Level:
    select: list[str]
    keys: list[str]
    from_sql: str
    where: list[str]
    group: list[str]
    order: list[str]
    limit: str | None
    offset: str | None

    def query(self, paged: bool = True, columns: list[str] | None = None) -> str:
        sql = f"select {', '.join(columns if columns is not None else self.select) or 'null'} from {self.from_sql}"
        if self.where:
            sql += " where " + " and ".join(self.where)
        if self.group:
            sql += " group by " + ", ".join(self.group)
        if paged:
            if self.order:
                sql += " order by " + ", ".join(self.order)
            if self.limit is not None:
                sql += f" limit {self.limit}"
            if self.offset is not None:
                sql += f" offset {self.offset}"
        return sql


class Builder:
    """Builds the main query for one request against one schema cache."""

    def __init__(self, schema: Schema, query: QueryParams, max_rows: int | None = None) -> None:
        self.schema = schema
        self.query = query
        self.max_rows = max_rows
        self.params = Params()
        self._aliases = 0
        self._used_paths: set[tuple[str, ...]] = {()}

    def _alias(self, prefix: str = "t") -> str:
        self._aliases += 1
        return f"pgrst_{prefix}{self._aliases}"

    # --- expressions --------------------------------------------------------------------------------

    def field_sql(self, alias: str, target: Field) -> str:
        sql = f"{alias}.{ident(target.name)}"
        for arrow, key in target.path:
            if re.fullmatch(r"-?\d+", key):
                sql = f"({sql} {arrow} {self.params.add(key)}::int4)"
            else:
                sql = f"({sql} {arrow} {self.params.add(key)}::text)"
        return sql

    def column_sql(self, alias: str, column: SelectColumn) -> str:
        expr = "*" if column.field is None else self.field_sql(alias, column.field)
        if column.cast:
            expr = f"cast({expr} as {cast_type(column.cast)})"
        if column.aggregate:
            expr = f"pg_catalog.{column.aggregate}({expr})"
            if column.aggregate_cast:
                expr = f"cast({expr} as {cast_type(column.aggregate_cast)})"
        return expr

    def condition(self, alias: str, table: Table | None, item, embeds: dict[str, _EmbedSql]) -> str:
        if isinstance(item, Logic):
            joined = f" {item.op} ".join(self.condition(alias, table, c, embeds) for c in item.children)
            sql = f"({joined})"
            return f"not {sql}" if item.negate else sql
        flt: Filter = item
        if not flt.field.path and flt.field.name in embeds and flt.op == "is" and flt.value in ("null", "not_null"):
            present = (flt.value == "null") == flt.negate
            return embeds[flt.field.name].present if present else f"not ({embeds[flt.field.name].present})"
        if not flt.field.path and flt.field.name in embeds:
            raise ApiError(400, "PGRST120", f"Bad operator on the '{flt.field.name}' embedded resource",
                           "Only is null or not is null filters are allowed on embedded resources")
        expr = self.field_sql(alias, flt.field)
        sql = self._operator(expr, flt, table)
        return f"not ({sql})" if flt.negate else sql

    def _operator(self, expr: str, flt: Filter, table: Table | None) -> str:
        op = flt.op
        if op == "is":
            return f"{expr} is {IS_VALUES[cast(str, flt.value)]}"
        if op == "in":
            return f"{expr} = any({self.params.add(array_literal(cast(list[str], flt.value)))})"
        if op in FTS:
            config = f"{self.params.add(flt.config)}::regconfig, " if flt.config else ""
            column = table.columns.get(flt.field.name) if table is not None and not flt.field.path else None
            vector = expr if column is not None and column.base == "tsvector" else f"pg_catalog.to_tsvector({config}{expr})"
            return f"{vector} @@ pg_catalog.{OPERATORS[op]}({config}{self.params.add(cast(str, flt.value))})"
        sql_op = OPERATORS[op]
        if flt.quantifier:  # the grammar gives a list of values with a quantifier, else one value
            items = cast(list[str], flt.value)
            values = [v.replace("*", "%") for v in items] if op in ("like", "ilike") else items
            return f"{expr} {sql_op} {flt.quantifier}({self.params.add(array_literal(values))})"
        value = cast(str, flt.value)
        value = value.replace("*", "%") if op in ("like", "ilike") else value
        return f"{expr} {sql_op} {self.params.add(value)}"

    def order_sql(self, alias: str, term: OrderTerm, embeds: dict[str, _EmbedSql]) -> str:
        if term.relation is not None:
            embed = embeds.get(term.relation)
            if embed is None:
                raise ApiError(400, "PGRST108", f"'{term.relation}' is not an embedded resource in this request",
                               None, f"Verify that '{term.relation}' is included in the 'select' query parameter.")
            if not embed.relationship.to_one:
                raise ApiError(400, "PGRST118", f"A related order on '{term.relation}' is not possible",
                               f"'{term.relation}' is not a to-one relationship")
            expr = embed.order_expr(self, term.field)
        else:
            expr = self.field_sql(alias, term.field)
        sql = expr + (" desc" if term.desc else " asc")
        if term.nulls:
            sql += f" nulls {term.nulls}"
        return sql

    # --- one level of select + embeds ----------------------------------------------------------------

    def level(self, table: Table | None, items: list, path: tuple[str, ...], alias: str, from_sql: str,
              correlation: list[str], apply_filters: bool = True) -> _Level:
        node = self.query.nodes.get(path, Node()) if apply_filters or path else Node()
        select, keys, group, laterals = [], [], [], []
        embeds: dict[str, _EmbedSql] = {}
        has_aggregate = any(isinstance(i, SelectColumn) and i.aggregate for i in items)
        for item in items:
            if isinstance(item, Embed):
                if table is None:
                    raise ApiError(400, "PGRST200", f"Could not find a relationship between the result and "
                                   f"'{item.name}' in the schema cache")
                embed = _EmbedSql(self, table, alias, item, path)
                embeds[item.key] = embed
                if item.name not in embeds:
                    embeds.setdefault(item.name, embed)
                laterals.append(embed.lateral)
                for expr, key in embed.columns():
                    select.append(f"{expr} as {ident(key)}")
                    keys.append(key)
            elif item.field is None and item.aggregate is None:
                select.append(f"{alias}.*")
                keys += list(table.columns) if table is not None else ["*"]
            else:
                expr = self.column_sql(alias, item)
                select.append(f"{expr} as {ident(item.key)}")
                keys.append(item.key)
                if has_aggregate and not item.aggregate:
                    group.append(expr)
        where = list(correlation)
        for embed in dict.fromkeys(embeds.values()):
            if embed.item.inner:
                where.append(embed.present)
        for item in node.filters:
            where.append(self.condition(alias, table, item, embeds))
        order = [self.order_sql(alias, term, embeds) for term in node.order]
        limit = node.limit
        if path == () and self.max_rows is not None:
            limit = self.max_rows if limit is None else min(limit, self.max_rows)
        return _Level(select, keys, " ".join([from_sql, *laterals]), where, group, order,
                      None if limit is None else self.params.add(str(limit)),
                      None if not node.offset else self.params.add(str(node.offset)))

    def check_paths(self) -> None:
        for path in self.query.nodes:
            if path not in self._used_paths:
                name = path[-1]
                raise ApiError(400, "PGRST108", f"'{name}' is not an embedded resource in this request", None,
                               f"Verify that '{name}' is included in the 'select' query parameter.")

    # --- whole statements ------------------------------------------------------------------------------

    def _wrap(self, source_cte: str, count: bool, singular: bool, count_sql: str | None) -> str:
        body = ("coalesce((pg_catalog.json_agg(pgrst_t) -> 0)::text, '')" if singular
                else "coalesce(pg_catalog.json_agg(pgrst_t), '[]')::text")
        total = count_sql if count and count_sql else "null::bigint"
        return (f"with {source_cte} select {total} as total_result_set, pg_catalog.count(pgrst_t) as page_total, "
                f"{body} as body{_TAIL} from (select * from pgrst_source) pgrst_t")

    def read(self, table: Table, count: bool, singular: bool) -> Plan:
        alias = "pgrst_t0"
        level = self.level(table, self.query.select, (), alias, f"{qualified(table.schema, table.name)} as {alias}", [])
        self.check_paths()
        count_sql = f"(select pg_catalog.count(*) from ({level.query(paged=False, columns=['1'])}) pgrst_c)"
        sql = self._wrap(f"pgrst_source as ({level.query()})", count, singular, count_sql)
        return Plan(sql, self.params.values, True, singular)

    def write(self, table: Table, method: str, rows: list[dict] | None, columns: list[str], representation: bool,
              singular: bool, resolution: str | None = None, missing_default: bool = False, location: bool = False) -> Plan:
        """`location`: also return the primary key of a single inserted row (a sixth column, JSON text of the
        values in column order), for the Location header PostgREST sends with return=headers-only."""
        target = qualified(table.schema, table.name)
        alias = "pgrst_t0"
        for name in columns:
            if name not in table.columns:
                raise ApiError(400, "PGRST204", f"Could not find the '{name}' column of '{table.name}' in the schema cache")
        if method == "POST" and not rows:
            stmt = None
        elif method == "POST":
            cols = ", ".join(ident(c) for c in columns)
            if columns and missing_default:  # a key a row lacks takes the column's DEFAULT, not null
                values = []
                for row in cast(list, rows):  # not empty: see above
                    record = f"pg_catalog.json_populate_record(null::{target}, {self.params.add(_json_text(row))}::json)"
                    values.append("(" + ", ".join(f"({record}).{ident(c)}" if c in row else "default" for c in columns) + ")")
                stmt = f"insert into {target} as {alias} ({cols}) values " + ", ".join(values)
            elif columns:
                payload = self.params.add(_json_text(rows))
                stmt = (f"insert into {target} as {alias} ({cols}) select {cols} from "
                        f"pg_catalog.json_populate_recordset(null::{target}, {payload}::json)")
            else:  # every row took only defaults
                stmt = f"insert into {target} as {alias} default values"
            if resolution:
                conflict = self.query.on_conflict or list(table.pk)
                if not conflict:
                    raise ApiError(400, "PGRST100", f"'{table.name}' has no primary key: give on_conflict=columns "
                                   "to upsert")
                stmt += f" on conflict ({', '.join(ident(c) for c in conflict)})"
                if resolution == "merge-duplicates" and columns:
                    stmt += " do update set " + ", ".join(f"{ident(c)} = excluded.{ident(c)}" for c in columns)
                else:
                    stmt += " do nothing"
        elif method == "PATCH":
            if not columns:
                stmt = None
            else:
                payload = self.params.add(_json_text(cast(list, rows)[0]))
                where = [self.condition(alias, table, f, {}) for f in self.query.root.filters]
                stmt = (f"update {target} as {alias} set "
                        + ", ".join(f"{ident(c)} = pgrst_body.{ident(c)}" for c in columns)
                        + f" from pg_catalog.json_populate_record(null::{target}, {payload}::json) as pgrst_body"
                        + (" where " + " and ".join(where) if where else ""))
        else:  # DELETE
            where = [self.condition(alias, table, f, {}) for f in self.query.root.filters]
            stmt = f"delete from {target} as {alias}" + (" where " + " and ".join(where) if where else "")
        keys = [c for c in table.columns if c in table.pk] if location and method == "POST" else []
        if stmt is None:  # PATCH with {}: nothing to update
            write_cte = f"pgrst_write as (select * from {target} as {alias} where false)"
        else:
            returned = alias + ".*" if representation else ", ".join(f"{alias}.{ident(c)}" for c in keys) or "1"
            write_cte = f"pgrst_write as ({stmt} returning {returned})"
        if representation:
            level = self.level(table, self.query.select, (), alias, f"pgrst_write as {alias}", [], apply_filters=False)
            self.check_paths()
            sql = self._wrap(f"{write_cte}, pgrst_source as ({level.query()})", False, singular, None)
            return Plan(sql, self.params.values, False, singular)
        located = ""
        if keys:  # the values as json_each_text spells them, as PostgREST's Location shows them
            key_values = ", ".join(f"pg_catalog.min(pg_catalog.to_jsonb({ident(c)}) #>> '{{}}')" for c in keys)
            located = (f", case when pg_catalog.count(*) = 1 then pg_catalog.json_build_array({key_values})::text end"
                       " as location")
        sql = (f"with {write_cte} select null::bigint as total_result_set, pg_catalog.count(*) as page_total, "
               f"'' as body{_TAIL}{located} from pgrst_write")
        return Plan(sql, self.params.values, False, singular, location_keys=tuple(keys) if located else ())

    def call(self, function: Function, args: dict | None, raw_json: str | None, read_only: bool, count: bool,
             singular: bool) -> Plan:
        name = qualified(function.schema, function.name)
        if raw_json is not None:
            call_from, call = "", f"{name}({self.params.add(raw_json)}::json)"
        elif args:
            types = {a.name: a.type for a in function.inputs}
            defs = ", ".join(f"{ident(k)} {types[k]}" for k in args)
            call_from = f"pg_catalog.json_to_record({self.params.add(_json_text(args))}::json) as pgrst_args({defs})"
            call = f"{name}(" + ", ".join(f"{ident(k)} := pgrst_args.{ident(k)}" for k in args) + ")"
        else:
            call_from, call = "", f"{name}()"
        lead = f"{call_from} cross join lateral " if call_from else ""
        if function.scalar or function.void:
            if function.returns_set:
                source = f"select pgrst_scalar from {lead}{call} as pgrst_scalar"
            else:
                source = f"select {call} as pgrst_scalar" + (f" from {call_from}" if call_from else "")
            self.check_paths()
            body = ("coalesce(pg_catalog.json_agg(pgrst_t.pgrst_scalar), '[]')::text" if function.returns_set
                    else "pg_catalog.to_json((pg_catalog.array_agg(pgrst_t.pgrst_scalar))[1])::text")
            if function.void:
                body = "''"
            sql = (f"with pgrst_source as ({source}) select null::bigint as total_result_set, "
                   f"pg_catalog.count(*) as page_total, {body} as body{_TAIL} from pgrst_source pgrst_t")
            return Plan(sql, self.params.values, read_only, False, scalar=True, void=function.void)
        alias = "pgrst_t0"
        level = self.level(function.return_table, self.query.select, (), alias, f"{lead}{call} as {alias}", [])
        self.check_paths()
        count_sql = f"(select pg_catalog.count(*) from ({level.query(paged=False, columns=['1'])}) pgrst_c)"
        singular = singular or not function.returns_set
        sql = self._wrap(f"pgrst_source as ({level.query()})", count, singular, count_sql)
        return Plan(sql, self.params.values, read_only, singular)


class _EmbedSql:
    """One embedded resource: a LATERAL subquery joined to its parent, and how the parent selects from it."""

    def __init__(self, builder: Builder, parent: Table, parent_alias: str, item: Embed, parent_path: tuple[str, ...]) -> None:
        self.builder = builder
        self.item = item
        self.relationship: Relationship = builder.schema.relationship(parent, item.name, item.hint)
        rel = self.relationship
        path = (*parent_path, item.key)
        if path not in builder.query.nodes and (*parent_path, item.name) in builder.query.nodes:
            path = (*parent_path, item.name)
        builder._used_paths.add(path)
        self.alias = builder._alias("e")
        inner_alias = builder._alias("t")
        self.parent_alias, self.inner_alias = parent_alias, inner_alias
        target = rel.target
        target_sql = f"{qualified(target.schema, target.name)} as {inner_alias}"
        if rel.junction is not None:
            junction_alias = builder._alias("j")
            on = " and ".join(f"{junction_alias}.{ident(j)} = {inner_alias}.{ident(t)}" for j, t in rel.target_pairs)
            target_sql += f" join {qualified(rel.junction.schema, rel.junction.name)} as {junction_alias} on {on}"
            correlation = [f"{junction_alias}.{ident(j)} = {parent_alias}.{ident(s)}" for s, j in rel.source_pairs]
        else:
            correlation = [f"{inner_alias}.{ident(t)} = {parent_alias}.{ident(s)}" for s, t in rel.pairs]
        self.correlation = correlation
        level = builder.level(target, item.select, path, inner_alias, target_sql, correlation)
        self.keys = level.keys
        inner = level.query()
        if item.spread:
            if rel.to_one:
                cols = ", ".join(f"pgrst_e.{ident(k)}" for k in level.keys)
                self.lateral = (f"left join lateral (select {cols + ', ' if cols else ''}true as pgrst_hit from "
                                f"({inner}) pgrst_e) as {self.alias} on true")
            else:
                cols = ", ".join(f"pg_catalog.json_agg(pgrst_e.{ident(k)}) as {ident(k)}" for k in level.keys)
                self.lateral = (f"left join lateral (select {cols + ', ' if cols else ''}true as pgrst_hit from "
                                f"({inner}) pgrst_e having pg_catalog.count(*) > 0) as {self.alias} on true")
            self.present = f"{self.alias}.pgrst_hit is not null"
        else:
            agg = "pg_catalog.row_to_json(pgrst_e)" if rel.to_one else "pg_catalog.json_agg(pgrst_e)"
            self.lateral = f"left join lateral (select {agg} as body from ({inner}) pgrst_e) as {self.alias} on true"
            self.present = f"{self.alias}.body is not null"

    def columns(self) -> list[tuple[str, str]]:
        rel, item = self.relationship, self.item
        if item.spread:
            if rel.to_one:
                return [(f"{self.alias}.{ident(k)}", k) for k in self.keys]
            return [(f"coalesce({self.alias}.{ident(k)}, '[]')", k) for k in self.keys]
        if not item.select:
            return []  # an empty embed only filters
        if rel.to_one:
            return [(f"{self.alias}.body", item.key)]
        return [(f"coalesce({self.alias}.body, '[]')", item.key)]

    def order_expr(self, builder: Builder, target: Field) -> str:
        table = self.relationship.target
        inner = builder._alias("o")
        on = " and ".join(c.replace(self.inner_alias, inner) for c in self.correlation)
        return (f"(select {builder.field_sql(inner, target)} from {qualified(table.schema, table.name)} as {inner}"
                f" where {on})")


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
