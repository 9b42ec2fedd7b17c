"""The real @neondatabase/serverless driver (npm 1.x, from Node) against /sql, compared with node-postgres on plain Postgres."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from http_support import notes, run_node, sql_http  # noqa: F401 (fixtures)

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
async def driver(sql_http, notes):
    socket = conninfo_to_dict(sql_http.cluster.conninfo())
    env = {
        "SQL_URL": sql_http.url, "OWNER_URL": sql_http.conn_string(), "JWT_URL": sql_http.jwt_conn_string(),
        "ALICE": sql_http.token("user_alice"), "BOB": sql_http.token("user_bob"),
        "PG_SOCKET": socket["host"], "PG_PORT": str(socket.get("port", 5432)),
        "PG_USER": sql_http.settings.owner, "PG_DB": sql_http.settings.database,
    }
    return await run_node("http_driver.mjs", env)


async def test_each_user_sees_only_their_rows(driver):
    assert driver["alice"] == ["alice 1", "alice 2"]
    assert driver["bob"] == ["bob 1"]


async def test_anonymous_without_token_gets_neons_message(driver):
    assert driver["anonymous_without_token"] == \
        "missing authentication credentials: required authorization bearer token in JWT format"


async def test_transaction_with_isolation_options(driver):
    assert driver["transaction"] == {"uid": "user_alice", "iso": "serializable", "ro": "on"}
    assert driver["empty_transaction"] == []


async def test_types_parse_as_over_plain_postgres(driver):
    for case in driver["types"]:
        assert case["rows_equal"], case
        assert case["fields_equal"], case
        assert case["command_equal"], case
    assert driver["types"][0]["http"] == [{"big": "9007199254740993", "num": "1.5", "yes": True, "no": False, "nothing": None}]


async def test_untyped_bytes_param(driver):
    assert driver["untyped_bytes"] == "\\x414243"


async def test_errors_match_node_postgres(driver):
    for case in driver["errors"]:
        assert case["neon_error"], case
        assert case["equal"], case
