"""Request parsing with Neon's texts: connection string, credentials, option headers, body; the error body."""

import json

import pytest

from neon_local.serverless.errors import SqlOverHttpError, cancelled_body
from neon_local.serverless.http_request import Headers, parse_body, parse_conn_info, parse_headers

JWT_ROLES = ("authenticated", "anonymous")


def conn_info(url, **headers):
    return parse_conn_info({"Neon-Connection-String": url, **headers}, JWT_ROLES)


def refused(url=None, **headers):
    with pytest.raises(SqlOverHttpError) as info:
        parse_conn_info({**({"Neon-Connection-String": url} if url is not None else {}), **headers}, JWT_ROLES)
    assert info.value.status == 400
    return info.value.message


def test_password_connection_string():
    info = conn_info("postgresql://neondb_owner:npg%2Fpw@ep-x.local.neon.build:5432/neondb?sslmode=require")
    assert (info.user, info.dbname, info.password, info.jwt) == ("neondb_owner", "neondb", b"npg/pw", None)
    assert "npg" not in repr(info)


def test_ip_and_localhost_hosts_are_accepted():
    assert conn_info("postgres://u:p@127.0.0.1:4444/neondb").dbname == "neondb"
    assert conn_info("postgres://u:p@localhost/neondb").user == "u"
    assert conn_info("postgres://u:p@[::1]:4444/neondb").user == "u"


def test_url_encoded_credentials_and_database_with_spaces():
    info = conn_info("postgresql://http%2Bauth%24%24:%25%2B%24%5E%26%2A%40%21@host/db%20with%20spaces")
    assert (info.user, info.password, info.dbname) == ("http+auth$$", b"%+$^&*@!", "db with spaces")


def test_bearer_token_path():
    info = conn_info("postgresql://authenticated@localhost/neondb", Authorization="Bearer abc.def.ghi")
    assert (info.user, info.jwt, info.password) == ("authenticated", "abc.def.ghi", None)


@pytest.mark.parametrize("url,headers,message", [
    (None, {}, "invalid header: neon-connection-string"),
    ("not a url", {}, "invalid connection string: relative URL without a base"),
    ("postgres://u:p@host:99999/db", {}, "invalid connection string: invalid port number"),
    ("mysql://u:p@host/db", {}, "incorrect scheme"),
    ("postgres://u:p@host", {}, "missing database name"),
    ("postgres://:p@host/db", {}, "missing username"),
    ("postgres://u@host/db", {}, "missing authentication credentials: required password"),
    ("postgres://u:@host/db", {}, "missing authentication credentials: required password"),
    ("postgres://authenticated:pw@host/db", {},
     "missing authentication credentials: required authorization bearer token in JWT format"),
    ("postgres://anonymous@host/db", {},
     "missing authentication credentials: required authorization bearer token in JWT format"),
    ("postgres://authenticated@host/db", {"Authorization": "Token x"},
     "missing authentication credentials: required authorization bearer token in JWT format"),
    ("postgres://u:p@/db", {}, "missing hostname"),
])
def test_connection_string_errors(url, headers, message):
    assert refused(url, **headers) == message


def test_option_headers():
    headers = parse_headers({"Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "TRUE",
                             "Neon-Batch-Isolation-Level": "Serializable", "Neon-Batch-Read-Only": "true"})
    assert (headers.raw_output, headers.array_mode, headers.read_only, headers.deferrable) == (True, False, True, False)
    assert headers.begin_statement() == "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY"
    assert headers.echo() == {"Neon-Batch-Read-Only": "true", "Neon-Batch-Isolation-Level": "Serializable"}
    assert Headers().begin_statement() == "START TRANSACTION"


def test_invalid_isolation_level():
    with pytest.raises(SqlOverHttpError, match="invalid isolation level"):
        parse_headers({"Neon-Batch-Isolation-Level": "serializable"})


def test_single_query_body():
    payload = parse_body(b'{"query":"select $1","params":[42,null,[1,2]],"arrayMode":true}')
    assert not payload.batch
    (query,) = payload.queries
    assert (query.text, query.params, query.array_mode) == ("select $1", ["42", None, "{1,2}"], True)


def test_batch_body_and_neon_payload_test():
    payload = parse_body(b'{"queries":[{"query":"SELECT * FROM users0 WHERE name = ?","params":["test0"],'
                         b'"arrayMode":false},{"query":"SELECT 2","arrayMode":true}]}')
    assert payload.batch and [q.array_mode for q in payload.queries] == [False, True]
    assert parse_body(b'{"queries":[]}').queries == []


def test_positional_body_as_serde_reads_it():
    assert parse_body(b'["select 1"]').queries[0].text == "select 1"


@pytest.mark.parametrize("body,message", [
    (b"", "EOF while parsing a value at line 1 column 0"),
    (b'{"query":1}', "data did not match any variant of untagged enum Payload"),
    (b'{"query":"x","params":"y"}', "data did not match any variant of untagged enum Payload"),
    (b'{"query":"x"} x', "trailing characters at line 1 column 15"),
    (b'{"query":NaN}', "expected value at line 1 column 10"),
])
def test_body_errors(body, message):
    with pytest.raises(SqlOverHttpError) as info:
        parse_body(body)
    assert info.value.message == "could not parse the HTTP request body: " + message


KEYS = ["message", "code", "detail", "hint", "position", "internalPosition", "internalQuery", "severity", "where",
        "table", "column", "schema", "dataType", "constraint", "file", "line", "routine"]


def test_non_postgres_error_body():
    body = json.loads(SqlOverHttpError(400, "missing username").body())
    assert list(body) == KEYS
    assert body["code"] == body["severity"] == ""
    assert all(body[k] is None for k in KEYS if k not in ("message", "code", "severity"))


def test_postgres_error_body():
    fields = {"S": "ERROR", "V": "ERROR", "C": "42703", "M": 'column "x" does not exist', "P": "8",
              "F": "parse_relation.c", "L": "3722", "R": "errorMissingColumn"}
    error = SqlOverHttpError.postgres(fields)
    body = json.loads(error.body())
    assert (error.status, body["message"], body["code"], body["position"], body["line"]) == \
        (400, 'column "x" does not exist', "42703", "8", "3722")
    assert body["detail"] is None and list(body) == KEYS


def test_internal_postgres_error_text():
    error = SqlOverHttpError.internal_postgres({"S": "ERROR", "M": "Token used after it has expired", "D": "exp=1"})
    assert error.status == 500
    assert json.loads(error.body())["message"] == "db error: ERROR: Token used after it has expired\nDETAIL: exp=1"


def test_cancelled_body():
    assert json.loads(cancelled_body()) == {"message": "Query cancelled, connection was terminated", "code": "08P01"}
