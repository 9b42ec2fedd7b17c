"""The OpenAPI (Swagger 2.0) document PostgREST serves at its root, from the schema cache.

Every exposed table, view and function is listed whatever the caller may do with it (Neon's
`openapi_mode = ignore-privileges`); the paths, shared parameters and definitions follow PostgREST's
layout so tools that read its document (API explorers, client generators) work unchanged.
"""

from __future__ import annotations

from neon_local.data_api.schema import ColumnInfo, Function, Schema, Table

__all__ = ["openapi"]

_INTEGER = frozenset(("int2", "int4", "int8", "oid"))
_NUMBER = frozenset(("float4", "float8", "numeric", "money"))
_MEDIA = ["application/json", "application/vnd.pgrst.object+json", "text/csv"]


def _property(column: ColumnInfo, pk: bool, fk: str | None) -> dict:
    base = column.base
    array = base.startswith("_")
    element = base[1:] if array else base
    if element in _INTEGER:
        kind = "integer"
    elif element in _NUMBER:
        kind = "number"
    elif element == "bool":
        kind = "boolean"
    elif element in ("json", "jsonb"):
        kind = None
    else:
        kind = "string"
    prop: dict = {"format": column.type}
    if array:
        prop["type"] = "array"
        prop["items"] = {"type": kind} if kind else {}
    elif kind:
        prop["type"] = kind
    notes = []
    if pk:
        notes.append("This is a Primary Key.<pk/>")
    if fk:
        notes.append(fk)
    if notes:
        prop["description"] = "Note:\n" + "\n".join(notes)
    return prop


def _definition(schema: Schema, table: Table) -> dict:
    fks = {}
    for fk in schema.fks:
        if (fk.schema, fk.table) == (table.schema, table.name):
            for column, ref in zip(fk.columns, fk.ref_columns):
                fks[column] = f"This is a Foreign Key to `{fk.ref_table}.{ref}`.<fk table='{fk.ref_table}' column='{ref}'/>"
    required = [c.name for c in table.columns.values() if not c.nullable and not c.has_default]
    doc = {"properties": {c.name: _property(c, c.name in table.pk, fks.get(c.name)) for c in table.columns.values()},
           "type": "object"}
    if required:
        doc["required"] = required
    return doc


def _table_paths(table: Table) -> dict:
    name = table.name
    filters = [{"$ref": f"#/parameters/rowFilter.{name}.{c}"} for c in table.columns]
    read = [*filters, {"$ref": "#/parameters/select"}, {"$ref": "#/parameters/order"}, {"$ref": "#/parameters/range"},
            {"$ref": "#/parameters/rangeUnit"}, {"$ref": "#/parameters/offset"}, {"$ref": "#/parameters/limit"},
            {"$ref": "#/parameters/preferCount"}]
    body = {"$ref": f"#/parameters/body.{name}"}
    paths = {"get": {"tags": [name], "parameters": read, "responses": {
        "200": {"description": "OK", "schema": {"type": "array", "items": {"$ref": f"#/definitions/{name}"}}},
        "206": {"description": "Partial Content"}}}}
    if table.kind not in ("v", "m"):
        paths["post"] = {"tags": [name], "parameters": [body, {"$ref": "#/parameters/select"},
                                                        {"$ref": "#/parameters/preferPost"}],
                         "responses": {"201": {"description": "Created"}}}
        paths["patch"] = {"tags": [name], "parameters": [*filters, body, {"$ref": "#/parameters/preferReturn"}],
                          "responses": {"204": {"description": "No Content"}}}
        paths["delete"] = {"tags": [name], "parameters": [*filters, {"$ref": "#/parameters/preferReturn"}],
                           "responses": {"204": {"description": "No Content"}}}
    return paths


def _function_paths(function: Function) -> dict:
    args = [a for a in function.inputs if a.name]
    query = [{"name": a.name, "in": "query", "required": i < function.required, "type": "string", "format": a.type}
             for i, a in enumerate(args)]
    body = {"name": "args", "in": "body", "required": True, "schema": {
        "type": "object", "properties": {a.name: {"format": a.type} for a in args},
        **({"required": [a.name for a in args[:function.required]]} if function.required else {})}}
    ok = {"200": {"description": "OK"}}
    paths = {"post": {"tags": ["(rpc) " + function.name], "parameters": [body, {"$ref": "#/parameters/preferParams"}],
                      "produces": _MEDIA, "responses": ok}}
    if function.volatility != "v":
        paths["get"] = {"tags": ["(rpc) " + function.name], "parameters": query, "produces": _MEDIA, "responses": ok}
    return paths


def _shared_parameters(schema: Schema, schema_name: str) -> dict:
    def query(name, description, **extra):
        return {"name": name, "description": description, "required": False, "in": "query", "type": "string", **extra}

    params = {
        "preferParams": {"name": "Prefer", "description": "Preference", "required": False, "in": "header",
                         "type": "string", "enum": ["params=single-object"]},
        "preferReturn": {"name": "Prefer", "description": "Preference", "required": False, "in": "header",
                         "type": "string", "enum": ["return=representation", "return=minimal", "return=none"]},
        "preferCount": {"name": "Prefer", "description": "Preference", "required": False, "in": "header",
                        "type": "string", "enum": ["count=none"]},
        "preferPost": {"name": "Prefer", "description": "Preference", "required": False, "in": "header",
                       "type": "string", "enum": ["return=representation", "return=minimal", "return=none",
                                                  "resolution=ignore-duplicates", "resolution=merge-duplicates"]},
        "select": query("select", "Filtering Columns"),
        "on_conflict": query("on_conflict", "On Conflict"),
        "order": query("order", "Ordering"),
        "range": {"name": "Range", "description": "Limiting and Pagination", "required": False, "in": "header",
                  "type": "string"},
        "rangeUnit": {"name": "Range-Unit", "description": "Limiting and Pagination", "required": False,
                      "in": "header", "type": "string", "default": "items"},
        "offset": query("offset", "Limiting and Pagination"),
        "limit": query("limit", "Limiting and Pagination"),
    }
    for (s, name), table in schema.tables.items():
        if s != schema_name:
            continue
        params[f"body.{name}"] = {"name": name, "description": name, "required": False, "in": "body",
                                  "schema": {"$ref": f"#/definitions/{name}"}}
        for column in table.columns.values():
            params[f"rowFilter.{name}.{column.name}"] = query(column.name, None, format=column.type)
            del params[f"rowFilter.{name}.{column.name}"]["description"]
    return params


def openapi(schema: Schema, schema_name: str, host: str, base_path: str) -> dict:
    paths: dict = {"/": {"get": {"tags": ["Introspection"], "summary": "OpenAPI description (this document)",
                                 "produces": ["application/openapi+json", "application/json"],
                                 "responses": {"200": {"description": "OK"}}}}}
    definitions = {}
    for (s, name), table in sorted(schema.tables.items()):
        if s == schema_name:
            paths[f"/{name}"] = _table_paths(table)
            definitions[name] = _definition(schema, table)
    for (s, name), overloads in sorted(schema.functions.items()):
        if s == schema_name:
            paths[f"/rpc/{name}"] = _function_paths(overloads[0])
    return {
        "swagger": "2.0",
        "info": {"title": "neon-local Data API", "version": "13.0.8",
                 "description": "PostgREST-compatible REST for the Neon Data API, served by neon-local"},
        "host": host, "basePath": base_path, "schemes": ["http"],
        "consumes": _MEDIA, "produces": _MEDIA,
        "paths": paths, "definitions": definitions, "parameters": _shared_parameters(schema, schema_name),
        "externalDocs": {"description": "PostgREST Documentation", "url": "https://postgrest.org/en/v13/references/api.html"},
    }
