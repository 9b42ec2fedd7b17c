"""`neon-local data-api`: the Data API's TypeScript types and a schema cache refresh, against the running emulator."""

from __future__ import annotations

import click

from neon_local.cli.common import admin_connect as _connect
from neon_local.cli.common import fail, project_options
from neon_local.settings import Settings


@click.group("data-api")
def data_api() -> None:
    """The Data API (/<db>/rest/v1): TypeScript types for typed clients, schema cache refresh."""


@data_api.command("types")
@click.option("--lang", type=click.Choice(["ts"]), default="ts", show_default=True, help="Output language.")
@click.option("--db", "dbname", default=None, help="Database (default: the emulator's).")
@click.option("--schema", "schemas", multiple=True, help="Schema to include (repeatable; default: data_api_schemas).")
@project_options
def types(settings: Settings, lang: str, dbname: str | None, schemas: tuple[str, ...]) -> None:
    """Print the `Database` type postgrest-js and neon-js take as a generic (the shape supabase gen types writes)."""
    from neon_local.data_api.schema import INTROSPECTION_SQL, Schema
    from neon_local.data_api.typescript import typescript

    chosen = schemas or settings.data_api_schemas
    with _connect(settings, dbname) as conn:
        (text,) = conn.execute(INTROSPECTION_SQL.replace("$1", "%(schemas)s"), {"schemas": list(chosen)}).fetchone()
    click.echo(typescript(Schema.from_json(tuple(chosen), text)), nl=False)


@data_api.command("refresh")
@click.option("--db", "dbname", default=None, help="Database (default: the emulator's).")
@project_options
def refresh(settings: Settings, dbname: str | None) -> None:
    """Make the Data API read the schema and its pgrst.* configuration again on its next request."""
    with _connect(settings, dbname) as conn:
        if conn.execute("select to_regclass('pgrst.schema_version')").fetchone()[0] is None:
            fail("this database has no Data API set-up yet (schema pgrst); send it one Data API request first.")
        conn.execute("select nextval('pgrst.schema_version')")
    click.echo("The Data API reloads its schema cache on the next request.")
