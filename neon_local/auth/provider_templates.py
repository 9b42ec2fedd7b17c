"""Where known auth providers publish their JWKS, so `neon-local providers add clerk --domain ...` needs no URL.

Each template builds the JWKS URL from what the provider's dashboard shows (a domain, a project id, ...);
any other provider is found by OIDC discovery from its issuer URL. `check_jwks` says whether Neon's proxy
would take tokens signed with a key set: RS256 or ES256 keys with a kid.

Patterns confirmed in the providers' public docs: auth0, better-auth, descope, google, stytch, workos;
neon-auth follows from Better Auth's. The others are the providers' usual defaults, not re-checked here;
`providers add` fetches the URL before it stores anything, so a wrong pattern shows up as a clear error
rather than a silent misconfiguration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from neon_local.errors import NeonLocalError

__all__ = ["TEMPLATES", "JwksReport", "Template", "TemplateError", "check_jwks", "discovery_url", "jwks_uri_from_discovery"]

class TemplateError(NeonLocalError):
    """A template is missing a parameter, or a JWKS or discovery document is unusable; the message says what to give."""


@dataclass(frozen=True)
class Template:
    name: str
    display: str
    jwks: str  # a str.format pattern over the CLI's parameters (--domain: {domain}) and {stytch_host}
    needs: tuple[str, ...] = ()
    audience_param: str | None = None  # the parameter that is also the required aud (Firebase: the project id)
    eddsa_default: bool = False  # signs with Ed25519 unless configured otherwise

    def jwks_url(self, params: Mapping[str, str | None]) -> str:
        missing = [name for name in self.needs if not params.get(name)]
        if missing:
            flags = " ".join(f"--{name.replace('_', '-')} ..." for name in missing)
            raise TemplateError(f"{self.display} needs {flags} (neon-local providers add {self.name} {flags}).")
        values = defaultdict(str, {name: value.strip().rstrip("/") for name, value in params.items() if value})
        values["domain"] = values["domain"].removeprefix("https://").removeprefix("http://")
        values["tenant"] = values["tenant"] or "common"
        values["stytch_host"] = "test.stytch.com" if values["project_id"].startswith("project-test-") else "api.stytch.com"
        return self.jwks.format_map(values)

    def audience(self, params: Mapping[str, str | None]) -> str | None:
        return params.get(self.audience_param) if self.audience_param else None


TEMPLATES: Mapping[str, Template] = {t.name: t for t in (
    Template("clerk", "Clerk", "https://{domain}/.well-known/jwks.json", ("domain",)),
    Template("auth0", "Auth0", "https://{domain}/.well-known/jwks.json", ("domain",)),
    Template("stack-auth", "Stack Auth", "https://api.stack-auth.com/api/v1/projects/{project_id}/.well-known/jwks.json", ("project_id",)),
    Template("better-auth", "Better Auth", "{url}/api/auth/jwks", ("url",), eddsa_default=True),
    Template("workos", "WorkOS", "https://api.workos.com/sso/jwks/{client_id}", ("client_id",)),
    Template("firebase", "Firebase", "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com",
             ("project_id",), audience_param="project_id"),
    Template("supabase", "Supabase", "https://{project_id}.supabase.co/auth/v1/.well-known/jwks.json", ("project_id",)),
    Template("cognito", "Amazon Cognito", "https://cognito-idp.{region}.amazonaws.com/{user_pool_id}/.well-known/jwks.json",
             ("region", "user_pool_id")),
    Template("azure", "Microsoft Entra ID", "https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"),
    Template("google", "Google", "https://www.googleapis.com/oauth2/v3/certs"),
    Template("keycloak", "Keycloak", "{url}/realms/{realm}/protocol/openid-connect/certs", ("url", "realm")),
    Template("stytch", "Stytch", "https://{stytch_host}/v1/sessions/jwks/{project_id}", ("project_id",)),
    Template("descope", "Descope", "https://api.descope.com/{project_id}/.well-known/jwks.json", ("project_id",)),
    Template("kinde", "Kinde", "https://{domain}/.well-known/jwks", ("domain",)),
    Template("propelauth", "PropelAuth", "{url}/.well-known/jwks.json", ("url",)),
    Template("supertokens", "SuperTokens", "{url}/jwt/jwks.json", ("url",)),
    # Neon Auth is Better Auth: its JWT plugin serves {auth base path}/jwks, and the Auth URL is that base path.
    Template("neon-auth", "Neon Auth", "{url}/jwks", ("url",), eddsa_default=True),
)}


def discovery_url(issuer: str) -> str:
    """OIDC discovery for an issuer URL (RFC 8414 / OIDC Discovery 1.0: appended to the issuer's path)."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TemplateError(f"{issuer!r} is neither a known provider ({', '.join(TEMPLATES)}) nor an http(s) issuer URL.")
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def jwks_uri_from_discovery(document: Any, issuer: str) -> str:
    uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        raise TemplateError(f"the discovery document of {issuer} has no http(s) jwks_uri; give --jwks-url instead.")
    return uri


@dataclass(frozen=True)
class JwksReport:
    """What a fetched key set means for Neon: keys it can use, and why the rest are of no use to it."""

    usable: tuple[str, ...]  # "ES256 kid=..." per key Neon would verify with
    eddsa: int  # Ed25519 keys: Neon's proxy refuses them ("unsupported key type Okp(Ed25519)")
    without_kid: int

    @property
    def warnings(self) -> list[str]:
        notes = []
        if self.eddsa and not self.usable:
            notes.append("the key set holds only Ed25519 (EdDSA) keys: Neon's proxy refuses their tokens "
                         "(\"unsupported key type Okp(Ed25519)\"); neon-local accepts them only with compat = \"extended\". "
                         "Configure the provider to sign with RS256 or ES256 to match Neon.")
        elif self.eddsa:
            notes.append(f"{self.eddsa} Ed25519 key(s) are of no use on Neon; tokens must be signed with the RS256/ES256 keys.")
        if self.without_kid:
            notes.append(f"{self.without_kid} key(s) have no kid: Neon refuses tokens without one (\"missing key id\").")
        return notes


def check_jwks(document: Any) -> JwksReport:
    """Raise TemplateError if `document` is not a JWKS with any signing key; else say which keys Neon can use."""
    from neon_local.auth.keys import PublicKeySet  # joserfc: not for the CLI's option tables, which import this module

    try:
        keys = PublicKeySet.from_jwks(document).keys
    except ValueError as exc:
        raise TemplateError(f"not a JWKS: {exc}") from None
    if not keys:
        raise TemplateError("the JWKS has no usable signing keys")
    usable = []
    for key in keys:
        alg = "RS256" if key.kty == "RSA" and key.public.key_size >= 2048 else "ES256" if key.kty == "EC" and key.crv == "P-256" else None
        if alg and key.kid:
            usable.append(f"{alg} kid={key.kid}")
    return JwksReport(tuple(usable), sum(k.kty == "OKP" for k in keys), sum(not k.kid for k in keys))
