"""Act as a JWT user at SQL level inside a transaction (basejump's `authenticate_as`), and check RLS is on."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row

from neon_local.testing.clients import NeonConnection
from neon_local.testing.explain import Identity, describe_policy, find_table

_Conn = TypeVar("_Conn", bound=psycopg.Connection[Any])


@contextmanager
def authenticate_as(conn: _Conn, claims: Mapping[str, Any], role: str = "authenticated") -> Iterator[_Conn]:
    """Inside a transaction on `conn`, run as `role` with these JWT claims; committed and undone on exit.

    pg_session_jwt reads `request.jwt.claims` when no JWT came through the proxy, so `auth.user_id()` works.
    `conn` must be allowed to SET ROLE: the superuser is (on Neon the owner is not a member of `authenticated`).
    Blocks nest: an inner block is a savepoint, and on leaving it the outer block's role and claims are back.
    As in any transaction, a failed statement aborts the rest: to expect an error and go on, nest
    `with conn.transaction():` (a savepoint) around it.
    """
    previous = conn.identity if isinstance(conn, NeonConnection) else None
    with conn.transaction():
        outer = conn.execute("select current_user, current_setting('request.jwt.claims', true)").fetchone()
        assert outer is not None  # a select without FROM returns its one row
        outer_role, outer_claims = outer.values() if isinstance(outer, dict) else outer
        _act_as(conn, role, json.dumps(dict(claims)))
        if isinstance(conn, NeonConnection):
            conn.identity = Identity(role, dict(claims), "at SQL level (authenticate_as)")
        try:
            yield conn
            # SET LOCAL lasts to the end of the top-level transaction, past a savepoint's release, so an
            # inner block hands the outer one its role and claims back (after an error the rollback does).
            if conn.info.transaction_status != TransactionStatus.INERROR:
                _act_as(conn, outer_role, outer_claims or "")
        finally:
            if isinstance(conn, NeonConnection):
                conn.identity = previous


def _act_as(conn: psycopg.Connection[Any], role: str, claims: str) -> None:
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))


def tables_without_rls(conn: psycopg.Connection[Any], schema: str = "public") -> list[str]:
    """Tables (and partitioned tables) in `schema` with row-level security off."""
    rows = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relkind in ('r', 'p') and not c.relrowsecurity order by 1", (schema,)).fetchall()
    return [row["relname"] if isinstance(row, dict) else row[0] for row in rows]


def definer_rights_objects(conn: psycopg.Connection[Any], schema: str, roles: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, name) of what in `schema` runs with its owner's rights yet `roles` may use: views without
    security_invoker, materialized views, and SECURITY DEFINER functions. Each bypasses row-level security."""
    return conn.cursor(row_factory=tuple_row).execute(
        "select case c.relkind when 'v' then 'view' else 'materialized view' end, c.oid::regclass::text"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %(schema)s and c.relkind in ('v', 'm')"
        "   and not (c.relkind = 'v' and exists (select from unnest(coalesce(c.reloptions, '{}')) o"
        "            where lower(o) in ('security_invoker=true', 'security_invoker=on', 'security_invoker=1',"
        "                               'security_invoker=yes')))"
        "   and exists (select from unnest(%(roles)s::name[]) r"
        "               where to_regrole(r) is not null and has_table_privilege(r, c.oid, 'SELECT'))"
        " union all"
        " select 'function', p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = %(schema)s and p.prosecdef"
        "   and exists (select from unnest(%(roles)s::name[]) r"
        "               where to_regrole(r) is not null and has_function_privilege(r, p.oid, 'EXECUTE'))"
        " order by 1, 2", {"schema": schema, "roles": list(roles)}).fetchall()


def assert_rls_enabled(conn: psycopg.Connection[Any], schema: str = "public",
                       jwt_roles: Sequence[str] = ("authenticated", "anonymous"), allow: Sequence[str] = ()) -> None:
    """Fail, naming each object and the fix, when a table in `schema` has row-level security off, or a view,
    materialized view or SECURITY DEFINER function there that a JWT role may use runs with its owner's rights.
    `allow` names objects that do so on purpose (`"public.my_view"`, `"public.is_member(text)"`)."""
    __tracebackhide__ = True
    problems = []
    missing = tables_without_rls(conn, schema)
    if missing:
        fixes = "\n".join(f"  ALTER TABLE {sql.Identifier(schema, table).as_string(conn)} ENABLE ROW LEVEL SECURITY;"
                          for table in missing)
        problems.append(f"row-level security is off on {len(missing)} table(s) in schema {schema}: "
                        f"{', '.join(missing)}. Any role with a grant reads every row. Enable it:\n{fixes}")
    roles = ", ".join(jwt_roles)
    remedies = {"view": "ALTER VIEW {} SET (security_invoker = true);",
             "materialized view": "REVOKE SELECT ON {} FROM PUBLIC, " + roles + ";",
             "function": "ALTER FUNCTION {} SECURITY INVOKER;  -- or REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC, " + roles + ";"}
    for kind, name in definer_rights_objects(conn, schema, jwt_roles):
        if name in allow or f"{schema}.{name}" in allow:
            continue
        problems.append(f"{kind} {name} runs with its owner's rights, so row-level security does not apply to "
                        f"{roles} through it:\n  {remedies[kind].format(name, name)}\n  (or pass allow=[{name!r}] "
                        f"if it is meant to)")
    if problems:
        raise AssertionError("\n".join(problems))


def _policy_rows(conn: psycopg.Connection[Any], table: str) -> tuple[str, dict[str, dict[str, Any]]]:
    found = find_table(conn, table)
    if found is None:
        raise AssertionError(f"no table {table} (as the search path finds it)")
    rows = conn.cursor(row_factory=dict_row).execute(
        "select policyname, permissive, cmd, roles::text[] as roles, qual, with_check from pg_policies"
        " where schemaname = %s and tablename = %s", found).fetchall()
    return f"{found[0]}.{found[1]}", {row["policyname"]: row for row in rows}


def assert_policies(conn: psycopg.Connection[Any], table: str, names: Sequence[str]) -> None:
    """The table's policies are exactly `names` (pgTAP's policies_are)."""
    __tracebackhide__ = True
    where, policies = _policy_rows(conn, table)
    missing, extra = sorted(set(names) - set(policies)), sorted(set(policies) - set(names))
    if missing or extra:
        raise AssertionError(f"policies on {where} differ: missing {missing}, unexpected {extra}; "
                             f"it has {sorted(policies)}")


def assert_policy(conn: psycopg.Connection[Any], table: str, name: str, *, cmd: str | None = None,
                  roles: Sequence[str] | None = None, permissive: bool | None = None) -> None:
    """One policy's shape (pgTAP's policy_cmd_is, policy_roles_are): its command, roles, permissive or restrictive."""
    __tracebackhide__ = True
    where, policies = _policy_rows(conn, table)
    policy = policies.get(name)
    if policy is None:
        raise AssertionError(f'no policy "{name}" on {where}; it has {sorted(policies)}')
    wrong = []
    if cmd is not None and policy["cmd"] != cmd.upper():
        wrong.append(f"is FOR {policy['cmd']}, expected FOR {cmd.upper()}")
    if roles is not None and sorted(policy["roles"]) != sorted(roles):
        wrong.append(f"is TO {', '.join(policy['roles'])}, expected TO {', '.join(roles)}")
    if permissive is not None and (policy["permissive"] == "PERMISSIVE") != permissive:
        wrong.append(f"is {policy['permissive']}, expected {'PERMISSIVE' if permissive else 'RESTRICTIVE'}")
    if wrong:
        raise AssertionError(f'policy "{name}" on {where} ' + "; ".join(wrong) + ": "
                             + describe_policy(name, policy["permissive"], policy["cmd"], policy["qual"],
                                               policy["with_check"]))
