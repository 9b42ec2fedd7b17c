"""CLI commands for tokens, signing keys and JWKS providers: `token`, `keys ...` and `providers ...`."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from neon_local.cli.common import project_options
from neon_local.cli.config_file import config_path, parse_claims, restart_hint, write_config
from neon_local.settings import BUILTIN_PROVIDER_ID, DEFAULT_JWT_ROLES, Settings, load_settings
from neon_local.state import read_state

if TYPE_CHECKING:
    from neon_local.auth.issuer import Issuer
    from neon_local.auth.keys import KeyRing

__all__ = ["ALGORITHMS", "keys", "mint_by_running_emulator", "mint_for_cli", "mint_options", "providers", "token"]

# neon_local.auth.keys.ALGORITHMS, spelled out so that `token` need not import joserfc to build its
# options (tests/test_cli_imports.py checks the two agree).
ALGORITHMS = ("ES256", "RS256", "EdDSA")

ROLE_HELP = f"Postgres role that accepts this provider's tokens (default: {', '.join(DEFAULT_JWT_ROLES)}). Repeatable."

_TABLE_HEADER = re.compile(r"^\s*\[")
_JWKS_HEADER = re.compile(r"^\s*\[\[\s*jwks\s*\]\]\s*(#.*)?$")


def _settings() -> Settings:
    obj = click.get_current_context().obj
    return obj if isinstance(obj, Settings) else load_settings()


def _keyring(settings: Settings) -> KeyRing:
    from neon_local.auth.keys import KeyRing

    return KeyRing.load_or_create(settings.resolved_data_dir / "keys")


def _issuer(settings: Settings, state: dict | None) -> Issuer:
    """The issuer as the running emulator has it (its `iss` URL), or as the settings say when none runs."""
    from neon_local.auth.issuer import Issuer, default_issuer_url

    return Issuer(settings, _keyring(settings), state["urls"]["issuer"] if state else default_issuer_url(settings))


def mint_options(settings: Settings, user: str | None, sub: str | None, claims: dict, **options) -> dict:
    """Issuer.mint's arguments with a test user spelled out as sub + claims, so that the running emulator
    mints from this command's neon_local.toml even if the user was added after it started."""
    if user is not None:
        user_claims = dict(settings.users[user])
        user_sub = user_claims.pop("sub")
        sub = user_sub if sub is None else sub
        claims = user_claims | claims
    return {"sub": sub, "claims": claims, **options}


def mint_by_running_emulator(state: dict, options: dict) -> str | None:
    """Ask the running emulator's issuer to sign (it has the keys loaded, and this process then needs
    neither aiohttp nor joserfc); None when it cannot be reached."""
    import http.client

    issuer = urlsplit(state["urls"]["issuer"])
    body = json.dumps({k: v for k, v in options.items() if v is not None})
    connection = http.client.HTTPConnection(issuer.hostname, issuer.port, timeout=10)
    try:
        connection.request("POST", issuer.path.rstrip("/") + "/oauth/mint", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    if response.status != 200 or not isinstance(answer, dict) or "token" not in answer:
        if isinstance(answer, dict) and answer.get("error_description"):
            raise click.UsageError(answer["error_description"])
        return None
    return answer["token"]


def _mint(settings: Settings, options: dict) -> str:
    state = read_state(settings.resolved_data_dir)
    token = mint_by_running_emulator(state, options) if state else None
    if token is not None:
        return token
    from neon_local.auth.issuer import IssuerError

    try:
        return _issuer(settings, state).mint(**options)
    except IssuerError as exc:
        raise click.UsageError(str(exc)) from None


def _known_user(settings: Settings, user: str | None, sub: str | None) -> None:
    """Refuse an unknown test user with the two ways forward the CLI offers."""
    if user is None and sub is None:
        raise click.UsageError("name a test user (neon-local token alice) or give a subject with --sub.")
    if user is not None and user not in settings.users:
        where = settings.config_file or "neon_local.toml"
        raise click.UsageError(
            f"no test user {user!r} (known: {', '.join(settings.users) or 'none'}). Add a [users.{user}] table "
            f"to {where}, or mint for any subject with `neon-local token --sub user_{user}`."
        )


def mint_for_cli(settings: Settings, user: str) -> str:
    """A default token for test user `user` (for `psql --as`); an unknown user is a usage error."""
    _known_user(settings, user, None)
    return _mint(settings, mint_options(settings, user, None, {}))


@click.command("token")
@project_options
@click.argument("user", required=False)
@click.option("--sub", help="Subject; with USER it replaces the user's sub, without USER it is the only identity claim.")
@click.option("--claim", "pairs", multiple=True, metavar="NAME=VALUE",
              help="Add or override a claim; VALUE is JSON if it parses (42, true, [1]), else a string. Repeatable.")
@click.option("--claims", "claims_json", metavar="JSON", help="Add or override claims from a JSON object.")
@click.option("--lifetime", type=click.IntRange(min=1), default=3600, show_default=True, help="Seconds until exp.")
@click.option("--expired", is_flag=True, help="Make exp two minutes past (beyond Neon's 30 s leeway).")
@click.option("--not-before", type=int, metavar="SECONDS", help="Set nbf SECONDS from now; Neon refuses nbf 30 s or more ahead.")
@click.option("--alg", type=click.Choice(ALGORITHMS), default="ES256", show_default=True,
              help="Signing algorithm; Neon accepts ES256 and RS256 only.")
@click.option("--no-kid", is_flag=True, help="Leave kid out of the header (Neon refuses this: missing key id).")
@click.option("--audience", help="Set aud (needed when a provider has jwt_audience).")
def token(user, sub, pairs, claims_json, lifetime, expired, not_before, alg, no_kid, audience):
    """Print a JWT for test user USER (see [users.*] in neon_local.toml) from the built-in issuer."""
    settings = _settings()
    _known_user(settings, user, sub)
    options = mint_options(settings, user, sub, parse_claims(claims_json, pairs), lifetime=lifetime, alg=alg,
                            kid=not no_kid, audience=audience, not_before=not_before, expired=expired)
    click.echo(_mint(settings, options))


@click.group("keys")
def keys():
    """The built-in issuer's signing keys (in <data_dir>/keys)."""


@keys.command("list")
@project_options
def keys_list():
    """Show every key: kid, algorithm, creation time, and whether it signs new tokens."""
    ring = _keyring(_settings())
    for key in sorted(ring.keys, key=lambda k: (k.alg, -k.created)):
        created = datetime.fromtimestamp(key.created, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        state = "active" if ring.is_active(key.kid) else "retired"
        click.echo(f"{key.kid:24} {key.alg:6} {created}  {state}")


@keys.command("rotate")
@project_options
@click.option("--alg", "algs", type=click.Choice(ALGORITHMS), multiple=True, help="Rotate only these algorithms (default: all).")
def keys_rotate(algs):
    """Make new signing keys; the old ones stay in the JWKS, so issued tokens keep verifying, until removed."""
    for key in _keyring(_settings()).rotate(list(algs) or list(ALGORITHMS)):
        click.echo(f"new {key.alg} key {key.kid}")


@keys.command("remove")
@project_options
@click.argument("kid")
def keys_remove(kid):
    """Remove a retired key; tokens it signed stop verifying."""
    from neon_local.auth.keys import KeyRingError

    try:
        key = _keyring(_settings()).remove(kid)
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {key.alg} key {key.kid}")


@click.group("providers")
def providers():
    """JWKS providers ([[jwks]] tables in neon_local.toml), shaped like Neon's local_proxy rules."""


def _toml_string(value: str) -> str:
    # JSON string syntax without ASCII escaping is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def _jwks_table(provider_id, jwks_url, jwks_file, provider_name, roles, audience, issuer) -> str:
    lines = ["[[jwks]]", f"id = {_toml_string(provider_id)}"]
    if jwks_url:
        lines.append(f"jwks_url = {_toml_string(jwks_url)}")
    if jwks_file:
        lines.append(f"jwks_file = {_toml_string(jwks_file)}")
    lines.append(f"provider_name = {_toml_string(provider_name or provider_id)}")
    lines.append("role_names = [" + ", ".join(map(_toml_string, roles)) + "]")
    if audience:
        lines.append(f"jwt_audience = {_toml_string(audience)}")
    if issuer:
        lines.append(f"jwt_issuer = {_toml_string(issuer)}")
    return "\n".join(lines) + "\n"


# What the provider templates (neon_local/auth/provider_templates.py) build JWKS URLs from, one --flag each;
# kept here so that the CLI's option tables import no part of neon_local.auth (and so no joserfc).
TEMPLATE_PARAMS = {
    "domain": "The provider's domain for your app, e.g. my-app.clerk.accounts.dev or my-tenant.us.auth0.com.",
    "project_id": "The provider's project id (Stack Auth, Stytch, Descope, Firebase, Supabase project ref).",
    "client_id": "The provider's client id (WorkOS: client_...).",
    "region": "The cloud region (Cognito: e.g. us-east-1).",
    "user_pool_id": "The Cognito user pool id, e.g. us-east-1_AbC123.",
    "tenant": "The Microsoft Entra (Azure AD) tenant id or domain (default: common).",
    "realm": "The Keycloak realm.",
    "url": "The base URL of a self-hosted or per-app auth server (Better Auth, Keycloak, PropelAuth, SuperTokens, Neon Auth).",
}


def _template_options(command):
    """One --flag per parameter a provider template may need (--domain, --project-id, ...)."""
    for name, text in reversed(TEMPLATE_PARAMS.items()):
        command = click.option("--" + name.replace("_", "-"), name, help=text)(command)
    return command


@providers.command("add")
@project_options
@click.argument("provider")
@click.option("--id", "provider_id", help="The [[jwks]] id (default: PROVIDER, or the issuer's host for an issuer URL).")
@click.option("--jwks-url",
              help="URL of the provider's JWKS, e.g. https://<app>.clerk.accounts.dev/.well-known/jwks.json (http:// for a local server).")
@click.option("--jwks-file", help="A local JWKS file (relative to the project directory).")
@click.option("--provider-name", help="Display name, as in Neon's console (default: the id).")
@click.option("--role", "roles", multiple=True, help=ROLE_HELP)
@click.option("--audience", help="Require this aud, as Neon's jwt_audience.")
@click.option("--issuer", help="Require exactly this iss (neon-local only: Neon never checks iss).")
@_template_options
def providers_add(provider, provider_id, jwks_url, jwks_file, provider_name, roles, audience, issuer, **params):
    """Add a provider as a [[jwks]] table in neon_local.toml.

    PROVIDER is a known provider (clerk, auth0, stack-auth, better-auth, workos, firebase, supabase, cognito,
    azure, google, keycloak, stytch, descope, kinde, propelauth, supertokens, neon-auth) whose JWKS URL is
    built from --domain, --project-id, ...; or an OIDC issuer URL, found by discovery; or, with --jwks-url
    or --jwks-file, any id. A built or discovered URL is fetched once, checked, and its keys cached for offline use.
    """
    settings = _settings()
    if jwks_url or jwks_file:
        if jwks_url and jwks_file:
            raise click.UsageError("give exactly one of --jwks-url and --jwks-file")
        if jwks_url and not jwks_url.startswith(("http://", "https://")):
            raise click.BadParameter("must start with https:// (or http:// for a local server)", param_hint="--jwks-url")
        provider_id = provider_id or provider
        checked = None
    else:
        provider_id, jwks_url, provider_name, audience, checked = _resolve_provider(
            provider, provider_id, provider_name, audience, params)
    if any(p.id == provider_id for p in settings.providers):
        raise click.ClickException(f"a provider with id {provider_id!r} exists already; remove it first")
    path = config_path(settings)
    text = path.read_text() if path.exists() else ""
    separator = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    table = _jwks_table(provider_id, jwks_url, jwks_file, provider_name, roles or DEFAULT_JWT_ROLES, audience, issuer)
    write_config(path, text + separator + table)
    if checked is not None:
        from neon_local.auth.providers import ProviderCache

        new = next(p for p in load_settings(config_file=path).providers if p.id == provider_id)
        ProviderCache(settings).remember(new, checked)
    click.echo(f"added provider {provider_id} ({jwks_url or jwks_file}) to {path}")
    restart_hint(settings)


def _resolve_provider(provider, provider_id, provider_name, audience, params):
    """(id, JWKS URL, display name, audience, fetched JWKS) for a known provider or an OIDC issuer URL;
    the JWKS is fetched and checked here, so nothing is written for a URL that does not serve one."""
    import asyncio

    from neon_local.auth import provider_templates as templates
    from neon_local.auth.providers import FetchError, Limits, fetch_jwks

    limits = Limits(retries=1)
    template = templates.TEMPLATES.get(provider)
    try:
        if template is not None:
            url = template.jwks_url(params)
            audience = audience or template.audience(params)
            provider_name = provider_name or template.display
            provider_id = provider_id or provider
        elif provider.startswith(("http://", "https://")):
            discovery = asyncio.run(fetch_jwks(templates.discovery_url(provider), limits, provider))
            url = templates.jwks_uri_from_discovery(discovery, provider)
            provider_id = provider_id or urlsplit(provider).hostname
        else:
            raise click.UsageError(
                f"give exactly one of --jwks-url and --jwks-file, or name a known provider "
                f"({', '.join(templates.TEMPLATES)}) or an OIDC issuer URL; {provider!r} is none of those.")
        document = asyncio.run(fetch_jwks(url, limits, provider_id))
        report = templates.check_jwks(document)
    except (templates.TemplateError, FetchError) as exc:
        raise click.ClickException(f"{str(exc).rstrip('.')}. Nothing was written.") from None
    click.echo(f"{url}: {len(report.usable)} key(s) Neon can verify with" + (f" ({', '.join(report.usable)})" if report.usable else ""))
    for note in report.warnings:
        click.secho(f"warning: {note}", fg="yellow", err=True)
    if template is not None and template.eddsa_default and not report.usable:
        click.secho(f"warning: {template.display} signs with EdDSA by default; set its JWT plugin to RS256 or ES256 for Neon.",
                    fg="yellow", err=True)
    return provider_id, url, provider_name, audience, document


@providers.command("login")
@project_options
@click.option("--issuer", "issuer_url", required=True, help="The provider's issuer URL (its /.well-known/openid-configuration is read).")
@click.option("--client-id", required=True, help="Your app's OAuth client id at the provider (a public client; http://127.0.0.1 redirects allowed).")
@click.option("--id", "provider_id", help="The [[jwks]] id (default: the issuer's host).")
@click.option("--user", "user_name", help="Name of the test user made from your sign-in (default: from your email or username).")
@click.option("--role", "roles", multiple=True, help=ROLE_HELP)
def providers_login(issuer_url, client_id, provider_id, user_name, roles):
    """Sign in at a provider in your browser (OAuth code + PKCE) and add it: its JWKS, the audience and
    issuer from the ID token, and a test user with your claims ([users.NAME])."""
    import asyncio
    import threading
    import webbrowser

    import tomlkit

    from neon_local.auth.oidc_login import sign_in
    from neon_local.auth.provider_templates import TemplateError
    from neon_local.auth.providers import FetchError, ProviderCache
    from neon_local.cli.config import _dump, _users_table

    settings = _settings()
    provider_id = provider_id or urlsplit(issuer_url).hostname
    if any(p.id == provider_id for p in settings.providers):
        raise click.ClickException(f"a provider with id {provider_id!r} exists already; remove it first")

    def open_browser(url: str) -> None:
        click.echo(f"Sign in at: {url}")
        # webbrowser may wait for the browser command to exit; the sign-in's redirect must not wait for it.
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    try:
        signed = asyncio.run(sign_in(issuer_url, client_id, open_browser))
    except (TemplateError, FetchError) as exc:
        raise click.ClickException(f"{str(exc).rstrip('.')}. Nothing was written.") from None
    for note in signed.report.warnings:
        click.secho(f"warning: {note}", fg="yellow", err=True)
    claims = signed.user_claims
    user_name = user_name or str(claims.get("preferred_username") or str(claims.get("email", "")).split("@")[0] or "me")
    path = config_path(settings)
    text = path.read_text() if path.exists() else ""
    separator = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    doc = tomlkit.parse(text + separator + _jwks_table(provider_id, signed.jwks_url, None, provider_id,
                                                      roles or DEFAULT_JWT_ROLES, signed.audience, signed.issuer))
    users_table, _ = _users_table(doc)
    users_table[user_name] = claims
    write_config(path, _dump(doc))
    new = next(p for p in load_settings(config_file=path).providers if p.id == provider_id)
    ProviderCache(settings).remember(new, signed.jwks)
    click.echo(f"added provider {provider_id} ({signed.jwks_url}, aud {signed.audience}, iss {signed.issuer}) "
               f"and test user {user_name} (sub {claims['sub']}) to {path}")
    restart_hint(settings)


@providers.command("list")
@project_options
def providers_list():
    """Show each provider, its key source, roles, audience and cached keys."""
    from neon_local.auth.providers import ProviderCache

    settings = _settings()
    cache = ProviderCache(settings)
    for p in settings.providers:
        source = "built-in issuer" if p.builtin else (p.jwks_url or str(p.jwks_file))
        cached = ""
        if not p.builtin:
            status = cache.status(p)
            fetched_at = status["fetched_at"]
            when = "never fetched" if fetched_at is None else "fetched " + datetime.fromtimestamp(fetched_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            cached = f"  {status['keys']} cached keys, {when}"
        audience = f"  aud={p.jwt_audience}" if p.jwt_audience else ""
        click.echo(f"{p.id:16} {source}  roles={','.join(p.role_names)}{audience}{cached}")


def _without_jwks_table(text: str, provider_id: str) -> str | None:
    """`text` minus the [[jwks]] table whose id is `provider_id`, or None if there is no such table."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _JWKS_HEADER.match(line)]
    for start in starts:
        end = next((j for j in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[j])), len(lines))
        try:
            table = tomllib.loads("".join(lines[start:end]))
        except tomllib.TOMLDecodeError:
            continue
        if table["jwks"][0].get("id") == provider_id:
            while start > 0 and not lines[start - 1].strip():
                start -= 1
            return "".join(lines[:start] + lines[end:])
    return None


@providers.command("remove")
@project_options
@click.argument("provider_id")
def providers_remove(provider_id):
    """Remove a provider's [[jwks]] table from neon_local.toml and its cached keys."""
    from neon_local.auth.providers import ProviderCache

    settings = _settings()
    provider = next((p for p in settings.providers if p.id == provider_id), None)
    if provider is None:
        raise click.ClickException(f"no provider {provider_id!r}; `neon-local providers list` shows them")
    if provider.builtin:
        raise click.ClickException(f"{BUILTIN_PROVIDER_ID} is the built-in issuer and cannot be removed; narrow its role_names instead")
    path = config_path(settings)
    text = _without_jwks_table(path.read_text(), provider_id)
    if text is None:
        raise click.ClickException(f"could not find a [[jwks]] table with id = {provider_id!r} in {path}; edit it by hand")
    write_config(path, text)
    ProviderCache(settings).forget(provider)
    click.echo(f"removed provider {provider_id} from {path}")
    restart_hint(settings)
