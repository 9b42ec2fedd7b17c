"""The Postgres side of "enable the Data API", as Neon sets it up (reference §1.4, §2.2):

- `authenticator`: the LOGIN role requests connect as (NOINHERIT: it holds nothing itself), a member of
  every JWT role so `set_config('role', ...)` can switch to the token's role; neon_superuser administers it
  (PostgreSQL 16+), so the owner can set its `pgrst.*` role settings;
- schema `pgrst` with `pgrst.pre_config()` setting the `pgrst.*` keys from neon_local.toml's data_api
  settings (Neon writes it from the Console settings the same way), USAGE/EXECUTE for `authenticator`;
- neon-local only: an event trigger that bumps `pgrst.schema_version` after DDL (temp objects aside), so the schema cache
  reloads itself (Neon needs a "Refresh schema cache" click).
"""

from __future__ import annotations

from psycopg import sql

__all__ = ["AUTHENTICATOR", "CONFIG_KEYS", "STALE_SCHEMA", "cluster_statements", "config_values", "setup_statements"]

AUTHENTICATOR = "authenticator"
# The pgrst.* keys the Data API reads (as Neon's rest broker), from pre_config() and authenticator's role settings.
CONFIG_KEYS = ("db_schemas", "db_anon_role", "db_max_rows", "db_extra_search_path", "server_cors_allowed_origins",
               "db_aggregates_enabled", "jwt_role_claim_key")
STALE_SCHEMA = "PGRSV"  # raised by pgrst.assert_schema_version_is()


def config_values(settings) -> dict[str, str]:
    """The `pgrst.*` keys (without the prefix) that pre_config() sets, from the settings."""
    values = {"db_schemas": ", ".join(settings.data_api_schemas), "db_aggregates_enabled": "true",
              "jwt_role_claim_key": ".role"}
    if settings.data_api_anon_role:
        values["db_anon_role"] = settings.data_api_anon_role
    if settings.data_api_max_rows:
        values["db_max_rows"] = str(settings.data_api_max_rows)
    return values


def cluster_statements(settings) -> list[sql.Composable]:
    """Cluster-wide: the authenticator role and its memberships (idempotent)."""
    auth = sql.Identifier(AUTHENTICATOR)
    statements: list[sql.Composable] = [sql.SQL(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticator') THEN "
        "CREATE ROLE authenticator LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS; END IF; END $$"),
        # A [[jwks]] entry for the Data API lists authenticator among its roles, as Neon's rules do, so bootstrap
        # may have made it first as a JWT role: it still must hold nothing itself.
        sql.SQL("ALTER ROLE authenticator LOGIN NOINHERIT"),
        # From PostgreSQL 16 the owner (a member of neon_superuser) may then run `ALTER ROLE authenticator SET
        # pgrst.<key>`, the way the Data API's settings are overridden on Neon: ADMIN on the role (none of its
        # privileges) and SET on the keys (a name no extension defines counts as superuser-only). Only a superuser
        # grants these (an upstream's owner that created authenticator administers it already).
        sql.SQL("DO $$ BEGIN IF pg_catalog.current_setting('server_version_num')::int >= 160000 AND EXISTS "
                "(SELECT FROM pg_catalog.pg_roles WHERE rolname = 'neon_superuser') AND (SELECT rolsuper FROM "
                "pg_catalog.pg_roles WHERE rolname = CURRENT_USER) THEN "  # EXECUTE: 15 cannot parse the grant
                "EXECUTE 'GRANT authenticator TO neon_superuser WITH ADMIN OPTION, INHERIT FALSE, SET FALSE'; "
                "GRANT SET ON PARAMETER {} TO neon_superuser; END IF; END $$").format(
                    sql.SQL(", ").join(sql.SQL("pgrst." + key) for key in CONFIG_KEYS))]
    for role in settings.jwt_roles:
        if role != AUTHENTICATOR:  # a role cannot be a member of itself
            statements.append(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), auth))
    return statements


def setup_statements(settings) -> list[sql.Composable]:
    """Per database: schema pgrst, pre_config(), the DDL version counter and its event trigger."""
    auth = sql.Identifier(AUTHENTICATOR)
    calls = sql.SQL(", ").join(
        sql.SQL("pg_catalog.set_config({}, {}, true)").format(sql.Literal("pgrst." + k), sql.Literal(v))
        for k, v in config_values(settings).items())
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS pgrst"),
        sql.SQL("CREATE OR REPLACE FUNCTION pgrst.pre_config() RETURNS void LANGUAGE sql SET search_path TO '' "
                "AS $$ SELECT {} $$").format(calls),
        sql.SQL("GRANT USAGE ON SCHEMA pgrst TO {}").format(auth),
        sql.SQL("GRANT ALL ON FUNCTION pgrst.pre_config() TO {}").format(auth),
        sql.SQL("CREATE SEQUENCE IF NOT EXISTS pgrst.schema_version"),
        sql.SQL("GRANT SELECT ON SEQUENCE pgrst.schema_version TO {}").format(auth),
        # Each request asserts the version its schema cache was read at: a stale cache fails fast (PGRSV)
        # inside the request's own pipeline, and the request is planned again on a fresh cache.
        sql.SQL("CREATE OR REPLACE FUNCTION pgrst.schema_version() RETURNS bigint LANGUAGE sql STABLE "
                "SET search_path TO '' AS $$ SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                "FROM pgrst.schema_version $$"),
        sql.SQL("CREATE OR REPLACE FUNCTION pgrst.assert_schema_version_is(seen bigint) RETURNS void "
                "LANGUAGE plpgsql SET search_path TO '' AS $$ BEGIN IF pgrst.schema_version() <> seen THEN "
                "RAISE SQLSTATE 'PGRSV' USING MESSAGE = 'the schema changed'; END IF; END $$"),
        sql.SQL("GRANT ALL ON FUNCTION pgrst.schema_version(), pgrst.assert_schema_version_is(bigint) TO {}").format(auth),
        sql.SQL("CREATE OR REPLACE FUNCTION pgrst.bump_schema_version() RETURNS event_trigger LANGUAGE plpgsql "
                "SECURITY DEFINER SET search_path TO '' AS $$ BEGIN "
                "IF pg_catalog.current_setting('transaction_read_only')::bool THEN RETURN; END IF; "
                "IF TG_EVENT = 'sql_drop' THEN "
                "IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_dropped_objects() WHERE NOT is_temporary) "
                "THEN RETURN; END IF; "
                "ELSIF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() "
                "WHERE schema_name IS NULL OR schema_name NOT LIKE 'pg\\_temp%') THEN RETURN; END IF; "
                "PERFORM pg_catalog.nextval('pgrst.schema_version'); END $$"),
        sql.SQL("REVOKE ALL ON FUNCTION pgrst.bump_schema_version() FROM PUBLIC"),
        sql.SQL("DROP EVENT TRIGGER IF EXISTS neon_local_pgrst_ddl"),
        sql.SQL("CREATE EVENT TRIGGER neon_local_pgrst_ddl ON ddl_command_end "
                "EXECUTE FUNCTION pgrst.bump_schema_version()"),
        sql.SQL("DROP EVENT TRIGGER IF EXISTS neon_local_pgrst_drop"),
        sql.SQL("CREATE EVENT TRIGGER neon_local_pgrst_drop ON sql_drop EXECUTE FUNCTION pgrst.bump_schema_version()"),
    ]


async def apply(conn, settings) -> None:
    """Run the set-up on a superuser psycopg connection to one database (autocommit)."""
    for statement in cluster_statements(settings) + setup_statements(settings):
        await conn.execute(statement)
