"""Say why Postgres refused a query: the role and claims it ran as, and the policies or grants Postgres points at."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

import psycopg

NOISE_CLAIMS = ("iss", "iat", "nbf", "exp", "jti")  # the same for every token; they hide the claims that differ
_RLS = re.compile(r'row-level security policy(?: "(?P<policy>[^"]+)")?(?: \(USING expression\))? for table "(?P<table>[^"]+)"')
_DENIED = re.compile(r'permission denied for (?P<kind>table|view|materialized view|sequence|schema|function|procedure) (?P<name>\S+)')
_COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
_GRANT_FIX = {"sequence": ("USAGE", "GRANT USAGE, SELECT ON SEQUENCE {} TO {}"),
              "schema": ("USAGE", "GRANT USAGE ON SCHEMA {} TO {}"),
              "function": ("EXECUTE", "GRANT EXECUTE ON FUNCTION {} TO {}"),
              "procedure": ("EXECUTE", "GRANT EXECUTE ON PROCEDURE {} TO {}")}


@dataclass(frozen=True)
class Identity:
    """Who a client acts as: the Postgres role, the JWT claims (None for a password role) and the path taken."""

    role: str
    claims: Mapping[str, Any] | None
    path: str

    def describe(self) -> str:
        if self.claims is None:
            return f'as role "{self.role}" {self.path}'
        shown = {k: v for k, v in self.claims.items() if k not in NOISE_CLAIMS}
        return f'as role "{self.role}" {self.path} with claims {json.dumps(shown, sort_keys=True)}'


def is_refusal(sqlstate: str | None) -> bool:
    """Missing privileges (42501) or failed authentication (class 28)."""
    return bool(sqlstate) and (sqlstate == "42501" or sqlstate.startswith("28"))


def statement_command(query: str) -> str | None:
    words = query.lstrip().split(None, 1)
    return words[0].upper() if words and words[0].upper() in _COMMANDS else None


class Explainer:
    """Looks the refused object up as the superuser, on its own connection (the client's is in a failed transaction)."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    def explain(self, message: str, identity: Identity, query: str = "") -> str:
        lines = [f"neon-local: refused {identity.describe()}."]
        rls, denied = _RLS.search(message), _DENIED.search(message)
        if rls or denied:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                if rls:
                    lines += _policies(conn, rls["table"], identity, statement_command(query), rls["policy"])
                else:
                    lines += _grants(conn, denied["kind"], denied["name"], identity.role, statement_command(query))
        return "\n".join(lines)


def _policies(conn: psycopg.Connection, table: str, identity: Identity, command: str | None, named: str | None) -> list[str]:
    found = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.oid = to_regclass(quote_ident(%s))", (table,)).fetchone()
    if found is None:
        return []
    schema, relname = found
    rows = conn.execute(
        "select policyname, permissive, cmd, qual, with_check from pg_policies"
        " where schemaname = %s and tablename = %s and (roles && array[%s, 'public']::name[])"
        " and (%s::text is null or cmd in (%s, 'ALL')) order by policyname",
        (schema, relname, identity.role, command, command)).fetchall()
    scope = f"{command} " if command else ""
    if not rows:
        return [f"  No {scope}policy on {schema}.{relname} applies to {identity.role}, so row-level security refuses "
                f"every row: add a policy FOR {command or 'the command'} TO {identity.role}."]
    lines = [f"  {scope}policies on {schema}.{relname} for {identity.role}:"]
    for name, permissive, cmd, using, check in rows:
        mark = "  <- the one Postgres names" if name == named else ""
        lines.append(f'    "{name}" {permissive} FOR {cmd}' + (f" USING {using}" if using else "")
                     + (f" WITH CHECK {check}" if check else "") + mark)
    if identity.claims is not None:
        lines.append(f"  With these claims auth.user_id() is {json.dumps(identity.claims.get('sub'))}; a new or changed row "
                     f"must pass the WITH CHECK of one permissive policy and of every restrictive one.")
    return lines


def _grants(conn: psycopg.Connection, kind: str, name: str, role: str, command: str | None) -> list[str]:
    if kind in _GRANT_FIX:
        privilege, fix = _GRANT_FIX[kind]
        return [f"  {role} lacks {privilege} on {kind} {name}. If it should have it: {fix.format(name, role)};"]
    held = [p for p in _COMMANDS if conn.execute(
        "select has_table_privilege(%s, to_regclass(quote_ident(%s)), %s)", (role, name, p)).fetchone()[0]]
    missing = [p for p in _COMMANDS if p not in held]
    needed = command if command in missing else "<privilege>"
    return [f"  {role} holds {', '.join(held) or 'no privilege'} on {kind} {name} and lacks {', '.join(missing)}.",
            f"  Neon's setup grants SELECT, INSERT, UPDATE, DELETE on public tables to {role}. If this statement "
            f"should be allowed: GRANT {needed} ON {name} TO {role};"]
