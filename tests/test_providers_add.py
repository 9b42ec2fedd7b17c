"""`neon-local providers add` against a real OIDC provider over HTTP: a second neon-local's built-in issuer,
found by discovery or by a template's URL pattern, checked, stored, and usable offline once it is gone."""

from __future__ import annotations

import asyncio
import os
import tomllib

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner

from neon_local.app import Emulator
from neon_local.auth.keys import KeyRing
from neon_local.auth.provider_templates import TEMPLATES, TemplateError
from neon_local.cli import main
from neon_local.cli.auth import TEMPLATE_PARAMS
from neon_local.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("NEON_LOCAL_")]:
        monkeypatch.delenv(name)


async def cli(config, *args: str):
    """Run the CLI on its own thread: `providers add` runs its own event loop for the fetch."""
    return await asyncio.to_thread(CliRunner().invoke, main, [*args[:2], "--config", str(config), *args[2:]])


async def sql_as(emulator: Emulator, token: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(emulator.endpoints.sql_url, json={"query": "select auth.user_id() as uid"},
                                 headers={"Neon-Connection-String": emulator.endpoints.authenticated_url,
                                          "Authorization": f"Bearer {token}"})


async def test_discovered_provider_is_checked_stored_and_works_offline(tmp_path):
    provider = Emulator(Settings(project_dir=tmp_path / "idp", data_dir=tmp_path / "idp" / "data", http_port=0, pg_port=0),
                        write_state=False)
    await provider.start()
    config = tmp_path / "app" / "neon_local.toml"
    config.parent.mkdir()
    config.write_text("# the app\nhttp_port = 0\npg_port = 0\n")
    try:
        issuer = provider.endpoints.issuer_url
        added = await cli(config, "providers", "add", issuer, "--id", "idp", "--role", "authenticated")
        assert added.exit_code == 0, added.output
        assert f"{issuer}/.well-known/jwks.json: 2 key(s) Neon can verify with (" in added.output
        # A template's pattern on a self-hosted URL: PropelAuth serves {url}/.well-known/jwks.json.
        added = await cli(config, "providers", "add", "propelauth", "--url", issuer + "/", "--id", "prop", "--role", "anonymous")
        assert added.exit_code == 0, added.output
        missing = await cli(config, "providers", "add", "keycloak", "--url", issuer, "--realm", "app")
        assert missing.exit_code == 1
        assert f"{issuer}/realms/app/protocol/openid-connect/certs: HTTP 400, expected 200 with the JWKS. Nothing was written." in missing.output
        token = provider.services.issuer.mint(sub="user_from_idp")
    finally:
        await provider.stop()

    text = config.read_text()
    assert text.startswith("# the app\nhttp_port = 0\npg_port = 0\n")
    tables = {t["id"]: t for t in tomllib.loads(text)["jwks"]}
    assert tables["idp"] == {"id": "idp", "jwks_url": f"{issuer}/.well-known/jwks.json", "provider_name": "idp",
                             "role_names": ["authenticated"]}
    assert tables["prop"]["jwks_url"] == f"{issuer}/.well-known/jwks.json" and tables["prop"]["provider_name"] == "PropelAuth"
    assert "keycloak" not in tables

    # The provider is gone: the app's emulator verifies its tokens from the keys cached by `providers add`.
    app = Emulator(load_settings(config_file=config, env={}), write_state=False)
    await app.start()
    try:
        answer = await sql_as(app, token)
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [{"uid": "user_from_idp"}]
    finally:
        await app.stop()
    listed = await cli(config, "providers", "list")
    assert "idp" in listed.output and "3 cached keys" in listed.output


async def test_an_eddsa_only_provider_is_stored_with_a_warning(tmp_path):
    keys = KeyRing.load_or_create(tmp_path / "keys").jwks()
    okp_only = {"keys": [k for k in keys["keys"] if k["kty"] == "OKP"]}
    app = web.Application()
    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(okp_only)

    app.router.add_get("/api/auth/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    config = tmp_path / "neon_local.toml"
    config.write_text("")
    try:
        added = await cli(config, "providers", "add", "better-auth", "--url", url)
    finally:
        await runner.cleanup()
    assert added.exit_code == 0, added.output
    assert "0 key(s) Neon can verify with" in added.output
    assert "holds only Ed25519 (EdDSA) keys" in added.output and 'compat = "extended"' in added.output
    assert "Better Auth signs with EdDSA by default" in added.output
    assert tomllib.loads(config.read_text())["jwks"][0]["jwks_url"] == url + "/api/auth/jwks"


def test_templates_build_each_providers_url_and_name_missing_parameters():
    def url(name: str, **params: str) -> str:
        return TEMPLATES[name].jwks_url(params)

    assert url("clerk", domain="https://my-app.clerk.accounts.dev/") == "https://my-app.clerk.accounts.dev/.well-known/jwks.json"
    assert url("cognito", region="eu-west-1", user_pool_id="eu-west-1_Ab") == \
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab/.well-known/jwks.json"
    assert url("stytch", project_id="project-test-1") == "https://test.stytch.com/v1/sessions/jwks/project-test-1"
    assert url("stytch", project_id="project-live-1") == "https://api.stytch.com/v1/sessions/jwks/project-live-1"
    assert url("azure") == "https://login.microsoftonline.com/common/discovery/v2.0/keys"
    assert url("workos", client_id="client_1") == "https://api.workos.com/sso/jwks/client_1"
    assert {name for t in TEMPLATES.values() for name in t.needs} <= set(TEMPLATE_PARAMS)  # each has its --flag
    assert TEMPLATES["firebase"].audience({"project_id": "my-proj"}) == "my-proj"
    with pytest.raises(TemplateError) as refused:
        url("keycloak", url="https://kc.example")
    assert "Keycloak needs --realm ..." in str(refused.value)
