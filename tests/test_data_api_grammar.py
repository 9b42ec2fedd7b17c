"""Property tests of the Data API's sans-io parser and SQL builder: any query string either plans or gets a
PGRST/400-class ApiError (never another exception), and nothing from the query string reaches the SQL text but quoted identifiers."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_api_support import rest  # noqa: F401 (fixture)
from neon_local.data_api.errors import ApiError
from neon_local.data_api.grammar import parse_accept, parse_prefer, parse_query
from neon_local.data_api.schema import Schema
from neon_local.data_api.sql import Builder

SCHEMA = Schema.from_json(("public",), json.dumps({
    "tables": [
        {"schema": "public", "name": "books", "kind": "r", "pk": ["id"], "uniques": [["id"]], "columns": [
            {"name": n, "type": t, "base": t, "nullable": True, "default": False, "generated": False}
            for n, t in (("id", "int4"), ("title", "text"), ("meta", "jsonb"), ("author_id", "int4"))]},
        {"schema": "public", "name": "authors", "kind": "r", "pk": ["id"], "uniques": [["id"]], "columns": [
            {"name": "id", "type": "int4", "base": "int4", "nullable": False, "default": False, "generated": False}]},
    ],
    "fks": [{"name": "books_author_id_fkey", "schema": "public", "table": "books", "columns": ["author_id"],
             "ref_schema": "public", "ref_table": "authors", "ref_columns": ["id"]}],
    "functions": [],
}))
MARK = "zq'x;--"  # a value that must only ever travel as a bind parameter
PIECES = ["select", "order", "limit", "offset", "or", "and", "not.or", "id", "title", "meta->>c", "authors",
          "authors.id", "eq.", "in.(", ")", "(", ",", ".", ":", "::", "!inner", "is.null", "not.", "like.*",
          "cs.{", "}", '"', "*", "desc", "nullslast", "fts(english).", "count()", "...", "->", "1", MARK]
values = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
pairs = st.lists(st.tuples(st.sampled_from(["select", "order", "limit", "offset", "or", "not.and", "id", "title",
                                            "meta->>c", "authors.id", "authors.order", "x"]), values), max_size=5)


@settings(max_examples=400, deadline=None)
@given(pairs)
def test_any_query_string_plans_or_is_refused_with_an_api_error(query_pairs):
    try:
        query = parse_query(query_pairs)
        plan = Builder(SCHEMA, query).read(SCHEMA.tables[("public", "books")], True, False)
    except ApiError as exc:
        assert 300 <= exc.status < 500 and exc.body()
        return
    # Names from the query string reach the SQL only as quoted identifiers; values never.
    assert MARK not in re.sub(r'"(?:[^"]|"")*"', "", plan.sql)
    assert all(isinstance(p, str) for p in plan.params)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_headers_never_raise_anything_but_api_errors(accept, prefer):
    try:
        parse_accept(accept)
    except ApiError as exc:
        assert exc.status == 406
    parse_prefer([prefer])


@pytest.mark.asyncio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs, st.sampled_from(["books", "authors", "rpc/books_by"]))
async def test_any_query_string_over_http_runs_or_is_refused_never_500(rest, query_pairs, resource):
    response = await rest.request("GET", f"/{resource}", params=query_pairs)
    assert response.status_code != 500 and response.status_code < 503, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"code", "details", "hint", "message"}
    assert (await rest.request("GET", "/books?select=id&limit=1")).status_code == 200
