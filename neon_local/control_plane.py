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
  names, whatever the connection string says, created from the template on first use.

Its superuser connections never linger: the one for pg_authid closes when idle, the others close
after their query, so none of them blocks the owner's DROP DATABASE or CREATE DATABASE.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

from neon_local.auth.scram import ClientCredential, ScramVerifier
from neon_local.errors import PostgresErrorResponse
from neon_local.postgres import session_jwt
from neon_local.postgres.bootstrap import jwt_role_statements
from neon_local.serverless.pg_conn import PgConnection, Statement, connect
from neon_local.settings import Tenancy

__all__ = ["TEMPLATE_DATABASES", "ControlPlane", "JwtSessionBackend", "claim_at", "tenant_dbname"]

log = logging.getLogger(__name__)

ADMIN_USER = "cloud_admin"
ADMIN_IDLE_SECONDS = 2.0  # the pg_authid connection closes this long after its last use
PASSWORD_CACHE_SIZE = 1024
TEMPLATE_DATABASES = frozenset(("template0", "template1"))
TENANT_KEY = re.compile(r"[A-Za-z0-9_-]+")  # tenant ids as auth providers make them (org_2abc, acme-inc, 42)
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


def tenant_dbname(tenancy: Tenancy, tenant: Any) -> str:
    """The database of `tenant` (a claim's value); a refusal (28000) when it cannot name one."""
    if isinstance(tenant, int) and not isinstance(tenant, bool):
        tenant = str(tenant)
    dbname = tenancy.prefix + tenant if isinstance(tenant, str) and TENANT_KEY.fullmatch(tenant) else None
    if dbname is None or len(dbname.encode()) > 63:
        raise tenancy_refusal(f'the "{tenancy.claim}" claim {tenant!r} cannot name a tenant database',
                              "A tenant id is a string or number of letters, digits, _ and -, "
                              f"at most {63 - len(tenancy.prefix.encode())} characters.")
    return dbname


class ControlPlane:
    """`ControlPlane(cluster, tenancy)`: `cluster` is the running Postgres (`conninfo()`, `session_secret`);
    `tenancy` the [tenancy] settings with the template resolved, or None."""

    def __init__(self, cluster: Postgres, tenancy: Tenancy | None = None, session_jwt_version: str = session_jwt.DEFAULT_VERSION,
                 stub_installer: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.cluster = cluster
        # An upstream Postgres has no pg_session_jwt to CREATE: this installs the stub's plain SQL in a database.
        self.stub_installer = stub_installer
        self.session_jwt_version = session_jwt_version  # what a database without the extension gets
        self.tenancy = tenancy
        self.pools: list = []  # the paths' ConnPools: asked to let go of the template before it is copied
        self._tenants: dict[str, asyncio.Future] = {}
        if tenancy is not None:
            log.warning('[tenancy] (neon-local only; Neon uses the connection string\'s database): a JWT session uses '
                        'database %s<its "%s" claim>, copied from %s on first use', tenancy.prefix, tenancy.claim,
                        tenancy.template)
        self._prepared: dict[tuple[str, str], asyncio.Future] = {}
        self._prepare_lock = asyncio.Lock()
        self._authid: PgConnection | None = None
        self._authid_lock = asyncio.Lock()
        self._authid_closer: asyncio.TimerHandle | None = None
        self._good_passwords: OrderedDict[bytes, None] = OrderedDict()
        self._builtin_arrays: dict[int, int] | None = None
        self._arrays: dict[str, dict[int, int]] = {}
        self._closing: set[asyncio.Future] = set()

    def conninfo(self, user: str, dbname: str, options: str = "") -> str:
        # An explicit empty `options` keeps PGOPTIONS from the environment out of the session.
        return self.cluster.conninfo(user=user, dbname=dbname, options=options, client_encoding="UTF8")

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
            if exc.sqlstate in _NOT_FROM_ROLE_DEFAULTS or not await self._clear_role_defaults(role, exc):
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
        return session_jwt.SessionSigner(self.cluster.session_secret, int(pid), _text(backend_start))

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
                if self.stub_installer is not None:
                    await self.stub_installer(dbname)
                (owner,) = cast(tuple, await admin.first_row(_DATABASE_OWNER_SQL))
                statements = jwt_role_statements(role, owner, self.session_jwt_version, extension=self.stub_installer is None)
                await admin.run([Statement(sql) for sql in statements])
            finally:
                await admin.close()

    async def _clear_role_defaults(self, role: str, refusal: PostgresErrorResponse) -> bool:
        """Reset a JWT role's own defaults when they stop it from connecting; False if it has none."""
        admin = await connect(self.conninfo(ADMIN_USER, "postgres"))
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

    async def tenant_database(self, claims: Mapping[str, Any] | None, requested_db: str) -> str:
        """The database a JWT session with `claims` uses: `requested_db` without tenancy, else its tenant's,
        created from the template on first use (once, even when raced), whatever `requested_db` says."""
        if self.tenancy is None:
            return requested_db
        tenant = claim_at(claims or {}, self.tenancy.claim)
        if tenant is None or tenant == "":
            claim = self.tenancy.claim
            raise tenancy_refusal(f'this token has no "{claim}" claim, and tenancy routes every JWT session by it',
                                  f'Give your tokens a "{claim}" claim (e.g. [users.alice] {claim} = "acme" in '
                                  "neon_local.toml), or remove [tenancy].")
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
            # Owned as the template is (the owner's), so the owner's migrations reach the copy too.
            owner = await admin.first_row("select pg_catalog.pg_get_userbyid(datdba) from pg_catalog.pg_database"
                                          " where datname = $1", [template])
            owned_by = f" OWNER {_quote_ident(owner[0])}" if owner else ""
            for attempt in range(TEMPLATE_BUSY_RETRIES + 1):
                # Sessions on the template block the copy: our own idle pooled ones go first.
                await asyncio.gather(*(pool.close_idle(template) for pool in self.pools))
                try:
                    await admin.run([Statement(f"CREATE DATABASE {_quote_ident(dbname)} TEMPLATE {_quote_ident(template)}{owned_by}")])
                    log.info("tenant database %s created from %s", dbname, template)
                    return
                except PostgresErrorResponse as exc:
                    if exc.sqlstate == "42P04":  # made by `neon-local tenants create` meanwhile
                        return
                    if exc.sqlstate != "55006" or attempt == TEMPLATE_BUSY_RETRIES:
                        raise self._template_refusal(dbname, template, exc) from None
        finally:
            await admin.close()

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
        admin = await connect(self.conninfo(ADMIN_USER, dbname))
        try:
            if self._builtin_arrays is None:  # built-in types are the same in every database
                (pairs,) = cast(tuple, await admin.first_row(_ARRAYS_SQL.format("t.oid < 16384")))
                self._builtin_arrays = _pairs(pairs)
            if known is None:
                known = self._arrays[dbname] = dict(self._builtin_arrays)
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
