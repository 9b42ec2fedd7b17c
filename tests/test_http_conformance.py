"""Golden tests from Neon's own proxy suite (test_proxy.py's test_sql_over_http*) and the driver's HTTP cases."""

from __future__ import annotations

import json

import pytest
from psycopg import sql

from http_support import sql_http  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

NEON_CASES = [  # test_sql_over_http: (query, params, expected rows)
    ("select 42 as answer", [], [{"answer": 42}]),
    ("select $1 as answer", [42], [{"answer": "42"}]),
    ("select $1 * 1 as answer", [42], [{"answer": 42}]),
    ("select $1::int[] as answer", [[1, 2, 3]], [{"answer": [1, 2, 3]}]),
    ("select $1::json->'a' as answer", [{"a": {"b": 42}}], [{"answer": {"b": 42}}]),
    ("select $1::jsonb[] as answer", [[{}]], [{"answer": [{}]}]),
    ("select $1::jsonb[] as answer", [[{"foo": 1}, {"bar": 2}]], [{"answer": [{"foo": 1}, {"bar": 2}]}]),
]


@pytest.mark.parametrize("query,params,rows", NEON_CASES)
async def test_params_as_text(sql_http, query, params, rows):
    assert (await sql_http.query(query, params))["rows"] == rows


async def test_table_lifecycle_commands_and_row_counts(sql_http):
    assert len((await sql_http.query("select * from pg_class limit 1"))["rows"]) == 1
    created = await sql_http.query("create table http_t(id serial primary key, val int)")
    assert (created["command"], created["rowCount"], created["fields"], created["rows"]) == ("CREATE", None, [], [])
    inserted = await sql_http.query("insert into http_t(val) values (10), (20), (30) returning id")
    assert (inserted["command"], inserted["rowCount"], inserted["rows"]) == ("INSERT", 3, [{"id": 1}, {"id": 2}, {"id": 3}])
    selected = await sql_http.query("select * from http_t")
    assert (selected["command"], selected["rowCount"]) == ("SELECT", 3)
    dropped = await sql_http.query("drop table http_t")
    assert (dropped["command"], dropped["rowCount"]) == ("DROP", None)


async def test_response_shape(sql_http):
    result = await sql_http.query("select 42 as answer")
    assert result == {
        "fields": [{"name": "answer", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4,
                    "dataTypeModifier": -1, "format": "text"}],
        "rows": [{"answer": 42}], "command": "SELECT", "rowCount": 1, "rowAsArray": False,
    }


@pytest.mark.parametrize("raw,array,rows", [
    (False, False, [{"arr": [1, 2, 3], "n": 1, "s": "a"}]),
    (False, True, [[1, "a", [1, 2, 3]]]),
    (True, False, [{"arr": "{1,2,3}", "n": "1", "s": "a"}]),
    (True, True, [["1", "a", "{1,2,3}"]]),
])
async def test_output_options(sql_http, raw, array, rows):
    headers = {"Neon-Raw-Text-Output": json.dumps(raw), "Neon-Array-Mode": json.dumps(array)}
    result = await sql_http.query("select 1 as n, 'a' as s, '{1,2,3}'::int4[] as arr", headers=headers)
    assert (result["rows"], result["rowAsArray"]) == (rows, array)


async def test_batch_runs_every_case_and_echoes_headers(sql_http):
    queries = [{"query": q, "params": p} for q, p, _ in NEON_CASES]
    headers = {"Neon-Batch-Isolation-Level": "Serializable", "Neon-Batch-Read-Only": "false",
               "Neon-Batch-Deferrable": "false"}
    response = await sql_http.post({"queries": queries}, headers=headers)
    assert response.status_code == 200
    assert [r["rows"] for r in response.json()["results"]] == [rows for _, _, rows in NEON_CASES]
    assert response.headers["Neon-Batch-Isolation-Level"] == "Serializable"
    assert "Neon-Batch-Read-Only" not in response.headers and "Neon-Batch-Deferrable" not in response.headers
    headers.update({"Neon-Batch-Read-Only": "true", "Neon-Batch-Deferrable": "true"})
    response = await sql_http.post({"queries": queries}, headers=headers)
    assert (response.headers["Neon-Batch-Read-Only"], response.headers["Neon-Batch-Deferrable"]) == ("true", "true")


async def test_batch_options_reach_postgres(sql_http):
    headers = {"Neon-Batch-Isolation-Level": "RepeatableRead", "Neon-Batch-Read-Only": "true"}
    body = {"queries": [{"query": "show transaction_isolation"}, {"query": "show transaction_read_only"}]}
    results = (await sql_http.post(body, headers=headers)).json()["results"]
    assert [r["rows"][0] for r in results] == [{"transaction_isolation": "repeatable read"},
                                                {"transaction_read_only": "on"}]


async def test_single_query_ignores_batch_headers(sql_http):
    response = await sql_http.post({"query": "show transaction_isolation"}, headers={"Neon-Batch-Isolation-Level": "Serializable"})
    assert response.json()["rows"] == [{"transaction_isolation": "read committed"}]
    assert "Neon-Batch-Isolation-Level" not in response.headers


async def test_batch_output_options(sql_http):
    body = {"queries": [{"query": "select $1 as answer", "params": [42], "arrayMode": True},
                        {"query": "select $1 as answer", "params": [42], "arrayMode": False}]}
    results = (await sql_http.post(body)).json()["results"]
    assert [(r["rowAsArray"], r["rows"]) for r in results] == [(True, [["42"]]), (False, [{"answer": "42"}])]


async def test_batch_is_one_transaction_and_first_error_fails_all(sql_http):
    await sql_http.query("create table if not exists http_batch(id int primary key)")
    body = {"queries": [{"query": "insert into http_batch values (1)"}, {"query": "select nope"},
                        {"query": "insert into http_batch values (2)"}]}
    response = await sql_http.post(body)
    assert response.status_code == 400 and response.json()["message"] == 'column "nope" does not exist'
    assert (await sql_http.query("select count(*)::int as n from http_batch"))["rows"] == [{"n": 0}]
    txids = (await sql_http.post({"queries": [{"query": "select pg_current_xact_id()::text as x"}] * 2})).json()
    assert len({r["rows"][0]["x"] for r in txids["results"]}) == 1
    await sql_http.query("drop table http_batch")


async def test_empty_batch(sql_http):
    assert (await sql_http.post({"queries": []})).json() == {"results": []}


async def test_database_name_with_spaces(sql_http):
    async with await sql_http.admin("postgres") as admin:
        await admin.execute('drop database if exists "db with spaces"')
        await admin.execute('create database "db with spaces"')
    try:
        result = await sql_http.query("select 42 as answer", conn=sql_http.conn_string(dbname="db with spaces"))
        assert result["rows"] == [{"answer": 42}]
    finally:
        async with await sql_http.admin("postgres") as admin:
            await admin.execute('drop database "db with spaces" with (force)')


async def test_url_encoded_credentials(sql_http):
    user, password = "http+auth$$", "%+$^&*@!"
    async with await sql_http.admin() as admin:
        await admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(user)))
        await admin.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(user), sql.Literal(password)))
    result = await sql_http.query("select current_user as u", conn=sql_http.conn_string(user, password))
    assert result["rows"] == [{"u": user}]


async def test_custom_enum_arrays(sql_http):
    await sql_http.query("drop type if exists foo")
    await sql_http.query("create type foo as enum ('foo', 'bar', 'baz')")
    result = await sql_http.query("select array['foo'::foo, 'bar'::foo, 'baz'::foo] as data, 'bar'::foo as one")
    assert result["rows"] == [{"data": ["foo", "bar", "baz"], "one": "bar"}]
    await sql_http.query("drop type foo")


async def test_value_encoding(sql_http):
    result = await sql_http.query(
        "select 1::int8 as i8, 1.50::numeric as num, true as b, 1.5::float8 as f, 'NaN'::float4 as nan,"
        " '{\"a\":[1,null]}'::jsonb as j, '{}'::int[] as empty, '{{a,\"b c\"},{NULL,\"\\\\\"}}'::text[] as texts,"
        " '\\x414243'::bytea as bytes, '2024-01-02 03:04:05+00'::timestamptz as ts, null::text as nothing,"
        " pg_sleep(0) as void, '[2:3]={7,8}'::int[] as bounded")
    assert result["rows"] == [{
        "i8": "1", "num": "1.50", "b": True, "f": 1.5, "nan": "NaN", "j": {"a": [1, None]}, "empty": [],
        "texts": [["a", "b c"], [None, "\\"]], "bytes": "\\x414243", "ts": "2024-01-02 03:04:05+00",
        "nothing": None, "void": "", "bounded": [7, 8],
    }]


async def test_two_statements_fail_as_on_neon(sql_http):
    response = await sql_http.post({"query": "select 1; select 2"})
    assert response.status_code == 400
    assert (response.json()["code"], response.json()["message"]) == ("42601", "cannot insert multiple commands into a prepared statement")


@pytest.mark.parametrize("params,count", [([], 0), ([1, 2], 2)])
async def test_wrong_parameter_counts(sql_http, params, count):
    response = await sql_http.post({"query": "select $1", "params": params})
    assert response.status_code == 400
    assert response.json()["message"].startswith(f"bind message supplies {count} parameters")


async def test_percent_and_dollar_pass_unchanged(sql_http):
    result = await sql_http.query("select 5 % 3 as m, '%s' as s, $1::text as p", ["$2"])
    assert result["rows"] == [{"m": 2, "s": "%s", "p": "$2"}]


async def test_empty_query(sql_http):
    result = await sql_http.query("")
    assert (result["command"], result["rowCount"], result["fields"], result["rows"]) == ("", None, [], [])


async def test_postgres_error_body(sql_http):
    response = await sql_http.post({"query": "select nope from pg_class"})
    body = response.json()
    assert response.status_code == 400
    assert list(body) == ["message", "code", "detail", "hint", "position", "internalPosition", "internalQuery",
                          "severity", "where", "table", "column", "schema", "dataType", "constraint", "file",
                          "line", "routine"]
    assert (body["message"], body["code"], body["severity"], body["position"]) == \
        ('column "nope" does not exist', "42703", "ERROR", "8")
    assert body["file"] and body["line"].isdigit() and body["routine"] and body["detail"] is None


async def test_constraint_error_fields(sql_http):
    await sql_http.query("create table if not exists http_uniq(id int constraint http_uniq_pk primary key)")
    await sql_http.query("insert into http_uniq values (1) on conflict do nothing")
    body = (await sql_http.post({"query": "insert into http_uniq values (1)"})).json()
    assert (body["code"], body["constraint"], body["table"], body["schema"]) == ("23505", "http_uniq_pk", "http_uniq", "public")
    assert body["detail"] == "Key (id)=(1) already exists."


async def test_internal_query_position(sql_http):
    body = (await sql_http.post({"query": "do $$ begin perform nope; end $$"})).json()
    assert (body["position"], body["internalPosition"], body["internalQuery"]) == (None, "8", "SELECT nope")
    assert body["where"].startswith("PL/pgSQL function inline_code_block")


async def test_begin_leaves_pool_usable(sql_http):
    """test_http_pool_begin: BEGIN; garbage; SELECT 1."""
    assert (await sql_http.post({"query": "BEGIN;"})).status_code == 200
    assert (await sql_http.post({"query": "garbage-lol(&(&(&(&"})).status_code == 400
    assert (await sql_http.post({"query": "SELECT 1;"})).status_code == 200


async def test_unknown_database_is_400_with_postgres_fields(sql_http):
    response = await sql_http.post({"query": "select 1"}, conn=sql_http.conn_string(dbname="no_such_db"))
    body = response.json()
    assert response.status_code == 400
    assert (body["code"], body["message"], body["severity"]) == ("3D000", 'database "no_such_db" does not exist', "FATAL")


async def test_unknown_route_and_options(sql_http):
    response = await sql_http.client.get(f"http://127.0.0.1:{sql_http.port}/other")
    assert (response.status_code, response.json()) == (400, "query is not supported")
    assert response.headers["neon-request-id"]
    response = await sql_http.client.get(sql_http.url)
    assert response.status_code == 400
    response = await sql_http.client.options(sql_http.url)
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Max-Age"] == "86400"
    assert "Neon-Batch-Isolation-Level" in response.headers["Access-Control-Allow-Headers"]


async def test_cors_content_type_and_request_id(sql_http):
    response = await sql_http.post({"query": "select 1"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.headers["neon-request-id"]) == 36
    given = "0d0f5f6a-4c1e-4b57-9a57-7c0f16b1a5a9"
    response = await sql_http.post({"query": "select 1"}, headers={"neon-request-id": given})
    assert response.headers["neon-request-id"] == given
    error = await sql_http.post({"query": "select nope"})
    assert error.headers["Access-Control-Allow-Origin"] == "*" and error.headers["neon-request-id"]


@pytest.mark.parametrize("body,status,message", [
    (b"{", 400, "could not parse the HTTP request body: EOF while parsing a value at line 1 column 1"),
    (b'{"sql":"select 1"}', 400, "could not parse the HTTP request body: data did not match any variant of untagged enum Payload"),
])
async def test_bad_bodies(sql_http, body, status, message):
    response = await sql_http.post(body)
    assert (response.status_code, response.json()["message"], response.json()["code"]) == (status, message, "")


async def test_request_too_large(sql_http):
    response = await sql_http.post(json.dumps({"query": "select 1", "params": ["x" * (10 * 1024 * 1024)]}))
    assert (response.status_code, response.json()["message"]) == (413, "request is too large (max is 10485760 bytes)")


async def test_response_too_large(sql_http):
    """test_sql_over_http_pool_dos: a 25M-row cross join is refused with 507, not buffered."""
    response = await sql_http.post({"query": "select * from generate_series(1, 5000) a cross join generate_series(1, 5000) b"})
    assert (response.status_code, response.json()["message"]) == (507, "response is too large (max is 10485760 bytes)")
    assert (await sql_http.query("select 1 as one"))["rows"] == [{"one": 1}]


async def test_invalid_isolation_level(sql_http):
    response = await sql_http.post({"query": "select 1"}, headers={"Neon-Batch-Isolation-Level": "Chaos"})
    assert (response.status_code, response.json()["message"]) == (400, "invalid isolation level")


@pytest.mark.parametrize("password,user", [("wrong", None), ("x", "no_such_role")])
async def test_password_failures(sql_http, password, user):
    user = user or sql_http.settings.owner
    response = await sql_http.post({"query": "select 1"}, conn=sql_http.conn_string(user, password))
    assert (response.status_code, response.json()["message"]) == (400, f"password authentication failed for user '{user}'")


async def test_ip_host_accepted(sql_http):
    assert (await sql_http.query("select 1 as x", conn=sql_http.conn_string(host="127.0.0.1")))["rows"] == [{"x": 1}]


async def test_unparsable_array_text_is_a_500(sql_http):
    """int2vector is an array type to Neon but prints as `1 2`: Neon fails to parse it, and so do we."""
    response = await sql_http.post({"query": "select '1 2'::int2vector as v"})
    assert (response.status_code, response.json()["message"]) == (500, "could not parse postgres response")
    raw = await sql_http.query("select '1 2'::int2vector as v", headers={"Neon-Raw-Text-Output": "true"})
    assert raw["rows"] == [{"v": "1 2"}]


async def test_copy_is_refused_like_tokio_postgres(sql_http):
    response = await sql_http.post({"query": "copy (select 1) to stdout"})
    assert (response.status_code, response.json()["message"]) == (400, "unexpected message from server")
    assert (await sql_http.query("select 1 as one"))["rows"] == [{"one": 1}]


async def test_chunked_bodies_are_read_and_limited(sql_http):
    async def chunks(total: int):
        body = json.dumps({"query": "select $1::text as x", "params": ["y" * total]}).encode()
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response = await sql_http.client.post(sql_http.url, content=chunks(100_000),
                                          headers={"Neon-Connection-String": sql_http.conn_string()})
    assert response.status_code == 200 and len(response.json()["rows"][0]["x"]) == 100_000
    response = await sql_http.client.post(sql_http.url, content=chunks(11 * 1024 * 1024),
                                          headers={"Neon-Connection-String": sql_http.conn_string()})
    assert (response.status_code, response.json()["message"]) == (413, "request is too large (max is 10485760 bytes)")
