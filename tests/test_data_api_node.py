"""The real postgrest-js clients (Supabase's, Neon's wrapper, and neon-js createClient) against the Data API,
on a Drizzle crudPolicy table as two users: each sees and changes only their own rows."""

from __future__ import annotations

import pytest

from data_api_support import rest, serve_rest  # noqa: F401 (fixture)
from http_support import run_node

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
async def clients(rest):
    env = {"REST_URL": rest.url, "ALICE": rest.issuer.mint("alice"), "BOB": rest.issuer.mint("bob")}
    return await run_node("data_api_clients.mjs", env)


@pytest.mark.parametrize("client", ["supabase", "neon", "neonjs"])
async def test_crud_policy_as_two_users(clients, client):
    r = clients[client]
    assert r["alice"] == ["a1", "a2"] and r["bob"] == ["b1"]
    assert r["insert"] == {"status": 201, "task": f"{client} new", "user_id": "user_alice"}
    assert r["bob_cannot_see"] == [] and r["bob_update"] == {"status": 200, "data": []}
    assert r["update"] == {"status": 200, "data": [{"done": True}]}
    assert r["count"] == {"status": 200, "count": 3}
    assert r["page"] == {"status": 206, "count": 3, "data": [{"task": "a1"}]}
    assert r["upsert"] == {"status": 201, "data": [{"task": f"{client} upserted"}]}
    assert r["delete"] == {"status": 200, "data": [{"task": f"{client} upserted"}]}


@pytest.mark.parametrize("client", ["supabase", "neon", "neonjs"])
async def test_filters_single_embedding_rpc(clients, client):
    r = clients[client]
    assert r["filters"] == [{"task": "a1"}]
    assert r["or"] == [{"task": "a2"}, {"task": "a1"}]
    assert r["maybe_none"] is None
    assert r["single_none"]["status"] == 406 and r["single_none"]["error"]["code"] == "PGRST116"
    assert r["embedded"] == [{"task": "a1", "lists": {"name": "home"}}]
    assert r["rpc"] == {"status": 200, "data": 3}  # a1, a2 and the upserted row
    assert r["rpc_get"] == 5


@pytest.mark.parametrize("client", ["supabase", "neon", "neonjs"])
async def test_errors_surface_with_their_codes(clients, client):
    r = clients[client]
    assert r["bad_column"]["status"] == 400 and r["bad_column"]["error"]["code"] == "42703"
    assert r["missing_table"]["status"] == 404 and r["missing_table"]["error"]["code"] == "PGRST205"
    assert r["missing_table"]["error"]["message"] == "Could not find the table 'public.nosuch' in the schema cache"


@pytest.fixture(scope="module")
async def neon_side(rest, settings, cluster, tmp_path_factory):
    """The same clients against data_api_compat = "neon" (Neon's `detail` key, 404 for an update matching nothing...)."""
    neon_settings = settings.with_overrides(data_api_compat="neon")
    async with serve_rest(neon_settings, cluster, tmp_path_factory.mktemp("rest-neon")) as neon:
        env = {"REST_URL": neon.url, "ALICE": neon.issuer.mint("alice"), "BOB": neon.issuer.mint("bob")}
        return await run_node("data_api_clients.mjs", env)


@pytest.mark.parametrize("client", ["supabase", "neon", "neonjs"])
async def test_what_the_clients_show_of_a_postgres_errors_detail(clients, neon_side, client):
    """PostgREST's `details` reaches error.details; with Neon's `detail` key the clients show none."""
    detail = 'Key is not present in table "lists".'  # no value: todos has RLS
    assert clients[client]["foreign_key"] == {"status": 409, "error": {
        "code": "23503", "details": detail, "hint": None,
        "message": 'insert or update on table "todos" violates foreign key constraint "todos_list_id_fkey"'}}
    shown = neon_side[client]["foreign_key"]
    assert shown["status"] == 409 and shown["error"]["code"] == "23503" and shown["error"]["details"] is None


@pytest.mark.parametrize("client", ["supabase", "neon", "neonjs"])
async def test_the_clients_work_the_same_against_neons_answers(clients, neon_side, client):
    """data_api_compat = "neon": bob's update matching nothing is a 404 with [], which postgrest-js shows as
    200 with no rows; all the clients see is as against PostgREST's answers but errors' details (Neon's key is detail)."""
    def seen(result):
        return {k: {**v, "error": {**v["error"], "details": None}} if isinstance(v, dict) and v.get("error") else v
                for k, v in result.items()}
    assert seen(neon_side[client]) == seen(clients[client])
    assert neon_side[client]["bob_update"] == {"status": 200, "data": []}
