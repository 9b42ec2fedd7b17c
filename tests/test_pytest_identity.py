"""The pytest plugin's identities and reports (issue 9 item 12): nested authenticate_as, tokens that are not
JWTs or not ours, refusal notes for claim-based policies, migration errors without a position, mint options."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Imported before pytester's in-process runs snapshot sys.modules (see test_pytest_plugin.py).
import neon_local.services  # noqa: F401
from neon_local.migrations import split_statements

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).parent.parent / "fixtures"


def sample(pytester: pytest.Pytester, name: str) -> pytest.Pytester:
    shutil.copytree(FIXTURES / name, pytester.path, dirs_exist_ok=True)
    shutil.rmtree(pytester.path / "tests")  # each test here brings its own test file
    return pytester


def test_nested_authenticate_as_gives_the_outer_user_back(pytester):
    app = sample(pytester, "todos")
    app.makepyfile(test_nested="""
        import pytest

        def who(conn):
            return conn.execute("select current_user as role, auth.user_id() as me, count(*) as n from todos").fetchone()

        def test_the_outer_block_runs_as_alice_again(neon_db):
            with neon_db.authenticate_as("alice") as conn:
                with neon_db.authenticate_as("carol"):
                    assert who(conn) == {"role": "authenticated", "me": "user_carol", "n": 0}
                assert who(conn) == {"role": "authenticated", "me": "user_alice", "n": 2}
                with pytest.raises(ZeroDivisionError):
                    with neon_db.authenticate_as("bob", role="anonymous"):
                        1 / 0
                assert who(conn) == {"role": "authenticated", "me": "user_alice", "n": 2}
                assert "user_alice" in conn.identity.describe()
            assert who(conn) == {"role": "cloud_admin", "me": None, "n": 3}
    """)
    app.runpytest().assert_outcomes(passed=1)


def test_tokens_that_are_not_jwts_or_not_ours_reach_the_proxy(pytester):
    app = sample(pytester, "todos")
    app.makepyfile(test_tokens="""
        import base64, hashlib, hmac, json
        import psycopg
        import pytest
        from neon_local.testing import QueryError

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        def forged(sub):
            head = b64(json.dumps({"alg": "HS256"}).encode()) + "." + b64(json.dumps({"sub": sub}).encode())
            return head + "." + b64(hmac.new(b"guess", head.encode(), hashlib.sha256).digest())

        @pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c"])
        def test_over_http(neon_http, token):
            with pytest.raises(QueryError) as refused:
                neon_http(token=token).sql("select 1")
            assert (refused.value.status, refused.value.code) == (400, "28000")
            assert "not a valid JWT" in str(refused.value)
            assert "with a token that is not a JWT" in refused.value.__notes__[0]

        @pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c"])
        def test_over_tcp(neon_connect, token):
            with pytest.raises(psycopg.OperationalError, match="not a valid JWT"):
                neon_connect(token=token)

        def test_a_forged_token_is_not_shown_as_who_it_claims_to_be(neon_http, neon_connect):
            with pytest.raises(QueryError) as refused:
                neon_http(token=forged("user_alice")).sql("select 1")
            assert refused.value.code == "28000"
            assert "user_alice" not in refused.value.__notes__[0]
            assert "not minted by neon-local's token factory" in refused.value.__notes__[0]
            with pytest.raises(psycopg.OperationalError) as failed:
                neon_connect(token=forged("user_alice"))
            assert "user_alice" not in str(failed.value.__notes__)

        def test_an_expired_token_has_the_tcp_sqlstate_over_http(neon_http, neon_token):
            with pytest.raises(QueryError) as refused:
                neon_http(token=neon_token("bob", expired=True)).sql("select 1")
            assert refused.value.code == "28000" and refused.value.body["code"] == ""
    """)
    app.runpytest().assert_outcomes(passed=6)


def test_claims_named_like_mint_options_are_claims_when_given_as_claims(pytester):
    app = sample(pytester, "todos")
    app.makepyfile(test_claims="""
        from neon_local.testing import claims_of

        def test_claims(neon_http, neon_token):
            token = neon_token("alice", claims={"expired": "yes", "lifetime": "gold", "alg": "none"}, lifetime=60)
            claims = claims_of(token)
            assert (claims["expired"], claims["lifetime"], claims["alg"]) == ("yes", "gold", "none")
            assert claims["exp"] - claims["iat"] == 60
            row = neon_http(token=token).sql("select auth.session()->>'lifetime' as tier, auth.user_id() as me")
            assert row == [{"tier": "gold", "me": "user_alice"}]

        def test_clients_take_claims_and_mint_options_too(neon_http):
            assert neon_http("bob", claims={"expired": True}).sql("select auth.session()->>'expired' as e") == [{"e": "true"}]
    """)
    app.runpytest().assert_outcomes(passed=2)


def test_a_refusal_by_a_claim_based_policy_shows_the_claims_it_reads(pytester):
    app = sample(pytester, "orgs")
    app.makepyfile(test_refusal="""
        def test_mallory_inserts(neon_connect):
            neon_connect("mallory").execute("insert into projects (name) values ('x') returning id")
    """)
    result = app.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        'E * neon-local: refused as role "authenticated" over the TCP proxy with claims {"sub": "user_mallory"}.',
        "E *   INSERT/SELECT policies on public.projects for authenticated:",
        'E *     "members add to their org" PERMISSIVE FOR INSERT WITH CHECK *',
        'E *     "everyone reads public projects" PERMISSIVE FOR SELECT USING is_public',
        'E *     "members read their org" PERMISSIVE FOR SELECT USING *',
        "E *   With these claims auth.session()->>'org_id' is NULL and auth.user_id() is \"user_mallory\"; *",
    ])


@pytest.mark.parametrize("broken, line", [
    ('ALTER TABLE "todos" ENABLE ROW LEVEL SECURITY;',
     'CREATE INDEX "todos_user_idx" ON "todos" USING btree ("user_idd");\nALTER TABLE "todos" ENABLE ROW LEVEL SECURITY;'),
    ('USING ((select auth.user_id() = "todos"."user_id"));--> statement-breakpoint\nCREATE POLICY "crud-authenticated-policy-insert"',
     'USING ((select auth.user_id() = "todos"."owner"));--> statement-breakpoint\nCREATE POLICY "crud-authenticated-policy-insert"'),
], ids=["index", "policy"])
def test_a_migration_error_without_a_position_names_the_statements_line(pytester, broken, line):
    app = sample(pytester, "todos")
    path = app.path / "migrations" / "0000_todos.sql"
    text = path.read_text()
    assert broken.split("\n")[0] in text
    if broken.startswith("ALTER"):
        text = text.replace(broken, line)
        expected = text.split("\n").index(line.split("\n")[0]) + 1
    else:
        text = text.replace(broken.split("\n")[0], line.split("\n")[0])
        expected = next(i for i, row in enumerate(text.split("\n"), 1) if '"todos"."owner"' in row)
    path.write_text(text)
    app.makepyfile(test_one="def test_one(neon_db):\n    pass\n")
    result = app.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*could not build the template database: */migrations/0000_todos.sql:{expected}: column *"])


def test_statements_split_outside_quotes_comments_and_dollar_quotes():
    script = ("-- a; comment\nCREATE TABLE a (x text DEFAULT 'a;b');  /* x; /* nested; */ */\n"
              "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n"
              "SELECT E'it\\'s;', \"we;ird\", $1\n;\nINSERT INTO t VALUES (1)")
    assert [(script.count("\n", 0, offset) + 1, text) for offset, text in split_statements(script)] == [
        (2, "CREATE TABLE a (x text DEFAULT 'a;b')"),
        (3, "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql"),
        (4, "SELECT E'it\\'s;', \"we;ird\", $1\n"),
        (6, "INSERT INTO t VALUES (1)"),
    ]
