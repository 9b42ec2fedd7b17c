"""`neon-local tenants`: the tenant databases of [tenancy] mode "database", in the running emulator's Postgres.

A tenant's database is `prefix + tenant id`, a copy of the template; the emulator makes one on a tenant's
first request, `create` makes it ahead of time. `migrate` applies SQL files to the template and to every
tenant database, each file once per database (neon_local/migrations.py, as `up --migrations`), so new
tenants start migrated and existing ones catch up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from neon_local.cli.common import admin_connect, fail, project_options, socket_conninfo
from neon_local.settings import Settings, Tenancy


def _tenancy(settings: Settings) -> Tenancy:
    if settings.tenancy is None:
        fail('no [tenancy] in neon_local.toml: add [tenancy] with claim = "org_id" (the claim that names a tenant).')
    return settings.tenancy


def _template(settings: Settings) -> str:
    return _tenancy(settings).template or settings.database


def _dbname(settings: Settings, tenant: str) -> str:
    from neon_local.control_plane import tenant_dbname
    from neon_local.errors import PostgresErrorResponse

    try:
        return tenant_dbname(_tenancy(settings), tenant)
    except PostgresErrorResponse as exc:
        fail(f"{exc.fields['M']}. {exc.fields['H']}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tenant_databases(conn, prefix: str) -> list[tuple[str, int]]:
    rows = conn.execute("select datname, pg_database_size(oid) from pg_database where starts_with(datname, %s)"
                        " order by datname", [prefix]).fetchall()
    return [(name, size) for name, size in rows]


@click.group("tenants")
def tenants() -> None:
    """Tenant databases ([tenancy] in neon_local.toml): list, create, drop, migrate."""


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {tenant, database, bytes}.")
@project_options
def tenants_list(settings: Settings, as_json: bool) -> None:
    """Every tenant database and its size on disk."""
    prefix = _tenancy(settings).prefix
    with admin_connect(settings, "postgres") as conn:
        rows: list[dict[str, Any]] = [{"tenant": name[len(prefix):], "database": name, "bytes": size}
                for name, size in _tenant_databases(conn, prefix)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"no tenant databases yet (template: {_template(settings)}); a tenant's first request makes one.")
    for row in [] if as_json else rows:
        click.echo(f"{row['tenant']:<32} {row['database']:<40} {row['bytes'] / 1048576:.1f} MiB")


@tenants.command("create")
@click.argument("tenant")
@project_options
def tenants_create(settings: Settings, tenant: str) -> None:
    """Make TENANT's database from the template now, instead of on its first request."""
    import psycopg

    dbname, template = _dbname(settings, tenant), _template(settings)
    with admin_connect(settings, "postgres") as conn:
        try:
            # Owned as the template is (the owner's), as the emulator makes a tenant's database.
            owner = conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = %s", [template]).fetchone()
            conn.execute(f"CREATE DATABASE {_quote(dbname)} TEMPLATE {_quote(template)}" + (f" OWNER {_quote(owner[0])}" if owner else ""))
        except psycopg.errors.DuplicateDatabase:
            fail(f'tenant {tenant} already has its database "{dbname}".')
        except psycopg.errors.ObjectInUse:
            fail(f'the template "{template}" has other sessions open; close them (psql, an IDE) and try again, '
                 "or set [tenancy] template to a database that only migrations connect to.")
    click.echo(f'created "{dbname}" from "{template}"')


@tenants.command("drop")
@click.argument("tenant")
@click.option("--yes", is_flag=True, help="Do not ask; for scripts.")
@project_options
def tenants_drop(settings: Settings, tenant: str, yes: bool) -> None:
    """Drop TENANT's database and everything in it (its open sessions are ended). Its next request makes a fresh one."""
    dbname = _dbname(settings, tenant)
    if not yes:
        click.confirm(f'Drop "{dbname}" and all of tenant {tenant}\'s data?', abort=True)
    with admin_connect(settings, "postgres") as conn:
        if conn.execute("select 1 from pg_database where datname = %s", [dbname]).fetchone() is None:
            fail(f'tenant {tenant} has no database ("{dbname}"); `neon-local tenants list` shows those there are.')
        conn.execute(f"DROP DATABASE {_quote(dbname)} WITH (FORCE)")
    click.echo(f'dropped "{dbname}"')


@tenants.command("migrate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@project_options
def tenants_migrate(settings: Settings, files: tuple[Path, ...]) -> None:
    """Apply FILES (SQL, in the order given) as the owner to the app's database, the template and every tenant
    database, each once per database (recorded in neon_local.migrations, as `up --migrations` does).

    Each file runs in a transaction of its own; the first failure stops there, naming the database, the file
    and its line, and leaves that file out of that database."""
    from neon_local.migrations import Migration, MigrationFailed, apply_migrations, target_databases

    _tenancy(settings)
    migrations = [Migration.read(path) for path in files]
    for dbname in target_databases(socket_conninfo(settings, "postgres"), settings):
        try:
            outcome = apply_migrations(socket_conninfo(settings, dbname, settings.owner), migrations, dbname)
        except MigrationFailed as exc:
            fail(str(exc))
        for name in outcome.changed:
            click.secho(f"warning: {dbname}: {name} changed since it was applied; it is not run again.", fg="yellow", err=True)
        click.echo(f"{dbname}: " + (", ".join(outcome.applied) if outcome.applied else "up to date"))
