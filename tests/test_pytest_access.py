"""The pytest plugin, round two (issue 17): access assertions and their failures, policy shapes, users on the
fly, the WebSocket client, rollback mode, and the xdist total line; through pytester, on both samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Imported before pytester's in-process runs snapshot sys.modules (see test_pytest_plugin.py).
import neon_local.services  # noqa: F401

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).parent.parent / "fixtures"
ORGS_TESTS = (FIXTURES / "orgs" / "tests" / "test_orgs.py").read_text().count("\ndef test_") + 1  # +1: one parametrized twice
UPDATE_POLICY = 'CREATE POLICY "creators change theirs" ON projects FOR UPDATE TO authenticated\n    USING (created_by = (SELECT auth.user_id()))'


def sample(pytester: pytest.Pytester, name: str, keep_tests: bool = True) -> pytest.Pytester:
    shutil.copytree(FIXTURES / name, pytester.path, dirs_exist_ok=True)
    if not keep_tests:
        shutil.rmtree(pytester.path / "tests")
    return pytester


def edit_orgs(app: pytest.Pytester, old: str, new: str) -> None:
    path = app.path / "migrations" / "0000_projects.sql"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_the_orgs_sample_passes_on_every_path(pytester):
    result = sample(pytester, "orgs").runpytest()
    result.assert_outcomes(passed=ORGS_TESTS)


def test_a_too_wide_update_policy_fails_naming_user_command_counts_and_the_policy(pytester):
    app = sample(pytester, "orgs")
    # Members may now change every project of their org, not only the ones they created.
    edit_orgs(app, UPDATE_POLICY, UPDATE_POLICY.replace("created_by = (SELECT auth.user_id())",
                                                        "org_id = (SELECT auth.session()->>'org_id')"))
    result = app.runpytest("-k", "who_may or matrix_is")
    result.assert_outcomes(failed=2, deselected=ORGS_TESTS - 2)
    result.stdout.fnmatch_lines([
        "E *AssertionError: access to public.projects is not as expected (over the TCP proxy, each statement rolled back):",
        "E *alice (authenticated) UPDATE: expected 1 row(s), got 2 row(s)",
        'E *deciding: "creators change theirs" PERMISSIVE FOR UPDATE USING (org_id = *) WITH CHECK * admits 2 of 3 row(s) for alice',
        "E *with alice's claims auth.session()->>'org_id' is \"org_acme\"",
        "E *bob (authenticated) UPDATE: expected 1 row(s), got 2 row(s)",
    ])
    result.stdout.fnmatch_lines([
        "E *assert access matrix of public.projects differs from the expectation (over the TCP proxy):",
        "E *alice (authenticated) UPDATE: expected 1, got 2 row(s)",
        'E *deciding: "creators change theirs" PERMISSIVE FOR UPDATE * admits 2 of 3 row(s) for alice',
        "E *measured:",
        "E *public.projects  select  insert   update  delete",
        "E *alice            2       allowed  2       1",
    ])
    assert "carol (authenticated) UPDATE" not in result.stdout.str()  # alone in her org: still 1


def test_a_restrictive_policy_that_holds_rows_back_is_named(pytester):
    app = sample(pytester, "orgs")
    with (app.path / "migrations" / "0000_projects.sql").open("a") as migration:
        migration.write('\nCREATE POLICY "public projects stay" ON projects AS RESTRICTIVE FOR DELETE TO authenticated\n'
                        "    USING (NOT is_public);\n")
    result = app.runpytest("-k", "who_may")
    result.assert_outcomes(failed=1, deselected=ORGS_TESTS - 1)
    result.stdout.fnmatch_lines([
        "E *alice (authenticated) DELETE: expected 1 row(s), got 0 row(s)",
        'E *deciding: "public projects stay" RESTRICTIVE FOR DELETE USING (NOT is_public) holds back 1 of the 1 row(s) '
        "the DELETE policies admit for alice",
    ])
    assert "bob (authenticated) DELETE" not in result.stdout.str()  # his project is not public


def test_an_insert_policy_that_forgets_the_org_is_named(pytester):
    app = sample(pytester, "orgs", keep_tests=False)
    edit_orgs(app, "WITH CHECK (org_id = (SELECT auth.session()->>'org_id') AND created_by", "WITH CHECK (created_by")
    app.makepyfile(test_insert="""
        def test_alice_adds_to_another_org(neon_db):
            neon_db.assert_access("projects", {"alice": {"insert": False}, "carol": {"insert": True}},
                                  new_row={"name": "x", "org_id": "org_globex"})
    """)
    result = app.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "E *alice (authenticated) INSERT: expected refused, got allowed",
        'E *deciding: "members add to their org" PERMISSIVE FOR INSERT WITH CHECK (created_by = * passes WITH CHECK for this new row',
        "E *with alice's claims auth.user_id() is \"user_alice\"",
    ])
    assert "carol (authenticated)" not in result.stdout.str()


TODOS_RLS = """
    ACCESS = \"\"\"
    public.todos  select  insert   update  delete
    alice         2       allowed  2       2
    bob           1       allowed  1       1
    carol         0       allowed  0       0
    anonymous     0       refused  0       0
    \"\"\"
    EXPECTED = {
        "alice": {"select": 2, "insert": True, "update": 2, "delete": 2},
        "bob": {"select": 1, "insert": True, "update": 1, "delete": 1},
        "carol": {"select": 0, "insert": True, "update": 0, "delete": 0},
        "anonymous": {"select": 0, "insert": False, "update": 0, "delete": 0},
    }
    POLICIES = [f"crud-authenticated-policy-{command}" for command in ("select", "insert", "update", "delete")]

    def test_access(neon_db):
        neon_db.assert_access("todos", EXPECTED, new_row={"task": "x"})

    def test_matrix(neon_db):
        assert neon_db.access_matrix("todos", list(EXPECTED), new_row={"task": "x"}) == ACCESS

    def test_policies(neon_db):
        neon_db.assert_policies("todos", POLICIES)
        neon_db.assert_policy("todos", "crud-authenticated-policy-delete", cmd="DELETE", roles=["authenticated"],
                              permissive=True)
"""


def test_on_the_sample_app_each_assertion_passes_then_names_the_one_broken_policy(pytester):
    app = sample(pytester, "todos", keep_tests=False)
    app.makepyfile(test_rls=TODOS_RLS)
    app.runpytest().assert_outcomes(passed=3)
    # The delete policy, widened to every command and every row, as a hurried `FOR ALL USING (true)` would be.
    path = app.path / "migrations" / "0000_todos.sql"
    broken = 'ON "todos" AS PERMISSIVE FOR DELETE TO "authenticated" USING ((select auth.user_id() = "todos"."user_id"))'
    assert broken in path.read_text()
    path.write_text(path.read_text().replace(broken, 'ON "todos" AS PERMISSIVE FOR ALL TO "authenticated" USING (true)'))
    result = app.runpytest()
    result.assert_outcomes(failed=3)
    deciding = 'E *deciding: "crud-authenticated-policy-delete" PERMISSIVE FOR ALL USING true admits 3 of 3 row(s) for {}'
    result.stdout.fnmatch_lines([
        "E *AssertionError: access to public.todos is not as expected (over the TCP proxy, each statement rolled back):",
        "E *alice (authenticated) SELECT: expected 2 row(s), got 3 row(s)",
        deciding.format("alice"),
        "E *alice (authenticated) UPDATE: expected 2 row(s), got 3 row(s)",
        "E *alice (authenticated) DELETE: expected 2 row(s), got 3 row(s)",
        "E *carol (authenticated) SELECT: expected 0 row(s), got 3 row(s)",
        deciding.format("carol"),
    ])
    result.stdout.fnmatch_lines([  # what pytest shows before it cuts a long diff: one line per user, the policy once
        "E *assert access matrix of public.todos differs from the expectation (over the TCP proxy):",
        "E *alice (authenticated) SELECT: expected 2, got 3 row(s); UPDATE: expected 2, got 3 row(s); "
        "DELETE: expected 2, got 3 row(s)",
        deciding.format("alice"),
        "E *with alice's claims auth.user_id() is \"user_alice\"",
        "E *bob (authenticated) SELECT: expected 1, got 3 row(s); UPDATE: expected 1, got 3 row(s); "
        "DELETE: expected 1, got 3 row(s)",
    ])
    result.stdout.fnmatch_lines(['E *AssertionError: policy "crud-authenticated-policy-delete" on public.todos is FOR ALL, '
                                 "expected FOR DELETE: *"])
    assert "anonymous (anonymous)" not in result.stdout.str()  # the policy is for authenticated only
    result = app.runpytest("-vv", "-k", "matrix")  # the whole diff, and the measured table to paste once reviewed
    result.stdout.fnmatch_lines([
        "E *carol (authenticated) SELECT: expected 0, got 3 row(s); *",
        deciding.format("carol"),
        "E *measured:",
        "E *public.todos  select  insert   update  delete",
        "E *alice         3       allowed  3       3",
        "E *anonymous     0       refused  0       0",
    ])


def test_policy_shape_assertions_fail_with_what_differs(pytester):
    app = sample(pytester, "orgs")
    edit_orgs(app, '"everyone reads public projects" ON projects FOR SELECT TO authenticated, anonymous',
              '"everyone reads public projects" ON projects AS RESTRICTIVE FOR ALL TO anonymous')
    edit_orgs(app, '"creators delete theirs"', '"anyone deletes"')
    result = app.runpytest("-k", "reviewed_ones and not matrix")
    result.assert_outcomes(failed=1, deselected=ORGS_TESTS - 1)
    result.stdout.fnmatch_lines(["E *AssertionError: policies on public.projects differ: missing [[]'creators delete theirs'], "
                                 "unexpected [[]'anyone deletes']; it has *"])
    app.makepyfile(test_shape="""
        def test_shape(neon_db):
            neon_db.assert_policy("projects", "everyone reads public projects", cmd="SELECT",
                                  roles=["authenticated", "anonymous"], permissive=True)
    """)
    result = app.runpytest("test_shape.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(['E *AssertionError: policy "everyone reads public projects" on public.projects is FOR ALL, '
                                 "expected FOR SELECT; is TO anonymous, expected TO authenticated, anonymous; "
                                 "is RESTRICTIVE, expected PERMISSIVE: *"])


def test_rls_check_finds_definer_views_and_functions_and_takes_allow(pytester):
    app = sample(pytester, "orgs", keep_tests=False)
    with (app.path / "migrations" / "0000_projects.sql").open("a") as migration:
        migration.write("\nCREATE VIEW project_names AS SELECT name FROM projects;\n"
                        "CREATE VIEW safe_names WITH (security_invoker = true) AS SELECT name FROM projects;\n"
                        "CREATE FUNCTION count_projects() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM projects';\n"
                        "GRANT SELECT ON project_names, safe_names TO authenticated;\n")
    app.makepyfile(test_rls="""
        import pytest

        def test_findings(neon_db, neon_http):
            assert neon_http("mallory").sql("select count(*) as n from project_names") == [{"n": 3}]  # the hole
            neon_db.assert_rls_enabled("public")

        def test_allowed(neon_db):
            neon_db.assert_rls_enabled("public", allow=["project_names", "count_projects()"])
    """)
    result = app.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "E *AssertionError: function count_projects() runs with its owner's rights, so row-level security does not apply to authenticated, anonymous through it:",
        "E *ALTER FUNCTION count_projects() SECURITY INVOKER;  -- or REVOKE EXECUTE ON FUNCTION count_projects() FROM PUBLIC, authenticated, anonymous;",
        "E *(or pass allow=[[]'count_projects()'] if it is meant to)",
        "E *view project_names runs with its owner's rights*",
        "E *ALTER VIEW project_names SET (security_invoker = true);",
    ])
    assert "safe_names" not in result.stdout.str()


def test_users_on_the_fly_and_the_websocket_client_on_every_path(pytester):
    app = sample(pytester, "todos", keep_tests=False)
    app.makepyfile(test_paths="""
        import pytest

        QUERY = "select id, task, user_id, auth.user_id() as me from todos order by id"

        def test_websocket_http_and_tcp_see_the_same_rows(neon_http, neon_connect, neon_ws):
            over_ws = neon_ws("alice").execute(QUERY).fetchall()
            assert len(over_ws) == 2 and over_ws == neon_http("alice").sql(QUERY) == neon_connect("alice").execute(QUERY).fetchall()

        def test_a_user_made_on_the_fly_works_with_every_client(neon_db, neon_user, neon_http, neon_connect, neon_ws):
            dave = neon_user(sub="user_dave", claims={"org_id": "org_x"})
            query = "select auth.user_id() as me, auth.session()->>'org_id' as org, current_user as role"
            expected = {"me": "user_dave", "org": "org_x", "role": "authenticated"}
            assert neon_http(dave).sql(query) == [expected]
            assert neon_connect(dave).execute(query).fetchone() == expected
            assert neon_ws(dave).execute(query).fetchone() == expected
            with neon_db.authenticate_as(dave) as conn:
                assert conn.execute(query).fetchone() == expected
            # a toml user with more claims, and the anonymous role with no sub at all
            assert neon_http(neon_user("bob", claims={"plan": "pro"})).sql("select auth.session()->>'plan' as p, auth.user_id() as me") == [{"p": "pro", "me": "user_bob"}]
            row = neon_ws(neon_user(role="anonymous")).execute("select current_user as role, auth.session() ? 'sub' as has_sub").fetchone()
            assert row == {"role": "anonymous", "has_sub": False}

        def test_the_readme_example(neon_db, neon_user):
            neon_db.assert_access("todos", {
                "alice": {"select": 2, "insert": True, "update": 2, "delete": 2},
                neon_user(sub="user_new"): {"select": 0, "insert": True, "update": 0, "delete": 0},
                "anonymous": {"select": 0, "insert": False, "update": 0, "delete": 0},
            }, new_row={"task": "x"})

        def test_a_refusal_over_websocket_is_explained(neon_ws):
            import psycopg
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                neon_ws("alice").execute("insert into todos (task, user_id) values ('x', 'user_bob')")
            assert 'refused as role "authenticated" over WebSocket (/v2)' in refused.value.__notes__[0]
    """)
    app.runpytest().assert_outcomes(passed=4)


def test_the_data_api_client_acts_as_the_user(pytester):
    app = sample(pytester, "todos", keep_tests=False)
    app.makepyfile(test_rest="""
        import pytest
        from neon_local.testing import QueryError

        def test_reads_writes_and_refusals(neon_rest, neon_http, neon_user):
            alice = neon_rest("alice")
            assert alice.get("todos", select="task", order="id") == [{"task": "buy milk"}, {"task": "write tests"}]
            assert alice.get("todos", select="task", order="id") == neon_http("alice").sql("select task from todos order by id")
            assert alice.post("todos", {"task": "ship it"}) [0]["user_id"] == "user_alice"
            assert neon_rest("bob").patch("todos", {"is_complete": True}, user_id="eq.user_alice") == []
            assert neon_rest(neon_user(sub="user_zed")).get("todos") == []
            with pytest.raises(QueryError) as refused:
                alice.post("todos", {"task": "spam", "user_id": "user_bob"})
            assert (refused.value.status, refused.value.code) == (403, "42501")
            assert 'refused as role "authenticated" over the Data API (/rest/v1)' in refused.value.__notes__[0]
            assert "INSERT/SELECT policies on public.todos" in refused.value.__notes__[0]
    """)
    app.runpytest().assert_outcomes(passed=1)


ROLLBACK_TESTS = """
    import pytest

    def count(conn):
        return conn.execute("select count(*) as n from todos").fetchone()["n"]

    def test_{a}_commits_in_every_way(neon_db, neon_owner):
        assert count(neon_owner) == 3
        neon_owner.execute("insert into todos (task, user_id) values ('one', 'user_alice')")
        neon_owner.commit()
        neon_owner.execute("insert into todos (task, user_id) values ('two', 'user_alice')")
        neon_owner.execute("COMMIT")
        with neon_owner:
            neon_owner.execute("insert into todos (task, user_id) values ('three', 'user_alice')")
        with neon_owner.transaction():  # a savepoint inside the "commits", as psycopg does in a transaction
            neon_owner.execute("insert into todos (task, user_id) values ('gone', 'user_alice')")
        neon_owner.execute("insert into todos (task, user_id) values ('gone too', 'user_alice')")
        neon_owner.rollback()  # back to the last commit
        assert count(neon_owner) == 6
        with neon_db.authenticate_as("alice") as conn:  # the same session: sees the uncommitted rows
            assert count(conn) == 5
        assert neon_owner.execute("select current_user as role").fetchone() == {{"role": "neondb_owner"}}
        neon_db.assert_access("todos", {{"alice": {{"select": 5, "delete": 5}}, "bob": {{"select": 1}}}})

    def test_{b}_starts_from_the_seed(neon_db, neon_owner):
        assert count(neon_owner) == 3
        neon_owner.execute("delete from todos")

    def test_{c}_other_sessions_say_they_cannot_see_the_transaction(neon_db, neon_http):
        with pytest.raises(RuntimeError, match="cannot see this test's rolled-back transaction"):
            neon_http("alice")
        for url in ("url", "direct_url"):  # an app's own connection would commit into the shared database
            with pytest.raises(RuntimeError, match=f"neon_db.{{url}} opens a session of its own"):
                getattr(neon_db, url)

    @pytest.mark.neon_clone
    def test_{d}_a_clone_when_marked(neon_db, neon_http):
        assert neon_db.mode == "clone" and len(neon_http("alice").sql("select * from todos")) == 2
"""


def test_rollback_mode_isolates_tests_in_any_order_and_survives_commits(pytester):
    app = sample(pytester, "todos", keep_tests=False)
    app.makepyfile(test_forward=ROLLBACK_TESTS.format(a="a", b="b", c="c", d="d"),
                   test_backward=ROLLBACK_TESTS.format(a="d", b="c", c="b", d="a"))
    for order in (["test_forward.py", "test_backward.py"], ["test_backward.py", "test_forward.py"]):
        result = app.runpytest("--neon-local-isolation=rollback", "-p", "no:randomly", *order)
        result.assert_outcomes(passed=8)
        result.stdout.fnmatch_lines(["neon-local: emulator started in *; 2 test database(s), *; "
                                     "6 rolled-back test(s), * ms median, * ms p95 to begin and roll back"])
    app.makepyfile(test_marked="""
        import pytest

        @pytest.mark.neon_rollback
        def test_marked(neon_db, neon_owner):
            assert neon_db.mode == "rollback"
            neon_owner.execute("delete from todos")

        def test_unmarked(neon_db, neon_owner):
            assert neon_db.mode == "clone"
            assert neon_owner.execute("select count(*) as n from todos").fetchone() == {"n": 3}
    """)
    app.runpytest("test_marked.py").assert_outcomes(passed=2)


def test_an_unknown_isolation_is_a_usage_error(pytester):
    app = sample(pytester, "todos")
    result = app.runpytest("--neon-local-isolation=snapshot", "-k", "rls_enabled")
    result.stdout.fnmatch_lines(["*--neon-local-isolation / neon_local_isolation / NEON_LOCAL_ISOLATION is one of clone, rollback, not 'snapshot'*"])
    assert result.ret != pytest.ExitCode.OK


def test_xdist_prints_a_total_line(pytester):
    app = sample(pytester, "orgs")
    app.makepyfile(**{"tests/test_rolled_back": """
        import pytest

        @pytest.mark.neon_rollback
        @pytest.mark.parametrize("attempt", range(6))
        def test_rolled_back(neon_db, neon_owner, attempt):
            assert neon_owner.execute("select count(*) as n from projects").fetchone() == {"n": 3}
            neon_owner.execute("delete from projects")
    """})
    result = app.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=ORGS_TESTS + 6)
    result.stdout.fnmatch_lines_random([
        "[[]gw0[]] neon-local: emulator started in * s; template nl_gw0_* built once *",
        "[[]gw1[]] neon-local: emulator started in * s; template nl_gw1_* built once *",
        f"neon-local total over 2 worker(s): 2 emulator(s) started; 2 template(s) built; {ORGS_TESTS} database(s) cloned, "
        "* ms median, * ms p95 to clone; 6 rolled-back test(s), * ms median, * ms p95 to begin and roll back",
    ])
