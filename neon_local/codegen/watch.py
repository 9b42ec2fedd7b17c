"""`codegen --watch`: regenerate when a .sql file or the database schema changes, and say what changed in the types.

The .sql folder is watched with watchdog (inotify on Linux), through the same event filter as the project's other
folder watches (neon_local.watch): a save is noticed at once, an idle watch costs nothing, and regeneration waits
until the events settle, so an editor's save (truncate, write, rename) regenerates once.
The schema sends no event a client can wait on: DDL comes from any client (psql, migrations, the console), and
the Data API's DDL event trigger may be absent. So a fingerprint of the catalog rows that types come from is
compared every half second, one small catalog query, which sees every change that can alter a generated type.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import cast

from psycopg import Connection
from watchdog.observers import Observer

from neon_local.codegen.describe import Described
from neon_local.codegen.errors import CodegenError
from neon_local.codegen.generate import generate, write_atomically
from neon_local.errors import NeonLocalError
from neon_local.watch import SETTLE_SECONDS, FileEvents

SCHEMA_SECONDS = 0.5  # how often the catalog fingerprint is compared

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


class Watch:
    """The .sql files' events and the schema's fingerprint. Entered before the first generation, so that no change
    slips between it and the watch; run() then regenerates on each change until interrupted."""

    def __init__(self, conn: Connection, queries: Path) -> None:
        self._conn, self._queries = conn, queries
        self._changed = threading.Event()  # set from watchdog's thread
        self._observer = Observer()
        self._observer.schedule(FileEvents(lambda path: path.endswith(".sql"), self._changed.set), str(queries),
                                recursive=False)
        self._observer.daemon = True

    def __enter__(self) -> Watch:
        self._observer.start()
        self._schema = self._fingerprint()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._observer.stop()
        self._observer.join()

    def _fingerprint(self) -> str:
        return cast(tuple, self._conn.execute(_SCHEMA_SQL).fetchone())[0]

    def run(self, out: Path, described: list[Described], echo: Callable[[str], None],
            written: Callable[[list[Described]], str] | None = None) -> None:
        """`described`: what the first generation wrote ([] if it failed). `written` runs after each rewrite
        (--emit-allowlist's approval) and returns a line to print; an error from it is printed, and watching goes on."""
        fields = signatures(described)
        schema_due = time.monotonic() + SCHEMA_SECONDS
        while True:
            files = self._changed.wait(timeout=max(0.0, schema_due - time.monotonic()))
            if files:
                self._changed.clear()
                while self._changed.wait(SETTLE_SECONDS):  # until the files have been quiet for SETTLE_SECONDS
                    self._changed.clear()
            # taken on a file change too, so a migration that came with it is not regenerated for a second time
            schema, schema_due = self._fingerprint(), time.monotonic() + SCHEMA_SECONDS
            if not files and schema == self._schema:
                continue
            why = "the SQL files" if files else "the schema"
            self._schema = schema
            try:
                text, now_described = generate(self._conn, self._queries)
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
