"""The Data API's configuration in neon_local.toml: a [data_api] table with the management API's short names
(enabled, schemas, anon_role, max_rows, errors), and its token provider and audience as a [[jwks]] entry
for `authenticator`, which then is the only one the Data API takes tokens from, as on Neon."""

from __future__ import annotations

import json

import pytest

from data_api_support import create_fixture_db, serve_rest
from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.settings import ConfigError, load_settings

pytestmark = pytest.mark.asyncio


def settings_from(tmp_path, text: str):
    config = tmp_path / "neon_local.toml"
    config.write_text(text)
    return load_settings(env={}, config_file=config)


async def test_a_data_api_table_sets_the_data_api_settings(tmp_path):
    settings = settings_from(tmp_path, '[data_api]\nenabled = false\nschemas = ["api", "public"]\nanon_role = ""\n'
                                       'max_rows = 100\ncompat = "neon"\nopenapi_mode = "disabled"\n')
    assert (settings.data_api, settings.data_api_schemas, settings.data_api_anon_role) == (False, ("api", "public"), "")
    assert (settings.data_api_max_rows, settings.data_api_compat, settings.data_api_openapi_mode) == (100, "neon", "disabled")
    assert settings_from(tmp_path, "data_api_max_rows = 7\n").data_api_max_rows == 7  # the flat names still work


@pytest.mark.parametrize("text, message", [
    ("data_api_max_rows = 1\n[data_api]\nmax_rows = 2\n", "data_api_max_rows is set twice, at the top and in [data_api]"),
    ('[data_api]\njwks_url = "https://x"\n', "[data_api] has no setting 'jwks_url'; known: enabled, schemas, anon_role"),
    ('[data_api]\ncompat = "subzero"\n', '[data_api]: data_api_compat must be one of "postgrest", "neon"'),
    ('[data_api]\nopenapi_mode = "follow-privileges"\n', 'data_api_openapi_mode must be one of "ignore-privileges", "disabled"'),
])
async def test_a_bad_data_api_table_is_refused_with_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, text)
    assert message in str(caught.value)


async def test_a_provider_for_authenticator_is_the_data_apis_with_its_audience(settings, cluster, tmp_path):
    keys = KeyRing.load_or_create(tmp_path / "app-keys")
    (tmp_path / "app-jwks.json").write_text(json.dumps(keys.jwks()))
    loaded = settings_from(tmp_path, f'[[jwks]]\nid = "app"\njwks_file = "{tmp_path}/app-jwks.json"\n'
                                     'role_names = ["authenticator"]\njwt_audience = "my-app"\n')
    await create_fixture_db(settings, cluster)
    async with serve_rest(settings.with_overrides(providers=loaded.providers), cluster, tmp_path / "rest") as rest:
        app = Issuer(settings, keys, "https://auth.example")
        claims = {"role": "authenticated"}
        mine = await rest.request("GET", "/books?select=id", token=app.mint(sub="u1", claims=claims, audience="my-app"))
        assert mine.status_code == 200 and len(mine.json()) == 4
        other = await rest.request("GET", "/books", token=app.mint(sub="u1", claims=claims, audience="other-app"))
        assert other.status_code == 401 and other.json()["message"] == "invalid JWT token audience"
        builtin = await rest.request("GET", "/books", token=rest.token())  # the built-in issuer serves authenticated only
        assert builtin.status_code == 401 and builtin.json()["message"] == "jwk not found"


async def test_an_empty_anon_role_refuses_requests_without_a_role(settings, cluster, tmp_path):
    """data_api_anon_role = "": no token gets Neon's missing-credentials text, a token without `role` PGRST302."""
    await create_fixture_db(settings, cluster)
    async with serve_rest(settings.with_overrides(data_api_anon_role=""), cluster, tmp_path) as rest:
        tokenless = await rest.request("GET", "/books", token=None)
        assert tokenless.status_code == 401 and tokenless.json() == {"code": None, "details": None, "hint": None, "message":
            "missing authentication credentials: required authorization bearer token in JWT format"}
        roleless = await rest.request("GET", "/books", token=rest.token(role=None))
        assert roleless.status_code == 401 and roleless.json()["code"] == "PGRST302"
        assert roleless.json()["message"] == "Anonymous access is disabled"
        assert (await rest.request("GET", "/books?select=id")).status_code == 200
