"""External JWKS providers over real HTTP: Neon's fetch limits, refresh rules, the disk cache, and the CLI."""

import asyncio
import base64
import json
import time

import pytest
from aiohttp import web
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey

from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import FetchError, Limits, ProviderCache, fetch_jwks
from neon_local.auth.verifier import JwtError, Verifier
from neon_local.cli.auth import providers
from neon_local.settings import Provider, Settings, load_settings

FAST = Limits(retry_backoff=0.01)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    """A provider's ES256 key: its public JWK and tokens signed with it."""

    def __init__(self, kid):
        self.kid = kid
        self.key = ECKey.generate_key("P-256")

    def jwk(self):
        return self.key.as_dict(private=False) | {"kid": self.kid, "alg": "ES256", "use": "sig"}

    def token(self, **claims):
        header = b64(json.dumps({"alg": "ES256", "kid": self.kid}).encode())
        payload = b64(json.dumps({"sub": "ext_user", "exp": int(time.time()) + 600} | claims).encode())
        r, s = decode_dss_signature(self.key.private_key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256())))
        return f"{header}.{payload}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class JwksServer:
    """An aiohttp JWKS server on 127.0.0.1 whose answers a test can change."""

    def __init__(self):
        self.keys = [SigningKey("ext-1")]
        self.hits = {"/jwks.json": 0, "/moved": 0}
        self.failures = []  # statuses to answer before the next good response
        self.delay = 0.0
        self.body = None
        self.chunked = False
        self.runner = None

    async def start(self):
        app = web.Application()
        app.router.add_get("/jwks.json", self.jwks)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/moved", self.jwks)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        return self

    async def redirect(self, request):
        raise web.HTTPFound("/moved")

    async def jwks(self, request):
        self.hits[request.path] += 1
        await asyncio.sleep(self.delay)
        if self.failures:
            return web.Response(status=self.failures.pop(0))
        body = self.body if self.body is not None else json.dumps({"keys": [k.jwk() for k in self.keys]}).encode()
        if self.chunked:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 4096):
                await response.write(body[start : start + 4096])
            await response.write_eof()
            return response
        return web.Response(body=body, content_type="application/json")

    async def stop(self):
        await self.runner.cleanup()


@pytest.fixture
async def server():
    running = await JwksServer().start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    return KeyRing.load_or_create(tmp_path_factory.mktemp("ring"))


def setup(tmp_path, ring, url, limits=FAST, **provider):
    settings = Settings(project_dir=tmp_path, providers=(Provider("neon-local"), Provider("ext", jwks_url=url, **provider)))
    cache = ProviderCache(settings, tmp_path / "jwks-cache", limits)
    return settings, cache, Verifier(settings, ring, cache)


def test_defaults_are_neon_s_limits():
    assert Limits() == Limits(max_body=65536, connect_timeout=2.0, total_timeout=5.0, retries=3, retry_backoff=1.0, min_renew=30.0, auto_renew=300.0)


async def test_keys_are_fetched_once_and_written_to_disk(tmp_path, ring, server):
    _, _, verifier = setup(tmp_path, ring, server.url)
    verified = await verifier.verify(server.keys[0].token(), "authenticated")
    assert verified.provider_id == "ext" and verified.claims["sub"] == "ext_user"
    await verifier.verify(server.keys[0].token(n=2), "anonymous")
    assert server.hits["/jwks.json"] == 1
    record = json.loads((tmp_path / "jwks-cache" / "ext.json").read_text())
    assert record["jwks_url"] == server.url and record["jwks"]["keys"][0]["kid"] == "ext-1"


async def test_concurrent_first_use_fetches_once(tmp_path, ring, server):
    _, _, verifier = setup(tmp_path, ring, server.url)
    tokens = [server.keys[0].token(n=i) for i in range(10)]
    await asyncio.gather(*(verifier.verify(t, "authenticated") for t in tokens))
    assert server.hits["/jwks.json"] == 1


async def test_unknown_kid_refetches_at_most_every_min_renew(tmp_path, ring, server):
    _, _, verifier = setup(tmp_path, ring, server.url, Limits(retry_backoff=0.01, min_renew=0.3))
    old = server.keys[0]
    await verifier.verify(old.token(), "authenticated")
    server.keys = [SigningKey("ext-2")]  # the provider rotates and drops the old key
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(server.keys[0].token(), "authenticated")
    assert server.hits["/jwks.json"] == 1  # under min_renew since the last fetch: no refetch
    await asyncio.sleep(0.35)
    assert (await verifier.verify(server.keys[0].token(), "authenticated")).claims["sub"] == "ext_user"
    assert server.hits["/jwks.json"] == 2
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(old.token(), "authenticated")  # its cached result went with the key set


async def test_stale_keys_are_refreshed_in_the_background(tmp_path, ring, server):
    _, cache, verifier = setup(tmp_path, ring, server.url, Limits(retry_backoff=0.01, auto_renew=0.2))
    await verifier.verify(server.keys[0].token(), "authenticated")
    server.keys.append(SigningKey("ext-2"))
    await asyncio.sleep(0.25)
    await verifier.verify(server.keys[0].token(n=1), "authenticated")  # served from the old set at once
    await asyncio.sleep(0.1)
    assert server.hits["/jwks.json"] == 2
    assert "ext-2" in (await cache.keys(Provider("ext", jwks_url=server.url))).by_kid


async def test_keys_keep_working_offline_after_the_server_is_gone(tmp_path, ring, server, caplog):
    _, _, verifier = setup(tmp_path, ring, server.url)
    token = server.keys[0].token()
    await verifier.verify(token, "authenticated")
    await server.stop()
    # A new process: nothing in memory, the server unreachable, every refresh failing.
    _, _cache, offline = setup(tmp_path, ring, server.url, Limits(retry_backoff=0.01, retries=1, auto_renew=0))
    assert (await offline.verify(server.keys[0].token(n=1), "authenticated")).provider_id == "ext"
    await asyncio.sleep(0.2)
    assert "keeping the 1 keys cached before" in caplog.text
    assert (await offline.verify(token, "authenticated")).claims["sub"] == "ext_user"


async def test_redirects_are_not_followed(tmp_path, ring, server, caplog):
    _, _, verifier = setup(tmp_path, ring, server.url.replace("/jwks.json", "/redirect"))
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(server.keys[0].token(), "authenticated")
    assert server.hits["/moved"] == 0
    assert "HTTP 302, expected 200" in caplog.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_over_64_kib_are_refused(tmp_path, ring, server, chunked, caplog):
    padding = [{"kty": "oct", "kid": f"pad{i}", "use": "enc", "k": "A" * 64} for i in range(1000)]
    server.body = json.dumps({"keys": [server.keys[0].jwk(), *padding]}).encode()
    server.chunked = chunked
    assert len(server.body) > 65536
    _, _, verifier = setup(tmp_path, ring, server.url)
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(server.keys[0].token(), "authenticated")
    assert "the JWKS is larger than 65536 bytes" in caplog.text


async def test_slow_servers_hit_the_total_timeout(server):
    server.delay = 2.0
    started = time.monotonic()
    with pytest.raises(FetchError, match="TimeoutError"):
        await fetch_jwks(server.url, Limits(total_timeout=0.3, retries=0), "slow")
    assert time.monotonic() - started < 1.5


async def test_transient_failures_are_retried_and_others_are_not(server):
    server.failures = [503, 429]
    assert (await fetch_jwks(server.url, FAST))["keys"][0]["kid"] == "ext-1"
    assert server.hits["/jwks.json"] == 3
    server.failures = [404]
    with pytest.raises(FetchError, match="HTTP 404, expected 200"):
        await fetch_jwks(server.url, FAST, "gone")
    assert server.hits["/jwks.json"] == 4


async def test_unreachable_servers_fail_after_the_retries(server):
    await server.stop()
    with pytest.raises(FetchError, match=r"ClientConnectorError.*\(after 3 retries\)"):
        await fetch_jwks(server.url, FAST, "down")


async def test_only_http_urls_are_fetched():
    with pytest.raises(FetchError, match="only http:// and https:// JWKS URLs are fetched"):
        await fetch_jwks("file:///etc/passwd", FAST)


async def test_a_jwks_without_usable_keys_keeps_the_old_ones(tmp_path, ring, server, caplog):
    _, _cache, verifier = setup(tmp_path, ring, server.url, Limits(retry_backoff=0.01, min_renew=0))
    token = server.keys[0].token()
    await verifier.verify(token, "authenticated")
    server.body = b'{"keys": [{"kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB"}]}'
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(SigningKey("other").token(), "authenticated")
    assert "no usable signing keys" in caplog.text
    server.body = b"<html>oops</html>"
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(SigningKey("other").token(), "authenticated")
    assert "the JWKS is not JSON" in caplog.text
    assert (await verifier.verify(token, "authenticated")).provider_id == "ext"


async def test_audience_and_roles_come_from_the_provider(tmp_path, ring, server):
    _, _, verifier = setup(tmp_path, ring, server.url, role_names=("authenticated",), jwt_audience="my-app")
    with pytest.raises(JwtError, match="^invalid JWT token audience$"):
        await verifier.verify(server.keys[0].token(), "authenticated")
    token = server.keys[0].token(aud=["other", "my-app"])
    assert (await verifier.verify(token, "authenticated")).claims["aud"] == ["other", "my-app"]
    with pytest.raises(JwtError, match="^jwk not found$"):
        await verifier.verify(token, "anonymous")


async def test_jwks_file_providers_are_read_relative_to_the_project(tmp_path, ring):
    first, second = SigningKey("file-1"), SigningKey("file-2")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [first.jwk()]}))
    settings = Settings(project_dir=tmp_path, providers=(Provider("neon-local"), Provider("file", jwks_file=tmp_path.joinpath("jwks.json").relative_to(tmp_path))))
    verifier = Verifier(settings, ring, ProviderCache(settings, tmp_path / "cache", Limits(min_renew=0)))
    assert (await verifier.verify(first.token(), "authenticated")).provider_id == "file"
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [first.jwk(), second.jwk()]}))
    assert (await verifier.verify(second.token(), "authenticated")).provider_id == "file"
    assert not (tmp_path / "cache").exists()


def test_providers_cli_adds_lists_and_removes_tables(tmp_path, monkeypatch):
    config = tmp_path / "neon_local.toml"
    config.write_text('compat = "neon"\n\n[users.carol]\nsub = "user_carol"\n')
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)  # the CLI finds neon_local.toml from the working directory, as for a user

    def run(*args):
        return runner.invoke(providers, list(args))

    added = run("add", "clerk", "--jwks-url", "https://x.clerk.accounts.dev/.well-known/jwks.json", "--role", "authenticated", "--audience", 'a "quoted" \\ aud', "--issuer", "https://x.clerk.accounts.dev")
    assert added.exit_code == 0, added.output
    assert run("add", "local", "--jwks-file", "keys/jwks.json", "--provider-name", "Ünïcode").exit_code == 0
    settings = load_settings(cwd=tmp_path)
    clerk, local = settings.providers[1:]
    assert clerk.role_names == ("authenticated",) and clerk.jwt_audience == 'a "quoted" \\ aud'
    assert clerk.jwt_issuer == "https://x.clerk.accounts.dev"
    assert local.jwks_file.as_posix() == "keys/jwks.json" and local.provider_name == "Ünïcode"
    assert local.role_names == ("authenticated", "anonymous")
    listed = run("list").output.splitlines()
    assert [line.split()[0] for line in listed] == ["neon-local", "clerk", "local"]
    assert "never fetched" in listed[1] and 'aud=a "quoted"' in listed[1]
    assert "exists already" in run("add", "clerk", "--jwks-url", "https://y").output
    assert "exactly one of --jwks-url and --jwks-file" in run("add", "x").output
    assert "cannot be removed" in run("remove", "neon-local").output
    removed = run("remove", "clerk")
    assert removed.exit_code == 0 and "removed provider clerk" in removed.output
    assert [p.id for p in load_settings(cwd=tmp_path).providers] == ["neon-local", "local"]
    assert run("remove", "local").exit_code == 0
    assert config.read_text() == 'compat = "neon"\n\n[users.carol]\nsub = "user_carol"\n'


def test_providers_cli_creates_the_config_file_when_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(providers, ["add", "auth0", "--jwks-url", "https://t.auth0.com/.well-known/jwks.json"])
    assert result.exit_code == 0
    assert [p.id for p in load_settings(cwd=tmp_path).providers] == ["neon-local", "auth0"]


async def test_removing_a_provider_forgets_its_cached_keys(tmp_path, ring, server):
    settings, cache, verifier = setup(tmp_path, ring, server.url)
    await verifier.verify(server.keys[0].token(), "authenticated")
    cache.forget(settings.providers[1])
    assert not (tmp_path / "jwks-cache" / "ext.json").exists()
    assert verifier.verify_cached(server.keys[0].token(), "authenticated") is None
