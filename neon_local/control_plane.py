"""The control plane: the Postgres-side work every client path needs, in one place.

Neon's proxy asks one control plane for a role's credentials and has compute_ctl prepare a database
for JWT roles; here SQL over HTTP, the Data API, TCP and WebSocket all call this module for:
- credentials: a role's SCRAM secret from pg_authid, and the password check against it
  (PBKDF2 on a thread, good passwords remembered);
- JWT sessions: pg_session_jwt installed and `USAGE ON SCHEMA auth` granted in a database before a
  JWT role's first session there, then the backend bound to its signer. When a reset took the
  extension away (`DROP SCHEMA public CASCADE`), the session that trips over it prepares the
  database again, once; no request pays for a check otherwise;
- catalog lookups (which types are arrays, for the JSON encoding);
- tenancy (neon-local only): with [tenancy], a JWT session's database is the one its tenant claim
  names, whatever the connection string says: in mode "database" a database of our Postgres, created
  from the template on first use (the spare copy made ahead of time, renamed: neon_local/tenant_spare.py);
  in mode "upstream" the database of the Postgres URL the tenant is mapped to, prepared at start as
  --upstream prepares one. Such a session's database name is then a
  route ("acme:app@db2.internal:5432") that this module alone turns into a server and a database.

Its superuser connections never linger: the one for pg_authid closes when idle, the others close
after their query, so none of them blocks the owner's DROP DATABASE or CREATE DATABASE.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar, cast

from neon_local.auth.scram import ClientCredential, ScramVerifier
from neon_local.data_api.setup import AUTHENTICATOR
from neon_local.errors import PostgresErrorResponse
from neon_local.postgres import session_jwt
from neon_local.postgres.bootstrap import jwt_role_statements
from neon_local.postgres.upstream import Upstream, UpstreamChangesNeeded, UpstreamError
from neon_local.serverless.pg_conn import PgConnection, Statement, connect
from neon_local.settings import SPARE_TENANT_DATABASE, TENANT_KEY, Settings, Tenancy, UpstreamUrl
from neon_local.tenant_spare import TEMPLATE_OWNER_SQL, SpareDatabase, copy_database_sql

__all__ = ["TEMPLATE_DATABASES", "ControlPlane", "JwtSessionBackend", "TenantUpstream", "claim_at", "tenant_dbname"]

log = logging.getLogger(__name__)

ADMIN_USER = "cloud_admin"
ADMIN_IDLE_SECONDS = 2.0  # the pg_authid connection closes this long after its last use
PASSWORD_CACHE_SIZE = 1024
TEMPLATE_DATABASES = frozenset(("template0", "template1"))
# CREATE DATABASE waits 5 s for other sessions on the template to end, then fails: one more try after
# a pooled connection that was busy (being reset) when the first began has gone idle and been closed.
TEMPLATE_BUSY_RETRIES = 1

# The session set-up failed because the database lost what preparing it put there: the auth schema,
# the extension's functions or state, or the role's USAGE on the schema.
_UNPREPARED = frozenset(("3F000", "42883", "42P01", "42501"))
# Startup refusals that role defaults cannot cause (a missing database, no free slot, shutting down, ...).
_NOT_FROM_ROLE_DEFAULTS = frozenset(("3D000", "53300", "57P01", "57P03", "55000", "28000", "28P01", "08006"))

_SECRET_SQL = ("select rolpassword from pg_catalog.pg_authid where rolname = $1 and rolcanlogin"
               " and (rolvaliduntil is null or rolvaliduntil > now())")
_DATABASE_OWNER_SQL = ("select pg_catalog.pg_get_userbyid(datdba) from pg_catalog.pg_database"
                       " where datname = pg_catalog.current_database()")
_ROLE_DEFAULTS_SQL = (
    "select coalesce(string_agg(coalesce(d.datname, '') || chr(1) || array_to_string(s.setconfig, chr(2)), chr(3)), '')"
    " from pg_catalog.pg_db_role_setting s join pg_catalog.pg_roles r on r.oid = s.setrole"
    " left join pg_catalog.pg_database d on d.oid = s.setdatabase where r.rolname = $1")
# Pairs "oid:elem" of array types; 0 marks a looked-up type that is not an array.
_ARRAYS_SQL = ("select coalesce(string_agg(t.oid || ':' || t.typelem, ','), '') from pg_catalog.pg_type t"
               " where t.typelem <> 0 and t.typtype not in ('d', 'e', 'p')"
               " and (t.typcategory = 'A' or t.oid >= 16384) and {}")


class JwtSessionBackend(Protocol):
    """What a path's backend connection offers the control plane: one query, its first row as text."""

    async def first_row(self, sql: str, params: Sequence[str | None] = ()) -> tuple | None: ...

    def close(self) -> object: ...  # sync or async


class Postgres(Protocol):
    """The Postgres the emulator fronts, as the control plane and the proxy use it: its own (PostgresCluster)
    or an upstream one (Upstream)."""

    session_secret: bytes

    def conninfo(self, user: str = ..., dbname: str = ..., **params: str) -> str: ...

    def credential(self, role: str) -> ClientCredential | None: ...

    def remember(self, role: str, credential: ClientCredential) -> None: ...

    async def open_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol]) -> Any: ...


B = TypeVar("B", bound=JwtSessionBackend)


def template_refusal(dbname: str) -> PostgresErrorResponse:
    return PostgresErrorResponse({
        "S": "FATAL", "V": "FATAL", "C": "42501",
        "M": f'JWT sessions are not allowed on template database "{dbname}"',
        "H": "pg_session_jwt would be installed there and copied into every new database; "
             "connect to your app's database (e.g. neondb) instead.",
    })


def tenancy_refusal(message: str, hint: str) -> PostgresErrorResponse:
    return PostgresErrorResponse({"S": "FATAL", "V": "FATAL", "C": "28000", "M": message, "H": hint})


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at a JSON path ("org_id", "org.id", "$.org.id"); a key that itself holds dots matches first."""
    path = path.removeprefix("$").removeprefix(".")
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def tenant_id(tenant: Any) -> str | None:
    """A claim's value as a tenant id (a number counts as its digits), or None when it cannot be one."""
    if isinstance(tenant, int) and not isinstance(tenant, bool):
        tenant = str(tenant)
    return tenant if isinstance(tenant, str) and TENANT_KEY.fullmatch(tenant) else None


def tenant_dbname(tenancy: Tenancy, tenant: Any) -> str:
    """The database of `tenant` (a claim's value) in mode "database"; a refusal (28000) when it cannot name one."""
    key = tenant_id(tenant)
    dbname = tenancy.prefix + key if key is not None else None
    if dbname is None or len(dbname.encode()) > 63 or dbname == SPARE_TENANT_DATABASE:
        raise tenancy_refusal(f'the "{tenancy.claim}" claim {tenant!r} cannot name a tenant database',
                              "A tenant id is a string or number of letters, digits, _ and -, "
                              f"at most {63 - len(tenancy.prefix.encode())} characters.")
    return dbname


class TenantUpstream:
    """A tenant's database on its upstream Postgres ([tenancy] mode "upstream"), and the route that names it."""

    def __init__(self, tenant: str, url: str, database: str, upstream: Upstream) -> None:
        self.url = url  # as [tenancy.upstreams] writes it
        self.upstream = upstream  # shared by the tenants on one server and login: one stub secret, one set of passwords
        self.dbname = database  # the tenant's own: the shared upstream's URL may name another tenant's
        self.route = f"{tenant}:{database}@{upstream.url.host}:{upstream.url.port}"  # no "/": it also stands in a Data API path


class ControlPlane:
    """`ControlPlane(cluster)`: `cluster` is the running Postgres (`conninfo()`, `session_secret`);
    `await use_tenancy(settings)` routes JWT sessions by [tenancy] from then on."""

    def __init__(self, cluster: Postgres, session_jwt_version: str = session_jwt.DEFAULT_VERSION,
                 stub_installer: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.cluster = cluster
        # An upstream Postgres has no pg_session_jwt to CREATE: this installs the stub's plain SQL in a database.
        self.stub_installer = stub_installer
        self.session_jwt_version = session_jwt_version  # what a database without the extension gets
        self.tenancy: Tenancy | None = None  # with the template resolved
        self.pools: list = []  # the paths' ConnPools: asked to let go of the template before it is copied
        self._tenants: dict[str, asyncio.Future] = {}
        # Mode "database" on our own Postgres: a copy of the template kept ready for the next new tenant.
        self._spare = None if isinstance(cluster, Upstream) else SpareDatabase(
            lambda dbname: self.conninfo(ADMIN_USER, dbname), self._close_idle, self._install)
        self._spare_roles: tuple[str, ...] = ()  # the roles a spare is prepared for
        self._taking_spare = asyncio.Lock()  # one new tenant at a time takes the spare (or waits for the next)
        self.tenant_upstreams: dict[str, TenantUpstream] = {}  # mode "upstream": tenant id → its database
        self._routes: dict[str, TenantUpstream] = {}  # route → the same, for every path's later calls
        self._routed_roles: frozenset[str] = frozenset()  # the roles that may reach a route: JWT roles, the Data API's
        self._shaped_for: tuple = ()  # the settings the tenants' upstreams were last prepared for
        self._prepared: dict[tuple[str, str], asyncio.Future] = {}
        self._prepare_lock = asyncio.Lock()
        self._authid: PgConnection | None = None
        self._authid_lock = asyncio.Lock()
        self._authid_closer: asyncio.TimerHandle | None = None
        self._good_passwords: OrderedDict[bytes, None] = OrderedDict()
        self._builtin_arrays: dict[object, dict[int, int]] = {}  # per server (our Postgres, each upstream)
        self._arrays: dict[str, dict[int, int]] = {}
        self._closing: set[asyncio.Future] = set()

    def conninfo(self, user: str, dbname: str, options: str = "") -> str:
        """libpq parameters for `user` on `dbname`: a route's server and database, else our Postgres's."""
        routed = self._routes.get(dbname)
        if routed is None:
            # An explicit empty `options` keeps PGOPTIONS from the environment out of the session.
            return self.cluster.conninfo(user=user, dbname=dbname, options=options, client_encoding="UTF8")
        if user != ADMIN_USER and user not in self._routed_roles:  # a password role naming a route: not a tenant's
            raise PostgresErrorResponse({
                "S": "FATAL", "V": "FATAL", "C": "42501",
                "M": f'permission denied for database "{dbname}": a tenant\'s upstream, which only that tenant\'s JWT sessions reach',
                "H": "Password roles (the owner) connect to neon-local's own Postgres: name one of its databases."})
        return routed.upstream.conninfo(user=user, dbname=routed.dbname, options=options, client_encoding="UTF8")

    def compute_of(self, dbname: str) -> tuple[Postgres, str]:
        """The Postgres that serves `dbname` and the database's name there: a tenant's upstream for a route."""
        routed = self._routes.get(dbname)
        return (routed.upstream, routed.dbname) if routed is not None else (self.cluster, dbname)

    # --- credentials ---------------------------------------------------------------------------

    async def role_secret(self, role: str) -> str | None:
        """The role's SCRAM secret (rolpassword) if it may log in now, else None."""
        async with self._authid_lock:
            for attempt in range(2):
                if self._authid is None or self._authid.broken:
                    self._authid = await connect(self.conninfo(ADMIN_USER, "postgres"))
                try:
                    row = await self._authid.first_row(_SECRET_SQL, [role])
                    break
                except PostgresErrorResponse:
                    raise
                except Exception:
                    self._authid = None  # a connection from before a Postgres restart: one more try
                    if attempt:
                        raise
            self._close_authid_later()
        return row[0] if row else None

    def _close_authid_later(self) -> None:
        if self._authid_closer is not None:
            self._authid_closer.cancel()
        self._authid_closer = asyncio.get_running_loop().call_later(ADMIN_IDLE_SECONDS, self._close_authid)

    def _close_authid(self) -> None:
        if self._authid is not None and not self._authid_lock.locked():
            self._track(asyncio.ensure_future(self._authid.close()))
            self._authid = None

    async def check_password(self, role: str, password: bytes) -> bool:
        """Neon's password check: the role's SCRAM verifier from pg_authid, read every time."""
        secret = await self.role_secret(role)
        verifier = ScramVerifier.parse(secret)
        if verifier is None:
            return False
        # PBKDF2 costs milliseconds: remember the (verifier, password) pairs that matched.
        key = hashlib.sha256(cast(str, secret).encode() + b"\0" + password).digest()  # parsed: not None
        if key in self._good_passwords:
            self._good_passwords.move_to_end(key)
            self.remember_login(role, ClientCredential(password=password))
            return True
        if not await asyncio.to_thread(verifier.check_password, password):
            return False
        self.remember_login(role, ClientCredential(password=password))
        self._good_passwords[key] = None
        if len(self._good_passwords) > PASSWORD_CACHE_SIZE:
            self._good_passwords.popitem(last=False)
        return True

    def remember_login(self, role: str, credential: ClientCredential) -> None:
        """A client proved it may log in as `role`: an upstream Postgres (`--upstream`) then lets the proxy in with
        the same credential; our own Postgres trusts the proxy and needs none."""
        self.cluster.remember(role, credential)

    # --- JWT sessions ----------------------------------------------------------------------------

    async def start_jwt_session(self, dbname: str, role: str, open_backend: Callable[[str], Awaitable[B]]
                                ) -> tuple[B, session_jwt.SessionSigner]:
        """A backend for a JWT role, bound to its signer: what every path does before a JWT role's first statement.

        `open_backend(options)` connects as `role` to `dbname` with those startup options and raises
        PostgresErrorResponse when Postgres refuses. Role defaults that stop the role from connecting
        at all (a JWT user ran `ALTER ROLE ... SET local_preload_libraries`) are cleared, once, and logged.
        """
        if dbname in TEMPLATE_DATABASES:
            raise template_refusal(dbname)
        await self.prepare_jwt_role(dbname, role)
        try:
            backend = await open_backend(session_jwt.startup_options())
        except PostgresErrorResponse as exc:
            if exc.sqlstate == "3D000" and dbname in self._tenants:  # dropped meanwhile (`neon-local tenants drop`)
                self.forget_database(dbname)
                await self._tenant_created(dbname)
                return await self.start_jwt_session(dbname, role, open_backend)
            if exc.sqlstate in _NOT_FROM_ROLE_DEFAULTS or not await self._clear_role_defaults(dbname, role, exc):
                raise
            backend = await open_backend(session_jwt.startup_options())
        try:
            return backend, await self._bind(dbname, role, backend)
        except BaseException:
            await _close(backend)
            raise

    async def _bind(self, dbname: str, role: str, backend: JwtSessionBackend) -> session_jwt.SessionSigner:
        try:
            pid, backend_start = cast(tuple, await backend.first_row(session_jwt.BIND_QUERY))
        except PostgresErrorResponse as exc:
            if not self.unprepared(exc):
                raise
            await self.repair_jwt_role(dbname, role)
            pid, backend_start = cast(tuple, await backend.first_row(session_jwt.BIND_QUERY))
        return session_jwt.SessionSigner(self.compute_of(dbname)[0].session_secret, int(pid), _text(backend_start))

    @staticmethod
    def unprepared(exc: BaseException) -> bool:
        """Whether a JWT session's set-up failed for want of what `prepare_jwt_role` installs."""
        return isinstance(exc, PostgresErrorResponse) and exc.sqlstate in _UNPREPARED

    async def prepare_jwt_role(self, dbname: str, role: str) -> None:
        """What local_proxy asks compute_ctl for the first time it sees a (database, role); once, even when raced."""
        key = (dbname, role)
        prepared = self._prepared.get(key)
        if prepared is None or (prepared.done() and prepared.exception() is not None):
            prepared = self._prepared[key] = asyncio.ensure_future(self._prepare(dbname, role))
        await asyncio.shield(prepared)

    async def repair_jwt_role(self, dbname: str, role: str) -> None:
        """Prepare again after the database lost the extension or the grant (a schema reset)."""
        log.warning("pg_session_jwt or USAGE on schema auth went missing in database %s (a schema reset?); "
                    "installing it again for role %s", dbname, role)
        for key in [k for k in self._prepared if k[0] == dbname]:
            if self._prepared[key].done():
                del self._prepared[key]
        await self.prepare_jwt_role(dbname, role)

    async def _prepare(self, dbname: str, role: str) -> None:
        # One at a time: two roles' GRANTs on schema auth at once fail with "tuple concurrently updated".
        async with self._prepare_lock:
            admin = await connect(self.conninfo(ADMIN_USER, dbname))  # first: a missing database is Postgres's 3D000
            try:
                await self._install(admin, dbname, [role])
            finally:
                await admin.close()

    async def _install(self, admin: PgConnection, dbname: str, roles: Sequence[str]) -> None:
        """Prepare `dbname` for the JWT `roles`, on `admin`, a superuser connection to it."""
        routed = self._routes.get(dbname)
        installer = routed.upstream.install_stub if routed is not None else self.stub_installer
        if installer is not None:
            await installer(routed.dbname if routed is not None else dbname)
        (owner,) = cast(tuple, await admin.first_row(_DATABASE_OWNER_SQL))
        await admin.run([Statement(sql) for role in roles
                         for sql in jwt_role_statements(role, owner, self.session_jwt_version, extension=installer is None)])

    async def _clear_role_defaults(self, dbname: str, role: str, refusal: PostgresErrorResponse) -> bool:
        """Reset a JWT role's own defaults (on the server of `dbname`) when they stop it from connecting; False if it has none."""
        admin = await connect(self.conninfo(ADMIN_USER, dbname if dbname in self._routes else "postgres"))
        try:
            (found,) = cast(tuple, await admin.first_row(_ROLE_DEFAULTS_SQL, [role]))
            if not found:
                return False
            entries = [entry.split("\x01") for entry in found.split("\x03")]
            statements = [f"ALTER ROLE {_quote_ident(role)}"
                          + (f" IN DATABASE {_quote_ident(db)}" if db else "") + " RESET ALL" for db, _ in entries]
            await admin.run([Statement(sql) for sql in statements])
        finally:
            await admin.close()
        settings = "; ".join((f"in database {db}: " if db else "") + values.replace("\x02", ", ") for db, values in entries)
        log.warning("role %s could not connect (%s): cleared its role defaults (%s). Any user of a JWT role can "
                    "set these with ALTER ROLE ... SET; set them again as the owner if you meant them.",
                    role, refusal.fields.get("M", refusal.sqlstate), settings)
        return True

    # --- tenancy ---------------------------------------------------------------------------------

    async def use_tenancy(self, settings: Settings) -> None:
        """Route JWT sessions by `settings.tenancy` from now on (start, live reload). Mode "upstream" first checks and
        prepares each tenant's upstream as --upstream prepares one; what cannot be prepared, or may not be changed
        without `upstream_yes`, raises UpstreamError before anything is switched."""
        tenancy = settings.tenancy
        if tenancy is not None and tenancy.mode == "database":
            tenancy = replace(tenancy, template=tenancy.template or settings.database)
        upstreams = await self._prepare_upstreams(settings) if tenancy is not None and tenancy.mode == "upstream" else {}
        self._use_spare(tenancy, settings)
        if tenancy != self.tenancy and tenancy is not None:
            where = (f"database {tenancy.prefix}<its \"{tenancy.claim}\" claim>, copied from {tenancy.template} on first use"
                     if tenancy.mode == "database" else
                     f'the Postgres its "{tenancy.claim}" claim maps to in [tenancy.upstreams] ({len(upstreams)} mapped)')
            log.warning("[tenancy] (neon-local only; Neon uses the connection string's database): a JWT session uses %s", where)
        self.tenancy, self.tenant_upstreams = tenancy, upstreams
        self._routes = {tenant.route: tenant for tenant in upstreams.values()}
        self._routed_roles = frozenset((*settings.jwt_roles, AUTHENTICATOR))

    def _use_spare(self, tenancy: Tenancy | None, settings: Settings) -> None:
        """Start, renew or retire the spare tenant database as [tenancy] starts, changes its template or ends."""
        if self._spare is None:
            return
        was = self.tenancy.template if self.tenancy is not None and self.tenancy.mode == "database" else None
        self._spare_roles = (*settings.jwt_roles, *((AUTHENTICATOR,) if settings.data_api else ()))
        if tenancy is not None and tenancy.mode == "database":
            if tenancy.template != was:
                self._spare.renew(tenancy.template, self._spare_roles)
        elif was is not None:
            self._spare.retire()

    def template_changed(self) -> None:
        """neon-local changed the template (a migration): the spare is a copy of what it was, so another is made."""
        if self._spare is not None and self.tenancy is not None and self.tenancy.mode == "database":
            self._spare.renew(self.tenancy.template, self._spare_roles)

    async def spare_ready(self) -> bool:
        """Wait for the spare tenant database being made; whether one is ready for the next new tenant."""
        return self._spare is not None and await self._spare.ready()

    async def _prepare_upstreams(self, settings: Settings) -> dict[str, TenantUpstream]:
        """Every mapped tenant's upstream, checked and shaped (roles, stub, passwords, Data API) as --upstream does;
        the changes every tenant needs are listed together, so one answer (or upstream_yes) covers them all."""
        assert settings.tenancy is not None
        shape = (settings.jwt_roles, dict(settings.role_specs), settings.data_api, settings.data_api_schemas,
                 settings.data_api_anon_role, settings.session_jwt_version)
        servers = {replace(tenant.upstream.url, dbname=""): tenant.upstream for tenant in self.tenant_upstreams.values()}
        if isinstance(self.cluster, Upstream):  # --upstream: a tenant on that server and login shares it too
            servers.setdefault(replace(self.cluster.url, dbname=""), self.cluster)
        prepared, needed = {}, []
        for tenant, url in sorted(settings.tenancy.upstreams.items()):
            known = self.tenant_upstreams.get(tenant)
            if known is not None and known.url == url and shape == self._shaped_for:
                prepared[tenant] = known  # unchanged: not checked again on every edit of the file
                continue
            parsed = UpstreamUrl.parse(url, f"[tenancy.upstreams] {tenant}")
            login = replace(parsed, dbname="")  # the tenants of one server and login share its stub secret and passwords
            upstream = servers.setdefault(login, Upstream(parsed))
            try:
                await upstream.start(replace(settings, upstream=url))
            except UpstreamChangesNeeded as exc:
                needed += [f"tenant {tenant} ({parsed.display}): {change}" for change in exc.changes]
                continue
            except UpstreamError as exc:
                raise UpstreamError(f"[tenancy.upstreams] {tenant}: {exc}") from None
            prepared[tenant] = TenantUpstream(tenant, url, parsed.dbname or settings.database, upstream)
        if needed:
            raise UpstreamChangesNeeded("of each tenant in [tenancy.upstreams]", needed)
        self._shaped_for = shape
        return prepared

    async def tenant_database(self, claims: Mapping[str, Any] | None, requested_db: str) -> str:
        """The database a JWT session with `claims` uses: `requested_db` without tenancy, else its tenant's whatever
        `requested_db` says: in mode "database" created from the template on first use (once, even when raced),
        in mode "upstream" the route to the database its upstream URL names."""
        if self.tenancy is None:
            return requested_db
        claim = self.tenancy.claim
        tenant = claim_at(claims or {}, claim)
        if tenant is None or tenant == "":
            raise tenancy_refusal(f'this token has no "{claim}" claim, and tenancy routes every JWT session by it',
                                  f'Give your tokens a "{claim}" claim (e.g. [users.alice] {claim} = "acme" in '
                                  "neon_local.toml), or remove [tenancy].")
        if self.tenancy.mode == "upstream":
            key = tenant_id(tenant)
            if key is None:
                raise tenancy_refusal(f'the "{claim}" claim {tenant!r} cannot name a tenant',
                                      "A tenant id is a string or number of letters, digits, _ and -.")
            routed = self.tenant_upstreams.get(key)
            if routed is None:
                raise tenancy_refusal(f'tenant {key!r} (the "{claim}" claim) has no upstream in [tenancy.upstreams]',
                                      f'Map it in neon_local.toml ([tenancy.upstreams] {key} = "postgresql://..."), or use '
                                      "a token of a mapped tenant; `neon-local tenants list` shows them.")
            return routed.route
        dbname = tenant_dbname(self.tenancy, tenant)
        await self._tenant_created(dbname)
        return dbname

    async def _tenant_created(self, dbname: str) -> None:
        created = self._tenants.get(dbname)
        if created is None or (created.done() and created.exception() is not None):
            created = self._tenants[dbname] = asyncio.ensure_future(self._create_tenant(dbname))
        await asyncio.shield(created)

    async def _create_tenant(self, dbname: str) -> None:
        assert self.tenancy is not None  # only a tenancy names tenant databases
        template = self.tenancy.template
        admin = await connect(self.conninfo(ADMIN_USER, "postgres"))
        try:
            if await admin.first_row("select 1 from pg_catalog.pg_database where datname = $1", [dbname]):
                return
            if self._spare is not None:
                try:
                    async with self._taking_spare:
                        roles = await self._spare.take(admin, template, dbname)
                except PostgresErrorResponse as exc:
                    if exc.sqlstate == "42P04":  # made by `neon-local tenants create` meanwhile
                        return
                    raise
                if roles is not None:
                    for role in roles:  # as their first sessions there would have prepared it
                        self._prepared[(dbname, role)] = prepared = asyncio.get_running_loop().create_future()
                        prepared.set_result(None)
                    return
            (owner,) = await admin.first_row(TEMPLATE_OWNER_SQL, [template]) or (None,)
            for attempt in range(TEMPLATE_BUSY_RETRIES + 1):
                # Sessions on the template block the copy: our own idle pooled ones go first.
                await self._close_idle(template)
                try:
                    await admin.run([Statement(copy_database_sql(dbname, template, owner))])
                    log.info("tenant database %s created from %s", dbname, template)
                    return
                except PostgresErrorResponse as exc:
                    if exc.sqlstate == "42P04":  # made by `neon-local tenants create` meanwhile
                        return
                    if exc.sqlstate != "55006" or attempt == TEMPLATE_BUSY_RETRIES:
                        raise self._template_refusal(dbname, template, exc) from None
        finally:
            await admin.close()
            if self._spare is not None and self.tenancy is not None and self.tenancy.mode == "database":
                self._spare.keep(self.tenancy.template, self._spare_roles)  # for the next new tenant

    async def _close_idle(self, dbname: str) -> None:
        await asyncio.gather(*(pool.close_idle(dbname) for pool in self.pools))

    @staticmethod
    def _template_refusal(dbname: str, template: str, exc: PostgresErrorResponse) -> PostgresErrorResponse:
        hint = (f'Close the sessions on "{template}" (psql, an IDE), or set [tenancy] template to a database '
                "that only migrations connect to." if exc.sqlstate == "55006" else
                f'Check [tenancy] template: "{template}" must exist and hold your migrated schema.')
        return PostgresErrorResponse({"S": "FATAL", "V": "FATAL", "C": exc.sqlstate or "XX000", "H": hint,
                                      "M": f'could not create tenant database "{dbname}" from "{template}": '
                                           f'{exc.fields.get("M", "")}'})

    # --- catalog lookups ------------------------------------------------------------------------

    async def array_elements(self, dbname: str, oids: Sequence[int]) -> dict[int, int]:
        """Array type OID → element OID for `dbname`, as tokio-postgres classifies types (domains are not arrays)."""
        known = self._arrays.get(dbname)
        missing = [oid for oid in oids if oid >= 16384 and (known is None or oid not in known)]
        if known is not None and not missing:
            return known
        server = self.compute_of(dbname)[0]
        if known is None and not missing and server in self._builtin_arrays:  # a new database: nothing to look up
            known = self._arrays[dbname] = dict(self._builtin_arrays[server])
            return known
        admin = await connect(self.conninfo(ADMIN_USER, dbname))
        try:
            if server not in self._builtin_arrays:  # built-in types are the same in every database of a server
                (pairs,) = cast(tuple, await admin.first_row(_ARRAYS_SQL.format("t.oid < 16384")))
                self._builtin_arrays[server] = _pairs(pairs)
            if known is None:
                known = self._arrays[dbname] = dict(self._builtin_arrays[server])
            if missing:
                (pairs,) = cast(tuple, await admin.first_row(_ARRAYS_SQL.format("t.oid = any($1::oid[])"),
                                                             ["{" + ",".join(map(str, missing)) + "}"]))
                known.update(dict.fromkeys(missing, 0))
                known.update(_pairs(pairs))
        finally:
            await admin.close()
        return known

    def forget_database(self, dbname: str) -> None:
        """The database is gone or was replaced: what was learnt about it no longer holds."""
        self._arrays.pop(dbname, None)
        for key in [k for k in self._prepared if k[0] == dbname]:
            del self._prepared[key]
        self._tenants.pop(dbname, None)

    # --- life cycle -----------------------------------------------------------------------------

    def _track(self, future: asyncio.Future) -> None:
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._spare is not None:
            await self._spare.close()
        if self._authid_closer is not None:
            self._authid_closer.cancel()
        if self._authid is not None:
            await self._authid.close()
            self._authid = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _close(backend: JwtSessionBackend) -> None:
    result = backend.close()
    if inspect.isawaitable(result):
        await result


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pairs(text: str) -> dict[int, int]:
    return {int(a): int(b) for a, b in (pair.split(":") for pair in text.split(",") if pair)}
