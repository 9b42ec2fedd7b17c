"""Front a Postgres that neon-local did not start (`--upstream postgresql://USER:PASSWORD@HOST:PORT/DB`).

It stands in for `PostgresCluster` (conninfo, the session secret, a socket for the proxy) with three
differences that follow from not owning the server:
- connections go over TCP and must log in: as USER for neon-local's own work, as a JWT role with a
  password neon-local sets on it (Neon's JWT roles have none; the proxy trusts its own compute),
  and as a password role with the credential its client just proved to the proxy;
- pg_session_jwt cannot be put in the server's share directory, so the stub goes in as plain SQL
  run by USER (a superuser), and its instance secret lives in a table only superusers can read
  instead of a file in the data directory;
- the server is checked first (reachable, PostgreSQL 14+, USER a superuser), what it needs is listed,
  and nothing changes without the user's consent (`upstream_yes`, or `up` asking); each change made
  is logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from neon_local.auth.scram import ClientCredential, ScramVerifier
from neon_local.data_api import setup as data_api_setup
from neon_local.errors import UpstreamChangesNeeded, UpstreamError
from neon_local.postgres import session_jwt
from neon_local.postgres.bootstrap import grant_role
from neon_local.postgres.client_tls import context_for
from neon_local.postgres.cluster import SUPERUSER
from neon_local.postgres.extension_path import STUB_FILES_DIR
from neon_local.settings import Settings, UpstreamUrl
from neon_local.wire import messages

__all__ = ["MIN_VERSION", "Upstream", "UpstreamChangesNeeded", "UpstreamError", "stub_sql"]

log = logging.getLogger(__name__)

MIN_VERSION = 140000  # the stub's floor
CONNECT_TIMEOUT = 10

# The stub reads its instance secret from the data directory; on an upstream it reads this table.
_SECRET_FILE_READ = "pg_catalog.pg_read_file('neon_local_session.key', 0, 1024, true)"
_SECRET_TABLE_READ = "(SELECT s.hex FROM _pg_session_jwt.instance_secret AS s)"
_SECRET_ERRORS = (
    ("'neon_local_session.key in the data directory must hold 32 random bytes as hex'",
     "'_pg_session_jwt.instance_secret must hold 32 random bytes as hex'"),
    ("'neon-local writes it when it creates the cluster (neon_local.postgres.session_jwt.write_secret).'",
     "'neon-local writes it when it installs the stub on an upstream Postgres.'"),
)
_SECRET_TABLE = """
CREATE TABLE _pg_session_jwt.instance_secret (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    hex text NOT NULL CHECK (hex ~ '^[0-9a-f]{64}$')
);
REVOKE ALL ON _pg_session_jwt.instance_secret FROM PUBLIC;
"""


# Whether a JWT role exists, and whether it has Neon's grants in the connected database (the owner's default
# privileges on new tables in schema public, the last of them to be granted).
_ROLE_STATE_SQL = """
select exists (select from pg_catalog.pg_roles where rolname = %s),
       exists (select from pg_catalog.pg_default_acl d cross join lateral pg_catalog.aclexplode(d.defaclacl) a
               join pg_catalog.pg_namespace n on n.oid = d.defaclnamespace and n.nspname = 'public'
               where d.defaclobjtype = 'r' and pg_catalog.pg_get_userbyid(a.grantee) = %s
                 and pg_catalog.pg_get_userbyid(d.defaclrole) = %s)
"""


class _Plan:
    """The changes a start makes, listed in the same words whether they are only planned or made:
    `if plan("create role x"): <make it>` makes it only when applying."""

    def __init__(self, apply: bool) -> None:
        self.apply = apply
        self.changes: list[str] = []

    def __call__(self, change: str) -> bool:
        self.changes.append(change)
        return self.apply


async def _row(conn: psycopg.AsyncConnection, query: str, params: tuple = ()) -> tuple:
    """The one row a query about the catalog returns."""
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None, query
    return row


def stub_sql(version: str) -> str:
    """pg_session_jwt at `version` as one plain SQL script (the extension's install and update scripts in order),
    reading its secret from _pg_session_jwt.instance_secret, which the script creates empty."""
    if version not in session_jwt.EXTENSION_VERSIONS:
        raise ValueError(f"pg_session_jwt {version} is not packaged")
    chain = session_jwt.EXTENSION_VERSIONS[:session_jwt.EXTENSION_VERSIONS.index(version) + 1]
    files = [f"pg_session_jwt--{chain[0]}.sql", *(f"pg_session_jwt--{a}--{b}.sql" for a, b in itertools.pairwise(chain))]
    # psql's guard against running a script outside CREATE EXTENSION; a script run here is meant to be.
    scripts = ["\n".join(line for line in (STUB_FILES_DIR / name).read_text().splitlines() if not line.startswith("\\echo"))
               for name in files]
    install = scripts[0]
    for old, new in ((_SECRET_FILE_READ, _SECRET_TABLE_READ), *_SECRET_ERRORS):
        if install.count(old) != 1:  # the stub changed under us: better no install than one with a file secret
            raise RuntimeError(f"the pg_session_jwt stub no longer contains {old!r} exactly once; update neon_local/postgres/upstream.py")
        install = install.replace(old, new)
    return "\n".join([install, _SECRET_TABLE, *scripts[1:]])


class Upstream:
    """A running Postgres reached over TCP; `await upstream.start(settings)` checks and prepares it."""

    def __init__(self, url: UpstreamUrl) -> None:
        self.url = url
        self._tls = context_for(url.sslmode, url.sslrootcert)  # the proxy's connections; libpq reads sslmode itself
        self.session_secret = b""
        self.version = ""  # the server's, once started
        # The proxy's way in per role (a password, or the SCRAM key a TCP client proved), and the last password
        # seen per role: libpq, which opens the pooled connections, can only log in with a password.
        self._logins: dict[str, ClientCredential] = {url.user: ClientCredential(password=url.password.encode())}
        self._passwords: dict[str, bytes] = {url.user: url.password.encode()}
        self._stub_version = session_jwt.DEFAULT_VERSION
        self._managed: frozenset[str] = frozenset()  # the roles neon-local logs in as with its own passwords

    # --- what the control plane, the pools and the proxy use ------------------------------------

    def conninfo(self, user: str = SUPERUSER, dbname: str = "postgres", **params: str) -> str:
        """libpq parameters for `user` (neon-local's superuser name means the URL's user) on `dbname`."""
        login = self.url.user if user == SUPERUSER else user
        password = self._passwords[login].decode() if login in self._passwords else None
        tls = {"sslmode": self.url.sslmode, **({"sslrootcert": self.url.sslrootcert} if self.url.sslrootcert else {})}
        return make_conninfo(host=self.url.host, port=self.url.port, user=login, dbname=dbname, password=password,
                             connect_timeout=str(CONNECT_TIMEOUT), **tls, **params)

    async def open_connection(self, protocol_factory):
        """A connection for the proxy (a `Conduit` from `protocol_factory`), in TLS when sslmode asks, as libpq does:
        SSLRequest, then the handshake if the server answers S; "prefer" goes on in plaintext if it answers N."""
        loop = asyncio.get_running_loop()
        transport, conduit = await loop.create_connection(protocol_factory, self.url.host, self.url.port)
        if self._tls is None:
            return transport, conduit
        try:
            conduit.write(messages.ssl_request())
            answer = await conduit.read()
            if answer == b"S":
                conduit.transport = await loop.start_tls(transport, conduit, self._tls, server_hostname=self.url.host)
            elif answer != b"N" or self.url.sslmode != "prefer":
                raise ConnectionRefusedError(f"the upstream does not offer TLS, which sslmode={self.url.sslmode} requires")
        except BaseException:
            transport.close()
            raise
        return conduit.transport, conduit

    def credential(self, role: str) -> ClientCredential | None:
        return self._logins.get(role)

    def remember(self, role: str, credential: ClientCredential) -> None:
        """A client proved this credential for `role` to the proxy; the proxy logs in upstream with it.
        The roles neon-local logs in as itself (the URL's user, the JWT roles) keep theirs."""
        if role in self._managed or role == self.url.user:
            return
        self._logins[role] = credential
        if credential.password is not None:
            self._passwords[role] = credential.password

    # --- start -----------------------------------------------------------------------------------

    async def start(self, settings: Settings) -> None:
        """Check the upstream and shape it for `settings`. Raises UpstreamError before changing anything when it
        cannot be fronted, and UpstreamChangesNeeded when it needs changes that `upstream_yes` does not allow."""
        self._stub_version = settings.session_jwt_version
        self._managed = frozenset((*settings.jwt_roles, *([data_api_setup.AUTHENTICATOR] if settings.data_api else [])))
        async with await self._connect(settings.database) as conn:
            await self._check(conn, settings)
            planned = await self._shape(conn, settings, _Plan(apply=False))
            if planned and not settings.upstream_yes:
                raise UpstreamChangesNeeded(self.url.display, planned)
            made = await self._shape(conn, settings, _Plan(apply=True))
        for change in made:
            log.warning("upstream %s: made this change: %s", self.url.display, change)
        if not made:
            log.info("upstream %s is ready for neon-local (nothing to change)", self.url.display)

    async def _shape(self, conn: psycopg.AsyncConnection, settings: Settings, plan: _Plan) -> list[str]:
        await self._create_roles(conn, settings, plan)
        await self._install_stub(conn, settings.database, plan)
        if settings.data_api:
            await self._data_api(conn, settings, plan)
        await self._set_passwords(conn, plan)
        if plan.apply:
            for role in settings.jwt_roles:
                await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA auth TO {}").format(sql.Identifier(role)))
        return plan.changes

    async def _connect(self, dbname: str) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo(dbname=dbname), autocommit=True)
        except psycopg.OperationalError as exc:
            raise UpstreamError(self._refusal(str(exc).strip(), dbname)) from None

    def _refusal(self, reason: str, dbname: str) -> str:
        where = f"the upstream Postgres {self.url.display}"
        if "password authentication failed" in reason or "no password supplied" in reason:
            step = "Check the user and password in the URL."
        elif "does not exist" in reason and "database" in reason:
            step = (f"Create the database first (createdb -h {self.url.host} -p {self.url.port} -U {self.url.user} {dbname}), "
                    "or name an existing one in the URL.")
        elif "certificate" in reason or "SSL" in reason:
            step = ("Check sslmode and sslrootcert in the URL: verify-ca and verify-full need the CA that signed the server's "
                    "certificate, require needs a server with ssl = on.")
        elif "pg_hba.conf" in reason:
            step = f"Allow {self.url.user} to connect from this machine in the server's pg_hba.conf (host ... scram-sha-256), then reload it."
        else:
            step = "Is it running, and listening on that host and port (listen_addresses, port in postgresql.conf)?"
        return f"cannot connect to {where}: {reason}\n{step}"

    async def _check(self, conn: psycopg.AsyncConnection, settings: Settings) -> None:
        number, self.version, superuser = await _row(
            conn, "select current_setting('server_version_num')::int, current_setting('server_version'),"
                  " rolsuper from pg_catalog.pg_roles where rolname = current_user")
        if number < MIN_VERSION:
            raise UpstreamError(f"the upstream {self.url.display} runs PostgreSQL {self.version}; neon-local fronts "
                                "PostgreSQL 14 or later. Upgrade it, or run neon-local without --upstream (embedded Postgres).")
        if not superuser:
            raise UpstreamError(
                f"{self.url.user} is not a superuser on the upstream {self.url.display}. neon-local needs one to read "
                "password verifiers (pg_authid), create the JWT roles and install the pg_session_jwt stub, whose functions "
                f"publish verified claims in a setting only superusers may set. Put a superuser in the URL (e.g. postgres), "
                f"or as a superuser run: ALTER ROLE {sql.Identifier(self.url.user).as_string(conn)} SUPERUSER;")
        cur = await conn.execute("select extversion from pg_catalog.pg_extension where extname = 'pg_session_jwt'")
        row = await cur.fetchone()
        if row is not None:
            raise UpstreamError(
                f"database {settings.database} on the upstream has the pg_session_jwt extension ({row[0]}); neon-local's proxy "
                "signs sessions for its own SQL stand-in, which needs the auth schema to itself. Run DROP EXTENSION "
                "pg_session_jwt there as a superuser, or name another database in the URL.")
        cur = await conn.execute("select rolname from pg_catalog.pg_roles where rolname = any(%s) and (rolsuper or rolbypassrls)",
                                 (list(settings.jwt_roles),))
        unsafe = [name for (name,) in await cur.fetchall()]
        if unsafe:
            raise UpstreamError(
                f"role {unsafe[0]} exists on the upstream with SUPERUSER or BYPASSRLS, so row-level security would not "
                f"apply to its JWT sessions. Run ALTER ROLE {sql.Identifier(unsafe[0]).as_string(conn)} NOSUPERUSER NOBYPASSRLS; "
                "or front another server.")

    async def _create_roles(self, conn: psycopg.AsyncConnection, settings: Settings, plan: _Plan) -> None:
        """The JWT roles as Neon creates them, with Neon's documented grants in the database."""
        (owner,) = await _row(conn, "select pg_catalog.pg_get_userbyid(datdba) from pg_catalog.pg_database"
                                    " where datname = current_database()")
        for role in settings.jwt_roles:
            # A role made for another database of the server ([tenancy] mode "upstream") still needs the grants here.
            exists, granted = await _row(conn, _ROLE_STATE_SQL, (role, role, owner))
            spec = settings.role_specs.get(role)
            if not exists and plan(f"create role {role} (LOGIN, no superuser, createdb, createrole or bypassrls, as Neon's JWT roles)"):
                await conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS")
                                   .format(sql.Identifier(role)))
            if not granted and (spec is None or spec.grants != "none") and plan(
                    f"database {settings.database}: grant {role} Neon's documented privileges on schema public "
                    f"(and default privileges on the tables and sequences {owner} creates)"):
                await grant_role(conn, role, owner)
            for parent in spec.inherits if spec and not exists else ():
                if plan(f"grant {parent} to {role} ([roles.{role}] inherits)"):
                    await conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(parent), sql.Identifier(role)))

    async def _data_api(self, conn: psycopg.AsyncConnection, settings: Settings, plan: _Plan) -> None:
        """The Data API's role and configuration, as at an embedded start (its own objects are refreshed every start)."""
        has_role, has_schema = await _row(conn, "select exists (select from pg_catalog.pg_roles where rolname = %s),"
                                                " exists (select from pg_catalog.pg_namespace where nspname = 'pgrst')",
                                          (data_api_setup.AUTHENTICATOR,))
        if not has_role:
            plan(f"create role {data_api_setup.AUTHENTICATOR} (LOGIN NOINHERIT, a member of the JWT roles: the Data API's "
                 "connections switch to the token's role)")
        if not has_schema:
            plan(f"database {settings.database}: create schema pgrst and event triggers neon_local_pgrst_* (the Data API's "
                 "configuration, and its schema cache refreshed after DDL)")
        if plan.apply:
            await data_api_setup.apply(conn, settings)

    async def install_stub(self, dbname: str) -> None:
        """Make sure `dbname` has the stub holding this upstream's secret (a JWT session's first use of a database)."""
        async with await self._connect(dbname) as conn:
            for change in await self._install_stub(conn, dbname, _Plan(apply=True)):
                log.warning("upstream %s: made this change: %s", self.url.display, change)

    async def _install_stub(self, conn: psycopg.AsyncConnection, dbname: str, plan: _Plan) -> list[str]:
        installed, schema_exists = await _row(
            conn, "select pg_catalog.to_regclass('_pg_session_jwt.instance_secret') is not null,"
                  " exists (select from pg_catalog.pg_namespace where nspname = '_pg_session_jwt')")
        if schema_exists and not installed:
            raise UpstreamError(f"database {dbname} on the upstream has a schema _pg_session_jwt that neon-local did not make "
                                "(no instance_secret table). Drop it (DROP SCHEMA _pg_session_jwt CASCADE) if it is a "
                                "leftover, then start again.")
        if not installed and plan(f"database {dbname}: install neon-local's pg_session_jwt {self._stub_version} stand-in as "
                                  f"plain SQL (schemas auth and _pg_session_jwt, owned by {self.url.user}; its secret in "
                                  "table _pg_session_jwt.instance_secret)"):
            async with conn.transaction():
                await conn.execute(stub_sql(self._stub_version))
                await conn.execute(sql.SQL("COMMENT ON SCHEMA _pg_session_jwt IS {}").format(sql.Literal(
                    f"neon-local's pg_session_jwt {self._stub_version} stand-in, installed as plain SQL")))
            await self._write_secret(conn)
        elif installed:
            row = await (await conn.execute("select hex from _pg_session_jwt.instance_secret")).fetchone()
            if not self.session_secret:  # the first database decides; restarts find the same secret
                self.session_secret = bytes.fromhex(row[0]) if row else session_jwt.new_secret()
            if row is None:
                change = "write the stub's secret (its table is empty)"
            elif row[0] != self.session_secret.hex():
                change = "replace the stub's secret with the one the app's database holds"
            else:
                change = ""
            if change and plan(f"database {dbname}: {change}"):
                await self._write_secret(conn)
        return plan.changes

    async def _write_secret(self, conn: psycopg.AsyncConnection) -> None:
        if not self.session_secret:  # a fresh install in the app's database
            self.session_secret = session_jwt.new_secret()
        await conn.execute("insert into _pg_session_jwt.instance_secret (hex) values (%s)"
                           " on conflict (one) do update set hex = excluded.hex", (self.session_secret.hex(),))

    async def _set_passwords(self, conn: psycopg.AsyncConnection, plan: _Plan) -> None:
        """The password of each role neon-local logs in as: derived from the stub's secret, so every neon-local
        fronting this database uses the same ones and none is stored on our side; set when it does not match."""
        for role in sorted(self._managed):
            password = self._password_of(role) if self.session_secret else None  # None: the stub is yet to come
            row = await (await conn.execute("select rolpassword from pg_catalog.pg_authid where rolname = %s", (role,))).fetchone()
            verifier = ScramVerifier.parse(row[0]) if row else None
            if password is None or verifier is None or not await asyncio.to_thread(verifier.check_password, password.encode()):
                if not plan(f"set a password on role {role}: the proxy logs in as {role} with it (derived from the stub's "
                            "secret; Neon's JWT roles have none, its compute trusts its proxy)"):
                    continue
                password = password or self._password_of(role)
                await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            self._logins[role] = ClientCredential(password=password.encode())
            self._passwords[role] = password.encode()

    def _password_of(self, role: str) -> str:
        digest = hmac.new(self.session_secret, b"neon-local upstream login:" + role.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
