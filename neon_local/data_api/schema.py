"""The schema cache: what the exposed schemas hold (tables, views, columns, keys, foreign keys, functions),
read in one query per database, and the relationship lookups that embedding needs.

Neon introspects once per endpoint as `authenticator` (role-independent); privileges and RLS are left to
Postgres. Lookups that fail raise PostgREST's PGRST2xx errors with its "Perhaps you meant" hints.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field

from neon_local.data_api.errors import ApiError

__all__ = ["INTROSPECTION_SQL", "Function", "Relationship", "Schema", "Table"]

# $1: the exposed schemas as a text[] literal. One row, one text column: the whole schema as JSON.
INTROSPECTION_SQL = r"""
with exposed as (select n.oid, n.nspname from pg_catalog.pg_namespace n where n.nspname = any($1::text[])),
rels as (
  select c.oid, s.nspname as schema, c.relname as name, c.relkind as kind,
    coalesce((select json_agg(json_build_object(
        'name', a.attname, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
        'base', bt.typname, 'nullable', not a.attnotnull,
        'default', a.atthasdef or a.attidentity <> '' or a.attgenerated <> '',
        'generated', a.attgenerated <> '' or a.attidentity = 'a')
        order by a.attnum)
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type t on t.oid = a.atttypid
      join pg_catalog.pg_type bt on bt.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end
      where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '[]') as columns,
    (select json_agg(a.attname order by k.ord) from pg_catalog.pg_constraint con,
        unnest(con.conkey) with ordinality k(num, ord)
        join pg_catalog.pg_attribute a on a.attnum = k.num
      where con.conrelid = c.oid and con.contype = 'p' and a.attrelid = c.oid) as pk,
    coalesce((select json_agg((select json_agg(a.attname) from unnest(con.conkey) k(num)
        join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum = k.num))
      from pg_catalog.pg_constraint con where con.conrelid = c.oid and con.contype in ('p', 'u')), '[]') as uniques
  from pg_catalog.pg_class c join exposed s on s.oid = c.relnamespace
  where c.relkind in ('r', 'v', 'm', 'f', 'p')
),
fks as (
  select con.conname as name, sn.nspname as schema, sc.relname as "table", tn.nspname as ref_schema,
    tc.relname as ref_table,
    (select json_agg(a.attname order by k.ord) from unnest(con.conkey) with ordinality k(num, ord)
       join pg_catalog.pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.num) as columns,
    (select json_agg(a.attname order by k.ord) from unnest(con.confkey) with ordinality k(num, ord)
       join pg_catalog.pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.num) as ref_columns
  from pg_catalog.pg_constraint con
  join pg_catalog.pg_class sc on sc.oid = con.conrelid join pg_catalog.pg_namespace sn on sn.oid = sc.relnamespace
  join pg_catalog.pg_class tc on tc.oid = con.confrelid join pg_catalog.pg_namespace tn on tn.oid = tc.relnamespace
  where con.contype = 'f' and (sn.nspname = any($1::text[]) or tn.nspname = any($1::text[]))
),
funcs as (
  select s.nspname as schema, p.proname as name, p.provolatile as volatility, p.proretset as returns_set,
    pg_catalog.format_type(p.prorettype, null) as return_type, rt.typtype as return_kind,
    (select rn.nspname from pg_catalog.pg_class rc join pg_catalog.pg_namespace rn on rn.oid = rc.relnamespace
      where rc.oid = rt.typrelid) as return_schema,
    (select rc.relname from pg_catalog.pg_class rc where rc.oid = rt.typrelid) as return_table,
    p.pronargs as nargs, p.pronargdefaults as ndefaults,
    coalesce((select json_agg(json_build_object('name', coalesce(p.proargnames[i], ''),
        'type', pg_catalog.format_type(t, null), 'mode', coalesce(p.proargmodes[i], 'i')) order by i)
      from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality x(t, i)), '[]') as args
  from pg_catalog.pg_proc p join exposed s on s.oid = p.pronamespace
  join pg_catalog.pg_type rt on rt.oid = p.prorettype
  where p.prokind = 'f'
),
view_columns as (
  -- Columns a view passes through under their own name (select t.col): enough to follow the base
  -- table's foreign keys from the view, as PostgREST does for the common case.
  select u.view_schema as schema, u.view_name as view, u.table_schema as base_schema, u.table_name as base_table,
    json_agg(u.column_name::text) as columns
  from information_schema.view_column_usage u
  join information_schema.columns c on c.table_schema = u.view_schema and c.table_name = u.view_name
    and c.column_name = u.column_name
  where u.view_schema = any($1::text[])
  group by 1, 2, 3, 4
)
select json_build_object(
  'views', coalesce((select json_agg(v) from view_columns v), '[]'),
  'tables', coalesce((select json_agg(r) from rels r), '[]'),
  'fks', coalesce((select json_agg(f) from fks f), '[]'),
  'functions', coalesce((select json_agg(f) from funcs f), '[]'))::text
"""


@dataclass
class ColumnInfo:
    name: str
    type: str
    base: str
    nullable: bool
    has_default: bool
    generated: bool


@dataclass
class Table:
    schema: str
    name: str
    kind: str
    columns: dict[str, ColumnInfo]
    pk: tuple[str, ...]
    uniques: list[frozenset[str]]


@dataclass(frozen=True)
class ForeignKey:
    name: str
    schema: str
    table: str
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class Relationship:
    """How `target` joins to `source`: pairs of (source column, target column), or through a junction table."""
    kind: str  # "many-to-one", "one-to-one", "one-to-many", "many-to-many"
    target: Table
    constraint: str
    pairs: tuple[tuple[str, str], ...] = ()
    junction: Table | None = None
    source_pairs: tuple[tuple[str, str], ...] = ()  # (source column, junction column)
    target_pairs: tuple[tuple[str, str], ...] = ()  # (junction column, target column)

    @property
    def to_one(self) -> bool:
        return self.kind in ("many-to-one", "one-to-one")

    def describe(self, source: Table) -> dict:
        cardinality = self.kind
        relationship = f"{self.constraint} using {source.schema}.{source.name}" + (
            f" and {self.junction.schema}.{self.junction.name}" if self.junction else "")
        return {"cardinality": cardinality, "embedding": f"{source.name} with {self.target.name}",
                "relationship": relationship}


@dataclass
class Argument:
    name: str
    type: str
    mode: str


@dataclass
class Function:
    schema: str
    name: str
    volatility: str
    returns_set: bool
    return_type: str
    return_kind: str  # typtype: b base, c composite, p pseudo (void, record), d domain, e enum ...
    return_table: Table | None
    args: list[Argument]
    required: int

    @property
    def inputs(self) -> list[Argument]:
        return [a for a in self.args if a.mode in ("i", "b", "v")]

    @property
    def void(self) -> bool:
        return self.return_type == "void"

    @property
    def scalar(self) -> bool:
        return self.return_table is None and self.return_kind != "c" and self.return_type != "record"


@dataclass
class Schema:
    schemas: tuple[str, ...]
    tables: dict[tuple[str, str], Table] = field(default_factory=dict)
    fks: list[ForeignKey] = field(default_factory=list)
    functions: dict[tuple[str, str], list[Function]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, schemas: tuple[str, ...], text: str) -> Schema:
        doc = json.loads(text)
        schema = cls(schemas)
        for t in doc["tables"]:
            columns = {c["name"]: ColumnInfo(c["name"], c["type"], c["base"], c["nullable"], c["default"], c["generated"])
                       for c in t["columns"]}
            schema.tables[(t["schema"], t["name"])] = Table(
                t["schema"], t["name"], t["kind"], columns, tuple(t["pk"] or ()),
                [frozenset(u) for u in t["uniques"] if u])
        schema.fks = [ForeignKey(f["name"], f["schema"], f["table"], tuple(f["columns"]), f["ref_schema"],
                                 f["ref_table"], tuple(f["ref_columns"])) for f in doc["fks"]]
        schema.fks += _view_keys(schema.fks, doc.get("views", []))
        for f in doc["functions"]:
            args = [Argument(a["name"], a["type"], a["mode"]) for a in f["args"]]
            inputs = [a for a in args if a.mode in ("i", "b", "v")]
            function = Function(f["schema"], f["name"], f["volatility"], f["returns_set"], f["return_type"],
                                f["return_kind"], schema.tables.get((f["return_schema"], f["return_table"]))
                                if f["return_table"] else None, args, len(inputs) - f["ndefaults"])
            schema.functions.setdefault((f["schema"], f["name"]), []).append(function)
        return schema

    # --- lookups ----------------------------------------------------------------------------------

    def table(self, schema: str, name: str) -> Table:
        found = self.tables.get((schema, name))
        if found is not None:
            return found
        names = [n for s, n in self.tables if s == schema]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"Perhaps you meant the table '{schema}.{close[0]}'" if close else None
        raise ApiError(404, "PGRST205", f"Could not find the table '{schema}.{name}' in the schema cache", None, hint)

    def function(self, schema: str, name: str, given: set[str], single_json: bool) -> Function:
        candidates = self.functions.get((schema, name), [])
        fits = [f for f in candidates if _fits(f, given)]
        if not fits and single_json:
            fits = [f for f in candidates if len(f.inputs) == 1 and f.inputs[0].name == ""
                    and f.inputs[0].type in ("json", "jsonb")]
        if len(fits) == 1:
            return fits[0]
        if len(fits) > 1:
            signatures = ", ".join(f"{schema}.{name}({', '.join(a.name + ' => ' + a.type for a in f.inputs)})"
                                   for f in fits)
            raise ApiError(300, "PGRST203", f"Could not choose the best candidate function between: {signatures}",
                           None, "Try renaming the parameters or the function itself in the database so "
                                 "function overloading can be resolved")
        if given:
            message = (f"Could not find the function {schema}.{name}({', '.join(sorted(given))}) in the schema cache")
            details = (f"Searched for the function {schema}.{name} with parameters {', '.join(sorted(given))} or with a "
                       "single unnamed json/jsonb parameter, but no matches were found in the schema cache.")
        else:
            message = f"Could not find the function {schema}.{name} without parameters in the schema cache"
            details = (f"Searched for the function {schema}.{name} without parameters, but no matches were found "
                       "in the schema cache.")
        names = [n for s, n in self.functions if s == schema]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = None
        if close:
            hint = f"Perhaps you meant to call the function {schema}.{close[0]}"
        raise ApiError(404, "PGRST202", message, details, hint)

    def relationship(self, source: Table, name: str, hint: str | None) -> Relationship:
        """The one relationship `source` → `name` (a table in the source's schema), narrowed by `hint`."""
        candidates = self._relationships(source, name)
        if hint is not None:
            candidates = [r for r in candidates if _matches_hint(r, hint)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ApiError(400, "PGRST200",
                           f"Could not find a relationship between '{source.name}' and '{name}' in the schema cache",
                           f"Searched for a foreign key relationship between '{source.name}' and '{name}'"
                           + (f" using the hint '{hint}'" if hint else "") + f" in the schema '{source.schema}', "
                           "but no matches were found.",
                           None)
        choices = ", ".join(f"'{name}!{r.constraint}'" for r in candidates)
        raise ApiError(300, "PGRST201",
                       f"Could not embed because more than one relationship was found for '{source.name}' and '{name}'",
                       json.dumps([r.describe(source) for r in candidates]),
                       f"Try changing '{name}' to one of the following: {choices}. "
                       "Find the desired relationship in the 'details' key.")

    def _relationships(self, source: Table, name: str) -> list[Relationship]:
        target = self.tables.get((source.schema, name))
        found = []
        if target is not None:
            for fk in self.fks:
                if (fk.schema, fk.table) == (source.schema, source.name) and (fk.ref_schema, fk.ref_table) == (
                        target.schema, target.name):
                    found.append(Relationship("many-to-one", target, fk.name, tuple(zip(fk.columns, fk.ref_columns))))
                if (fk.ref_schema, fk.ref_table) == (source.schema, source.name) and (fk.schema, fk.table) == (
                        target.schema, target.name):
                    unique = any(u <= frozenset(fk.columns) for u in target.uniques)
                    kind = "one-to-one" if unique else "one-to-many"
                    found.append(Relationship(kind, target, fk.name, tuple(zip(fk.ref_columns, fk.columns))))
            found += self._many_to_many(source, target)
        return found

    def _many_to_many(self, source: Table, target: Table) -> list[Relationship]:
        """Through a junction table with a foreign key to each side whose columns its primary key covers."""
        found = []
        by_table: dict[tuple[str, str], list[ForeignKey]] = {}
        for fk in self.fks:
            by_table.setdefault((fk.schema, fk.table), []).append(fk)
        for key, fks in by_table.items():
            junction = self.tables.get(key)
            if junction is None or junction in (source, target):
                continue
            pk = frozenset(junction.pk)
            to_source = [f for f in fks if (f.ref_schema, f.ref_table) == (source.schema, source.name)]
            to_target = [f for f in fks if (f.ref_schema, f.ref_table) == (target.schema, target.name)]
            for a in to_source:
                for b in to_target:
                    if a is b or not pk or not (frozenset(a.columns) | frozenset(b.columns)) <= pk:
                        continue
                    found.append(Relationship("many-to-many", target, junction.name, junction=junction,
                                              source_pairs=tuple(zip(a.ref_columns, a.columns)),
                                              target_pairs=tuple(zip(b.columns, b.ref_columns))))
        return found


def _view_keys(fks: list[ForeignKey], views: list[dict]) -> list[ForeignKey]:
    """The base tables' foreign keys as seen from views that pass their columns through."""
    found = []
    for view in views:
        base = (view["base_schema"], view["base_table"])
        passed = set(view["columns"])
        for fk in fks:
            if (fk.schema, fk.table) == base and set(fk.columns) <= passed:
                found.append(ForeignKey(fk.name, view["schema"], view["view"], fk.columns, fk.ref_schema, fk.ref_table,
                                        fk.ref_columns))
            if (fk.ref_schema, fk.ref_table) == base and set(fk.ref_columns) <= passed:
                found.append(ForeignKey(fk.name, fk.schema, fk.table, fk.columns, view["schema"], view["view"],
                                        fk.ref_columns))
    return found


def _fits(function: Function, given: set[str]) -> bool:
    inputs = function.inputs
    names = {a.name for a in inputs}
    if not given <= names:
        return False
    required = {a.name for a in inputs[:function.required]}
    return required <= given


def _matches_hint(relationship: Relationship, hint: str) -> bool:
    if relationship.constraint == hint:
        return True
    if relationship.junction is not None:
        return relationship.junction.name == hint
    columns = {c for pair in relationship.pairs for c in pair}
    return hint in columns
