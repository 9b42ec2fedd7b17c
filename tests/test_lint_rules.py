"""The advisor's lints on real schemas: each fires on the mistake it names and stays quiet once it is fixed;
none fires on the todos sample app."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from neon_local.advisor import assert_no_lints, check, exit_code, format_text
from neon_local.advisor.lints import LINTS, unwrapped_calls
from neon_local.postgres.bootstrap import ROLE_GRANTS, jwt_role_statements
from neon_local.settings import DEFAULT_USERS, Settings

TODOS = Path(__file__).parent.parent / "fixtures" / "todos"
ROLES = ("authenticated", "anonymous")


@pytest.fixture
def neon_database(cluster, settings: Settings):
    """A fresh database set up as Neon sets one up (grants, pg_session_jwt); a superuser connection acting as the owner."""
    name = "lint_" + uuid.uuid4().hex[:10]
    with psycopg.connect(cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(settings.owner)))
    conn = psycopg.connect(cluster.conninfo(dbname=name), autocommit=True)
    for role in ROLES:
        conn.execute(ROLE_GRANTS.format(role=role, owner=settings.owner))
        for statement in jwt_role_statements(role, settings.owner, settings.session_jwt_version):
            conn.execute(statement)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.owner)))
    yield conn
    conn.close()
    with psycopg.connect(cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def names(conn, users=DEFAULT_USERS) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for finding in check(conn, roles=ROLES, users=users):
        found.setdefault(finding.name, []).append(finding.object)
    return found


def fix_all(conn, name: str) -> None:
    for finding in check(conn, roles=ROLES, users=DEFAULT_USERS, only=[name]):
        conn.execute(finding.fix)


def plan(conn, query: str) -> str:
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE authenticated")
        return "\n".join(row[0] for row in conn.execute("EXPLAIN " + query).fetchall())


def test_todos_sample_app_only_gets_the_per_row_auth_call_warning(neon_database):
    """drizzle-kit's `(select auth.user_id() = "todos"."user_id")` reads the row inside the sub-select, so Postgres
    runs the call per row (a SubPlan); the lint says so, and its fix moves the call into an InitPlan. Nothing else fires."""
    neon_database.execute((TODOS / "migrations" / "0000_todos.sql").read_text().replace("--> statement-breakpoint", ""))
    neon_database.execute((TODOS / "seed.sql").read_text())
    assert "SubPlan" in plan(neon_database, "select * from todos")
    findings = check(neon_database, roles=ROLES, users=DEFAULT_USERS)
    assert {(f.name, f.level) for f in findings} == {("auth_rls_initplan", "WARN")} and len(findings) == 4
    assert exit_code(findings) == 0
    fix_all(neon_database, "auth_rls_initplan")
    assert names(neon_database) == {}
    assert "InitPlan" in plan(neon_database, "select * from todos")  # the call is now evaluated once per statement


NOTES = """
create table notes (id bigint generated always as identity primary key, user_id text not null default (auth.user_id()), body text);
alter table notes enable row level security;
create policy own on notes for all to authenticated using ((select auth.user_id()) = user_id)
  with check ((select auth.user_id()) = user_id);
"""

# name -> (SQL that makes the mistake on top of NOTES, the object the finding names, a fix that is not the lint's own, or None)
CASES = {
    "rls_disabled_in_public": ("create table open (id int)", "public.open", None),
    "policy_exists_rls_disabled": ("alter table notes disable row level security", "public.notes", None),
    "rls_enabled_no_policy": ("drop policy own on notes", "public.notes", None),
    "auth_rls_initplan": ("alter policy own on notes using (auth.user_id() = user_id)", "public.notes", None),
    "multiple_permissive_policies": ("create policy also on notes for select to authenticated using (body is not null)",
                                     "public.notes", None),
    "rls_policy_always_true": ("create policy everyone on notes for update to authenticated using (true)",
                               "public.notes", "drop policy everyone on notes"),
    "security_definer_view": ("create view note_bodies as select body from notes", "public.note_bodies", None),
    "function_search_path_mutable": ("create function add1(x int) returns int language sql as 'select x + 1'",
                                     "add1(integer)", None),
    "authenticated_security_definer_function_executable": (
        "create function all_notes() returns bigint language sql security definer set search_path = '' "
        "as 'select count(*) from public.notes'", "all_notes()", None),
    "anon_security_definer_function_executable": (
        "create function all_notes() returns bigint language sql security definer set search_path = '' "
        "as 'select count(*) from public.notes'", "all_notes()", None),
    "extension_in_public": ("create extension pgcrypto schema public", "pgcrypto", None),
    "unindexed_foreign_keys": ("create table tags (note_id bigint references notes (id), tag text);"
                               "alter table tags enable row level security;"
                               "create policy t on tags for select to authenticated using (true)", "public.tags", None),
    "jwt_role_missing_grants": ("revoke insert, delete on notes from anonymous", "public.notes", None),
    "policy_reads_unknown_claim": ("create policy team on notes as restrictive for select to authenticated "
                                   "using ((select auth.session()->>'team_id') is not null)", "public.notes",
                                   "drop policy team on notes"),
    "user_id_without_default": ("alter table notes alter column user_id drop default", "public.notes.user_id", None),
}


def test_every_lint_has_a_case():
    assert set(CASES) == {lint.name for lint in LINTS}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lint_fires_then_clears(neon_database, name):
    mistake, obj, other_fix = CASES[name]
    neon_database.execute(NOTES)
    assert names(neon_database) == {}
    neon_database.execute(mistake)
    found = names(neon_database)
    assert obj in found.get(name, []), found
    if other_fix:
        neon_database.execute(other_fix)
    else:
        fix_all(neon_database, name)  # the lint's own fix SQL runs and clears it
    assert name not in names(neon_database)


def test_error_level_lints_set_the_exit_code(neon_database):
    neon_database.execute("create table open (id int)")
    findings = check(neon_database, roles=ROLES, users=DEFAULT_USERS)
    assert exit_code(findings) == 1
    text = format_text(findings)
    assert "ERROR  rls_disabled_in_public  public.open" in text
    assert "fix: ALTER TABLE public.open ENABLE ROW LEVEL SECURITY;" in text


def test_initplan_tells_correlated_sub_selects_from_uncorrelated_ones():
    assert unwrapped_calls("(( SELECT auth.user_id() AS user_id) = user_id)", "todos") == []
    assert unwrapped_calls("(org_id = ( SELECT (auth.session() ->> 'org_id'::text)))", "todos") == []
    assert unwrapped_calls("( SELECT (auth.user_id() = todos.user_id))", "todos") == ["auth.user_id()"]
    assert unwrapped_calls("( SELECT (auth.user_id() = \"My Todos\".user_id))", "My Todos") == ["auth.user_id()"]
    assert unwrapped_calls("(auth.user_id() = user_id)", "todos") == ["auth.user_id()"]
    assert unwrapped_calls("((auth.session() ->> 'org_id'::text) = org_id)", "todos") == ["auth.session()"]


def test_assert_no_lints_lists_the_findings(neon_database):
    neon_database.execute(NOTES)
    assert_no_lints(neon_database, roles=ROLES, users=DEFAULT_USERS)
    neon_database.execute("alter table notes alter column user_id drop default")
    with pytest.raises(AssertionError, match=r"(?s)user_id_without_default  public\.notes\.user_id.*SET DEFAULT auth\.user_id\(\)"):
        assert_no_lints(neon_database, roles=ROLES, users=DEFAULT_USERS)
    assert_no_lints(neon_database, roles=ROLES, users=DEFAULT_USERS, ignore=["user_id_without_default"])
