"""The JWT path of /sql: connect as the connection-string role, session init as local_proxy does, Neon's errors."""

from __future__ import annotations

import asyncio

import pytest

from http_support import notes, sql_http  # noqa: F401 (fixtures)

pytestmark = pytest.mark.asyncio

ENCODING = "Provided authentication token is not a valid JWT encoding"
NEEDS_JWT = "missing authentication credentials: required authorization bearer token in JWT format"


async def as_user(sql_http, query: str, sub: str = "user_alice", role: str = "authenticated", params=None) -> dict:
    return await sql_http.query(query, params, conn=sql_http.jwt_conn_string(role), token=sql_http.token(sub))


async def test_each_user_sees_only_their_rows(sql_http, notes):
    alice = await as_user(sql_http, "select body from notes order by id")
    bob = await as_user(sql_http, "select body from notes order by id", "user_bob")
    assert alice["rows"] == [{"body": "alice 1"}, {"body": "alice 2"}]
    assert bob["rows"] == [{"body": "bob 1"}]


async def test_inserts_take_the_user_from_the_token(sql_http, notes):
    inserted = await as_user(sql_http, "insert into notes (body) values ($1) returning user_id", "user_carol", params=["c"])
    assert inserted["rows"] == [{"user_id": "user_carol"}]
    refused = await sql_http.post({"query": "insert into notes (user_id, body) values ('user_alice', 'x')"},
                                  conn=sql_http.jwt_conn_string(), token=sql_http.token("user_carol"))
    assert refused.status_code == 400 and refused.json()["code"] == "42501"
    await as_user(sql_http, "delete from notes where user_id = 'user_carol'", "user_carol")


async def test_connects_as_the_role_itself(sql_http):
    result = await as_user(sql_http, "select current_user as cu, session_user as su")
    assert result["rows"] == [{"cu": "authenticated", "su": "authenticated"}]
    escalate = await sql_http.post({"query": "set role neondb_owner"}, conn=sql_http.jwt_conn_string(),
                                   token=sql_http.token())
    assert escalate.status_code == 400 and escalate.json()["code"] == "42501"


async def test_session_claims_are_the_token_with_an_increasing_jti(sql_http):
    token = sql_http.issuer.mint(sub="user_alice", claims={"jti": "original", "org": "acme"})
    query = "select pg_backend_pid() as pid, auth.session() as s"
    first, second = [(await sql_http.query(query, conn=sql_http.jwt_conn_string(), token=token))["rows"][0]
                     for _ in range(2)]
    assert first["pid"] == second["pid"]
    assert second["s"]["jti"] == first["s"]["jti"] + 1
    assert {k: v for k, v in first["s"].items() if k != "jti"} == \
        {k: v for k, v in sql_http.issuer_claims(token).items() if k != "jti"}


async def test_batch_runs_after_session_init(sql_http):
    body = {"queries": [{"query": "select auth.user_id() as uid"}, {"query": "show transaction_isolation"}]}
    response = await sql_http.post(body, conn=sql_http.jwt_conn_string(), token=sql_http.token("user_bob"),
                                   headers={"Neon-Batch-Isolation-Level": "Serializable", "Neon-Batch-Read-Only": "true"})
    results = response.json()["results"]
    assert results[0]["rows"] == [{"uid": "user_bob"}]
    assert results[1]["rows"] == [{"transaction_isolation": "serializable"}]


async def test_anonymous_still_needs_a_jwt(sql_http, notes):
    missing = await sql_http.post({"query": "select 1"}, conn=sql_http.jwt_conn_string("anonymous"))
    assert (missing.status_code, missing.json()["message"], missing.json()["code"]) == (400, NEEDS_JWT, "")
    result = await as_user(sql_http, "select current_user as cu, auth.user_id() as uid, (select count(*)::int from notes) as n",
                           "visitor", role="anonymous")
    assert result["rows"] == [{"cu": "anonymous", "uid": "visitor", "n": 0}]


@pytest.mark.parametrize("token,message", [
    ("not-a-jwt", ENCODING),
    ("a.b.c", ENCODING),
])
async def test_bad_tokens_get_neons_message(sql_http, token, message):
    response = await sql_http.post({"query": "select 1"}, conn=sql_http.jwt_conn_string(), token=token)
    body = response.json()
    assert (response.status_code, body["message"], body["code"], body["severity"]) == (400, message, "", "")


async def test_expired_token(sql_http):
    token = sql_http.issuer.mint(sub="user_alice", expired=True)
    response = await sql_http.post({"query": "select 1"}, conn=sql_http.jwt_conn_string(), token=token)
    assert response.status_code == 400 and response.json()["message"].startswith("JWT token has expired (exp=")


async def test_token_for_a_password_role_is_refused(sql_http):
    response = await sql_http.post({"query": "select 1"}, conn=sql_http.conn_string(sql_http.settings.owner, ""),
                                   token=sql_http.token())
    assert (response.status_code, response.json()["message"]) == (400, "jwk not found")


async def test_forged_session_init_is_refused(sql_http):
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyX2JvYiIsImp0aSI6OTk5OX0.AAAA"
    response = await sql_http.post({"query": "select auth.jwt_session_init($1)", "params": [forged]},
                                   conn=sql_http.jwt_conn_string(), token=sql_http.token())
    assert response.status_code == 400
    assert (await as_user(sql_http, "select auth.user_id() as uid"))["rows"] == [{"uid": "user_alice"}]


async def test_many_concurrent_users_each_see_their_own_rows(sql_http, notes):
    subs = ["user_alice", "user_bob", "user_nobody"] * 20
    expected = {"user_alice": ["alice 1", "alice 2"], "user_bob": ["bob 1"], "user_nobody": []}
    results = await asyncio.gather(*(as_user(sql_http, "select body from notes order by id", sub) for sub in subs))
    assert [[r["body"] for r in result["rows"]] for result in results] == [expected[sub] for sub in subs]
