"""The client limits on the Data API path: the query allow-list on the SQL a request generates, rate limits,
the counters `neon-local status` and the console show, and the request log. Real HTTP, real Postgres."""

from __future__ import annotations

import pytest

from data_api_support import create_fixture_db, serve_rest
from neon_local.limits.rate import TOO_MANY
from neon_local.limits.store import read_list, write_list

pytestmark = pytest.mark.asyncio

SHAPE = "/books?select=id,title&id=eq.{}"


@pytest.fixture(scope="module")
async def guarded(settings, cluster, tmp_path_factory):
    """The Data API with an allow-list file of its own, starting in learn mode."""
    await create_fixture_db(settings, cluster)
    directory = tmp_path_factory.mktemp("rest-allowlist")
    guarded_settings = settings.with_overrides(allowlist="learn", allowlist_file=directory / "allow.toml")
    async with serve_rest(guarded_settings, cluster, directory) as rest:
        yield rest


def set_mode(rest, mode: str) -> None:
    allowlist = rest.api.limits.allowlist
    allowlist.flush()
    content = read_list(allowlist.path)
    content.mode = mode
    write_list(allowlist.path, content)
    allowlist.load()


def data_api_counts(rest) -> dict:
    return rest.api.limits.summary()["paths"]["data_api"]


async def test_learn_records_the_generated_sql_with_the_request_shape(guarded):
    set_mode(guarded, "learn")
    assert (await guarded.request("GET", SHAPE.format(1))).status_code == 200
    guarded.api.limits.allowlist.flush()
    entries = [e for e in read_list(guarded.api.limits.allowlist.path).statements.values() if "data_api" in e.paths]
    shaped = [e for e in entries if e.note == "Data API: GET books?select=id,title&id=eq.…"]
    assert len(shaped) == 1 and shaped[0].roles == ["authenticated"]
    assert "books" in shaped[0].sql and "$" in shaped[0].sql  # the normalised SQL, values as $n
    assert data_api_counts(guarded)["learned"] >= 1


async def test_enforce_serves_other_values_and_refuses_another_shape(guarded):
    set_mode(guarded, "learn")
    assert (await guarded.request("GET", SHAPE.format(1))).status_code == 200
    set_mode(guarded, "enforce")
    before = data_api_counts(guarded)
    other_values = await guarded.request("GET", SHAPE.format(3))
    assert other_values.status_code == 200 and other_values.json() == [{"id": 3, "title": "Old"}]
    refused = await guarded.request("GET", "/books?select=id,title,year&id=eq.1")
    assert refused.status_code == 403
    body = refused.json()
    assert set(body) == {"code", "details", "hint", "message"} and body["code"] == "42501"
    fingerprint = body["message"].split("(fingerprint ")[1].split(")")[0]
    assert body["message"] == (f'statement not in the allow-list for role "authenticated" (fingerprint {fingerprint}); '
                               f"approve it with: neon-local allowlist approve {fingerprint}")
    assert body["details"].startswith("request: Data API: GET books?select=id,title,year&id=eq.…; normalised statement: ")
    after = data_api_counts(guarded)
    assert after["refused"] == before["refused"] + 1 and after["allowed"] == before["allowed"] + 1
    recent = guarded.api.limits.summary()["allowlist"]["recent_refusals"][-1]
    assert recent["path"] == "data_api" and recent["fingerprint"] == fingerprint and recent["sql"].startswith("Data API: GET")

    # Approving the refused fingerprint (what `neon-local allowlist approve` does) lets the shape through.
    allowlist = guarded.api.limits.allowlist
    allowlist.flush()
    content = read_list(allowlist.path)
    content.statements[fingerprint] = content.refused.pop(fingerprint)
    write_list(allowlist.path, content)
    allowlist.load()
    assert (await guarded.request("GET", "/books?select=id,title,year&id=eq.2")).status_code == 200


async def test_writes_rpc_and_the_anonymous_role_are_checked_too(guarded):
    set_mode(guarded, "enforce")
    write = await guarded.request("PATCH", "/books?id=eq.1", json={"year": 2002})
    assert write.status_code == 403 and "Data API: PATCH books?id=eq.…" in write.json()["details"]
    call = await guarded.request("POST", "/rpc/add", json={"a": 1, "b": 2})
    assert call.status_code == 403 and "Data API: POST rpc/add" in call.json()["details"]
    anonymous = await guarded.request("GET", "/books?select=title", token=None)
    assert anonymous.status_code == 403 and 'for role "anonymous"' in anonymous.json()["message"]
    set_mode(guarded, "off")
    assert (await guarded.request("GET", "/books?select=title", token=None)).status_code == 200


async def test_neon_error_keys_on_a_refusal(settings, cluster, tmp_path):
    await create_fixture_db(settings, cluster)
    strict = settings.with_overrides(allowlist="enforce", data_api_compat="neon", allowlist_file=tmp_path / "a.toml")
    async with serve_rest(strict, cluster, tmp_path) as rest:
        refused = await rest.request("GET", "/authors?select=name")
        assert refused.status_code == 403
        assert set(refused.json()) == {"code", "detail", "hint", "message"} and refused.json()["code"] == "42501"


async def test_the_request_log_shows_data_api_requests(guarded):
    set_mode(guarded, "off")
    log = guarded.api.request_log
    last = log.entries()[-1]["id"] if log.entries() else 0
    token = guarded.token(sub="user_logged")
    assert (await guarded.request("GET", "/books?select=id&order=id&limit=2", token=token)).status_code == 200
    assert (await guarded.request("GET", "/nowhere", token=token)).status_code == 404
    assert (await guarded.request("OPTIONS", "/books")).status_code == 200
    read, missing = log.entries(after=last)  # the preflight is not logged
    assert read["method"] == "GET" and read["path"] == "/rest_test/rest/v1/books" and read["status"] == 200
    assert read["statement"] == "select=id&order=id&limit=2" and read["rows"] == 2
    assert read["role"] == "authenticated" and read["sub"] == "user_logged" and read["duration_ms"] >= 0
    assert read["error"] is None
    assert missing["status"] == 404 and missing["error"].startswith("Could not find the table") and missing["rows"] is None


@pytest.fixture
async def limited(settings, cluster, tmp_path):
    """8 attempts per 64 s on the http protocol, and 3 per 48 s per JWT sub or role."""
    await create_fixture_db(settings, cluster)
    limited_settings = settings.with_overrides(rate_limit="0.125@64s", rate_limit_identity="0.0625@48s",
                                               allowlist_file=tmp_path / "allow.toml")
    async with serve_rest(limited_settings, cluster, tmp_path) as rest:
        yield rest


async def test_identity_limit_is_429_with_retry_after(limited):
    token = limited.token(sub="user_flood")
    statuses = [(await limited.request("GET", "/authors?select=id", token=token)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await limited.request("GET", "/authors?select=id", token=limited.token(sub="user_other"))
    assert refused.status_code == 429  # the role "authenticated" is past its limit too
    body = refused.json()
    assert body == {"code": None, "details": None, "hint": None,
                    "message": 'Too many connections for role "authenticated". Please try again later.'}
    assert 1 <= int(refused.headers["Retry-After"]) <= 48
    assert limited.api.limits.summary()["paths"]["data_api"]["rate_limited"] == 2


async def test_endpoint_limit_is_neons_500(settings, cluster, tmp_path):
    await create_fixture_db(settings, cluster)
    limited_settings = settings.with_overrides(rate_limit="http=0.125@64s", allowlist_file=tmp_path / "allow.toml")
    async with serve_rest(limited_settings, cluster, tmp_path) as rest:
        statuses = [(await rest.request("GET", "/authors?select=id", token=rest.token(sub=f"u{n}"))).status_code
                    for n in range(9)]
        assert statuses == [200] * 8 + [500]
        refused = await rest.request("GET", "/authors?select=id", token=None)
        assert refused.status_code == 500
        assert refused.json() == {"code": None, "details": None, "hint": None, "message": TOO_MANY}
        assert "Retry-After" not in refused.headers
        assert rest.api.limits.summary()["paths"]["data_api"]["rate_limited"] == 2
        assert rest.api.limits.summary()["paths"]["http"]["rate_limited"] == 0  # /sql's count is its own
