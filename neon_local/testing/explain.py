"""Say why Postgres refused a query: the role and claims it ran as, and the policies or grants Postgres points at."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

NOISE_CLAIMS = ("iss", "iat", "nbf", "exp", "jti")  # the same for every token; they hide the claims that differ
_RLS = re.compile(r'row-level security policy(?: "(?P<policy>[^"]+)")?(?: \(USING expression\))? for table "(?P<table>[^"]+)"')
_DENIED = re.compile(r'permission denied for (?P<kind>table|view|materialized view|sequence|schema|function|procedure) (?P<name>\S+)')
_COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
_RETURNING = re.compile(r"\breturning\b", re.I)
# auth.user_id(), or auth.session() followed by -> / ->> steps, as pg_policies deparses them ('k'::text).
_CLAIM_READ = re.compile(r"(?P<user_id>auth\.user_id\(\))|auth\.session\(\)(?P<path>(?:\s*->>?\s*'(?:[^']|'')*'(?:::text)?)+)")
_STEP = re.compile(r"(->>?)\s*'((?:[^']|'')*)'")
_GRANT_FIX = {"sequence": ("USAGE", "GRANT USAGE, SELECT ON SEQUENCE {} TO {}"),
              "schema": ("USAGE", "GRANT USAGE ON SCHEMA {} TO {}"),
              "function": ("EXECUTE", "GRANT EXECUTE ON FUNCTION {} TO {}"),
              "procedure": ("EXECUTE", "GRANT EXECUTE ON PROCEDURE {} TO {}")}


@dataclass(frozen=True)
class Identity:
    """Who a client acts as: the Postgres role, the JWT claims (None for a password role) and the path taken.

    `token` says how far the claims can be trusted: "minted" (by the plugin's token factory), "unverified"
    (a token passed in: its payload counts only once the proxy accepted it) or "not a JWT".
    """

    role: str
    claims: Mapping[str, Any] | None
    path: str
    token: str = "minted"

    def describe(self, accepted: bool = True) -> str:
        """`accepted`: the proxy took the token, so its claims are what Postgres saw."""
        where = f'as role "{self.role}" {self.path}'
        if self.token == "not a JWT":
            return f"{where} with a token that is not a JWT"
        if self.claims is None:
            return where
        if self.token == "unverified" and not accepted:
            return f"{where} with a token not minted by neon-local's token factory (its claims are unverified, so not shown)"
        shown = {k: v for k, v in self.claims.items() if k not in NOISE_CLAIMS}
        return f"{where} with claims {json.dumps(shown, sort_keys=True)}"


def is_refusal(sqlstate: str | None) -> bool:
    """Missing privileges (42501) or failed authentication (class 28)."""
    return sqlstate is not None and (sqlstate == "42501" or sqlstate.startswith("28"))


def statement_command(query: str) -> str | None:
    words = query.lstrip().split(None, 1)
    return words[0].upper() if words and words[0].upper() in _COMMANDS else None


def returns_rows(query: str) -> bool:
    """INSERT/UPDATE/DELETE ... RETURNING: the returned rows must pass the SELECT policies too."""
    return _RETURNING.search(query) is not None


class Explainer:
    """Looks the refused object up as the superuser, on its own connection (the client's is in a failed transaction)."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    def explain(self, message: str, identity: Identity, query: str = "", sqlstate: str = "") -> str:
        """`sqlstate` class 28 (authentication): the token never got as far as Postgres."""
        lines = [f"neon-local: refused {identity.describe(accepted=not sqlstate.startswith('28'))}."]
        rls, denied = _RLS.search(message), _DENIED.search(message)
        if rls or denied:
            command = statement_command(query)
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                if rls:
                    commands = [command] if command else []
                    if command and command != "SELECT" and returns_rows(query):
                        commands.append("SELECT")
                    lines += _policies(conn, rls["table"], identity, commands, rls["policy"])
                elif denied:
                    lines += _grants(conn, denied["kind"], denied["name"], identity.role, command)
        return "\n".join(lines)


def policies_for(conn: psycopg.Connection[Any], schema: str, table: str, role: str, commands: list[str]) -> list[tuple]:
    """(name, permissive, cmd, using, with_check) of the policies on schema.table that apply to role for any of
    `commands` (all commands when empty)."""
    return conn.cursor(row_factory=tuple_row).execute(
        "select policyname, permissive, cmd, qual, with_check from pg_policies"
        " where schemaname = %s and tablename = %s and (roles && array[%s, 'public']::name[])"
        " and (cardinality(%s::text[]) = 0 or cmd = any(%s::text[] || 'ALL'::text))"
        " order by cmd = 'SELECT', policyname", (schema, table, role, commands, commands)).fetchall()


def find_table(conn: psycopg.Connection[Any], table: str) -> tuple[str, str] | None:
    """(schema, name) of a table as the search path finds it, or None."""
    return conn.cursor(row_factory=tuple_row).execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.oid = to_regclass(%s)", (table,)).fetchone()


def describe_policy(name: str, permissive: str, cmd: str, using: str | None, check: str | None) -> str:
    return (f'"{name}" {permissive} FOR {cmd}' + (f" USING {using}" if using else "")
            + (f" WITH CHECK {check}" if check else ""))


def _policies(conn: psycopg.Connection[Any], table: str, identity: Identity, commands: list[str], named: str | None) -> list[str]:
    found = find_table(conn, sql.Identifier(table).as_string(conn))
    if found is None:
        return []
    schema, relname = found
    rows = policies_for(conn, schema, relname, identity.role, commands)
    scope = "/".join(commands) + " " if commands else ""
    if not rows:
        return [f"  No {scope}policy on {schema}.{relname} applies to {identity.role}, so row-level security refuses "
                f"every row: add a policy FOR {commands[0] if commands else 'the command'} TO {identity.role}."]
    lines = [f"  {scope}policies on {schema}.{relname} for {identity.role}:"]
    for row in rows:
        mark = "  <- the one Postgres names" if row[0] == named else ""
        lines.append("    " + describe_policy(*row) + mark)
    if identity.claims is not None:
        read = claims_read(" ".join(text for row in rows for text in row[3:] if text), identity.claims)
        if read:
            lines.append(f"  With these claims {' and '.join(read)}; a new or changed row must pass the WITH CHECK "
                         f"of one permissive policy and of every restrictive one"
                         + (", and a returned row the USING of the SELECT policies." if "SELECT" in commands[1:] else "."))
    return lines


def claims_read(expressions: str, claims: Mapping[str, Any]) -> list[str]:
    """What the claim functions the policies call return with these claims: `auth.user_id() is "u1"`,
    `auth.session()->>'org_id' is NULL`, each once, in the order the policies read them."""
    seen: dict[str, str] = {}
    for match in _CLAIM_READ.finditer(expressions):
        if match["user_id"]:
            seen.setdefault("auth.user_id()", _shown(claims.get("sub"), text=True))
            continue
        value: Any = claims
        shown, arrow = "auth.session()", "->"
        for arrow, key in _STEP.findall(match["path"]):
            key = key.replace("''", "'")
            value = value.get(key) if isinstance(value, dict) else None
            shown += f"{arrow}'{key}'"
        seen.setdefault(shown, _shown(value, text=arrow == "->>"))
    return [f"{expr} is {value}" for expr, value in seen.items()]


def _shown(value: Any, text: bool) -> str:
    """A claim as the SQL expression returns it: NULL, or JSON (a ->> or user_id() text shown as a JSON string)."""
    if value is None:
        return "NULL"
    if text and not isinstance(value, str):
        return json.dumps(json.dumps(value))
    return json.dumps(value)


def _grants(conn: psycopg.Connection[Any], kind: str, name: str, role: str, command: str | None) -> list[str]:
    if kind in _GRANT_FIX:
        privilege, fix = _GRANT_FIX[kind]
        return [f"  {role} lacks {privilege} on {kind} {name}. If it should have it: {fix.format(name, role)};"]
    held = [p for p in _COMMANDS if cast(tuple, conn.execute(
        "select has_table_privilege(%s, to_regclass(quote_ident(%s)), %s)", (role, name, p)).fetchone())[0]]
    missing = [p for p in _COMMANDS if p not in held]
    needed = command if command in missing else "<privilege>"
    return [f"  {role} holds {', '.join(held) or 'no privilege'} on {kind} {name} and lacks {', '.join(missing)}.",
            f"  Neon's setup grants SELECT, INSERT, UPDATE, DELETE on public tables to {role}. If this statement "
            f"should be allowed: GRANT {needed} ON {name} TO {role};"]
