"""`neon-local tenants`: the tenants of [tenancy] and their databases.

Mode "database": a tenant's database is `prefix + tenant id` in the running emulator's Postgres, a copy of
the template; the emulator makes one on a tenant's first request, `create` makes it ahead of time. `migrate`
applies SQL files to the template and to every tenant database, each file once per database
(neon_local/migrations.py, as `up --migrations`), so new tenants start migrated and existing ones catch up.

Mode "upstream": a tenant's database is the one its URL in [tenancy.upstreams] names, on a server neon-local
did not start: `list` shows the map, `migrate` applies the files there (as the URL's user, the owner there),
and `create`/`drop` refuse, since those databases are the user's to make and drop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from neon_local.cli.common import admin_connect, fail, project_options, socket_conninfo
from neon_local.settings import SPARE_TENANT_DATABASE, Settings, Tenancy, UpstreamUrl


def _tenancy(settings: Settings) -> Tenancy:
    if settings.tenancy is None:
        fail('no [tenancy] in neon_local.toml: add [tenancy] with claim = "org_id" (the claim that names a tenant).')
    return settings.tenancy


def _database_mode(settings: Settings, command: str) -> Tenancy:
    tenancy = _tenancy(settings)
    if tenancy.mode == "upstream":
        fail(f'`neon-local tenants {command}` is for [tenancy] mode "database"; in mode "upstream" each tenant\'s database is the '
             "one its URL in [tenancy.upstreams] names, on a server neon-local did not start: create or drop it there "
             "(createdb/dropdb), then map or unmap the tenant in neon_local.toml.")
    return tenancy


def _upstreams(tenancy: Tenancy) -> list[tuple[str, UpstreamUrl]]:
    """Mode "upstream": (tenant, its URL taken apart), by tenant id."""
    return [(tenant, UpstreamUrl.parse(url)) for tenant, url in sorted(tenancy.upstreams.items())]


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
    # Not the spare copy of the template (the next new tenant's, not yet a tenant's), whatever the prefix.
    rows = conn.execute("select datname, pg_database_size(oid) from pg_database where starts_with(datname, %s)"
                        " and datname <> %s order by datname", [prefix, SPARE_TENANT_DATABASE]).fetchall()
    return [(name, size) for name, size in rows]


@click.group("tenants")
def tenants() -> None:
    """Tenant databases ([tenancy] in neon_local.toml): list, create, drop, migrate."""


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {tenant, database, bytes} (mode \"upstream\": {tenant, database, upstream}).")
@project_options
def tenants_list(settings: Settings, as_json: bool) -> None:
    """Every tenant database and its size on disk; in mode "upstream", every mapped tenant and its Postgres."""
    tenancy = _tenancy(settings)
    if tenancy.mode == "upstream":  # read from neon_local.toml: the map is the whole truth, no emulator needed
        mapped = [{"tenant": tenant, "database": url.dbname or settings.database, "upstream": url.display}
                  for tenant, url in _upstreams(tenancy)]
        click.echo(json.dumps(mapped, indent=2) if as_json else
                   "\n".join(f"{tenant['tenant']:<32} {tenant['upstream']}" for tenant in mapped))
        return
    prefix = tenancy.prefix
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

    from neon_local.tenant_spare import copy_database_sql

    _database_mode(settings, "create")
    dbname, template = _dbname(settings, tenant), _template(settings)
    with admin_connect(settings, "postgres") as conn:
        try:
            # Owned as the template is (the owner's), as the emulator makes a tenant's database.
            owner = conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = %s", [template]).fetchone()
            conn.execute(copy_database_sql(dbname, template, owner[0] if owner else None))
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
    _database_mode(settings, "drop")
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
    database, each once per database (recorded in neon_local.migrations, as `up --migrations` does). In mode
    "upstream": to the app's database and each mapped tenant's, as the user its URL names.

    Each file runs in a transaction of its own; the first failure stops there, naming the database, the file
    and its line, and leaves that file out of that database."""
    from neon_local.migrations import Migration, MigrationFailed, apply_migrations, target_databases

    tenancy = _tenancy(settings)
    migrations = [Migration.read(path) for path in files]
    targets = [(dbname, socket_conninfo(settings, dbname, settings.owner))
               for dbname in target_databases(socket_conninfo(settings, "postgres"), settings)]
    if tenancy.mode == "upstream":
        from neon_local.postgres.upstream import Upstream

        targets += [(f"{tenant} ({url.display})", Upstream(url).conninfo(dbname=url.dbname or settings.database))
                    for tenant, url in _upstreams(tenancy)]
    for dbname, conninfo in targets:
        try:
            outcome = apply_migrations(conninfo, migrations, dbname)
        except MigrationFailed as exc:
            fail(str(exc))
        for name in outcome.changed:
            click.secho(f"warning: {dbname}: {name} changed since it was applied; it is not run again.", fg="yellow", err=True)
        click.echo(f"{dbname}: " + (", ".join(outcome.applied) if outcome.applied else "up to date"))
