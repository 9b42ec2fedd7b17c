"""supabase-py's `postgrest` client (PyPI) against the Data API: the crudPolicy table as alice and bob."""

from __future__ import annotations

import pytest
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from data_api_support import rest  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio


def client(rest, user: str) -> AsyncPostgrestClient:
    db = AsyncPostgrestClient(rest.url)
    db.auth(rest.issuer.mint(user))
    return db


async def test_each_user_reads_and_writes_only_their_rows(rest):
    alice, bob = client(rest, "alice"), client(rest, "bob")
    assert [r["task"] for r in (await alice.from_("todos").select("task").order("id").execute()).data] == ["a1", "a2"]
    assert [r["task"] for r in (await bob.from_("todos").select("task").execute()).data] == ["b1"]
    inserted = await alice.from_("todos").insert({"task": "py"}).execute()
    row = inserted.data[0]
    assert row["user_id"] == "user_alice"
    assert (await bob.from_("todos").update({"done": True}).eq("id", row["id"]).execute()).data == []
    counted = await alice.from_("todos").select("*", count="exact").execute()
    assert counted.count == 3
    single = await alice.from_("todos").select("task, lists(name)").eq("task", "a1").single().execute()
    assert single.data == {"task": "a1", "lists": {"name": "home"}}
    assert (await alice.rpc("add", {"a": 4, "b": 5}).execute()).data == 9
    assert (await alice.from_("todos").delete().eq("id", row["id"]).execute()).data[0]["task"] == "py"


async def test_errors_raise_api_error_with_the_code(rest):
    alice = client(rest, "alice")
    with pytest.raises(APIError) as missing:
        await alice.from_("nosuch").select("*").execute()
    assert missing.value.code == "PGRST205"
    with pytest.raises(APIError) as refused:
        await alice.from_("todos").insert({"task": "x", "user_id": "user_bob"}).execute()
    assert refused.value.code == "42501" and "row-level security" in refused.value.message
