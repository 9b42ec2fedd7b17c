"""`neon-local lint [--json]`: the advisor's lints on the running emulator's database, as its owner."""

from __future__ import annotations

import json
import sys

import click

from neon_local.cli.common import fail, project_options
from neon_local.settings import Settings
from neon_local.state import read_state


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as a JSON array (name, level, object, detail, why, fix).")
@click.option("--database", "-d", default=None, help="Database to check (default: the emulator's, neondb).")
@project_options
def lint(settings: Settings, as_json: bool, database: str | None) -> None:
    """Check the database for RLS mistakes (splinter's lints and neon-local's own). Exit code 1 on an error-level one."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from neon_local.advisor import check, exit_code, format_text

    state = read_state(settings.resolved_data_dir)
    if not state:
        fail("neon-local is not running; start it with `neon-local up -d` first.")
    params = conninfo_to_dict(state["urls"]["owner"])
    if database:
        params["dbname"] = database
    try:
        with psycopg.connect(make_conninfo("", **params), connect_timeout=10) as conn:
            findings = check(conn, roles=settings.jwt_roles, users=settings.users)
    except psycopg.Error as exc:
        fail(f"could not check {params['dbname']} as {params['user']}: {str(exc).strip()}")
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        click.echo(format_text(findings))
    sys.exit(exit_code(findings))
