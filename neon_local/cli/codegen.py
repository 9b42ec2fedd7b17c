"""`neon-local codegen`: typed functions and TanStack Query hooks from annotated SQL, typed by the running emulator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from neon_local.cli.common import fail, project_options
from neon_local.errors import NeonLocalError
from neon_local.settings import Settings
from neon_local.state import read_state

if TYPE_CHECKING:
    from neon_local.codegen.describe import Described


@click.command()
@click.option("--queries", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of .sql files, each statement under a `-- name: ListTodos :many` comment "
                   "[setting codegen_queries; default: queries/ beside neon_local.toml].")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The TypeScript module to write [setting codegen_out; default: src/db/queries.ts beside neon_local.toml].")
@click.option("--watch", is_flag=True, help="Keep running: regenerate when a .sql file or the schema changes.")
@click.option("--emit-allowlist", is_flag=True,
              help="Also approve the statements in the query allow-list, for the JWT roles (or --role).")
@click.option("--role", "roles", multiple=True, help="Role the allow-list approves them for (repeatable).")
@project_options
def codegen(settings: Settings, queries: Path | None, out: Path | None, watch: bool, emit_allowlist: bool,
            roles: tuple[str, ...]) -> None:
    """Write a TypeScript module with a typed function and React Query hooks per SQL statement.

    Each statement is described (never run) by the running emulator as the owner: types and nullability come
    from the database, so run your migrations first."""
    import psycopg

    from neon_local.codegen.errors import CodegenError

    queries = _shown(queries or settings.project_dir / (settings.codegen_queries or "queries"))
    out = _shown(out or settings.project_dir / (settings.codegen_out or "src/db/queries.ts"))
    state = read_state(settings.resolved_data_dir)
    if not state:
        fail("neon-local is not running; start it with `neon-local up -d` and run your migrations first.")
    if watch and not queries.is_dir():
        fail(f"no folder {queries}/ to watch; create it (or name another with --queries).")
    approve = (lambda described: _approve(settings, described, roles)) if emit_allowlist else None
    try:
        with psycopg.connect(state["urls"]["owner"], autocommit=True) as conn:
            if not watch:
                _write(conn, queries, out, approve)
                return
            from neon_local.codegen.watch import Watch

            with Watch(conn, queries) as changes:
                try:
                    described = _write(conn, queries, out, approve)
                except CodegenError as exc:  # keep watching: fixing the file writes the module
                    click.echo(f"error: {exc} ({out} left as it was)")
                    described = []
                click.echo(f"Watching {queries}/*.sql and the schema; Ctrl-C stops.")
                changes.run(out, described, click.echo, approve)
    except NeonLocalError as exc:  # a CodegenError, or an allow-list file that does not read (ListFileError)
        fail(str(exc))
    except psycopg.OperationalError as exc:
        fail(f"cannot reach the emulator's Postgres (is it still running?): {exc}")
    except KeyboardInterrupt:
        pass


def _write(conn, queries: Path, out: Path, approve: Callable[[list[Described]], str] | None) -> list[Described]:
    """Generate and write the module once, saying what was written (and approved)."""
    from neon_local.codegen.generate import generate, write_atomically
    from neon_local.codegen.typescript import is_mutation

    text, described = generate(conn, queries)
    write_atomically(out, text)
    mutations = sum(map(is_mutation, described))
    click.echo(f"Wrote {out}: {_count(len(described) - mutations, 'query', 'queries')} and "
               f"{_count(mutations, 'mutation', 'mutations')} from {queries}/.")
    if approve:
        click.echo(approve(described))
    return described


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _shown(path: Path) -> Path:
    """The path as people read it: relative to the current directory when under it."""
    return path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path


def _approve(settings: Settings, described, roles: tuple[str, ...]) -> str:
    """Approve the statements in the allow-list; the line saying so."""
    from neon_local.codegen.allowed import approve
    from neon_local.limits.allowlist import default_path

    path = default_path(settings)
    roles = roles or settings.jwt_roles[:1]  # as `allowlist approve` does
    fingerprints = approve(path, described, roles)
    return f"Approved {len(set(fingerprints))} statements in {path} for {', '.join(roles)}."
