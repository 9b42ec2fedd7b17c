"""`neon-local lint` as CI runs it: against a running `neon-local up -d`, as the owner, text or JSON, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg

from test_cli import neon_local

TODOS = Path(__file__).parent.parent / "fixtures" / "todos"


def test_lint_on_the_running_emulator(tmp_path):
    assert neon_local("lint", cwd=tmp_path).returncode == 1  # nothing runs: says so
    shutil.copy(TODOS / "neon_local.toml", tmp_path)
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        owner_url = json.loads(neon_local("status", "--json", cwd=tmp_path).stdout)["urls"]["owner"]
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute((TODOS / "migrations" / "0000_todos.sql").read_text().replace("--> statement-breakpoint", ""))
        warned = neon_local("lint", cwd=tmp_path)  # drizzle-kit's policies call auth.user_id() per row: a warning
        assert warned.returncode == 0 and "WARN   auth_rls_initplan  public.todos" in warned.stdout, warned.stdout + warned.stderr
        assert "ERROR" not in warned.stdout
        with psycopg.connect(owner_url, autocommit=True) as conn:
            for finding in json.loads(neon_local("lint", "--json", cwd=tmp_path).stdout):
                conn.execute(finding["fix"])
        clean = neon_local("lint", cwd=tmp_path)
        assert clean.returncode == 0 and "No lints" in clean.stdout, clean.stdout + clean.stderr

        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("create table audit (id int, note text)")
            conn.execute("create policy by_org on todos as restrictive for select to authenticated"
                         " using ((select auth.session()->>'org_id') is not null)")
        text = neon_local("lint", cwd=tmp_path)
        assert text.returncode == 1
        assert "ERROR  rls_disabled_in_public  public.audit" in text.stdout
        found = json.loads(neon_local("lint", "--json", cwd=tmp_path).stdout)
        by_name = {f["name"]: f for f in found}
        assert by_name["rls_disabled_in_public"]["fix"] == "ALTER TABLE public.audit ENABLE ROW LEVEL SECURITY;"
        assert by_name["policy_reads_unknown_claim"]["level"] == "WARN"  # the todos users have no org_id
        assert set(by_name["rls_disabled_in_public"]) == {"name", "level", "title", "object", "detail", "why", "fix"}

        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute(by_name["rls_disabled_in_public"]["fix"])
        warned = neon_local("lint", cwd=tmp_path)
        assert warned.returncode == 0 and "policy_reads_unknown_claim" in warned.stdout  # warnings do not fail CI
    finally:
        neon_local("down", cwd=tmp_path)
