"""The lints. Each is one catalog query whose rows are findings: `object`, `detail`, `fix` (SQL to run).

Names follow Supabase's splinter (and Neon's Database Advisor) where they have one; the queries are our
own. The last three are neon-local's: what Neon's RLS set-up needs that a generic Postgres lint cannot know.

Objects that an extension owns (pg_depend deptype 'e') are never flagged: the user cannot change them.
pg_session_jwt lives in schema public by design, as on Neon, so `extension_in_public` leaves it out.

Query parameters: %(roles)s the JWT roles (text[]), %(claims)s every claim some test user has (text[]).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

ERROR, WARN, INFO = "ERROR", "WARN", "INFO"

# Schemas no user object lives in: `auth` belongs to pg_session_jwt, `pgrst` to the Data API's set-up.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "auth", "pgrst")
_SYSTEM = "(" + ", ".join(f"'{name}'" for name in SYSTEM_SCHEMAS) + ")"
_NOT_EXTENSION = ("not exists (select 1 from pg_depend d where d.classid = '{catalog}'::regclass "
                  "and d.objid = {oid} and d.deptype = 'e')")
_TABLE_NOT_EXT = _NOT_EXTENSION.format(catalog="pg_class", oid="c.oid")
_FUNC_NOT_EXT = _NOT_EXTENSION.format(catalog="pg_proc", oid="p.oid")
_TABLE = "format('%%I.%%I', n.nspname, c.relname)"
_CMD_NAMES = "case pol.polcmd when 'r' then 'SELECT' when 'a' then 'INSERT' when 'w' then 'UPDATE' when 'd' then 'DELETE' else 'ALL' end"


@dataclass(frozen=True)
class Lint:
    name: str
    level: str
    title: str
    why: str
    query: str
    refine: Callable[[dict], dict | None] | None = None  # rewrites a row in Python, or drops it (None)


# --- auth_rls_initplan: which auth.* calls in a policy Postgres evaluates per row ---------------------------

_AUTH_CALL = re.compile(r"\bauth\.(?:user_id|session)\(\)|\bcurrent_setting\('request\.jwt\.claims'[^)]*\)", re.I)
_SELECT_BEFORE = re.compile(r"\(\s*select[\s(]*$", re.I)


def _closing(text: str, opening: int) -> int:
    """The index of the parenthesis closing the one at `opening` (string literals skipped), or len(text)."""
    depth, quoted = 0, False
    for i in range(opening, len(text)):
        char = text[i]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def per_row_calls(expression: str | None, table: str) -> list[tuple[int, int]]:
    """Spans of the auth.* calls Postgres evaluates for every row: those outside any sub-select, and those in
    a sub-select that reads a column of the row (Drizzle's `(select auth.user_id() = t.user_id)` is such a
    correlated SubPlan). Only in an uncorrelated sub-select, `(select auth.user_id())`, does Postgres run the
    call once per statement (an InitPlan). pg_get_expr qualifies the row's columns inside a sub-select with
    the table's name, which is how a correlated one is recognised."""
    if not expression:
        return []
    row_column = re.compile(r"(?<![\w.\"])" + re.escape(_quoted(table)) + r"\.")
    spans = []
    for m in _AUTH_CALL.finditer(expression):
        wrapped = _SELECT_BEFORE.search(expression[:m.start()])
        if wrapped:
            inside = expression[wrapped.start():_closing(expression, wrapped.start()) + 1]
            if not row_column.search(inside):
                continue
        spans.append(m.span())
    return spans


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def unwrapped_calls(expression: str | None, table: str) -> list[str]:
    return [cast(str, expression)[a:b] for a, b in per_row_calls(expression, table)]  # no calls in None


def wrap_calls(expression: str, table: str) -> str:
    """The expression with each per-row call wrapped in its own uncorrelated sub-select."""
    out, last = [], 0
    for a, b in per_row_calls(expression, table):
        out += [expression[last:a], f"(select {expression[a:b]})"]
        last = b
    return "".join(out) + expression[last:]


def _initplan(row: dict) -> dict | None:
    table = row["relname"]
    calls = unwrapped_calls(row["qual"], table) + unwrapped_calls(row["with_check"], table)
    if not calls:
        return None
    clauses = []
    if unwrapped_calls(row["qual"], table):
        clauses.append(f"USING ({wrap_calls(row['qual'], table)})")
    if unwrapped_calls(row["with_check"], table):
        clauses.append(f"WITH CHECK ({wrap_calls(row['with_check'], table)})")
    return {"object": row["object"],
            "detail": f"policy {row['policy']} calls {', '.join(dict.fromkeys(calls))} for every row",
            "fix": f"ALTER POLICY {row['policy']} ON {row['object']} {' '.join(clauses)};"}


# --- policy_reads_unknown_claim ---------------------------------------------------------------------------

_CLAIM = re.compile(r"auth\.session\(\)\s*->>?\s*'((?:[^']|'')*)'")


def _unknown_claims(row: dict) -> dict | None:
    text = " ".join(t for t in (row["qual"], row["with_check"]) if t)
    read = dict.fromkeys(k.replace("''", "'") for k in _CLAIM.findall(text))
    missing = [k for k in read if k not in row["claims"]]
    if not missing:
        return None
    names = ", ".join(repr(k) for k in missing)
    return {"object": row["object"],
            "detail": f"policy {row['policy']} reads claim {names}, which no test user in neon_local.toml has",
            "fix": f"-- in neon_local.toml, give the test users the claim, e.g.\n-- [users.alice]\n-- {missing[0]} = \"...\""}


LINTS: tuple[Lint, ...] = (
    Lint("rls_disabled_in_public", ERROR, "RLS disabled on a table in public",
         "Tables in schema public are reachable by every JWT role; without row-level security any signed-in "
         "(or anonymous) user reads and changes every row.",
         f"""select {_TABLE} as object, 'row-level security is off' as detail,
                    format('ALTER TABLE %%s ENABLE ROW LEVEL SECURITY;', {_TABLE}) as fix
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relrowsecurity and {_TABLE_NOT_EXT}
             order by 1"""),
    Lint("policy_exists_rls_disabled", ERROR, "Policies exist but RLS is disabled",
         "Policies only act when row-level security is enabled on the table: these policies are ignored and "
         "every row is visible to anyone with a grant.",
         f"""select {_TABLE} as object,
                    'policies ' || string_agg(quote_ident(pol.polname), ', ' order by pol.polname) || ' are ignored' as detail,
                    format('ALTER TABLE %%s ENABLE ROW LEVEL SECURITY;', {_TABLE}) as fix
             from pg_class c join pg_namespace n on n.oid = c.relnamespace join pg_policy pol on pol.polrelid = c.oid
             where not c.relrowsecurity and n.nspname not in {_SYSTEM} and {_TABLE_NOT_EXT}
             group by n.nspname, c.relname order by 1"""),
    Lint("rls_enabled_no_policy", INFO, "RLS enabled, no policy",
         "With row-level security on and no policy, every non-owner role sees no rows and can change none. "
         "That is safe, but usually a policy is missing.",
         f"""select {_TABLE} as object, 'no policy: JWT roles see no rows' as detail,
                    format('CREATE POLICY "owner" ON %%s FOR ALL TO authenticated USING ((select auth.user_id()) = user_id) '
                           'WITH CHECK ((select auth.user_id()) = user_id);', {_TABLE}) as fix
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.relrowsecurity and c.relkind in ('r', 'p') and n.nspname not in {_SYSTEM} and {_TABLE_NOT_EXT}
               and not exists (select 1 from pg_policy pol where pol.polrelid = c.oid)
             order by 1"""),
    Lint("auth_rls_initplan", WARN, "auth.* called per row in a policy",
         "A bare auth.user_id() or auth.session() in a policy is evaluated for every row scanned, and so is one "
         "in a sub-select that also reads the row (drizzle-kit's (select auth.user_id() = t.user_id) is such a "
         "correlated SubPlan). Alone in a sub-select, (select auth.user_id()), Postgres evaluates it once per "
         "statement (an InitPlan).",
         f"""select {_TABLE} as object, c.relname, quote_ident(pol.polname) as policy,
                    pg_get_expr(pol.polqual, pol.polrelid) as qual, pg_get_expr(pol.polwithcheck, pol.polrelid) as with_check
             from pg_policy pol join pg_class c on c.oid = pol.polrelid join pg_namespace n on n.oid = c.relnamespace
             where n.nspname not in {_SYSTEM} order by 1, 3""", _initplan),
    Lint("multiple_permissive_policies", WARN, "Several permissive policies for one role and command",
         "Postgres evaluates every permissive policy that applies and ORs them; several for the same role and "
         "command cost more per row and are harder to reason about than one.",
         f"""with p as (
               select n.nspname, c.relname, pol.polname, r.role, cmd
               from pg_policy pol join pg_class c on c.oid = pol.polrelid join pg_namespace n on n.oid = c.relnamespace
               cross join lateral unnest(case when 0 = any(pol.polroles) then %(roles)s::text[]
                   else array(select rolname::text from pg_roles where oid = any(pol.polroles)) end) r(role)
               cross join lateral unnest(case pol.polcmd when '*' then array['SELECT', 'INSERT', 'UPDATE', 'DELETE']
                   else array[{_CMD_NAMES}] end) cmd
               where pol.polpermissive and n.nspname not in {_SYSTEM})
             select format('%%I.%%I', nspname, relname) as object,
                    format('%%s policies %%s for %%s', cmd, string_agg(quote_ident(polname), ', ' order by polname), role) as detail,
                    '-- merge them into one policy whose USING ORs theirs, then drop the others:' || E'\\n' ||
                    string_agg(format('DROP POLICY %%I ON %%I.%%I;', polname, nspname, relname), E'\\n' order by polname) as fix
             from p where role = any(%(roles)s::text[])
             group by nspname, relname, role, cmd having count(*) > 1 order by 1, 2"""),
    Lint("rls_policy_always_true", WARN, "A write policy that admits every row",
         "USING (true) or WITH CHECK (true) on INSERT, UPDATE, DELETE or ALL lets every user of the role change "
         "any row: row-level security does nothing for that command.",
         f"""select {_TABLE} as object,
                    format('policy %%I FOR %%s TO %%s is always true', pol.polname, {_CMD_NAMES},
                           coalesce((select string_agg(rolname, ', ') from pg_roles where oid = any(pol.polroles)), 'PUBLIC')) as detail,
                    format('ALTER POLICY %%I ON %%s USING ((select auth.user_id()) = user_id)%%s;', pol.polname, {_TABLE},
                           case when pol.polcmd in ('*', 'a', 'w') then ' WITH CHECK ((select auth.user_id()) = user_id)' else '' end) as fix
             from pg_policy pol join pg_class c on c.oid = pol.polrelid join pg_namespace n on n.oid = c.relnamespace
             where pol.polpermissive and pol.polcmd <> 'r' and n.nspname not in {_SYSTEM}
               and (pg_get_expr(pol.polqual, pol.polrelid) = 'true' or pg_get_expr(pol.polwithcheck, pol.polrelid) = 'true')
             order by 1, 2"""),
    Lint("security_definer_view", ERROR, "A view that bypasses RLS",
         "A view runs with its owner's rights unless security_invoker is on; the owner bypasses row-level "
         "security, so JWT roles reading the view see every row of the tables under it.",
         f"""select {_TABLE} as object, 'readable by ' || array_to_string(array(select r from unnest(%(roles)s::text[]) r
                    where has_table_privilege(r, c.oid, 'SELECT')), ', ') || ' without security_invoker' as detail,
                    format('ALTER VIEW %%s SET (security_invoker = on);', {_TABLE}) as fix
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.relkind = 'v' and n.nspname not in {_SYSTEM} and {_TABLE_NOT_EXT}
               and not exists (select 1 from unnest(c.reloptions) o
                               where lower(o) in ('security_invoker=true', 'security_invoker=on', 'security_invoker=1', 'security_invoker=yes'))
               and exists (select 1 from unnest(%(roles)s::text[]) r
                           where exists (select 1 from pg_roles where rolname = r) and has_table_privilege(r, c.oid, 'SELECT'))
             order by 1"""),
    Lint("function_search_path_mutable", WARN, "A function without a fixed search_path",
         "A function that does not set search_path resolves names through the caller's; a role that can create "
         "objects in a schema on that path can make it call their code (with definer rights, as its owner).",
         f"""select p.oid::regprocedure::text as object, 'search_path is not set' as detail,
                    format('ALTER FUNCTION %%s SET search_path = '''';', p.oid::regprocedure) as fix
             from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname not in {_SYSTEM} and p.prokind in ('f', 'p') and {_FUNC_NOT_EXT}
               and not exists (select 1 from unnest(p.proconfig) c where c like 'search_path=%%')
             order by 1"""),
    *(Lint(f"{short}_security_definer_function_executable", WARN, f"{role} may run a SECURITY DEFINER function",
           f"A SECURITY DEFINER function runs with its owner's rights and bypasses row-level security; {role} "
           f"may call it (functions are executable by PUBLIC unless revoked).",
           f"""select p.oid::regprocedure::text as object, 'SECURITY DEFINER, executable by {role}' as detail,
                      format('REVOKE EXECUTE ON FUNCTION %%s FROM PUBLIC, {role};', p.oid::regprocedure) as fix
               from pg_proc p join pg_namespace n on n.oid = p.pronamespace
               where p.prosecdef and n.nspname not in {_SYSTEM} and {_FUNC_NOT_EXT}
                 and exists (select 1 from pg_roles where rolname = '{role}')
                 and has_function_privilege('{role}', p.oid, 'EXECUTE')
               order by 1""")
      for short, role in (("authenticated", "authenticated"), ("anon", "anonymous"))),
    Lint("extension_in_public", WARN, "An extension installed in schema public",
         "Objects of an extension in public sit on every role's search path and among the app's tables; put "
         "extensions in a schema of their own (a trusted extension's objects belong to the superuser, so the owner "
         "drops and re-creates it; DROP refuses while objects depend on it). (pg_session_jwt is in public on Neon by design and is not flagged.)",
         """select quote_ident(e.extname) as object, 'installed in schema public' as detail,
                   format(E'CREATE SCHEMA IF NOT EXISTS extensions;\\nDROP EXTENSION %%I;\\nCREATE EXTENSION %%I SCHEMA extensions;',
                          e.extname, e.extname) as fix
            from pg_extension e join pg_namespace n on n.oid = e.extnamespace
            where n.nspname = 'public' and e.extname not in ('pg_session_jwt', 'plpgsql')
            order by 1"""),
    Lint("unindexed_foreign_keys", INFO, "A foreign key without an index",
         "Without an index on the referencing columns, deletes and updates on the referenced table and joins "
         "that policies make (EXISTS on a parent's owner) scan the whole table.",
         f"""select {_TABLE} as object,
                    format('foreign key %%I on (%%s)', con.conname, string_agg(quote_ident(a.attname), ', ' order by k.ord)) as detail,
                    format('CREATE INDEX ON %%s (%%s);', {_TABLE}, string_agg(quote_ident(a.attname), ', ' order by k.ord)) as fix
             from pg_constraint con join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
             cross join lateral unnest(con.conkey) with ordinality k(attnum, ord)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum
             where con.contype = 'f' and n.nspname not in {_SYSTEM} and {_TABLE_NOT_EXT}
               and not exists (select 1 from pg_index i where i.indrelid = con.conrelid
                   and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(con.conkey)] @> con.conkey
                   and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(con.conkey)] <@ con.conkey)
             group by n.nspname, c.relname, con.conname order by 1, 2"""),
    # neon-local's own -------------------------------------------------------------------------------------
    Lint("jwt_role_missing_grants", WARN, "A JWT role lacks the grants Neon's set-up gives",
         "Neon's docs have you grant USAGE on schema public and SELECT, INSERT, UPDATE, DELETE on its tables to "
         "each JWT role, and leave the filtering to row-level security. Without the grant the app gets "
         "'permission denied' before any policy is asked.",
         f"""select {_TABLE} as object,
                    format('%%s lacks %%s', r.role, array_to_string(array(select priv from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) priv
                           where not has_table_privilege(r.role, c.oid, priv)), ', ')) as detail,
                    format('GRANT SELECT, INSERT, UPDATE, DELETE ON %%s TO %%I;', {_TABLE}, r.role) as fix
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             cross join unnest(%(roles)s::text[]) r(role)
             where n.nspname = 'public' and c.relkind in ('r', 'p') and c.relrowsecurity and {_TABLE_NOT_EXT}
               and exists (select 1 from pg_roles where rolname = r.role)
               and exists (select 1 from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) priv
                           where not has_table_privilege(r.role, c.oid, priv))
             union all
             select 'schema public', r.role || ' lacks USAGE', format('GRANT USAGE ON SCHEMA public TO %%I;', r.role)
             from unnest(%(roles)s::text[]) r(role)
             where exists (select 1 from pg_roles where rolname = r.role) and not has_schema_privilege(r.role, 'public', 'USAGE')
             order by 1, 2"""),
    Lint("policy_reads_unknown_claim", WARN, "A policy reads a claim no test user has",
         "The policy depends on a JWT claim that none of the test users in neon_local.toml carries, so no test "
         "(and no console identity) exercises the branch where the claim is set.",
         f"""select {_TABLE} as object, quote_ident(pol.polname) as policy, %(claims)s::text[] as claims,
                    pg_get_expr(pol.polqual, pol.polrelid) as qual, pg_get_expr(pol.polwithcheck, pol.polrelid) as with_check
             from pg_policy pol join pg_class c on c.oid = pol.polrelid join pg_namespace n on n.oid = c.relnamespace
             where n.nspname not in {_SYSTEM} order by 1, 2""", _unknown_claims),
    Lint("user_id_without_default", INFO, "A user_id column without DEFAULT auth.user_id()",
         "With DEFAULT auth.user_id() the app can insert without sending the user id, and a policy's WITH CHECK "
         "on user_id passes by construction; Neon's and Drizzle's examples declare it so.",
         f"""select {_TABLE} || '.' || quote_ident(a.attname) as object,
                    coalesce('default is ' || pg_get_expr(d.adbin, d.adrelid), 'no default') as detail,
                    format('ALTER TABLE %%s ALTER COLUMN %%I SET DEFAULT auth.user_id();', {_TABLE}, a.attname) as fix
             from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
             left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
             where a.attname = 'user_id' and not a.attisdropped and c.relkind in ('r', 'p') and c.relrowsecurity
               and n.nspname not in {_SYSTEM} and {_TABLE_NOT_EXT}
               and coalesce(pg_get_expr(d.adbin, d.adrelid), '') not like '%%auth.user_id()%%'
             order by 1"""),
)

BY_NAME = {lint.name: lint for lint in LINTS}
