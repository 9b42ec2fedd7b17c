"""The built-in issuer over real HTTP: JWKS and discovery, mint, client credentials, the code flow with PKCE
through authlib, userinfo, and the `token` CLI."""

import base64
import hashlib
import html
import json
import re
import socket
import time
from urllib.parse import parse_qs, urlsplit

import click
import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import Limits, ProviderCache
from neon_local.auth.verifier import JwtError, Verifier
from neon_local.cli.auth import mint_for_cli
from neon_local.cli.auth import token as token_command
from neon_local.settings import Provider, Settings

pytestmark = pytest.mark.filterwarnings("ignore::authlib.deprecate.AuthlibDeprecationWarning")

REDIRECT_URI = "http://127.0.0.1:9/callback"


class IssuerServer:
    """The issuer's routes on an aiohttp server at 127.0.0.1 with a free port, optionally under a path."""

    def __init__(self, settings, ring, path=""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"
        self.issuer = Issuer(settings, ring, self.url)

    async def start(self):
        app = web.Application()
        app.add_routes(self.issuer.routes())
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        return self

    async def stop(self):
        await self.runner.cleanup()


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(project_dir=tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def ring(settings):
    return KeyRing.load_or_create(settings.resolved_data_dir / "keys")


@pytest.fixture(scope="module")
async def server(settings, ring):
    running = await IssuerServer(settings, ring).start()
    yield running
    await running.stop()


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture(scope="module")
def verifier(settings, ring):
    return Verifier(settings, ring, ProviderCache(settings))


def claims_of(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def header_of(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))


async def test_jwks_document_has_the_required_members(server, http):
    response = await http.get(server.url + "/.well-known/jwks.json")
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
    keys = response.json()["keys"]
    assert len({k["kid"] for k in keys}) == len(keys) == 3
    required = {"EC": {"crv", "x", "y"}, "RSA": {"n", "e"}, "OKP": {"crv", "x"}}  # RFC 7518 §6, RFC 8037 §2
    for key in keys:
        assert required[key["kty"]] <= set(key) and key["use"] == "sig" and key["alg"] in ("ES256", "RS256", "EdDSA")
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    assert KeySet.import_key_set(response.json())


async def test_discovery_document_has_the_required_fields(server, http):
    response = await http.get(server.url + "/.well-known/openid-configuration")
    doc = response.json()
    # OpenID Connect Discovery 1.0 §3 REQUIRED, plus RFC 8414 §3.3: issuer equals the URL it was fetched under.
    for field in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported",
                  "subject_types_supported", "id_token_signing_alg_values_supported"):
        assert doc[field], field
    assert doc["issuer"] == server.url
    assert "RS256" in doc["id_token_signing_alg_values_supported"]  # "RS256 MUST be included"
    assert "code" in doc["response_types_supported"] and doc["code_challenge_methods_supported"] == ["S256"]
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert doc[endpoint].startswith(server.url + "/")
    assert (await http.get(doc["jwks_uri"])).json()["keys"]


async def test_minted_tokens_verify_through_the_published_jwks(server, http, settings, ring, tmp_path):
    """The JWKS as an external provider sees it: fetched over HTTP, then used by Neon's rules."""
    remote = Settings(project_dir=tmp_path, providers=(Provider("remote", jwks_url=server.url + "/.well-known/jwks.json"),))
    verifier = Verifier(remote, ring, ProviderCache(remote, tmp_path / "cache", Limits(retry_backoff=0.01)))
    for alg in ("ES256", "RS256"):
        response = await http.post(server.url + "/oauth/mint", json={"user": "alice", "alg": alg, "claims": {"plan": "pro"}})
        verified = await verifier.verify(response.json()["token"], "authenticated")
        assert verified.provider_id == "remote" and verified.claims["plan"] == "pro"
        assert verified.claims["iss"] == server.url and verified.claims["sub"] == "user_alice"


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"user": "bob", "expired": True}, r"^JWT token has expired \(exp=\d+\)$"),
        ({"sub": "x", "not_before": 3600}, r"^JWT token is not yet ready to use \(nbf=\d+\)$"),
        ({"user": "bob", "kid": False}, "^missing key id$"),
        ({"user": "bob", "alg": "EdDSA"}, r"^unsupported key type Okp\(Ed25519\)$"),
    ],
    ids=["expired", "not yet valid", "no kid", "EdDSA"],
)
async def test_mint_makes_the_tokens_neon_refuses(server, http, verifier, options, expected):
    token = (await http.post(server.url + "/oauth/mint", json=options)).json()["token"]
    with pytest.raises(JwtError, match=expected):
        await verifier.verify(token, "authenticated")


async def test_mint_sets_audience_lifetime_and_not_before(server, http):
    before = int(time.time())
    token = (await http.post(server.url + "/oauth/mint", json={"sub": "svc", "audience": "my-api", "lifetime": 60, "not_before": 10})).json()["token"]
    claims = claims_of(token)
    assert list(claims) == ["iss", "sub", "aud", "iat", "nbf", "exp"]
    assert claims["aud"] == "my-api" and claims["exp"] - claims["iat"] == 60 and claims["nbf"] >= before + 10
    assert header_of(token) == {"typ": "JWT", "alg": "ES256", "kid": server.issuer._keyring.active("ES256").kid}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"user": "mallory"}, "no test user 'mallory' in neon_local.toml (known: alice, bob); or pass a sub instead"),
        ({}, "name a test user or give a sub"),
        ({"user": "alice", "alg": "HS256"}, "alg must be one of ES256, RS256, EdDSA, got 'HS256'"),
        ({"user": "alice", "scope": "x"}, "mint options are alg, audience, claims, expired, kid, lifetime, not_before, sub, user"),
        ([1], "mint options are alg, audience, claims, expired, kid, lifetime, not_before, sub, user"),
        ({"user": "alice", "lifetime": "60"}, "lifetime must be a JSON integer, got '60'"),
        ({"user": "alice", "kid": None}, "kid must be a JSON boolean, got None"),
    ],
)
async def test_mint_explains_bad_requests(server, http, body, message):
    response = await http.post(server.url + "/oauth/mint", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": message}


async def test_client_credentials_tokens_for_a_named_user_or_a_service(server, http, verifier):
    as_alice = await http.post(server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("alice", "any"))
    assert as_alice.json()["token_type"] == "Bearer" and as_alice.json()["expires_in"] == 3600
    assert (await verifier.verify(as_alice.json()["access_token"], "authenticated")).claims["email"] == "alice@example.com"
    service = await http.post(server.url + "/oauth/token", data={"grant_type": "client_credentials", "client_id": "billing", "audience": "api"})
    assert claims_of(service.json()["access_token"])["sub"] == "billing"
    assert claims_of(service.json()["access_token"])["aud"] == "api"
    anonymous = await http.post(server.url + "/oauth/token", data={"grant_type": "client_credentials"})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    password = await http.post(server.url + "/oauth/token", data={"grant_type": "password"})
    assert password.status_code == 400 and password.json()["error"] == "unsupported_grant_type"


def form_fields(page):
    """The hidden inputs of the login page, as a browser would submit them."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))


async def authorize(http, url, **choice):
    """Load the login page at `url`, submit it with `choice` (user=... or sub=/claims=), return the redirect."""
    page = await http.get(url)
    assert page.status_code == 200 and "Sign in to" in page.text
    fields = {k: html.unescape(v) for k, v in form_fields(page.text).items()}
    return await http.post(url.split("?")[0], data=fields | choice, follow_redirects=False)


async def test_authorization_code_flow_with_pkce_through_authlib(server, http, verifier):
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    doc = (await http.get(server.url + "/.well-known/openid-configuration")).json()
    async with AsyncOAuth2Client(
        client_id="my-app", client_secret="secret", redirect_uri=REDIRECT_URI,
        scope="openid profile email", code_challenge_method="S256",
    ) as client:
        code_verifier = generate_token(48)
        url, state = client.create_authorization_url(doc["authorization_endpoint"], code_verifier=code_verifier, nonce="n-0S6")
        assert parse_qs(urlsplit(url).query)["code_challenge_method"] == ["S256"]
        redirect = await authorize(http, url, user="alice")
        assert redirect.status_code == 302 and redirect.headers["location"].startswith(REDIRECT_URI + "?")
        assert parse_qs(urlsplit(redirect.headers["location"]).query)["state"] == [state]
        token = await client.fetch_token(doc["token_endpoint"], authorization_response=redirect.headers["location"], code_verifier=code_verifier)
        userinfo = (await client.get(doc["userinfo_endpoint"])).json()

    jwks = KeySet.import_key_set((await http.get(doc["jwks_uri"])).json())
    id_token = jwt.decode(token["id_token"], jwks, algorithms=["RS256"])
    JWTClaimsRegistry(iss={"essential": True, "value": server.url}, aud={"essential": True, "value": "my-app"},
                      nonce={"essential": True, "value": "n-0S6"}, sub={"essential": True, "value": "user_alice"}).validate(id_token.claims)
    assert userinfo == {"sub": "user_alice", "email": "alice@example.com", "org_id": "org_acme", "role": "authenticated", "org_role": "member"}
    verified = await verifier.verify(token["access_token"], "authenticated")
    assert verified.claims["sub"] == "user_alice" and "aud" not in verified.claims


async def test_pkce_mismatch_and_code_reuse_are_refused(server, http):
    challenge = base64.urlsafe_b64encode(hashlib.sha256(b"v" * 43).digest()).rstrip(b"=").decode()
    url = (server.url + "/oauth/authorize?response_type=code&client_id=app&redirect_uri=" + REDIRECT_URI
           + f"&scope=openid&code_challenge={challenge}&code_challenge_method=S256")

    async def exchange(code, verifier):
        return await http.post(server.url + "/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "client_id": "app", "code_verifier": verifier})

    code = parse_qs(urlsplit((await authorize(http, url, user="bob")).headers["location"]).query)["code"][0]
    wrong = await exchange(code, "w" * 43)
    assert wrong.status_code == 400 and wrong.json() == {"error": "invalid_grant", "error_description": "code_verifier does not match the code_challenge (PKCE S256)"}
    code = parse_qs(urlsplit((await authorize(http, url, user="bob")).headers["location"]).query)["code"][0]
    assert (await exchange(code, "v" * 43)).status_code == 200
    reused = await exchange(code, "v" * 43)
    assert reused.json() == {"error": "invalid_grant", "error_description": "the code is unknown, expired or already used"}


async def test_login_page_takes_a_typed_sub_and_claims(server, http):
    url = server.url + "/oauth/authorize?response_type=code&client_id=app&redirect_uri=" + REDIRECT_URI + "&state=s1"
    redirect = await authorize(http, url, sub="user_carol", claims='{"org_id": "org_new", "roles": ["admin"]}')
    query = parse_qs(urlsplit(redirect.headers["location"]).query)
    assert query["state"] == ["s1"]
    response = await http.post(server.url + "/oauth/token", data={
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT_URI, "client_id": "app"})
    claims = claims_of(response.json()["access_token"])
    assert claims["sub"] == "user_carol" and claims["roles"] == ["admin"] and "id_token" not in response.json()
    bad = await authorize(http, url, sub="x", claims="[1, 2")
    assert bad.status_code == 400 and "claims must be a JSON object" in bad.text


async def test_authorization_request_errors(server, http):
    base = server.url + "/oauth/authorize"
    missing = await http.get(base + "?response_type=code&redirect_uri=" + REDIRECT_URI)
    assert missing.status_code == 400 and "client_id is missing" in missing.text
    fragment = await http.get(base + "?response_type=code&client_id=a&redirect_uri=http://x/cb%23frag")
    assert fragment.status_code == 400 and "without a fragment" in fragment.text
    token_flow = await http.get(base + f"?response_type=token&client_id=a&state=z&redirect_uri={REDIRECT_URI}", follow_redirects=False)
    assert parse_qs(urlsplit(token_flow.headers["location"]).query) == {
        "error": ["unsupported_response_type"], "error_description": ["only response_type=code is supported"], "state": ["z"]}
    plain = await http.get(base + f"?response_type=code&client_id=a&code_challenge=abc&redirect_uri={REDIRECT_URI}", follow_redirects=False)
    assert parse_qs(urlsplit(plain.headers["location"]).query)["error_description"] == ["code_challenge_method must be S256"]


async def test_userinfo_needs_a_token_from_this_issuer(server, http):
    assert (await http.get(server.url + "/oauth/userinfo")).status_code == 401
    foreign = Issuer(Settings(), KeyRing.load_or_create(server.issuer._keyring.path.parent.parent / "foreign"), server.url).mint("alice")
    refused = await http.get(server.url + "/oauth/userinfo", headers={"Authorization": f"Bearer {foreign}"})
    assert refused.status_code == 401 and refused.json()["error_description"] == "the token was not signed by this issuer"
    expired = server.issuer.mint("bob", expired=True)
    refused = await http.get(server.url + "/oauth/userinfo", headers={"Authorization": f"Bearer {expired}"})
    assert refused.json()["error_description"].startswith("the token has expired")
    eddsa = server.issuer.mint("bob", alg="EdDSA")
    assert (await http.post(server.url + "/oauth/userinfo", headers={"Authorization": f"Bearer {eddsa}"})).json()["sub"] == "user_bob"


async def test_cors_preflight_for_browser_clients(server, http):
    response = await http.options(server.url + "/oauth/token", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204 and response.headers["access-control-allow-origin"] == "*"


async def test_jwks_endpoint_shows_a_rotation_made_by_the_cli(server, http, settings):
    other_process = KeyRing.load_or_create(settings.resolved_data_dir / "keys")
    (new,) = other_process.rotate(["EdDSA"])
    kids = [k["kid"] for k in (await http.get(server.url + "/.well-known/jwks.json")).json()["keys"]]
    assert new.kid in kids and len(kids) == 4


async def test_issuer_under_a_path_serves_discovery_there(settings, ring, http):
    running = await IssuerServer(settings, ring, "/auth").start()
    try:
        doc = (await http.get(running.url + "/.well-known/openid-configuration")).json()
        assert doc["issuer"] == running.url and doc["jwks_uri"] == running.url + "/.well-known/jwks.json"
        assert (await http.get(doc["jwks_uri"])).status_code == 200
    finally:
        await running.stop()


def test_token_cli_prints_tokens_with_the_requested_shape(settings, ring):
    runner = CliRunner(env={"NEON_LOCAL_DATA_DIR": str(settings.resolved_data_dir)})

    def mint(*args):
        result = runner.invoke(token_command, list(args))
        assert result.exit_code == 0, result.output
        return result.output.strip()

    alice = mint("alice", "--claim", "org_id=org_x", "--claim", "level=3", "--claims", '{"tags": ["a"]}', "--audience", "app", "--alg", "RS256", "--lifetime", "120")
    claims = claims_of(alice)
    assert claims["iss"] == "http://127.0.0.1:4444" and claims["sub"] == "user_alice" and claims["aud"] == "app"
    assert claims["org_id"] == "org_x" and claims["level"] == 3 and claims["tags"] == ["a"] and claims["exp"] - claims["iat"] == 120
    assert header_of(alice)["alg"] == "RS256"
    assert "kid" not in header_of(mint("bob", "--no-kid"))
    assert claims_of(mint("--sub", "svc", "--expired"))["exp"] < time.time() - 30
    assert claims_of(mint("bob", "--not-before", "60"))["nbf"] >= time.time() + 59
    assert header_of(mint("bob", "--alg", "EdDSA"))["alg"] == "EdDSA"
    unknown = runner.invoke(token_command, ["mallory"])
    assert unknown.exit_code == 2 and "no test user 'mallory'" in unknown.output
    bad = runner.invoke(token_command, ["alice", "--claim", "novalue"])
    assert bad.exit_code == 2 and "expected NAME=VALUE" in bad.output


def test_mint_for_cli_gives_other_commands_a_user_token(settings):
    claims = claims_of(mint_for_cli(settings, "bob"))
    assert claims["iss"] == "http://127.0.0.1:4444" and claims["sub"] == "user_bob"
    with pytest.raises(click.UsageError, match="no test user 'eve'"):
        mint_for_cli(settings, "eve")
