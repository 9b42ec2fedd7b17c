"""`neon-local roles ...`: custom JWT roles beside authenticated/anonymous, as [roles.NAME] tables in neon_local.toml.

A custom role is created as Neon creates its JWT roles (LOGIN, no password, no superuser, bypassrls,
createrole or createdb) with Neon's documented grants unless `--grants none`; `--inherits` makes it a
member of other roles, so their privileges and the policies written for them apply to it too.
"""

from __future__ import annotations

import json
from typing import Any

import click
import tomlkit

from neon_local.cli.common import project_options
from neon_local.cli.config import _document, _dump
from neon_local.cli.config_file import config_path, restart_hint, write_config
from neon_local.settings import DEFAULT_JWT_ROLES, ROLE_GRANT_CHOICES, RoleSpec, Settings

__all__ = ["roles"]


def _settings() -> Settings:
    return click.get_current_context().obj


def _roles_table(doc: tomlkit.TOMLDocument):
    """The document's [roles] super-table; a `roles = [...]` list becomes one empty table per name."""
    current = doc.get("roles")
    if isinstance(current, dict):
        return current
    names = list(current or [])
    if "roles" in doc:
        del doc["roles"]
    table = tomlkit.table(is_super_table=True)
    for name in names:
        table[name] = tomlkit.table()
    doc["roles"] = table
    return doc["roles"]


@click.group("roles")
def roles():
    """Custom JWT roles ([roles.NAME] in neon_local.toml), created in Postgres as Neon creates JWT roles."""


@roles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: role -> {inherits, grants, providers}.")
@project_options
def roles_list(as_json: bool) -> None:
    """Every JWT role, what it inherits, its grants, and the providers whose tokens it takes."""
    settings = _settings()
    rows: dict[str, dict[str, Any]] = {}
    for role in settings.jwt_roles:
        spec = settings.role_specs.get(role, RoleSpec())
        rows[role] = {"custom": role not in DEFAULT_JWT_ROLES, "inherits": list(spec.inherits), "grants": spec.grants,
                      "providers": [p.id for p in settings.providers if role in p.role_names]}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for role, row in rows.items():
        inherits = f"  inherits={','.join(row['inherits'])}" if row["inherits"] else ""
        kind = "custom" if row["custom"] else "neon"
        click.echo(f"{role:16} {kind:6} grants={row['grants']}{inherits}  providers={','.join(row['providers']) or '(none)'}")


@roles.command("add")
@click.argument("name")
@click.option("--inherits", "inherits", multiple=True, metavar="ROLE",
              help="Make NAME a member of ROLE (e.g. authenticated): ROLE's privileges and policies apply to it. Repeatable.")
@click.option("--grants", type=click.Choice(ROLE_GRANT_CHOICES), default="default", show_default=True,
              help="default: Neon's documented grants on schema public (usage, DML on tables, sequences); none: no grants.")
@project_options
def roles_add(name: str, inherits: tuple[str, ...], grants: str) -> None:
    """Add custom JWT role NAME; tokens from the built-in issuer may use it (other providers: list it in their roles)."""
    settings = _settings()
    if name in settings.jwt_roles:
        raise click.ClickException(f"{name!r} is a JWT role already; `neon-local roles list` shows them.")
    if name == settings.owner:
        raise click.ClickException(f"{name!r} is the owner role, which signs in with a password.")
    path = config_path(settings)
    doc = _document(path)
    table = tomlkit.table()
    if inherits:
        table["inherits"] = list(inherits)
    if grants != "default":
        table["grants"] = grants
    _roles_table(doc)[name] = table
    write_config(path, _dump(doc))
    click.echo(f"added role {name} to {path}")
    restart_hint(settings)


@roles.command("remove")
@click.argument("name")
@project_options
def roles_remove(name: str) -> None:
    """Remove custom role NAME from neon_local.toml: it takes no more tokens. The Postgres role itself stays
    (its objects and grants may matter); drop it with DROP OWNED BY / DROP ROLE as the owner."""
    settings = _settings()
    if name in DEFAULT_JWT_ROLES:
        raise click.ClickException(f"{name} is one of Neon's JWT roles and cannot be removed.")
    if name not in settings.roles:
        raise click.ClickException(f"no custom role {name!r} (custom roles: {', '.join(settings.roles) or 'none'}).")
    path = config_path(settings)
    doc = _document(path)
    table = _roles_table(doc)
    del table[name]
    if not table:
        del doc["roles"]
    write_config(path, _dump(doc))
    still = [p.id for p in settings.providers if name in p.role_names and not p.builtin]
    click.echo(f"removed role {name} from {path}; the Postgres role stays (DROP ROLE {name} as the owner to drop it)")
    if still:
        click.echo(f"providers {', '.join(still)} still list {name} in their roles, so their tokens still sign in as it.")
    restart_hint(settings)
