"""The `Database` type that postgrest-js and neon-js take as a generic, from the schema cache.

Same shape as `supabase gen types typescript` and neon-js `gen-types` write: per schema, Tables (Row,
Insert, Update, Relationships), Views, Functions (Args, Returns), Enums and CompositeTypes.
"""

from __future__ import annotations

import json

from neon_local.data_api.schema import Function, Schema, Table

__all__ = ["typescript"]

_NUMBER = frozenset(("int2", "int4", "int8", "float4", "float8", "numeric", "oid", "money"))
_NEVER = "{\n      [_ in never]: never\n    }"


def _ts_base(typname: str) -> str:
    if typname in _NUMBER:
        return "number"
    if typname == "bool":
        return "boolean"
    if typname in ("json", "jsonb"):
        return "Json"
    return "string"


def _ts_type(typname: str) -> str:
    return _ts_base(typname[1:]) + "[]" if typname.startswith("_") else _ts_base(typname)


def _ts_of_format(type_text: str) -> str:
    """A TypeScript type for a format_type() text (function arguments and results)."""
    array = type_text.endswith("[]")
    base = type_text[:-2] if array else type_text
    names = {"integer": "int4", "bigint": "int8", "smallint": "int2", "real": "float4", "double precision": "float8",
             "boolean": "bool"}
    ts = _ts_base(names.get(base, base.split("(")[0]))
    return ts + "[]" if array else ts


def _key(name: str) -> str:
    return name if name.isidentifier() else json.dumps(name)


def _columns(table: Table, mode: str) -> str:
    lines = []
    for column in table.columns.values():
        ts = _ts_type(column.base)
        if mode == "Row":
            lines.append(f"{_key(column.name)}: {ts}{' | null' if column.nullable else ''}")
        elif column.generated:
            lines.append(f"{_key(column.name)}?: never")
        else:
            optional = mode == "Update" or column.nullable or column.has_default
            lines.append(f"{_key(column.name)}{'?' if optional else ''}: {ts}{' | null' if column.nullable else ''}")
    return "{\n" + "".join(f"          {line}\n" for line in lines) + "        }"


def _relationships(schema: Schema, table: Table) -> str:
    items = []
    for fk in schema.fks:
        if (fk.schema, fk.table) != (table.schema, table.name):
            continue
        one_to_one = any(u <= frozenset(fk.columns) for u in table.uniques)
        items.append(
            "          {\n"
            f"            foreignKeyName: {json.dumps(fk.name)}\n"
            f"            columns: {json.dumps(list(fk.columns))}\n"
            f"            isOneToOne: {'true' if one_to_one else 'false'}\n"
            f"            referencedRelation: {json.dumps(fk.ref_table)}\n"
            f"            referencedColumns: {json.dumps(list(fk.ref_columns))}\n"
            "          },\n")
    return "[\n" + "".join(items) + "        ]" if items else "[]"


def _function(schema_name: str, function: Function) -> str:
    inputs = [a for a in function.inputs if a.name]
    if inputs:
        args = "{ " + "; ".join(f"{_key(a.name)}{'?' if i >= function.required else ''}: {_ts_of_format(a.type)}"
                                for i, a in enumerate(inputs)) + " }"
    else:
        args = "Record<PropertyKey, never>"
    if function.void:
        returns = "undefined"
    elif function.return_table is not None:
        kind = "Views" if function.return_table.kind in ("v", "m") else "Tables"
        returns = (f'Database[{json.dumps(function.return_table.schema)}]["{kind}"]'
                   f'[{json.dumps(function.return_table.name)}]["Row"]') + ("[]" if function.returns_set else "")
    elif function.scalar:
        returns = _ts_of_format(function.return_type) + ("[]" if function.returns_set else "")
    else:
        returns = "Json"
    return f"{_key(function.name)}: {{\n        Args: {args}\n        Returns: {returns}\n      }}"


def _section(entries: list[str]) -> str:
    if not entries:
        return _NEVER
    return "{\n" + "".join(f"      {entry}\n" for entry in entries) + "    }"


def typescript(schema: Schema) -> str:
    parts = ["export type Json =\n  | string\n  | number\n  | boolean\n  | null\n  | { [key: string]: Json | undefined }\n"
             "  | Json[]\n\nexport type Database = {\n"]
    for schema_name in schema.schemas:
        tables = sorted((t for (s, _), t in schema.tables.items() if s == schema_name), key=lambda t: t.name)
        table_entries, view_entries = [], []
        for table in tables:
            rel = _relationships(schema, table)
            if table.kind in ("v", "m"):
                view_entries.append(f"{_key(table.name)}: {{\n        Row: {_columns(table, 'Row')}\n"
                                    f"        Relationships: {rel}\n      }}")
            else:
                table_entries.append(
                    f"{_key(table.name)}: {{\n        Row: {_columns(table, 'Row')}\n"
                    f"        Insert: {_columns(table, 'Insert')}\n        Update: {_columns(table, 'Update')}\n"
                    f"        Relationships: {rel}\n      }}")
        functions = [_function(schema_name, f) for (s, _), overloads in sorted(schema.functions.items())
                     if s == schema_name for f in overloads[:1]]
        parts.append(f"  {_key(schema_name)}: {{\n    Tables: {_section(table_entries)}\n    Views: {_section(view_entries)}\n"
                     f"    Functions: {_section(functions)}\n    Enums: {_NEVER}\n    CompositeTypes: {_NEVER}\n  }}\n")
    parts.append("}\n")
    return "".join(parts)
