"""The pytest plugin end to end: the todos sample app's suite run through `pytester`, as an app's own suite runs."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Imported before pytester's in-process runs take their sys.modules snapshots: cryptography's Rust core
# caches its Python classes once per process, so a copy of cryptography imported afresh by a later
# in-process run would fail its own isinstance checks.
import neon_local.services
import neon_local.testing
from neon_local.app import read_state
from neon_local.testing.config import OPTIONS, get_config
from neon_local.testing.janitor import run_all

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "fixtures" / "todos"
SAMPLE_SOURCE = (SAMPLE / "tests" / "test_todos.py").read_text()
SAMPLE_TESTS = len(re.findall(r"^(?:async )?def test_", SAMPLE_SOURCE, re.M)) + 1  # +1: one is parametrized twice
ALICE_TESTS = len(re.findall(r"^(?:async )?def test_\w*alice", SAMPLE_SOURCE, re.M))  # what -k alice selects
DOCS = (ROOT / "docs" / "pytest.md").read_text()
INSERT_POLICY = 'FOR INSERT TO "authenticated" WITH CHECK ((select auth.user_id() = "todos"."user_id"))'


@pytest.fixture
def app(pytester: pytest.Pytester) -> pytest.Pytester:
    """A copy of the sample app to run, or to break first."""
    shutil.copytree(SAMPLE, pytester.path, dirs_exist_ok=True)
    return pytester


def edit_migration(app: pytest.Pytester, old: str, new: str) -> None:
    path = app.path / "migrations" / "0000_todos.sql"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_the_sample_app_passes_in_process(app):
    result = app.runpytest()
    result.assert_outcomes(passed=SAMPLE_TESTS)
    result.stdout.fnmatch_lines([f"neon-local: emulator started in * s; template nl_main_* built once in * s (2 step(s)); "
                                 f"{SAMPLE_TESTS} test database(s), * ms median, * ms p95 to clone"])


def test_the_sample_app_passes_under_xdist_with_its_own_databases_per_worker(app):
    result = app.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=SAMPLE_TESTS)
    # Each worker runs its own emulator on free ports and builds its template once.
    result.stdout.fnmatch_lines_random(["[[]gw0[]] neon-local: emulator started in * s; template nl_gw0_* built once *",
                                        "[[]gw1[]] neon-local: emulator started in * s; template nl_gw1_* built once *"])


def test_migrations_run_once_per_session_not_per_test(app):
    app.makepyfile(counting="""
        from pathlib import Path
        import psycopg

        def migrate(url):
            with Path("migration-runs.txt").open("a") as runs:
                runs.write("run\\n")
            with psycopg.connect(url) as conn:
                conn.execute(Path("migrations/0000_todos.sql").read_text())
    """)
    # pytest.ini comes before pyproject.toml, so this replaces the sample's settings.
    app.makefile(".ini", pytest="\n".join([
        "[pytest]", "testpaths = tests", "asyncio_mode = auto", "asyncio_default_fixture_loop_scope = function",
        "pythonpath = .", "neon_local_migrations = counting:migrate", "neon_local_seed = seed.sql"]))
    result = app.runpytest()
    result.assert_outcomes(passed=SAMPLE_TESTS)
    assert (app.path / "migration-runs.txt").read_text() == "run\n"


def test_a_broken_insert_policy_fails_the_test_that_inserts_and_says_why(app):
    edit_migration(app, INSERT_POLICY, INSERT_POLICY.replace('"todos"."user_id"))', '"todos"."task"))'))
    result = app.runpytest()
    result.assert_outcomes(passed=SAMPLE_TESTS - 1, failed=1)
    result.stdout.fnmatch_lines(["FAILED tests/test_todos.py::test_alice_adds_a_todo_that_is_hers*"])
    result.stdout.fnmatch_lines([
        '*new row violates row-level security policy for table "todos"',
        'E * neon-local: refused as role "authenticated" over the TCP proxy with claims {"email": "alice@example.com", "sub": "user_alice"}.',
        # INSERT ... RETURNING: the returned row must pass the SELECT policies too, so they are listed
        "E *   INSERT/SELECT policies on public.todos for authenticated:",
        'E *     "crud-authenticated-policy-insert" PERMISSIVE FOR INSERT WITH CHECK ( SELECT (auth.user_id() = todos.task))',
        'E *     "crud-authenticated-policy-select" PERMISSIVE FOR SELECT USING ( SELECT (auth.user_id() = todos.user_id))',
        'E *   With these claims auth.user_id() is "user_alice"*and a returned row the USING of the SELECT policies.',
    ])


def test_a_missing_grant_fails_the_inserting_tests_and_names_the_privilege(app):
    edit_migration(app, "ALTER TABLE", 'REVOKE INSERT ON "todos" FROM "authenticated";\nALTER TABLE')
    result = app.runpytest()
    result.assert_outcomes(passed=SAMPLE_TESTS - 2, failed=2)
    result.stdout.fnmatch_lines_random([
        "FAILED tests/test_todos.py::test_alice_adds_a_todo_that_is_hers*",
        "FAILED tests/test_todos.py::test_alice_cannot_add_a_todo_for_bob*",
        "E *psycopg.errors.InsufficientPrivilege: permission denied for table todos",
        "E *   authenticated holds SELECT, UPDATE, DELETE on table todos and lacks INSERT.",
        # pytest.raises(match=...) shows the error with its notes as one repr'd line
        '*neon-local: refused as role "authenticated" over HTTP (POST /sql) with claims {"email": "alice@example.com", "sub": "user_alice"}*',
    ])


def test_a_table_without_rls_fails_the_rls_check_with_the_fix(app):
    edit_migration(app, 'ALTER TABLE "todos" ENABLE ROW LEVEL SECURITY;', "")
    result = app.runpytest("-k", "rls_enabled")
    result.assert_outcomes(failed=1, deselected=SAMPLE_TESTS - 1)
    result.stdout.fnmatch_lines(["*row-level security is off on 1 table(s) in schema public: todos.*",
                                 '*ALTER TABLE "public"."todos" ENABLE ROW LEVEL SECURITY;'])


def test_a_failing_migration_names_the_file_and_line(app):
    edit_migration(app, '"task" text NOT NULL', '"task" txet NOT NULL')
    result = app.runpytest("-k", "rls_enabled")
    result.assert_outcomes(errors=1, deselected=SAMPLE_TESTS - 1)
    result.stdout.fnmatch_lines(["*neon-local could not build the template database: */migrations/0000_todos.sql:5: type \"txet\" does not exist"])
    assert "Traceback" not in result.stdout.str() and "janitor.py" not in result.stdout.str()  # the message, not a stack


def test_a_command_migration_reaches_the_template_through_the_proxy(app):
    app.makepyfile(migrate="""
        import os, pathlib, psycopg
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(pathlib.Path("migrations/0000_todos.sql").read_text())
    """)
    result = app.runpytest(f"--neon-local-migrations={sys.executable} migrate.py", "-k", "alice")
    result.assert_outcomes(passed=ALICE_TESTS, deselected=SAMPLE_TESTS - ALICE_TESTS)


def test_tokens_custom_factories_and_http_refusals(app):
    app.makeconftest("""
        from neon_local.testing import factories
        bare_template = factories.neon_template(seed=[])
        bare_db = factories.neon_db("bare_template")
    """)
    app.makepyfile(test_extra="""
        import pytest
        from neon_local.testing import QueryError, claims_of

        def test_a_template_without_seed(bare_db):
            assert bare_db.owner().execute("select count(*) as n from todos").fetchone() == {"n": 0}

        def test_ad_hoc_claims_reach_postgres(neon_http, neon_token):
            token = neon_token("alice", org_id="org_acme")
            assert claims_of(token)["org_id"] == "org_acme"
            row = neon_http(token=token).sql("select auth.session()->>'org_id' as org, auth.user_id() as me")
            assert row == [{"org": "org_acme", "me": "user_alice"}]

        def test_an_expired_token_is_refused_with_the_claims(neon_http, neon_token):
            with pytest.raises(QueryError) as refused:
                neon_http(token=neon_token("bob", expired=True)).sql("select 1")
            assert refused.value.status == 400
            assert 'refused as role "authenticated" over HTTP (POST /sql) with claims {"email": "bob@example.com", "sub": "user_bob"}' in str(refused.value.__notes__)

        def test_an_expired_token_over_tcp_says_whom_it_was_for(neon_connect, neon_token):
            import psycopg
            with pytest.raises(psycopg.OperationalError) as refused:
                neon_connect(token=neon_token("alice", expired=True))
            assert 'connecting as role "authenticated" over the TCP proxy with claims {"email": "alice@example.com"' in str(refused.value.__notes__)

        def test_authenticate_as_is_undone_and_survives_an_expected_error(neon_db):
            with neon_db.authenticate_as("alice") as conn:
                with pytest.raises(Exception, match="row-level security"):
                    with conn.transaction():  # a savepoint, so the block goes on after the error
                        conn.execute("insert into todos (task, user_id) values ('x', 'user_bob')")
                assert conn.execute("select count(*) as n from todos").fetchone() == {"n": 2}
            assert conn.execute("select current_user as who, auth.user_id() as sub").fetchone() == {"who": "cloud_admin", "sub": None}

        def test_params_and_types_decode_like_psycopg(neon_http):
            row = neon_http("alice").sql("select $1::int8 as big, $2::numeric as num, $3::jsonb as doc, $4::int[] as arr, null::text as nothing",
                                         9007199254740993, "1.50", {"a": [1]}, [1, 2])
            import decimal
            assert row == [{"big": 9007199254740993, "num": decimal.Decimal("1.50"), "doc": {"a": [1]}, "arr": [1, 2], "nothing": None}]
    """)
    result = app.runpytest("test_extra.py")
    result.assert_outcomes(passed=6)


def test_reusing_a_running_emulator_shares_one_postgres_between_workers(app, tmp_path, monkeypatch):
    data_dir, log = tmp_path / "running", tmp_path / "up.log"
    monkeypatch.setenv("NEON_LOCAL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("NEON_LOCAL_REUSE", "1")
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "neon_local", "up", "--data-dir", str(data_dir),
                                   "--http-port", "0", "--pg-port", "0"], cwd=app.path, stdout=output, stderr=output)
    try:
        url = f"http://127.0.0.1:{wait_for_state(data_dir, server, log)['http_port']}"
        result = app.runpytest_subprocess("-n", "2", "-k", "alice")
        result.assert_outcomes(passed=ALICE_TESTS)  # under xdist the controller reports no deselected count
        result.stdout.fnmatch_lines_random([f"[[]gw0[]] neon-local: reused the emulator at {url}; template nl_gw0_*",
                                            f"[[]gw1[]] neon-local: reused the emulator at {url}; template nl_gw1_*"])
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def wait_for_state(data_dir: Path, server: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = read_state(data_dir)
        if state:
            return state
        if server.poll() is not None:
            pytest.fail(f"neon-local up exited with {server.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"neon-local up did not write its state within 60 s:\n{log.read_text()}")


def test_reuse_without_a_running_emulator_says_how_to_start_one(app, tmp_path, monkeypatch):
    monkeypatch.setenv("NEON_LOCAL_DATA_DIR", str(tmp_path / "nothing-here"))
    result = app.runpytest("--neon-local-reuse", "-k", "rls_enabled")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the whole session stops, with one message
    result.stdout.fnmatch_lines(["*neon-local: no neon-local is running for */nothing-here. Start one with `neon-local up`*"])


def test_cleanup_runs_every_step_and_raises_the_first_failure():
    ran = []

    def fail(name):
        ran.append(name)
        raise RuntimeError(name)

    with pytest.raises(RuntimeError, match="first"):
        run_all([lambda: fail("first"), lambda: ran.append("ok"), lambda: fail("second")])
    assert ran == ["first", "ok", "second"]
    with pytest.raises(KeyError):  # an error already on its way up stays the one raised
        run_all([lambda: fail("cleanup")], pending=KeyError("set-up"))


def test_settings_resolve_flag_over_env_over_ini(pytester, monkeypatch):
    pytester.makeini("[pytest]\nneon_local_migrations = from-ini\nneon_local_seed = from-ini\nneon_local_reuse = true\n")
    config = pytester.parseconfig("--neon-local-migrations=from-flag")
    settings = get_config(config, {"NEON_LOCAL_MIGRATIONS": "from-env", "NEON_LOCAL_SEED": "from-env"})
    assert (settings.migrations, settings.seed, settings.reuse) == ("from-flag", "from-env", True)
    assert get_config(config, {}).seed == "from-ini"


def test_loading_the_plugin_imports_no_driver():
    code = "import sys, neon_local.pytest_plugin; print(sorted({'psycopg', 'httpx', 'aiohttp'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_every_public_name_is_exported_and_resolves():
    assert neon_local.testing.__all__ == sorted(neon_local.testing.__all__)
    for name in neon_local.testing.__all__:
        assert getattr(neon_local.testing, name) is not None


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_documented(option):
    assert f"| `{option.flag}` | `{option.ini}` | `{option.env}` |" in DOCS


@pytest.mark.parametrize("fixture", ["neon_local", "neon_template", "neon_db", "neon_token", "neon_user", "neon_http", "neon_connect",
                                     "neon_ws", "neon_rest", "neon_owner"])
def test_every_fixture_is_documented(fixture):
    assert f"| `{fixture}` |" in DOCS


def test_assert_no_lints_passes_on_the_sample_and_names_a_table_left_without_rls(app):
    app.makepyfile(test_lints="""
        def test_clean(neon_db):
            neon_db.assert_no_lints(ignore=["auth_rls_initplan"])

        def test_rls_off(neon_db):
            neon_db.owner().execute("alter table todos disable row level security")
            neon_db.assert_no_lints(ignore=["auth_rls_initplan"])
    """)
    result = app.runpytest("test_lints.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the advisor found problems:*", "*rls_disabled_in_public*todos*"])
