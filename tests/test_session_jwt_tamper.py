"""A JWT-role session attacking the pg_session_jwt stub: nothing it can do may change whose identity auth.* reports.

Each test connects as `authenticated` with a startup JWK and logs in as alice, as the proxy would,
then tries one way to become mallory. Success for the attacker would be auth.user_id() = 'mallory';
acceptable outcomes are an error, no identity (NULL), or alice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time

import psycopg
import pytest
from psycopg import errors, sql

from neon_local.postgres import session_jwt
from session_jwt_support import BUILDS, OWNER, JwtSession, assert_error, b64url, build_of, fail, scratch_database

DB = "session_jwt_tamper"
ALICE = {"sub": "alice", "role": "member"}
MALLORY = {"sub": "mallory", "role": "admin"}


@pytest.fixture(scope="module", params=list(BUILDS))
def db(cluster, request):
    """The database, in one of the stub's builds (see session_jwt_support.BUILDS): every attack is tried on both."""
    with scratch_database(cluster, f"{DB}_{request.param}", build=request.param) as name:
        yield name


@pytest.fixture
def alice(cluster, db):
    session = JwtSession(cluster, db)
    session.login(ALICE)
    yield session
    session.close()


def identity(session: JwtSession):
    """Who the session is now: the user id and the session's sub, or the error that reading them raised."""
    try:
        return session.conn.execute("select auth.user_id(), auth.session() ->> 'sub'").fetchone()
    except psycopg.Error as error:
        return type(error)


def assert_not_mallory(session: JwtSession, expected=("alice", "alice")) -> None:
    assert identity(session) == expected
    assert "mallory" not in json.dumps(session.conn.execute("select auth.session()").fetchone()[0])


def forged(claims: dict, secret: bytes, pid: int, backend_start: str) -> str:
    """A token signed with whatever key material the attacker has, with a jti far above any issued
    so far, so that only the signature can make it fail."""
    signing_input = f"{b64url('{}')}.{b64url(json.dumps(claims | {'jti': 10**6}))}"
    return f"{signing_input}.{session_jwt.SessionSigner(secret, pid, backend_start).sign(signing_input)}"


# --- Setting the GUCs the extension reads ------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "set pg_session_jwt.jwt = {token}",
    "select set_config('pg_session_jwt.jwt', {token}, false)",
    "select set_config('pg_session_jwt.jwt', {token}, true)",
])
def test_setting_a_forged_jwt(alice, statement):
    token = forged(MALLORY, b"\x00" * 32, alice.pid, alice.backend_start)
    with alice.conn.transaction(force_rollback=True):
        alice.conn.execute(sql.SQL(statement).format(token=sql.Literal(token)))
        assert_error(fail(alice, "select auth.user_id()"), "invalid JWT signature", "23514")
    assert_not_mallory(alice)


@pytest.mark.parametrize("jwk", [
    lambda: session_jwt.startup_options().split("=", 1)[1],  # another well-formed key
    lambda: "",
    lambda: "garbage",
])
def test_changing_the_jwk(alice, jwk):
    alice.conn.execute("select set_config('pg_session_jwt.jwk', $1, false)", [jwk()])
    assert_not_mallory(alice)
    # the key was loaded once, as in the extension; later values change nothing, for better or worse
    alice.login(ALICE)
    assert_not_mallory(alice)
    alice.conn.execute("reset pg_session_jwt.jwk")
    assert alice.value("select current_setting('pg_session_jwt.jwk')") == alice.options.split("=", 1)[1]


@pytest.mark.parametrize("statement", [
    """set request.jwt.claims = '{"sub":"mallory","role":"admin"}'""",
    """select set_config('request.jwt.claims', '{"sub":"mallory"}', false)""",
    """select set_config('request.jwt.claims', '{"sub":"mallory"}', true)""",
    """set request.jwt.claim.sub = 'mallory'""",
])
def test_postgrest_claims_are_ignored_with_a_jwk(alice, statement):
    with alice.conn.transaction():
        alice.conn.execute(statement)
        assert_not_mallory(alice)
    assert_not_mallory(alice)


@pytest.mark.parametrize("statement", ["reset all", "discard all", "reset pg_session_jwt.jwt", "set pg_session_jwt.jwt to default"])
def test_resets_drop_the_identity_but_not_the_jwk_or_the_replay_guard(alice, statement):
    earlier = alice.token(MALLORY)  # issued before alice's current token is replaced below
    alice.login(ALICE)
    alice.conn.execute(statement)
    assert identity(alice) == (None, None)
    assert alice.value("select current_setting('pg_session_jwt.jwk')") == alice.options.split("=", 1)[1]
    # the jti guard lives outside the session's reach, so an older token is still a replay
    assert_error(fail(alice, session_jwt.INIT_QUERY, [earlier]), "Token ID must be strictly monotonically increasing.", "23514")
    with pytest.raises(errors.CheckViolation):
        alice.conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(earlier)))
        alice.conn.execute("select auth.user_id()")
    alice.conn.execute("reset pg_session_jwt.jwt")
    alice.login(ALICE)
    assert_not_mallory(alice)


# --- Shadowing the stub's objects ------------------------------------------------------------------

def test_temp_objects_named_like_the_stubs(alice):
    conn = alice.conn
    token = forged(MALLORY, b"\x00" * 32, alice.pid, alice.backend_start)
    conn.execute("""
        create temp table backend (pid integer, backend_start text, ipad bytea, opad bytea, jwk_loaded boolean,
                                   last_jti bigint, cached_digest bytea);
        create function pg_temp.current_setting(text, boolean) returns text language sql as $$ select null::text $$;
        create function pg_temp.pg_backend_pid() returns integer language sql as $$ select 1 $$;
        create function pg_temp.sha256(bytea) returns bytea language sql as $$ select '\\x00'::bytea $$;
        create function pg_temp.claims() returns jsonb language sql as $$ select '{"sub":"mallory"}'::jsonb $$;
        set search_path = pg_temp, public;
    """)
    conn.execute("insert into pg_temp.backend values ($1, $2, '', '', true, 0, $3)",
                 [alice.pid, alice.backend_start, hashlib.sha256(token.encode()).digest()])
    assert_not_mallory(alice)
    conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(token)))
    assert identity(alice) is errors.CheckViolation
    conn.execute("discard all")


@pytest.mark.parametrize("query, message", [
    ("create function _pg_session_jwt.claims(x int) returns jsonb language sql as 'select null::jsonb'",
     "permission denied for schema _pg_session_jwt"),
    ("select pg_read_file('neon_local_session.key')", "permission denied for function pg_read_file"),
    ("select pg_read_binary_file('neon_local_session.key')", "permission denied for function pg_read_binary_file"),
    ("set role cloud_admin", "permission denied to set role \"cloud_admin\""),
    ("create schema _pg_session_jwt_shadow", "permission denied for database {db}"),
    # the C build's functions: no other entry into its module, and no way to load a copy of it
    ("create function pg_temp.verify() returns void language c as 'neon_local_session_jwt', 'pgsjwt_init'",
     "permission denied for language c"),
    ("load 'neon_local_session_jwt'", 'access to library "neon_local_session_jwt" is not allowed'),
])
def test_private_state_and_the_secret_are_out_of_reach(alice, db, query, message):
    error = fail(alice, query)
    assert (error.sqlstate, error.diag.message_primary) == ("42501", message.format(db=db))
    assert_not_mallory(alice)


@pytest.mark.parametrize("db", ["sql"], indirect=True)
@pytest.mark.parametrize("query, message", [
    ("select * from _pg_session_jwt.backend", "permission denied for table backend"),
    ("update _pg_session_jwt.backend set last_jti = 0", "permission denied for table backend"),
    ("select _pg_session_jwt.verify('x')", "permission denied for function verify"),
    ("select _pg_session_jwt.new_state(1, 'x', 'y')", "permission denied for function new_state"),
    ("select _pg_session_jwt.loaded_state()", "permission denied for function loaded_state"),
    ("select _pg_session_jwt.publish('x', '{\"sub\":\"mallory\"}')", "permission denied for function publish"),
])
def test_the_sql_stubs_private_state_is_out_of_reach(alice, query, message):
    error = fail(alice, query)
    assert (error.sqlstate, error.diag.message_primary) == ("42501", message)
    assert_not_mallory(alice)


# --- Tokens the attacker might bring ----------------------------------------------------------------

def test_token_signed_with_another_secret(alice):
    token = forged(MALLORY, hashlib.sha256(b"guess").digest(), alice.pid, alice.backend_start)
    assert_error(fail(alice, session_jwt.INIT_QUERY, [token]), "invalid JWT signature", "23514")
    assert_not_mallory(alice)


def test_altered_payload(alice):
    header, payload, signature = alice.token(ALICE).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) | {"sub": "mallory"}
    tampered = f"{header}.{b64url(json.dumps(claims))}.{signature}"
    assert_error(fail(alice, session_jwt.INIT_QUERY, [tampered]), "invalid JWT signature", "23514")
    assert_not_mallory(alice)


def test_replayed_earlier_token(alice):
    old = alice.token(MALLORY)
    alice.login(ALICE)
    assert_error(fail(alice, session_jwt.INIT_QUERY, [old]), "Token ID must be strictly monotonically increasing.", "23514")
    assert_not_mallory(alice)


def test_token_minted_for_another_connection(cluster, db, alice):
    other = JwtSession(cluster, db)
    try:
        token = forged(MALLORY, cluster.session_secret, other.pid, other.backend_start)
        assert_error(fail(alice, session_jwt.INIT_QUERY, [token]), "invalid JWT signature", "23514")
        assert_not_mallory(alice)
        other.init(token)  # the token is genuine, just not for alice's backend
        assert identity(other) == ("mallory", "mallory")
    finally:
        other.close()


def test_token_for_a_previous_backend_with_the_same_pid(alice):
    """Pids are reused: a token bound to (pid, an older start time) must not pass on the new backend."""
    token = forged(MALLORY, alice.cluster.session_secret, alice.pid, "1000000000.000001")
    assert_error(fail(alice, session_jwt.INIT_QUERY, [token]), "invalid JWT signature", "23514")
    assert_not_mallory(alice)


@pytest.mark.parametrize("db", ["sql"], indirect=True)  # the C build keeps no state outside the backend
def test_stale_state_left_by_a_previous_backend_is_not_trusted(cluster, db):
    victim = psycopg.connect(cluster.conninfo(user="authenticated", dbname=db, options=session_jwt.startup_options()),
                             autocommit=True)
    try:
        pid = victim.info.backend_pid
        token = f"{b64url('{}')}.{b64url(json.dumps(MALLORY | {'jti': 1}))}.forged"
        with psycopg.connect(cluster.conninfo(dbname=db), autocommit=True) as admin:
            # what a backend that used this pid before would have left: a cached token and a high jti
            admin.execute("""insert into _pg_session_jwt.backend (pid, backend_start, jwk, ipad, opad, jwk_loaded, last_jti,
                                                                 cached_digest)
                             values (%s, 'earlier', 'an earlier connection''s key', '\\x00', '\\x00', true, 99, %s)
                             on conflict (pid) do update set backend_start = 'earlier', jwk = excluded.jwk,
                                 cached_digest = excluded.cached_digest, last_jti = 99""",
                          [pid, hashlib.sha256(token.encode()).digest()])
        victim.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(token)))
        with pytest.raises(errors.CheckViolation, match="invalid JWT signature"):
            victim.execute("select auth.user_id()")
    finally:
        victim.close()


def test_expired_token(alice):
    exp = math.floor(time.time()) - 120
    assert_error(fail(alice, session_jwt.INIT_QUERY, [alice.token(MALLORY | {"exp": exp})]),
                 "Token used after it has expired", "23514", f"exp={exp}")
    assert_not_mallory(alice)


@pytest.mark.parametrize("parameter", ["pg_session_jwt.jwt", "pg_session_jwt.jwk", "request.jwt.claims"])
def test_role_defaults_cannot_carry_the_extensions_parameters(alice, db, parameter):
    """A role may set its own defaults, but not for a parameter no loaded module defines (PG15+),
    so a token cannot be planted for the connections the proxy opens later."""
    token = forged(MALLORY, alice.cluster.session_secret, alice.pid, alice.backend_start)
    for target in (sql.SQL(""), sql.SQL("in database {} ").format(sql.Identifier(db))):
        statement = sql.SQL("alter role authenticated {}set {} = {}").format(target, sql.Identifier(*parameter.split(".")), sql.Literal(token))
        error = fail(alice, statement)
        assert (error.sqlstate, error.diag.message_primary) == ("42501", f'permission denied to set parameter "{parameter}"')
    assert_not_mallory(alice)


# --- The other side: sessions without a JWK keep the PostgREST fallback -----------------------------

def test_owner_session_without_jwk_honours_request_jwt_claims(cluster, db):
    """The owner, the console and test helpers connect without a JWK: claims are theirs to set."""
    with psycopg.connect(cluster.conninfo(user=OWNER, dbname=db), autocommit=True) as owner:
        owner.execute("""set request.jwt.claims = '{"sub":"console-user"}'""")
        assert owner.execute("select auth.user_id(), auth.session() ->> 'sub'").fetchone() == ("console-user", "console-user")


# --- The published claims: backtrace_functions, which only a superuser can set -------------------------

PLANTED = "pgsessionjwt_s," + b"mallory".hex() + ",,,," + json.dumps(MALLORY).encode().hex()


@pytest.mark.parametrize("statement", [
    "set backtrace_functions = {value}",
    "set local backtrace_functions = {value}",
    "select set_config('backtrace_functions', {value}, false)",
    "select set_config('backtrace_functions', {value}, true)",
    "alter role authenticated set backtrace_functions = {value}",
    "alter role authenticated in database {db} set backtrace_functions = {value}",
])
def test_the_published_claims_cannot_be_planted(alice, db, statement):
    with alice.conn.transaction():
        error = fail(alice, sql.SQL(statement).format(value=sql.Literal(PLANTED), db=sql.Identifier(db)))
    assert (error.sqlstate, error.diag.message_primary) == ("42501", 'permission denied to set parameter "backtrace_functions"')
    assert_not_mallory(alice)


def test_the_published_claims_cannot_be_planted_at_startup(cluster, db):
    options = session_jwt.startup_options() + " -c backtrace_functions=" + PLANTED
    with pytest.raises(psycopg.OperationalError, match='permission denied to set parameter "backtrace_functions"'):
        psycopg.connect(cluster.conninfo(user="authenticated", dbname=db, options=options), autocommit=True).close()


def test_the_published_claims_cannot_be_planted_by_a_function_set_clause(alice):
    error = fail(alice, sql.SQL("""create function pg_temp.as_mallory() returns text language sql
                                   set backtrace_functions = {} as 'select auth.user_id()'""").format(sql.Literal(PLANTED)))
    assert (error.sqlstate, error.diag.message_primary) == ("42501", 'permission denied to set parameter "backtrace_functions"')
    assert_not_mallory(alice)


@pytest.mark.parametrize("reset", [None, "reset all", "discard all"])
def test_claiming_a_token_was_verified_gains_nothing(alice, reset):
    """pg_session_jwt.verified_jwt is any session's to SET: matching it to a forged token keeps the claims
    this session proved (or, with none published, gets the forged token validated, and refused). The C build
    never reads it: the forged token is validated, and refused."""
    if reset:
        alice.conn.execute(reset)
    token = forged(MALLORY, b"\x00" * 32, alice.pid, alice.backend_start)
    alice.conn.execute(sql.SQL("set pg_session_jwt.jwt = {0}; set pg_session_jwt.verified_jwt = {0}").format(sql.Literal(token)))
    if reset or build_of(alice.conn) == "c":
        assert identity(alice) is errors.CheckViolation
    else:
        assert_not_mallory(alice)


# --- The SQL build's backend row: found by pid and startup JWK, no statistics after the first time ------

@pytest.mark.parametrize("db", ["sql"], indirect=True)
def test_a_row_under_alices_pid_made_under_another_jwk_is_not_trusted(cluster, db, alice):
    """What an earlier backend with the same pid would leave: another connection's key, jti and token."""
    token = f"{b64url('{}')}.{b64url(json.dumps(MALLORY | {'jti': 1}))}.forged"
    with psycopg.connect(cluster.conninfo(dbname=db), autocommit=True) as admin:
        admin.execute("""update _pg_session_jwt.backend set backend_start = 'earlier', jwk = 'an earlier connection''s key',
                         last_jti = 99, cached_digest = %s where pid = %s""",
                      [hashlib.sha256(token.encode()).digest(), alice.pid])
    alice.conn.execute("reset all")
    alice.conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(token)))
    assert identity(alice) is errors.CheckViolation
    alice.conn.execute("reset pg_session_jwt.jwt")
    alice.login(ALICE)
    assert_not_mallory(alice)


@pytest.mark.parametrize("db", ["sql"], indirect=True)
@pytest.mark.parametrize("statement", ["reset all", "discard all"])
def test_the_row_is_found_again_after_a_reset_without_the_statistics(cluster, db, alice, statement):
    """The row is matched by pid and the startup JWK, which both survive the reset: even with a start
    time the statistics would not confirm, it is the row the next token is checked against."""
    with psycopg.connect(cluster.conninfo(dbname=db), autocommit=True) as admin:
        admin.execute("update _pg_session_jwt.backend set backend_start = 'not what the statistics say' where pid = %s", [alice.pid])
    alice.conn.execute(statement)
    alice.login(ALICE)
    assert_not_mallory(alice)
    with psycopg.connect(cluster.conninfo(dbname=db), autocommit=True) as admin:
        assert admin.execute("select backend_start, last_jti from _pg_session_jwt.backend where pid = %s",
                             [alice.pid]).fetchone() == ("not what the statistics say", 2)


# --- Parallel workers: a worker answers for its leader's session, with the leader's replay guard ------------

@pytest.mark.parametrize("replay", ["an older token", "an older token after reset all"])
def test_a_replayed_token_is_refused_in_a_parallel_worker(alice, replay):
    old = alice.token(MALLORY)
    alice.login(ALICE)
    if replay.endswith("reset all"):
        alice.conn.execute("reset all")
    force = "debug_parallel_query" if alice.conn.info.server_version >= 160000 else "force_parallel_mode"
    alice.conn.execute(f"set max_parallel_workers_per_gather = 2; set {force} = on")
    assert "Gather" in "\n".join(r[0] for r in alice.conn.execute("explain (costs off) select auth.user_id()"))
    alice.conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(old)))
    error = fail(alice, "select auth.user_id()")
    if alice.conn.info.server_version >= 160000:
        assert_error(error, "Token ID must be strictly monotonically increasing.", "23514")
    else:  # the SQL build's worker cannot start the subtransaction its verification needs: refused all the same
        assert "cannot start subtransactions during a parallel operation" in str(error)
    alice.conn.execute("reset all")
    alice.login(ALICE)
    assert_not_mallory(alice)
