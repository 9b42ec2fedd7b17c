"""The built-in OIDC issuer: minting, JWKS and discovery, client credentials, and the code flow with PKCE.

Everything is for local testing: there are no passwords and no client registry (any client_id and
secret are accepted), and the login page lets you pick a named test user or type a sub and claims.
Access tokens are ES256 by default (what Neon accepts); ID tokens are RS256, the OIDC default that
every client library accepts without configuration.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit

from aiohttp import web
from joserfc import jwt
from joserfc.errors import SecurityWarning

from neon_local.auth.keys import ALGORITHMS, KeyRing
from neon_local.auth.verifier import JwtError, parse_token
from neon_local.errors import NeonLocalError
from neon_local.origins import PNA_ALLOW, PNA_REQUEST, OriginPolicy
from neon_local.settings import Settings, url_host

__all__ = ["Issuer", "IssuerError", "default_issuer_url"]

CODE_LIFETIME = 600  # RFC 6749 §4.1.2 recommends at most 10 minutes
EXPIRED_BY = 120  # "expired" tokens are past exp by more than Neon's 30 s leeway
ID_TOKEN_ALG = "RS256"
_MINT_OPTIONS = {
    "user": str, "sub": str, "claims": dict, "lifetime": int, "alg": str,
    "kid": bool, "audience": str, "not_before": int, "expired": bool,
}
_JSON_TYPE_NAMES = {str: "string", dict: "object", int: "integer", bool: "boolean"}
_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CORS = {"Access-Control-Allow-Origin": "*"}
_PREFLIGHT = _CORS | {"Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Allow-Methods": "GET, POST"}


class IssuerError(NeonLocalError):
    """A mint or OAuth request that cannot be served; `error` is the OAuth error code."""

    def __init__(self, description: str, error: str = "invalid_request"):
        super().__init__(description)
        self.error = error


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str | None
    claims: dict[str, Any]
    nonce: str | None
    scope: str
    expires_at: float


def default_issuer_url(settings: Settings) -> str:
    """The issuer URL tokens carry as `iss`: the HTTP listener as seen from this machine."""
    return f"http://{url_host(settings.host)}:{settings.http_port}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """Signs tokens with the KeyRing and serves the issuer endpoints under the issuer URL's path."""

    def __init__(self, settings: Settings, keyring: KeyRing, issuer_url: str):
        self._settings = settings
        self._keyring = keyring
        self.issuer_url = issuer_url.rstrip("/")
        self._prefix = urlsplit(self.issuer_url).path
        self._codes: dict[str, _Grant] = {}

    def use_settings(self, settings: Settings) -> None:
        """Mint for the test users of `settings` from now on (live reload)."""
        self._settings = settings

    def url(self, path: str) -> str:
        return self.issuer_url + path

    def mint(
        self,
        user: str | None = None,
        *,
        sub: str | None = None,
        claims: dict | None = None,
        lifetime: int = 3600,
        alg: str = "ES256",
        kid: bool = True,
        audience: str | None = None,
        not_before: int | None = None,
        expired: bool = False,
    ) -> str:
        """A signed token for a named test user or a `sub`; `claims` are added last and win.

        `not_before` is in seconds from now (Neon refuses nbf 30 s or more ahead); `expired` puts exp
        two minutes in the past, beyond Neon's leeway.
        """
        body = self._subject_claims(user, sub)
        now = int(time.time())
        exp = now - EXPIRED_BY if expired else now + lifetime
        times = {"iat": exp - lifetime if expired else now}
        if not_before is not None:
            times["nbf"] = now + not_before
        head = {"iss": self.issuer_url, "sub": body.pop("sub")} | ({"aud": audience} if audience is not None else {})
        return self.sign(head | times | {"exp": exp} | body | dict(claims or {}), alg=alg, kid=kid)

    def sign(self, claims: dict[str, Any], *, alg: str = "ES256", kid: bool = True) -> str:
        """Sign `claims` as they are with the active key for `alg`."""
        if alg not in ALGORITHMS:
            raise IssuerError(f"alg must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
        self._keyring.reload()  # a rotation by `neon-local keys rotate` takes effect at once
        key = self._keyring.active(alg)
        header = {"alg": alg} | ({"kid": key.kid} if kid else {})
        with warnings.catch_warnings():
            # joserfc warns that RFC 9864 deprecates "EdDSA"; it is still the name clients and Postgres know.
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(header, claims, key.key, algorithms=[alg])

    def routes(self) -> list[web.RouteDef]:
        p = self._prefix
        return [
            web.get(p + "/.well-known/jwks.json", self._jwks),
            web.get(p + "/.well-known/openid-configuration", self._discovery),
            web.get(p + "/oauth/authorize", self._login_page),
            web.post(p + "/oauth/authorize", self._login),
            web.post(p + "/oauth/token", self._token),
            web.get(p + "/oauth/userinfo", self._userinfo),
            web.post(p + "/oauth/userinfo", self._userinfo),
            web.post(p + "/oauth/mint", self._mint),
            *(web.options(p + path, self._preflight) for path in ("/oauth/token", "/oauth/userinfo", "/oauth/mint")),
        ]

    def discovery(self) -> dict[str, Any]:
        """The OpenID Provider Metadata (OIDC Discovery 1.0 §3, RFC 8414 §2)."""
        claim_names = {name for claims in self._settings.users.values() for name in claims}
        return {
            "issuer": self.issuer_url,
            "authorization_endpoint": self.url("/oauth/authorize"),
            "token_endpoint": self.url("/oauth/token"),
            "userinfo_endpoint": self.url("/oauth/userinfo"),
            "jwks_uri": self.url("/.well-known/jwks.json"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ID_TOKEN_ALG, *(a for a in ALGORITHMS if a != ID_TOKEN_ALG)],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email"],
            "claims_supported": sorted(claim_names | {"iss", "sub", "aud", "exp", "iat", "nbf", "auth_time", "nonce"}),
        }

    def _subject_claims(self, user: str | None, sub: str | None) -> dict[str, Any]:
        if user is not None:
            if user not in self._settings.users:
                known = ", ".join(sorted(self._settings.users)) or "none"
                raise IssuerError(f"no test user {user!r} in neon_local.toml (known: {known}); or pass a sub instead")
            body = dict(self._settings.users[user])
        else:
            body = {}
        if sub is not None:
            body["sub"] = sub
        if "sub" not in body:
            raise IssuerError("name a test user or give a sub")
        return body

    # Endpoints ----------------------------------------------------------------------------------

    async def _jwks(self, request: web.Request) -> web.Response:
        self._keyring.reload()
        return web.json_response(self._keyring.jwks(), headers=_CORS)

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(self.discovery(), headers=_CORS)

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = dict(_PREFLIGHT)
        # Private Network Access: only pages from allowed origins may reach the issuer on this machine.
        if request.headers.get(PNA_REQUEST) == "true" and OriginPolicy(self._settings.allowed_origins).allows(request.headers.get("Origin")):
            headers[PNA_ALLOW] = "true"
        return web.Response(status=204, headers=headers)

    async def _mint(self, request: web.Request) -> web.Response:
        """Test-only: POST a JSON object with the `mint` keyword arguments, get {"token": ...} back."""
        origin = request.headers.get("Origin")
        if origin is not None and not OriginPolicy(self._settings.allowed_origins).allows(origin):  # any site could mint any identity
            return _oauth_error(IssuerError(OriginPolicy.refusal(origin, "minting tokens"), "access_denied"))
        try:
            options = await request.json()
        except ValueError:
            return _oauth_error(IssuerError("the body must be a JSON object of mint options"))
        if not isinstance(options, dict) or set(options) - set(_MINT_OPTIONS):
            return _oauth_error(IssuerError(f"mint options are {', '.join(sorted(_MINT_OPTIONS))}"))
        for name, value in options.items():
            kind = _MINT_OPTIONS[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                return _oauth_error(IssuerError(f"{name} must be a JSON {_JSON_TYPE_NAMES[kind]}, got {value!r}"))
        try:
            return web.json_response({"token": self.mint(**options)}, headers=_CORS)
        except IssuerError as exc:
            return _oauth_error(exc)

    async def _login_page(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        try:
            redirect = self._check_authorize(params)
        except IssuerError as exc:
            return web.Response(status=400, text=f"authorization request refused: {exc}")
        if redirect is not None:
            raise web.HTTPFound(redirect)
        return self._render_login(params, "")

    async def _login(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        params = {k: str(v) for k, v in form.items() if k not in ("user", "sub", "claims")}
        try:
            redirect = self._check_authorize(params)
            if redirect is not None:
                raise web.HTTPFound(redirect)
            claims = self._login_claims(form)
        except IssuerError as exc:
            return self._render_login(params, str(exc))
        raise web.HTTPFound(self._issue_code(params, claims))

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id = _client_id(request, form)
        try:
            if form.get("grant_type") == "authorization_code":
                body = self._exchange_code(form, client_id)
            elif form.get("grant_type") == "client_credentials":
                body = self._client_credentials(form, client_id)
            else:
                raise IssuerError("grant_type must be authorization_code or client_credentials", "unsupported_grant_type")
        except IssuerError as exc:
            return _oauth_error(exc)
        return web.json_response(body, headers=_CORS | {"Cache-Control": "no-store"})

    async def _userinfo(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"error": "invalid_token"}, status=401, headers=_CORS | {"WWW-Authenticate": "Bearer"})
        try:
            claims = self._own_token_claims(auth[len("Bearer "):])
        except JwtError as exc:
            header = f'Bearer error="invalid_token", error_description="{exc.message}"'
            return web.json_response({"error": "invalid_token", "error_description": exc.message}, status=401,
                                     headers=_CORS | {"WWW-Authenticate": header})
        drop = {"iss", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce"}
        return web.json_response({k: v for k, v in claims.items() if k not in drop}, headers=_CORS)

    # Authorization code flow --------------------------------------------------------------------

    def _check_authorize(self, params: dict[str, str]) -> str | None:
        """Validate an authorization request: raises for a bad client or redirect_uri, else returns an error redirect or None."""
        if not params.get("client_id"):
            raise IssuerError("client_id is missing")
        redirect_uri = params.get("redirect_uri", "")
        parts = urlsplit(redirect_uri)
        if not parts.scheme or parts.fragment or parts.scheme.lower() in ("javascript", "data", "vbscript", "file"):
            raise IssuerError(f"redirect_uri must be an absolute URL without a fragment, got {redirect_uri!r}")
        if params.get("response_type") != "code":
            return _redirect(params, error="unsupported_response_type", error_description="only response_type=code is supported")
        if params.get("code_challenge") and params.get("code_challenge_method", "plain") != "S256":
            return _redirect(params, error="invalid_request", error_description="code_challenge_method must be S256")
        return None

    def _login_claims(self, form: dict[str, Any]) -> dict[str, Any]:
        if form.get("user"):
            return self._subject_claims(str(form["user"]), None)
        try:
            extra = json.loads(str(form.get("claims") or "{}"))
        except ValueError as exc:
            raise IssuerError(f"claims must be a JSON object: {exc}") from None
        if not isinstance(extra, dict):
            raise IssuerError("claims must be a JSON object")
        return self._subject_claims(None, str(form.get("sub") or "").strip() or None) | extra

    def _issue_code(self, params: dict[str, str], claims: dict[str, Any]) -> str:
        now = time.time()
        self._codes = {c: g for c, g in self._codes.items() if g.expires_at > now}
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Grant(
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            code_challenge=params.get("code_challenge") or None,
            claims=claims,
            nonce=params.get("nonce") or None,
            scope=params.get("scope", ""),
            expires_at=now + CODE_LIFETIME,
        )
        return _redirect(params, code=code)

    def _exchange_code(self, form: dict[str, str], client_id: str | None) -> dict[str, Any]:
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant.expires_at <= time.time():
            raise IssuerError("the code is unknown, expired or already used", "invalid_grant")
        if client_id not in (None, grant.client_id) or form.get("redirect_uri") != grant.redirect_uri:
            raise IssuerError("client_id or redirect_uri differ from the authorization request", "invalid_grant")
        if grant.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if not _PKCE_VERIFIER.fullmatch(verifier):
                raise IssuerError("code_verifier must be 43-128 characters of [A-Za-z0-9._~-]", "invalid_grant")
            if _b64url(hashlib.sha256(verifier.encode()).digest()) != grant.code_challenge:
                raise IssuerError("code_verifier does not match the code_challenge (PKCE S256)", "invalid_grant")
        body = self._token_response(grant.claims, form.get("audience"), grant.scope)
        if "openid" in grant.scope.split():
            body["id_token"] = self._id_token(grant)
        return body

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer_url, "sub": grant.claims["sub"], "aud": grant.client_id, "iat": now, "exp": now + 3600, "auth_time": now}
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        return self.sign(claims | {k: v for k, v in grant.claims.items() if k != "sub"}, alg=ID_TOKEN_ALG)

    def _client_credentials(self, form: dict[str, str], client_id: str | None) -> dict[str, Any]:
        """The client_id names a test user, or else becomes the sub; secrets are not checked."""
        if not client_id:
            raise IssuerError("client_id is missing (HTTP Basic or form field)", "invalid_client")
        claims = self._subject_claims(client_id, None) if client_id in self._settings.users else {"sub": client_id}
        return self._token_response(claims, form.get("audience"), form.get("scope", ""))

    def _token_response(self, claims: dict[str, Any], audience: str | None, scope: str) -> dict[str, Any]:
        extra = {k: v for k, v in claims.items() if k != "sub"}
        token = self.mint(sub=claims["sub"], claims=extra, audience=audience or None)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        return body | ({"scope": scope} if scope else {})

    def _own_token_claims(self, token: str) -> dict[str, Any]:
        """Verify a token this issuer signed (any of its algorithms), for /userinfo."""
        parsed = parse_token(token, extended=True)
        self._keyring.reload()
        key = self._keyring.public_keys().by_kid.get(parsed.header.get("kid") or "")
        alg = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}.get(key.kty) if key else None
        if key is None or alg is None or parsed.header["alg"] != alg or not key.verify(alg, parsed.signature, parsed.signing_input):
            raise JwtError("the token was not signed by this issuer")
        if parsed.claims.get("exp") is not None and time.time() >= parsed.claims["exp"]:
            raise JwtError(f"the token has expired (exp={parsed.claims['exp']})")
        return parsed.claims

    def _render_login(self, params: dict[str, str], error: str) -> web.Response:
        hidden = "\n".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in params.items())
        users = "\n".join(
            f'<button class="user" type="submit" name="user" value="{html.escape(name)}">{html.escape(name)} '
            f"<code>{html.escape(json.dumps(claims))}</code></button>"
            for name, claims in self._settings.users.items()
        ) or '<p class="note">No test users: add [users.NAME] tables to neon_local.toml.</p>'
        page = _login_template().substitute(
            client_id=html.escape(params.get("client_id", "")),
            error=f'<p class="error">{html.escape(error)}</p>' if error else "",
            hidden=hidden,
            users=users,
        )
        return web.Response(text=page, content_type="text/html", status=400 if error else 200)


def _login_template() -> Template:
    return Template(resources.files("neon_local.auth").joinpath("templates/login.html").read_text())


def _redirect(params: dict[str, str], **values: str) -> str:
    """The client's redirect_uri with `values` and the request's state added to its query."""
    if params.get("state"):
        values["state"] = params["state"]
    uri = params["redirect_uri"]
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(values)


def _client_id(request: web.Request, form: dict[str, str]) -> str | None:
    """client_id from HTTP Basic (client_secret_basic) or the form (client_secret_post and public clients)."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        try:
            user = base64.b64decode(auth[6:], validate=True).decode().split(":", 1)[0]
        except ValueError:
            return None
        # RFC 6749 §2.3.1: the Basic user name is form-encoded.
        return unquote_plus(user)
    return form.get("client_id")


def _oauth_error(exc: IssuerError) -> web.Response:
    status = 401 if exc.error == "invalid_client" else 400
    return web.json_response({"error": exc.error, "error_description": str(exc)}, status=status, headers=_CORS)
