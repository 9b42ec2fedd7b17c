"""`neon-local providers login`: sign in once at a provider in the browser (OAuth authorization code + PKCE)
and learn from the ID token what neon_local.toml needs: the issuer, its JWKS, the audience and a test user.

The redirect goes to a one-shot listener on 127.0.0.1 (RFC 8252 §7.3, loopback redirect for native apps);
the ID token is verified against the provider's JWKS before anything is taken from it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from neon_local.auth.keys import PublicKeySet
from neon_local.auth.provider_templates import JwksReport, TemplateError, check_jwks, discovery_url, jwks_uri_from_discovery
from neon_local.auth.providers import Limits, fetch_jwks
from neon_local.auth.verifier import JwtError, parse_token

__all__ = ["SignIn", "sign_in"]

# Claims about the token itself rather than the user: not copied into the test user.
TOKEN_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash", "c_hash", "azp", "jti", "sid"})
SIGN_IN_SECONDS = 300
DONE_PAGE = "Signed in: neon-local has what it needs. You can close this tab and go back to the terminal."


@dataclass(frozen=True)
class SignIn:
    issuer: str
    jwks_url: str
    jwks: Any
    report: JwksReport
    audience: str
    user_claims: dict[str, Any]  # sub and the user's other claims from the ID token


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def sign_in(issuer: str, client_id: str, open_url: Callable[[str], None], scope: str = "openid profile email",
                  limits: Limits = Limits(retries=1)) -> SignIn:  # noqa: B008 (Limits is frozen)
    """Run the flow: `open_url` is given the authorization URL and must return at once (the CLI opens a
    browser on it from another thread)."""
    discovery = await fetch_jwks(discovery_url(issuer), limits, issuer)  # any JSON document, fetched with Neon's limits
    try:
        authorize, token_endpoint = discovery["authorization_endpoint"], discovery["token_endpoint"]
    except (KeyError, TypeError):
        raise TemplateError(f"the discovery document of {issuer} lacks authorization_endpoint or token_endpoint") from None
    jwks_url = jwks_uri_from_discovery(discovery, issuer)
    verifier, state, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = await _authorize(authorize, client_id, scope, state, nonce, _b64url(hashlib.sha256(verifier.encode()).digest()), open_url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limits.total_timeout)) as session:
        form = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": params["redirect_uri"],
                "client_id": client_id, "code_verifier": verifier}
        async with session.post(token_endpoint, data=form, allow_redirects=False) as response:
            body = await response.json(content_type=None)
    if response.status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
        raise TemplateError(f"the token endpoint answered {response.status} without an id_token: {body}")
    jwks = await fetch_jwks(jwks_url, limits, issuer)
    report = check_jwks(jwks)
    claims = _verified_id_token(body["id_token"], jwks, client_id, nonce)
    return SignIn(claims["iss"], jwks_url, jwks, report, client_id,
                  {k: v for k, v in claims.items() if k not in TOKEN_CLAIMS and v is not None})  # TOML has no null


async def _authorize(authorize: str, client_id: str, scope: str, state: str, nonce: str, challenge: str,
                     open_url: Callable[[str], None]) -> dict[str, str]:
    """Open the authorization URL and wait for the provider to redirect the browser back to us."""
    answer: asyncio.Future = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        query = dict(request.query)
        if query.get("state") != state:
            return web.Response(status=400, text="This sign-in was not started by this neon-local (state differs).")
        if not answer.done():
            answer.set_result(query)
        return web.Response(text=DONE_PAGE)

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        redirect_uri = f"http://127.0.0.1:{runner.addresses[0][1]}/callback"
        url = authorize + ("&" if "?" in authorize else "?") + urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
            "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"})
        open_url(url)  # must not block: the browser's redirect comes back to this event loop
        try:
            query = await asyncio.wait_for(answer, SIGN_IN_SECONDS)
        except TimeoutError:
            raise TemplateError(f"no sign-in came back within {SIGN_IN_SECONDS} s; run the command again") from None
    finally:
        await runner.cleanup()
    if "code" not in query:
        raise TemplateError(f"the provider refused the sign-in: {query.get('error')}: {query.get('error_description', '')}")
    return query | {"redirect_uri": redirect_uri}


def _verified_id_token(token: str, jwks: Any, client_id: str, nonce: str) -> dict[str, Any]:
    try:
        parsed = parse_token(token, extended=True)
    except JwtError as exc:
        raise TemplateError(f"the ID token does not parse: {exc.detail or exc.message}") from None
    key = PublicKeySet.from_jwks(jwks).by_kid.get(parsed.header.get("kid") or "")
    alg = parsed.header["alg"]
    if key is None or alg not in ("RS256", "ES256", "EdDSA") or not key.verify(alg, parsed.signature, parsed.signing_input):
        raise TemplateError("the ID token's signature does not verify with the provider's JWKS")
    if client_id not in parsed.audience or parsed.claims.get("nonce") != nonce or not isinstance(parsed.claims.get("iss"), str):
        raise TemplateError("the ID token is not for this sign-in (aud, nonce or iss)")
    return parsed.claims
