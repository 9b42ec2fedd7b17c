"""Shape a fresh cluster like a Neon branch set up for RLS: roles, the neondb database, grants, pg_session_jwt.

Runs at every start and is idempotent. Grants are applied only when a database or role is first
created, so a privilege the user revoked on purpose is never granted back behind their back.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from neon_local.data_api import setup as data_api_setup
from neon_local.postgres import session_jwt
from neon_local.postgres.cluster import PostgresCluster
from neon_local.settings import Settings

log = logging.getLogger(__name__)

# What Neon's docs tell users to run for each JWT role (Clerk guide §4 plus the Data API's sequence grant).
ROLE_GRANTS = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, UPDATE, INSERT, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT, UPDATE, INSERT, DELETE ON TABLES TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {role};
"""


async def _connect(cluster: PostgresCluster, dbname: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=dbname), autocommit=True)


async def _role_exists(conn: psycopg.AsyncConnection, role: str) -> bool:
    cur = await conn.execute("select 1 from pg_roles where rolname = %s", (role,))
    return await cur.fetchone() is not None


async def _create_roles(conn: psycopg.AsyncConnection, settings: Settings) -> list[str]:
    """Neon's roles; returns the JWT roles that did not exist before."""
    if not await _role_exists(conn, "neon_superuser"):
        await conn.execute(
            "CREATE ROLE neon_superuser NOLOGIN CREATEDB CREATEROLE REPLICATION BYPASSRLS "
            "IN ROLE pg_read_all_data, pg_write_all_data"
        )
    owner = sql.Identifier(settings.owner)
    if not await _role_exists(conn, settings.owner):
        await conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE BYPASSRLS IN ROLE neon_superuser").format(owner))
    await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(owner, sql.Literal(settings.owner_password)))
    created = []
    for role in settings.jwt_roles:
        if not await _role_exists(conn, role):
            # As Neon creates them: may log in, has no password, and holds no power beyond its grants.
            await conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS").format(sql.Identifier(role)))
            created.append(role)
    for role, spec in settings.role_specs.items():
        for parent in spec.inherits:
            if not await _role_exists(conn, parent):
                log.warning("role %s inherits %s, which does not exist; create it, or fix [roles.%s] inherits", role, parent, role)
                continue
            # Membership with INHERIT: the parent's privileges, and policies written TO the parent, apply to the role.
            await conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(parent), sql.Identifier(role)))
    return created


def _granted(settings: Settings, roles: list[str] | tuple[str, ...]) -> list[str]:
    """The roles that get Neon's documented grants: all but custom roles declared with grants = "none"."""
    return [r for r in roles if r not in settings.role_specs or settings.role_specs[r].grants != "none"]


async def grant_role(conn: psycopg.AsyncConnection, role: str, owner: str) -> None:
    """Neon's documented grants for one JWT role in the connected database."""
    statements = ROLE_GRANTS.format(role=sql.Identifier(role).as_string(conn), owner=sql.Identifier(owner).as_string(conn))
    await conn.execute(statements)


def jwt_role_statements(role: str, owner: str, version: str, extension: bool = True) -> list[str]:
    """What Neon's local_proxy has done the first time it sees a (database, role): the extension (created by the
    database's `owner` at `version`; not when `extension` is False, on an upstream Postgres that got the stub as
    plain SQL), then USAGE on auth. One transaction; run the statements in order."""
    install = session_jwt.install_statements(version, owner) if extension else []
    return ["BEGIN", *install,
            "GRANT USAGE ON SCHEMA auth TO " + sql.Identifier(role).as_string(), "COMMIT"]


async def _let_the_owner_manage_roles(conn: psycopg.AsyncConnection, settings: Settings) -> None:
    """As on Neon: neon_superuser's members (the owner) may end other roles' sessions (DROP DATABASE ... WITH
    (FORCE)) and, from PostgreSQL 16, manage the JWT roles, so they can undo `ALTER ROLE authenticated SET ...`
    that any user of the role may run. ADMIN only: the owner gets none of the roles' privileges."""
    await conn.execute("GRANT pg_signal_backend TO neon_superuser WITH ADMIN OPTION")
    if conn.info.server_version >= 160000:
        await conn.execute("GRANT pg_use_reserved_connections TO neon_superuser")  # the cluster's reserved_connections
        for role in settings.jwt_roles:
            await conn.execute(sql.SQL("GRANT {} TO neon_superuser WITH ADMIN OPTION, INHERIT FALSE, SET FALSE").format(sql.Identifier(role)))


async def bootstrap(cluster: PostgresCluster, settings: Settings) -> None:
    async with await _connect(cluster, "postgres") as conn:
        new_roles = await _create_roles(conn, settings)
        await _let_the_owner_manage_roles(conn, settings)
        cur = await conn.execute("select 1 from pg_database where datname = %s", (settings.database,))
        new_database = await cur.fetchone() is None
        if new_database:
            await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(settings.database), sql.Identifier(settings.owner)))
    async with await _connect(cluster, settings.database) as conn:
        for role in _granted(settings, settings.jwt_roles if new_database else new_roles):
            await grant_role(conn, role, settings.owner)
        for role in settings.jwt_roles:
            for statement in jwt_role_statements(role, settings.owner, settings.session_jwt_version):
                await conn.execute(statement)
        if settings.data_api:
            await data_api_setup.apply(conn, settings)
