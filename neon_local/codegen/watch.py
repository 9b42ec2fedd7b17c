"""`codegen --watch`: regenerate when a .sql file or the database schema changes, and say what changed in the types.

Both are polled (file sizes and mtimes; a fingerprint of the catalog rows that types come from), which needs
no extra dependency, sees DDL from any client, and costs one small catalog query per tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from psycopg import Connection

from neon_local.codegen.describe import Described
from neon_local.codegen.errors import CodegenError
from neon_local.codegen.generate import generate, write_atomically
from neon_local.errors import NeonLocalError

_SCHEMA_SQL = """
select md5(coalesce(string_agg(part, ',' order by part), '')) from (
  select concat_ws(':', a.attrelid, a.attnum, a.attname, a.atttypid, a.attnotnull) as part
  from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
  where a.attnum > 0 and not a.attisdropped and n.nspname not in ('pg_catalog', 'information_schema')
    and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
  union all select concat_ws(':', c.oid, c.relname, c.relnamespace) from pg_class c where c.relkind in ('r', 'v', 'm', 'p', 'f')
  union all select concat_ws(':', enumtypid, enumsortorder, enumlabel) from pg_enum
  union all select concat_ws(':', oid, typname, typtype, typbasetype) from pg_type where typtype in ('d', 'e')
) parts
"""


def signatures(described: list[Described]) -> dict[str, str]:
    """'ListTodosRow.task' -> 'string | null', for each generated field: what --watch compares."""
    fields: dict[str, str] = {}
    for d in described:
        name = d.statement.name
        fields[name] = f":{d.statement.kind}"
        fields.update({f"{name}Params.{param}": ts for param, ts in d.params})
        fields.update({f"{name}Row.{c.name}": c.type + (" | null" if c.nullable else "") for c in d.columns})
    return fields


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = [f"  - {key}" for key in before if key not in after]
    lines += [f"  + {key}: {after[key]}" if "." in key else f"  + {key} {after[key]}" for key in after if key not in before]
    lines += [f"  ~ {key}: {before[key]} -> {after[key]}" for key in after if key in before and before[key] != after[key]]
    return lines


def _files(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.sql")))


def snapshot(conn: Connection, queries: Path) -> tuple[tuple, str]:
    """What watch() compares against: taken before the first generation, so no change slips between the two."""
    return _files(queries), cast(tuple, conn.execute(_SCHEMA_SQL).fetchone())[0]


def watch(conn: Connection, queries: Path, out: Path, seen: tuple[tuple, str], described: list[Described],
          echo: Callable[[str], None], written: Callable[[list[Described]], str] | None = None,
          interval: float = 0.1, schema_every: int = 5) -> None:
    """Runs until interrupted; the .sql files are looked at every `interval`, the schema every `schema_every` ticks.
    `written` runs after each rewrite (--emit-allowlist's approval) and returns a line to print; an error from it
    is printed, and watching goes on."""
    fields = signatures(described)
    files, schema = seen
    tick = 0
    while True:
        time.sleep(interval)
        tick += 1
        now_files = _files(queries)
        now_schema = cast(tuple, conn.execute(_SCHEMA_SQL).fetchone())[0] if tick % schema_every == 0 else schema
        if (now_files, now_schema) == (files, schema):
            continue
        why = "the SQL files" if now_files != files else "the schema"
        files, schema = now_files, now_schema
        try:
            text, now_described = generate(conn, queries)
        except CodegenError as exc:
            echo(f"error: {exc} ({out} left as it was)")
            continue
        write_atomically(out, text)
        now_fields = signatures(now_described)
        echo("\n".join([f"{time.strftime('%H:%M:%S')} {why} changed; wrote {out}",
                        *(changes(fields, now_fields) or ["  (no type changed)"])]))
        fields = now_fields
        if written:
            try:
                echo(written(now_described))
            except NeonLocalError as exc:  # a statement the allow-list cannot read, a list file that does not parse
                echo(f"error: {exc}")
