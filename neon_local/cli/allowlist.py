"""`neon-local allowlist list|approve|remove|mode|diff`: review and edit neon_local.allowlist.toml.

A running neon-local notices the change within a second; nothing needs a restart.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click

from neon_local.cli.common import fail, project_options
from neon_local.settings import Settings


def _path(settings: Settings) -> Path:
    from neon_local.limits.allowlist import default_path

    return default_path(settings)


def _read(path: Path):
    from neon_local.limits.store import ListFileError, read_list

    try:
        return read_list(path)
    except ListFileError as exc:
        fail(str(exc))


def _resolve(fingerprints: dict, given: str) -> str:
    """A full fingerprint from a unique prefix of at least 4 characters (what an error message shows)."""
    given = given.rstrip("…").lower()
    matches = [fp for fp in fingerprints if fp.startswith(given)] if len(given) >= 4 else []
    if len(matches) != 1:
        fail(f"no single statement with fingerprint {given!r}; `neon-local allowlist list --refused` shows them")
    return matches[0]


@click.group("allowlist")
def allowlist() -> None:
    """The query allow-list: statements JWT roles may run, by fingerprint (README: "Lock down client SQL")."""


@allowlist.command("list")
@click.option("--refused", is_flag=True, help="Show the statements refused (or warned about) lately instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: fingerprint -> entry.")
@project_options
def list_(settings: Settings, refused: bool, as_json: bool) -> None:
    """Show the mode and each approved (or refused) statement: fingerprint, roles, count, normalised SQL."""
    content = _read(_path(settings))
    entries = content.refused if refused else content.statements
    if as_json:
        click.echo(json.dumps({fp: vars(entry) for fp, entry in entries.items()}, indent=2))
        return
    modes = ", ".join(f"{role}={mode}" for role, mode in sorted(content.modes.items()))
    click.echo(f"{_path(settings)}: mode {content.mode or settings.allowlist}" + (f" ({modes})" if modes else ""))
    for fp, entry in sorted(entries.items(), key=lambda kv: kv[1].sql):
        click.echo(f"{fp}  {','.join(entry.roles):24} {entry.count:6}  {entry.sql}")


@allowlist.command("approve")
@click.argument("fingerprints", nargs=-1)
@click.option("--sql", "statements", multiple=True, help="Approve this statement by its text instead (repeatable).")
@click.option("--role", "roles", multiple=True, help="Role allowed to run it (default: the roles it was refused for). Repeatable.")
@click.option("--note", default="", help="Why it is allowed, for the reviewer.")
@project_options
def approve(settings: Settings, fingerprints: tuple[str, ...], statements: tuple[str, ...], roles: tuple[str, ...], note: str) -> None:
    """Allow refused statements (by fingerprint or prefix) or given SQL, for their roles or --role."""
    from neon_local.limits.fingerprint import Fingerprinter, StatementError
    from neon_local.limits.store import Entry, write_list

    path = _path(settings)
    content = _read(path)
    if not fingerprints and not statements:
        fail("name a fingerprint (from the refusal or `neon-local allowlist list --refused`) or give --sql")
    approved = {}
    for given in fingerprints:
        fp = _resolve({**content.refused, **content.statements}, given)
        approved[fp] = content.refused.pop(fp, None) or content.statements[fp]
    for text in statements:
        try:
            parsed = Fingerprinter().statements(text)
        except StatementError as exc:
            fail(f"cannot approve {text!r}: {exc.message}")
        for statement in parsed:
            approved[statement.fingerprint] = Entry(statement.normalized())
    for fp, entry in approved.items():
        entry.roles = sorted(set(roles or entry.roles or settings.jwt_roles[:1]))
        entry.note = note or entry.note
        content.statements[fp] = entry
        click.echo(f"approved {fp} for {', '.join(entry.roles)}: {entry.sql}")
    write_list(path, content)


@allowlist.command("remove")
@click.argument("fingerprints", nargs=-1, required=True)
@project_options
def remove(settings: Settings, fingerprints: tuple[str, ...]) -> None:
    """Take statements off the list (by fingerprint or prefix)."""
    from neon_local.limits.store import write_list

    path = _path(settings)
    content = _read(path)
    for given in fingerprints:
        fp = _resolve(content.statements, given)
        click.echo(f"removed {fp}: {content.statements.pop(fp).sql}")
    write_list(path, content)


@allowlist.command("mode")
@click.argument("mode", type=click.Choice(["off", "learn", "warn", "enforce", "default"]))
@click.option("--role", default=None, help="Set one role's mode (the owner is checked only when named here); "
                                           "`default` drops it, so the file's mode applies.")
@project_options
def mode(settings: Settings, mode: str, role: str | None) -> None:
    """Set the mode for JWT roles, or for one role: off, learn, warn, enforce."""
    from neon_local.limits.store import write_list

    path = _path(settings)
    content = _read(path)
    if role is None:
        content.mode = None if mode == "default" else mode
    elif mode == "default":
        content.modes.pop(role, None)
    else:
        content.modes[role] = mode
    write_list(path, content)
    click.echo(f"{role or 'JWT roles'}: {mode} ({path})")


@allowlist.command("diff")
@click.option("--against", default="HEAD", show_default=True, help="The git revision holding the committed list.")
@project_options
def diff(settings: Settings, against: str) -> None:
    """What the list gained (learn mode, approvals) or lost since the committed version. Exit code 1 if anything."""
    from neon_local.limits.store import ListFileError, parse_list

    path = _path(settings)
    current = _read(path)
    try:
        shown = subprocess.run(["git", "show", f"{against}:./{path.name}"], cwd=path.parent, capture_output=True,
                               text=True, timeout=30)
    except OSError as exc:
        fail(f"cannot run git: {exc}")
    try:
        committed = parse_list(shown.stdout if shown.returncode == 0 else "", f"{against}:{path.name}")
    except ListFileError as exc:
        fail(str(exc))
    changed = False
    for fp, entry in sorted(current.statements.items(), key=lambda kv: kv[1].sql):
        old = committed.statements.get(fp)
        if old is None or set(old.roles) != set(entry.roles):
            changed = True
            click.echo(f"+ {fp}  {','.join(entry.roles):24} {entry.sql}")
    for fp, entry in committed.statements.items():
        if fp not in current.statements:
            changed = True
            click.echo(f"- {fp}  {','.join(entry.roles):24} {entry.sql}")
    raise SystemExit(1 if changed else 0)
