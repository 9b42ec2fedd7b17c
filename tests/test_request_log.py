"""The live request log sees every path: /sql requests and TCP sessions, opened or refused, in one log."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from neon_local.app import Emulator
from neon_local.settings import Settings


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("request-log")
    emu = Emulator(Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0), write_state=False)
    await emu.start()
    yield emu
    await emu.stop()


async def test_sql_requests_and_tcp_sessions_share_one_log(emulator):
    log = emulator.services.sql.request_log
    assert emulator.services.pg_proxy.context.request_log is log
    token = emulator.services.issuer.mint(sub="user_alice")
    async with httpx.AsyncClient() as client:
        response = await client.post(emulator.endpoints.sql_url, json={"query": "select auth.user_id()"}, headers={
            "Neon-Connection-String": "postgresql://authenticated@127.0.0.1/neondb", "Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                                     password=token, dbname="neondb", sslmode="require"):
        pass
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(host="127.0.0.1", port=emulator.endpoints.pg_port, user="authenticated",
                                              password="not-a-jwt", dbname="neondb", sslmode="require")
    entries = log.entries()
    assert [(e["path"], e["sub"], e["error"] is None) for e in entries[-3:]] == [
        ("/sql", "user_alice", True), ("tcp", "user_alice", True), ("tcp", None, False)]
    assert entries[-1]["role"] == "authenticated" and "not a valid JWT encoding" in entries[-1]["error"]
