"""`neon-local providers login`: the browser sign-in (OAuth code + PKCE) against a real OIDC provider, the
built-in issuer of a second neon-local, with a scripted browser that signs in as a test user."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import tomllib

import httpx
import pytest
from click.testing import CliRunner

from neon_local.app import Emulator
from neon_local.auth.oidc_login import sign_in
from neon_local.auth.provider_templates import TemplateError
from neon_local.cli import main
from neon_local.settings import load_settings

# What a person does in the browser: open the sign-in page, pick a test user, follow the redirect home.
BROWSER = textwrap.dedent("""
    import sys
    from urllib.parse import parse_qsl, urlsplit
    import httpx
    url = sys.argv[1]
    assert httpx.get(url).status_code == 200
    form = dict(parse_qsl(urlsplit(url).query)) | {"user": "carol"}
    back = httpx.post(url.split("?")[0], data=form)
    home = httpx.get(back.headers["Location"])
    assert home.status_code == 200, home.text
""")


@pytest.fixture
async def idp(tmp_path):
    project = tmp_path / "idp"
    project.mkdir()
    (project / "neon_local.toml").write_text('[users.carol]\nsub = "user_carol"\nemail = "carol@example.com"\norg_id = "org_c"\n')
    emulator = Emulator(load_settings(config_file=project / "neon_local.toml", env={}).with_overrides(
        http_port=0, pg_port=0, live_reload=False), write_state=False)
    await emulator.start()
    yield emulator
    await emulator.stop()


async def test_login_fills_in_provider_audience_issuer_and_a_test_user(idp, tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("NEON_LOCAL_")]:
        monkeypatch.delenv(name)
    script = tmp_path / "browser.py"
    script.write_text(BROWSER)
    monkeypatch.setenv("BROWSER", f"{sys.executable} {script} %s")
    config = tmp_path / "app" / "neon_local.toml"
    config.parent.mkdir()
    config.write_text("# my app\n")
    issuer = idp.endpoints.issuer_url
    result = await asyncio.to_thread(CliRunner().invoke, main, [
        "providers", "login", "--config", str(config), "--issuer", issuer, "--client-id", "my-app", "--id", "corp"])
    assert result.exit_code == 0, result.output
    assert "added provider corp" in result.output and "test user carol (sub user_carol)" in result.output
    written = tomllib.loads(config.read_text())
    assert written["jwks"] == [{"id": "corp", "jwks_url": f"{issuer}/.well-known/jwks.json", "provider_name": "corp",
                                "role_names": ["authenticated", "anonymous"], "jwt_audience": "my-app", "jwt_issuer": issuer}]
    assert written["users"]["carol"] == {"sub": "user_carol", "email": "carol@example.com", "org_id": "org_c"}
    assert config.read_text().startswith("# my app\n")

    # The app's emulator takes the provider's tokens for that audience, with the provider stopped.
    token = idp.services.issuer.mint(sub="user_carol", audience="my-app")
    await idp.stop()
    app = Emulator(load_settings(config_file=config, env={}).with_overrides(http_port=0, pg_port=0), write_state=False)
    await app.start()
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.post(app.endpoints.sql_url, json={"query": "select auth.user_id() as uid"},
                                       headers={"Neon-Connection-String": app.endpoints.authenticated_url,
                                                "Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json()["rows"] == [{"uid": "user_carol"}], answer.text
    finally:
        await app.stop()


async def test_a_refused_sign_in_writes_nothing(idp):
    async def deny(url: str) -> None:
        async with httpx.AsyncClient() as client:
            page = url.replace("response_type=code", "response_type=token")  # the provider redirects with an error
            back = await client.get(page)
            await client.get(back.headers["Location"])

    with pytest.raises(TemplateError) as refused:
        await sign_in(idp.endpoints.issuer_url, "my-app", lambda url: asyncio.get_running_loop().create_task(deny(url)))
    assert "the provider refused the sign-in: unsupported_response_type" in str(refused.value)
