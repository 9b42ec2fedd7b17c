"""Rate limits: Neon's bucket arithmetic on a fake clock, then each protocol refusing at the configured number."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from aiohttp import web

from http_support import serve_sql_http
from neon_local.limits import ClientLimits
from neon_local.limits.rate import NEON_PRESET, TOO_MANY, RateBucket, RateLimited, RateLimiter, WindowedLimiter, parse_spec
from neon_local.serverless.websocket import WebSocketAdapter
from neon_local.settings import ConfigError
from neon_local.testing.websocket import WebSocketBridge
from proxy_support import start_proxy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_neon_preset_is_neons_default_set():
    assert parse_spec("neon") == parse_spec(NEON_PRESET) == (
        RateBucket(500, 1), RateBucket(300, 60), RateBucket(200, 600))
    assert [b.max_requests for b in parse_spec("neon")] == [500, 18_000, 120_000]
    assert parse_spec("") == parse_spec("off") == ()
    with pytest.raises(ValueError, match="rps@interval"):
        parse_spec("500 per second")


def test_limits_per_protocol():
    clock = Clock()
    limiter = RateLimiter("tcp=neon; http=2@1s", "", clock)
    assert [b.max_requests for b in limiter._endpoint["tcp"].buckets] == [500, 18_000, 120_000]
    assert limiter._endpoint["ws"].buckets == ()
    limiter.check_endpoint("http")
    limiter.check_endpoint("http")
    with pytest.raises(RateLimited, match="Too many connections to this endpoint"):
        limiter.check_endpoint("http")
    limiter.check_endpoint("ws")
    with pytest.raises(ValueError, match="one of tcp, ws, http"):
        RateLimiter("udp=neon")


def test_every_bucket_must_allow_and_only_allowed_attempts_count():
    clock = Clock()
    limiter = WindowedLimiter(parse_spec("5@1s,2@5s"), clock)  # 5 per 1 s window, 10 per 5 s window
    assert [limiter.check("e") for _ in range(5)] == [None] * 5
    assert limiter.check("e") is not None  # the 1 s bucket is full
    clock.now += 1.01  # its window restarts; the refusal above was not counted
    assert [limiter.check("e") for _ in range(5)] == [None] * 5
    clock.now += 1.01
    wait = limiter.check("e")  # now the 5 s bucket (10) is full
    assert wait == pytest.approx(5 - 2.02)
    clock.now += 3
    assert limiter.check("e") is None


def test_identity_limits_are_per_role_and_per_sub():
    clock = Clock()
    limiter = RateLimiter("", "2@1s", clock)
    limiter.check_identity("authenticated", "user_alice")
    limiter.check_identity("authenticated", "user_bob")
    with pytest.raises(RateLimited, match='Too many connections for role "authenticated"'):
        limiter.check_identity("authenticated", "user_carol")
    limiter.check_identity("anonymous", "user_alice")
    with pytest.raises(RateLimited, match='for sub "user_alice"') as refused:
        limiter.check_identity("other", "user_alice")
    assert 0 < refused.value.retry_after <= 1 and not refused.value.endpoint


def test_a_bad_spec_is_a_config_error(settings, tmp_path):
    with pytest.raises(ConfigError, match="rate_limit"):
        ClientLimits.of(settings.with_overrides(rate_limit="lots", allowlist_file=tmp_path / "a.toml"))


@pytest.fixture
async def limited(settings, cluster, tmp_path):
    """/sql, TCP and WebSocket allowing 8 attempts per 64 s per protocol, and 3 per 48 s per JWT sub or role."""
    limited_settings = settings.with_overrides(rate_limit="0.125@64s", rate_limit_identity="0.0625@48s",
                                               allowlist_file=tmp_path / "allow.toml")
    proxy = await start_proxy(limited_settings, cluster, tmp_path / "proxy")
    app = web.Application()
    app.router.add_get("/{tail:.*}", WebSocketAdapter(proxy.server).handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    bridge = WebSocketBridge(f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v2").start()
    async with serve_sql_http(limited_settings, cluster, tmp_path / "http") as http:
        yield http, proxy, bridge
    bridge.stop()
    await runner.cleanup()
    await proxy.server.close()
    await proxy.server.context.control_plane.close()


async def test_sql_endpoint_limit_is_neons_500(limited):
    http, _, _ = limited
    statuses = [(await http.post({"query": "select 1", "params": []})).status_code for _ in range(8)]
    assert statuses == [200] * 8
    refused = await http.post({"query": "select 1", "params": []})
    assert refused.status_code == 500
    body = refused.json()
    assert body["message"] == TOO_MANY and body["code"] == "" and len(body) == 17
    assert "Retry-After" not in refused.headers  # Neon's answer has none


async def test_sql_identity_limit_429_with_retry_after_and_the_owner_unaffected(limited):
    http, _, _ = limited
    token = http.token("user_flood")
    answers = [await http.post({"query": "select 1", "params": []}, conn=http.jwt_conn_string(), token=token)
               for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["message"] == 'Too many connections for role "authenticated". Please try again later.'
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert (await http.post({"query": "select 1", "params": []})).status_code == 200  # the owner


@pytest.mark.parametrize("protocol", ["tcp", "ws"])
async def test_session_endpoint_limit_is_neons_error_response(limited, protocol):
    _, proxy, bridge = limited
    url = (proxy.owner_url() if protocol == "tcp" else
           f"postgresql://{proxy.settings.owner}:{proxy.settings.owner_password}@127.0.0.1:{bridge.port}/neondb?sslmode=disable")
    for _ in range(8):
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError) as refused:
        await psycopg.AsyncConnection.connect(url)
    assert TOO_MANY in str(refused.value)


async def test_session_identity_limit_leaves_the_owner_in(limited):
    _, proxy, _ = limited
    url = proxy.url("authenticated", proxy.token("user_flood"))
    for _ in range(3):
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError, match='Too many connections for role "authenticated"'):
        await psycopg.AsyncConnection.connect(url)
    async with await psycopg.AsyncConnection.connect(proxy.owner_url()) as conn:
        assert await (await conn.execute("select 1")).fetchone() == (1,)


async def test_limits_in_the_list_file_apply_without_restart(settings, cluster, tmp_path):
    from neon_local.limits.store import read_list, write_list

    path = tmp_path / "allow.toml"
    async with serve_sql_http(settings.with_overrides(allowlist_file=path), cluster, tmp_path / "http") as http:

        async def statuses_until(status: int) -> int:
            for _ in range(200):  # the watcher looks at the file every second
                response = await http.post({"query": "select 1", "params": []})
                if response.status_code == status:
                    return response
                await asyncio.sleep(0.05)
            raise AssertionError(f"no {status} after the file changed")

        assert (await http.post({"query": "select 1", "params": []})).status_code == 200
        content = read_list(path)
        content.limits = {"rate_limit": "0.01@100s"}  # one request per 100 s window
        write_list(path, content)
        assert (await statuses_until(500)).json()["message"] == TOO_MANY
        content.limits = {}
        write_list(path, content)
        await statuses_until(200)
