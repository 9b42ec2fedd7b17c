"""Helpers for the hardening tests: a whole emulator in this process, and checks of Neon's error shapes."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx

from neon_local.app import Emulator
from neon_local.settings import Settings
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder

NEON_ERROR_KEYS = [
    "message", "code", "detail", "hint", "position", "internalPosition", "internalQuery", "severity", "where",
    "table", "column", "schema", "dataType", "constraint", "file", "line", "routine",
]


def emulator_settings(directory: Path, **changes) -> Settings:
    return Settings(project_dir=directory, data_dir=directory / "data", http_port=0, pg_port=0, **changes)


@asynccontextmanager
async def running_emulator(directory: Path, **changes):
    """A started emulator (Postgres, /sql, WebSocket, TCP) on free loopback ports; stopped on exit."""
    emulator = Emulator(emulator_settings(directory, **changes), write_state=False)
    try:
        await emulator.start()
        yield emulator
    finally:
        await emulator.stop()


def owner_conn_string(emulator: Emulator, dbname: str | None = None) -> str:
    s = emulator.settings
    return f"postgresql://{s.owner}:{s.owner_password}@localhost/{dbname or s.database}"


def jwt_conn_string(emulator: Emulator, role: str = "authenticated") -> str:
    return f"postgresql://{role}@localhost/{emulator.settings.database}"


async def post_sql(client: httpx.AsyncClient, emulator: Emulator, body, *, token: str | None = None,
                   conn: str | None = None, headers: dict | None = None) -> httpx.Response:
    """POST /sql as the owner, or as `authenticated` with `token`; `body` is a dict or raw bytes."""
    sent = {"Neon-Connection-String": conn or (jwt_conn_string(emulator) if token else owner_conn_string(emulator)),
            **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await client.post(emulator.endpoints.sql_url, content=content, headers=sent, timeout=60)


def neon_error(response: httpx.Response) -> dict:
    """The response's body, checked to be Neon's 17-key JSON error."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.text
    body = response.json()
    assert list(body) == NEON_ERROR_KEYS, body
    return body


class WsPg:
    """A raw Postgres-over-WebSocket client: bytes out, parsed messages in."""

    def __init__(self, session: aiohttp.ClientSession, ws) -> None:
        self.session, self.ws, self.decoder = session, ws, FrameDecoder()

    @classmethod
    async def connect(cls, emulator: Emulator, origin: str | None = None) -> WsPg:
        session = aiohttp.ClientSession()
        headers = {"Origin": origin} if origin else {}
        ws = await session.ws_connect(f"ws://127.0.0.1:{emulator.endpoints.http_port}/v2", headers=headers)
        return cls(session, ws)

    async def login(self, user: str, password: str, database: str = "neondb") -> list[m.Message]:
        await self.ws.send_bytes(m.startup_message({"user": user, "database": database}) + m.password_message(password))
        return await self.until_ready()

    async def message(self) -> m.Message | None:
        while (message := self.decoder.next_message(1 << 30)) is None:
            frame = await asyncio.wait_for(self.ws.receive(), 30)
            if frame.type != aiohttp.WSMsgType.BINARY:
                return None
            self.decoder.feed(frame.data)
        return message

    async def until_ready(self) -> list[m.Message]:
        """Messages up to ReadyForQuery, or up to the end of the connection."""
        out = []
        while (message := await self.message()) is not None:
            out.append(message)
            if message.type == b"Z":
                break
        return out

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def error_of(messages: list[m.Message]) -> dict[str, str] | None:
    errors = [m.error_fields(msg.body) for msg in messages if msg.type == b"E"]
    return errors[0] if errors else None
