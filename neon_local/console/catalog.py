"""What the RLS pages show and do: the overview from the catalogs, policy templates, and the test matrix.

The matrix runs real statements as each identity over the TCP proxy (the JWT as password, as an app's
driver does), each in a transaction that is rolled back; a refusal is explained by the pytest plugin's
explainer (which policy or grant, which claim was NULL).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from neon_local.advisor.lints import SYSTEM_SCHEMAS
from neon_local.errors import NeonLocalError
from neon_local.testing.explain import Explainer
from neon_local.testing.explain import Identity as ExplainedIdentity

__all__ = ["TEMPLATES", "MatrixError", "measure_matrix", "overview", "template_sql"]

COMMANDS = ("select", "insert", "update", "delete")
_AUTH_FUNCTION = re.compile(r"\bauth\.\w+\(\)")
_CLAIM = re.compile(r"auth\.session\(\)\s*->>?\s*'((?:[^']|'')*)'")

_TABLES = """
select c.oid, n.nspname as schema, c.relname as name, c.relrowsecurity as rls, c.relforcerowsecurity as forced,
       pg_get_userbyid(c.relowner) as owner
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and n.nspname <> all(%(system)s) and n.nspname not like 'pg_temp%%'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
order by 2, 3
"""
_POLICIES = """
select pol.polrelid as oid, pol.polname as name, pol.polpermissive as permissive,
       case pol.polcmd when 'r' then 'SELECT' when 'a' then 'INSERT' when 'w' then 'UPDATE' when 'd' then 'DELETE' else 'ALL' end as command,
       case when 0 = any(pol.polroles) then array['PUBLIC']
            else array(select rolname::text from pg_roles where oid = any(pol.polroles) order by 1) end as roles,
       pg_get_expr(pol.polqual, pol.polrelid, true) as using, pg_get_expr(pol.polwithcheck, pol.polrelid, true) as with_check
from pg_policy pol where pol.polrelid = any(%(oids)s) order by pol.polname
"""
_GRANTS = """
select c.oid, r.role, array(select p from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p
                             where has_table_privilege(r.role, c.oid, p)) as privileges
from pg_class c cross join unnest(%(roles)s::text[]) r(role)
where c.oid = any(%(oids)s) and exists (select 1 from pg_roles where rolname = r.role)
"""


def reads(*expressions: str | None) -> dict[str, list[str]]:
    """The auth.* functions and the claims (auth.session()->>'x') a policy's expressions read."""
    text = " ".join(e for e in expressions if e)
    return {"functions": list(dict.fromkeys(_AUTH_FUNCTION.findall(text))),
            "claims": list(dict.fromkeys(k.replace("''", "'") for k in _CLAIM.findall(text)))}


async def overview(conn: psycopg.AsyncConnection, roles: Sequence[str]) -> list[dict[str, Any]]:
    """Per table: RLS enabled/forced, its policies in readable form with what they read, grants per role."""
    cur = conn.cursor(row_factory=dict_row)
    tables = await (await cur.execute(_TABLES, {"system": list(SYSTEM_SCHEMAS)})).fetchall()
    oids = [t["oid"] for t in tables]
    policies = await (await cur.execute(_POLICIES, {"oids": oids})).fetchall()
    grants = await (await cur.execute(_GRANTS, {"oids": oids, "roles": list(roles)})).fetchall()
    by_oid = {t["oid"]: {**{k: v for k, v in t.items() if k != "oid"}, "policies": [], "grants": {}} for t in tables}
    for p in policies:
        by_oid[p["oid"]]["policies"].append({**{k: v for k, v in p.items() if k != "oid"},
                                             "reads": reads(p["using"], p["with_check"])})
    for g in grants:
        by_oid[g["oid"]]["grants"][g["role"]] = g["privileges"]
    return list(by_oid.values())


# --- policy templates ------------------------------------------------------------------------------------

def _crud(t: str, col: str) -> str:
    """Drizzle's crudPolicy({ role: authenticatedRole, read: authUid(col), modify: authUid(col) }): one policy per
    command, named as drizzle-kit names them; the call alone in its sub-select, so that it runs once per statement
    (drizzle's own `(select auth.user_id() = col)` runs per row: the advisor's auth_rls_initplan)."""
    check = f"(select auth.user_id()) = {col}"
    return "\n".join([
        f'CREATE POLICY "crud-authenticated-policy-select" ON {t} AS PERMISSIVE FOR SELECT TO authenticated USING ({check});',
        f'CREATE POLICY "crud-authenticated-policy-insert" ON {t} AS PERMISSIVE FOR INSERT TO authenticated WITH CHECK ({check});',
        f'CREATE POLICY "crud-authenticated-policy-update" ON {t} AS PERMISSIVE FOR UPDATE TO authenticated USING ({check}) WITH CHECK ({check});',
        f'CREATE POLICY "crud-authenticated-policy-delete" ON {t} AS PERMISSIVE FOR DELETE TO authenticated USING ({check});',
    ])


def _tenant(t: str, col: str, claim: str) -> str:
    same = f"{col} = (select auth.session()->>{_literal(claim)})"
    return f'CREATE POLICY "tenant-isolation" ON {t} AS PERMISSIVE FOR ALL TO authenticated USING ({same}) WITH CHECK ({same});'


def _public_read(t: str, col: str) -> str:
    own = f"(select auth.user_id()) = {col}"
    return "\n".join([
        f'CREATE POLICY "public-read" ON {t} AS PERMISSIVE FOR SELECT TO anonymous, authenticated USING (true);',
        f'CREATE POLICY "authenticated-insert" ON {t} AS PERMISSIVE FOR INSERT TO authenticated WITH CHECK ({own});',
        f'CREATE POLICY "authenticated-update" ON {t} AS PERMISSIVE FOR UPDATE TO authenticated USING ({own}) WITH CHECK ({own});',
        f'CREATE POLICY "authenticated-delete" ON {t} AS PERMISSIVE FOR DELETE TO authenticated USING ({own});',
    ])


def _published(t: str, col: str) -> str:
    return f'CREATE POLICY "anonymous-read-published" ON {t} AS PERMISSIVE FOR SELECT TO anonymous USING ({col});'


def _admin(t: str, claim: str, value: str) -> str:
    test = f"(select auth.session()->>{_literal(claim)}) = {_literal(value)}"
    return f'CREATE POLICY "admin-by-claim" ON {t} AS PERMISSIVE FOR ALL TO authenticated USING ({test}) WITH CHECK ({test});'


def _blank(t: str) -> str:
    return (f'CREATE POLICY "my-policy" ON {t} AS PERMISSIVE FOR SELECT TO authenticated\n'
            f'  USING (false);  -- the rows this role may see')


# name -> (label, parameters with defaults, builder)
TEMPLATES: dict[str, tuple[str, dict[str, str], Any]] = {
    "owner_only": ("Owner only: auth.user_id() = column (Drizzle crudPolicy)", {"column": "user_id"}, _crud),
    "tenant": ("Tenant by a claim: column = auth.session()->>'claim'", {"column": "org_id", "claim": "org_id"}, _tenant),
    "public_read": ("Public read, authenticated write (own rows)", {"column": "user_id"}, _public_read),
    "published": ("anonymous reads published rows only", {"column": "published"}, _published),
    "admin": ("Admin by claim: everything when a claim has a value", {"claim": "role", "value": "admin"}, _admin),
    "blank": ("Blank", {}, _blank),
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def template_sql(name: str, schema: str, table: str, params: dict[str, str]) -> str:
    """The statements a template runs on schema.table: enable RLS, then its policies."""
    if name not in TEMPLATES:
        raise ValueError(f"no template {name!r}; templates are {', '.join(TEMPLATES)}")
    _, defaults, build = TEMPLATES[name]
    values = {k: str(params.get(k) or v) for k, v in defaults.items()}
    if "column" in values:
        values["col"] = _ident(values.pop("column"))
    qualified = f"{_ident(schema)}.{_ident(table)}"
    return f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY;\n" + build(qualified, **values)


# --- the policy test matrix ------------------------------------------------------------------------------

class MatrixError(NeonLocalError, ValueError):
    """The table cannot be measured (it does not exist, or has no column an UPDATE could set)."""


async def _target(conn: psycopg.AsyncConnection, table: str) -> tuple[str, str, str | None]:
    cur = conn.cursor(row_factory=tuple_row)
    found = await (await cur.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.oid = to_regclass(%s)", (table,))).fetchone()
    if found is None:
        raise MatrixError(f"no table {table}")
    column = await (await cur.execute(
        "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped"
        " and attidentity <> 'a' and attgenerated = '' order by attnum limit 1", (table,))).fetchone()
    return found[0], found[1], column[0] if column else None


def _statement(command: str, ident: sql.Composable, column: str | None, new_row: dict | None) -> tuple[sql.Composed, list]:
    if command == "select":
        return sql.SQL("SELECT count(*) FROM {}").format(ident), []
    if command == "delete":
        return sql.SQL("DELETE FROM {}").format(ident), []
    if command == "update":
        col = sql.Identifier(cast(str, column))  # the caller found one
        return sql.SQL("UPDATE {} SET {} = {}").format(ident, col, col), []
    if not new_row:
        return sql.SQL("INSERT INTO {} DEFAULT VALUES").format(ident), []
    values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in new_row.values()]
    return (sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, new_row)), sql.SQL(", ").join(sql.Placeholder() * len(values))), values)


SAMPLE_ROWS = 10  # rows of a SELECT cell the page lists, to say which rows an identity sees


async def _sample(cur: psycopg.AsyncCursor, ident: sql.Composable) -> list[str]:
    await cur.execute(sql.SQL("SELECT t::text FROM {} AS t LIMIT {}").format(ident, sql.Literal(SAMPLE_ROWS)))
    return [row[0] for row in await cur.fetchall()]


async def _measure_one(conninfo: str, ident: sql.Composable, column: str | None, new_row: dict | None,
                       explainer: Explainer, identity: ExplainedIdentity) -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = conn.cursor(row_factory=tuple_row)
        for command in COMMANDS:
            if command == "update" and column is None:
                cells[command] = {"state": "error", "error": "no column an UPDATE may set"}
                continue
            statement, params = _statement(command, ident, column, new_row)
            text = statement.as_string(conn)
            try:
                async with conn.transaction(force_rollback=True):
                    await cur.execute(statement, params)
                    rows = cast(tuple, await cur.fetchone())[0] if command == "select" else cur.rowcount
                    sample = await _sample(cur, ident) if command == "select" and rows else []
                cells[command] = {"state": "allowed", "rows": rows, "statement": text, "sample": sample}
            except psycopg.Error as exc:
                message = exc.diag.message_primary or str(exc)
                if exc.sqlstate == "42501":
                    why = await asyncio.to_thread(explainer.explain, message, identity, text, exc.sqlstate)
                    cells[command] = {"state": "refused", "error": message, "why": why, "statement": text}
                else:
                    cells[command] = {"state": "error", "error": f"{exc.sqlstate}: {message}", "statement": text}
    return cells


async def measure_matrix(owner: psycopg.AsyncConnection, table: str, sessions: list[tuple[Any, str]],
                         new_row: dict | None, explainer: Explainer) -> dict[str, Any]:
    """`sessions`: (console Identity, conninfo through the proxy) per row of the matrix."""
    schema, relname, column = await _target(owner, table)
    ident = sql.Identifier(schema, relname)
    total = cast(tuple, await (await owner.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))).fetchone())[0]
    rows = []
    for identity, conninfo in sessions:
        explained = ExplainedIdentity(identity.role, identity.claims, "over the TCP proxy")
        cells = await _measure_one(conninfo, ident, column, new_row, explainer, explained)
        rows.append({"identity": identity.describe(), "cells": cells})
    return {"table": f"{schema}.{relname}", "total_rows": total, "commands": list(COMMANDS), "rows": rows}
