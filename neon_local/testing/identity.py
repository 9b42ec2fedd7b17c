"""Act as a JWT user at SQL level inside a transaction (basejump's `authenticate_as`), and check RLS is on."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from neon_local.testing.clients import NeonConnection
from neon_local.testing.explain import Identity


@contextmanager
def authenticate_as(conn: psycopg.Connection, claims: Mapping[str, Any],
                    role: str = "authenticated") -> Iterator[psycopg.Connection]:
    """Inside a transaction on `conn`, run as `role` with these JWT claims; committed and undone on exit.

    pg_session_jwt reads `request.jwt.claims` when no JWT came through the proxy, so `auth.user_id()` works.
    `conn` must be allowed to SET ROLE: the superuser is (on Neon the owner is not a member of `authenticated`).
    As in any transaction, a failed statement aborts the rest: to expect an error and go on, nest
    `with conn.transaction():` (a savepoint) around it.
    """
    previous = conn.identity if isinstance(conn, NeonConnection) else None
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(dict(claims)),))
        if isinstance(conn, NeonConnection):
            conn.identity = Identity(role, dict(claims), "at SQL level (authenticate_as)")
        try:
            yield conn
            # In a savepoint (a connection already in a transaction) SET LOCAL would outlive the block;
            # after an error the rollback on exit undoes it anyway.
            if conn.info.transaction_status != TransactionStatus.INERROR:
                conn.execute("RESET ROLE")
                conn.execute("select set_config('request.jwt.claims', '', true)")
        finally:
            if isinstance(conn, NeonConnection):
                conn.identity = previous


def tables_without_rls(conn: psycopg.Connection, schema: str = "public") -> list[str]:
    """Tables (and partitioned tables) in `schema` with row-level security off."""
    rows = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relkind in ('r', 'p') and not c.relrowsecurity order by 1", (schema,)).fetchall()
    return [row["relname"] if isinstance(row, dict) else row[0] for row in rows]


def assert_rls_enabled(conn: psycopg.Connection, schema: str = "public") -> None:
    """Fail, naming each table and the fix, when any table in `schema` has row-level security off."""
    __tracebackhide__ = True
    missing = tables_without_rls(conn, schema)
    if missing:
        fixes = "\n".join(f"  ALTER TABLE {sql.Identifier(schema, table).as_string(conn)} ENABLE ROW LEVEL SECURITY;"
                          for table in missing)
        raise AssertionError(f"row-level security is off on {len(missing)} table(s) in schema {schema}: "
                             f"{', '.join(missing)}. Any role with a grant reads every row. Enable it:\n{fixes}")
