"""The pg_session_jwt stub's API against real Postgres: each function in each mode, every error, versions."""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conftest import start_cluster
from neon_local.postgres import contrib, session_jwt
from neon_local.settings import Settings
from session_jwt_support import BUILDS, ORG_ID, OWNER, JwtSession, assert_error, b64url, build_of, fail, scratch_database

DB = "session_jwt_stub"
DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")
USER_UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
ALL_FUNCTIONS = "auth.session(), auth.jwt(), auth.user_id(), auth.uid(), auth.organization(), auth.organization_id()"


@pytest.fixture(scope="module", params=list(BUILDS))
def db(cluster, request):
    """The database, in one of the stub's builds (see session_jwt_support.BUILDS): every test runs on both."""
    with scratch_database(cluster, f"{DB}_{request.param}", build=request.param) as name:
        yield name


@pytest.fixture
def jwt_session(cluster, db):
    session = JwtSession(cluster, db)
    yield session
    session.close()


@pytest.fixture
def owner(cluster, db):
    """The owner's own connection: no startup JWK, so the PostgREST fallback applies."""
    with psycopg.connect(cluster.conninfo(user=OWNER, dbname=db), autocommit=True) as conn:
        yield conn


def row(conn, query: str = f"select {ALL_FUNCTIONS}"):
    return conn.execute(query).fetchone()


# --- No JWK: the PostgREST fallback reads request.jwt.claims and never raises -------------------------

@pytest.mark.parametrize("claims", [None, "", "not json", "{"])
def test_fallback_without_usable_claims_gives_json_null(owner, claims):
    if claims is not None:
        owner.execute("select set_config('request.jwt.claims', %s, false)", [claims])
    assert row(owner) == (None, None, None, None, None, None)
    # JSON null, not SQL NULL, as the extension's tests insist
    assert row(owner, "select auth.session()::text, auth.session() is null, auth.jwt()::text") == ("null", False, "null")


def test_fallback_with_claims(owner):
    claims = {"sub": USER_UUID, "role": "admin", "o": {"id": ORG_ID, "slug": "acme", "role": "owner"}}
    owner.execute("select set_config('request.jwt.claims', %s, false)", [json.dumps(claims)])
    session, jwt, user_id, uid, organization, organization_id = row(owner)
    assert session == jwt == claims
    assert (user_id, str(uid)) == (USER_UUID, USER_UUID)
    assert (organization, str(organization_id)) == (claims["o"], ORG_ID)


@pytest.mark.parametrize("claims", [{"sub": 42}, {"sub": None}, {"sub": ["x"]}, {"no_sub": "x"}, ["sub"], "sub", 7])
def test_fallback_ignores_a_sub_that_is_not_a_string(owner, claims):
    owner.execute("select set_config('request.jwt.claims', %s, false)", [json.dumps(claims)])
    assert row(owner, "select auth.session(), auth.user_id(), auth.uid()") == (claims, None, None)


def test_fallback_init_and_jwt_session_init_need_the_jwk(owner):
    for query in ("select auth.init()", "select auth.jwt_session_init('a.b.c')"):
        assert_error(fail(owner, query), "Missing runtime parameter: pg_session_jwt.jwk", "02000")
    # the failed jwt_session_init took its SET with it (the placeholder it created stays, empty)
    assert row(owner, "select current_setting('pg_session_jwt.jwt', true)") == ("",)


# --- JWK set: only a verified token counts ----------------------------------------------------------

def test_jwk_without_jwt(jwt_session):
    jwt_session.conn.execute("""set request.jwt.claims = '{"sub":"fallback-user"}'""")
    assert row(jwt_session.conn) == (None, None, None, None, None, None)
    assert row(jwt_session.conn, "select auth.session()::text, auth.session() is null") == ("null", False)


def test_jwk_with_valid_jwt(jwt_session):
    claims = {"sub": USER_UUID, "role": "admin", "o": {"id": ORG_ID, "slug": "acme", "role": "admin"}}
    jwt_session.login(claims)
    jwt_session.conn.execute("""set request.jwt.claims = '{"sub":"fallback-user","role":"user"}'""")
    session, jwt, user_id, uid, organization, organization_id = row(jwt_session.conn)
    assert session == jwt == {**claims, "jti": 1}
    assert (user_id, str(uid), organization, str(organization_id)) == (USER_UUID, USER_UUID, claims["o"], ORG_ID)


def test_token_keeps_claim_order_and_overwrites_jti_in_place(jwt_session):
    token = jwt_session.signer.token_for(b'{"sub":"u","jti":"from-the-issuer","email":"u@example.com"}')
    segment = token.split(".")[1]
    payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    assert list(payload.items()) == [("sub", "u"), ("jti", 1), ("email", "u@example.com")]
    jwt_session.init(token)
    assert jwt_session.value("select auth.session()") == payload
    with pytest.raises(ValueError):
        jwt_session.signer.token_for(b"[1]")


@pytest.mark.parametrize("sub", [42, None, {"id": "x"}, True])
def test_sub_that_is_not_a_string_is_an_error_with_a_jwk(jwt_session, sub):
    jwt_session.login({"sub": sub})
    for query in ("select auth.user_id()", "select auth.uid()"):
        assert_error(fail(jwt_session, query), "invalid subject claim in the JWT", "42804")
    assert jwt_session.value("select auth.session()") == {"sub": sub, "jti": 1}


def test_missing_sub_is_null(jwt_session):
    jwt_session.login({"role": "x"})
    assert row(jwt_session.conn, "select auth.user_id(), auth.uid()") == (None, None)


# Rust's uuid::Uuid::parse_str: simple, hyphenated, {braced hyphenated}, urn:uuid:hyphenated; any hex case.
UUID_FORMS = [
    (USER_UUID, USER_UUID),
    (USER_UUID.upper(), USER_UUID),
    (USER_UUID.replace("-", ""), USER_UUID),
    ("{" + USER_UUID + "}", USER_UUID),
    ("urn:uuid:" + USER_UUID, USER_UUID),
    # rejected by Rust's parser (Postgres' uuid input would take the first five)
    ("{" + USER_UUID.replace("-", "") + "}", None),
    ("urn:uuid:" + USER_UUID.replace("-", ""), None),
    ("URN:UUID:" + USER_UUID, None),
    ("a0eebc999c0b-4ef8-bb6d-6bb9bd380a11", None),
    ("a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", None),
    ("{" + USER_UUID, None),
    (" " + USER_UUID, None),
    (USER_UUID[:-1] + "g", None),
    ("user_123", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", UUID_FORMS)
def test_uid_and_organization_id_parse_like_rust(jwt_session, text, expected):
    jwt_session.login({"sub": text, "o": {"id": text}})
    uid, organization_id = row(jwt_session.conn, "select auth.uid()::text, auth.organization_id()::text")
    assert uid == organization_id == expected


@pytest.mark.parametrize("o, organization, organization_id", [
    ({"id": ORG_ID, "slug": "acme", "role": "admin"}, {"id": ORG_ID, "slug": "acme", "role": "admin"}, ORG_ID),
    ({"slug": "acme"}, {"slug": "acme"}, None),
    ({"id": "not-a-uuid"}, {"id": "not-a-uuid"}, None),
    ({"id": 11111111111111111111111111111111}, {"id": 11111111111111111111111111111111}, None),  # a number, not a string
    ("not-an-object", None, None),
    ([ORG_ID], None, None),
    (None, None, None),
])
def test_organization_claim(jwt_session, owner, o, organization, organization_id):
    jwt_session.login({"sub": "u", "o": o})
    owner.execute("select set_config('request.jwt.claims', %s, false)", [json.dumps({"sub": "u", "o": o})])
    for conn in (jwt_session.conn, owner):
        assert row(conn, "select auth.organization(), auth.organization_id()::text") == (organization, organization_id)


def test_header_is_never_read(jwt_session):
    for jti, header in enumerate((b64url('{"alg":"none"}'), "not base64!", ""), start=1):
        jwt_session.init(jwt_session.raw_token(header, b64url(json.dumps({"sub": header, "jti": jti}))))
        assert jwt_session.value("select auth.user_id()") == header


# --- Errors: message, SQLSTATE and DETAIL as the extension raises them ------------------------------

@pytest.mark.parametrize("jwk", [
    "not json",
    '"a string"',
    '{"kty":"EC","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}',
    '{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}',
    '{"kty":"OKP","crv":"Ed25519"}',
    '{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR"}',
    '{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="}',
    '{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp"}',  # non-zero trailing bits
    '{"kty":"OKP","crv":"Ed25519","x":32}',
    "",
])
def test_jwk_that_is_not_an_ed25519_public_key(cluster, db, jwk):
    options = "-c pg_session_jwt.jwk=" + jwk.replace("\\", "\\\\").replace(" ", "\\ ")
    with psycopg.connect(cluster.conninfo(user="authenticated", dbname=db, options=options), autocommit=True) as conn:
        error = fail(conn, "select auth.init()")
        assert_error(error, "pg_session_jwt.jwk requires an ES256 JWK", "42804")
        assert error.diag.message_detail
        # No token yet: the JWK is not even looked at, as in the extension.
        assert row(conn, "select auth.session()::text, auth.user_id()") == ("null", None)


def test_extra_jwk_members_are_ignored(cluster, db):
    options = session_jwt.startup_options()[:-1] + ',"kid":"k1","use":"sig","alg":"EdDSA"}'
    session = JwtSession(cluster, db, options=options)
    session.login({"sub": "u"})
    assert session.value("select auth.user_id()") == "u"
    session.close()


def test_token_shape_errors(jwt_session):
    for token in ("", "no-dots", "one.dot"):
        assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [token]), "invalid JWT encoding", "42804")
    body, signature = jwt_session.token({"sub": "u"}).rsplit(".", 1)
    # not unpadded base64url, or longer than an HMAC-SHA256 (the extension's buffer fits an Ed25519 signature)
    for bad in (signature + "=", signature[:-1] + "+", signature[:-2], signature + "AAAA"):
        error = fail(jwt_session, session_jwt.INIT_QUERY, [f"{body}.{bad}"])
        assert_error(error, "invalid JWT signature encoding", "42804")
    for bad in (signature[:-1] + ("B" if signature[-1] == "A" else "A"), signature[:-1], signature[:-4], ""):
        assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [f"{body}.{bad}"]), "invalid JWT signature", "23514")


def test_payload_decoding_errors(jwt_session):
    header = b64url('{"alg":"HS256"}')
    for payload in ("a+b", "abcde", "x=="):
        error = fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.raw_token(header, payload)])
        assert_error(error, "could not decode JWT component", "42804")
    for payload in (b64url("not json"), b64url(b"\xff\xfe"), b64url("[1]"), b64url('"s"'), b64url("")):
        error = fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.raw_token(header, payload)])
        assert_error(error, "could not parse JWT component", "42804")
        assert error.diag.message_detail


@pytest.mark.parametrize("payload", ['{"sub":"u"}', '{"jti":"7"}', '{"jti":1.5}', '{"jti":2.0}', '{"jti":null}',
                                     '{"jti":9223372036854775808}', '{"jti":[1]}'])
def test_jti_must_be_an_i64(jwt_session, payload):
    error = fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.raw_token("h", b64url(payload))])
    assert_error(error, "JWT payload must contain a valid 'jti' (JWT ID)", "42804")


def test_jti_must_increase(jwt_session):
    first, second = jwt_session.token({"sub": "a"}), jwt_session.token({"sub": "b"})
    jwt_session.init(second)
    assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [first]),
                 "Token ID must be strictly monotonically increasing.", "23514")
    for jti in (0, -5, 2):
        token = jwt_session.raw_token("h", b64url(json.dumps({"sub": "c", "jti": jti})))
        assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [token]),
                     "Token ID must be strictly monotonically increasing.", "23514")
    assert jwt_session.value("select auth.user_id()") == "b"
    jwt_session.init(jwt_session.raw_token("h", b64url('{"sub":"d","jti":9223372036854775807}')))
    assert jwt_session.value("select auth.user_id()") == "d"


@pytest.mark.parametrize("claim, name", [("nbf", "'nbf' (Not Before)"), ("exp", "'exp' (Expiration)")])
@pytest.mark.parametrize("value", ["1700000000", 1.5, None, 1e30])
def test_time_claims_must_be_integers(jwt_session, claim, name, value):
    error = fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.token({claim: value})])
    assert_error(error, f"{name} must be an integer representing seconds since unix epoch", "42804")


def test_leeway_is_60_seconds_from_transaction_start(jwt_session):
    conn = jwt_session.conn
    with conn.transaction(force_rollback=True):
        start = float(jwt_session.value("select extract(epoch from now())"))
        conn.execute("select pg_sleep(1.1)")  # the clock moves on; now() does not
        jwt_session.init(jwt_session.token({"sub": "a", "exp": math.ceil(start) - 60}))
        jwt_session.init(jwt_session.token({"sub": "b", "nbf": math.floor(start) + 60}))
        jwt_session.init(jwt_session.token({"sub": "c", "nbf": math.floor(start) + 60, "exp": math.ceil(start) - 60}))
        assert jwt_session.value("select auth.user_id()") == "c"
        conn.execute("savepoint s")
        late = math.ceil(start) - 61
        assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.token({"exp": late})]),
                     "Token used after it has expired", "23514", f"exp={late}")
        conn.execute("rollback to savepoint s")
        early = math.floor(start) + 61
        assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.token({"nbf": early})]),
                     "Token used before it is ready", "23514", f"nbf={early}")


# --- State: the cache, jti bookkeeping and the session-level SET ------------------------------------

def test_cache_hit_skips_every_check(jwt_session):
    """Same token string as the last validated one: its payload, with no jti, exp or nbf re-check."""
    if time.time() % 1 > 0.5:  # leave room between "valid at init" and "expired" within one second
        time.sleep(1.01 - time.time() % 1)
    exp = math.ceil(time.time()) - 60
    token = jwt_session.token({"sub": "a", "exp": exp})
    jwt_session.init(token)
    time.sleep(exp + 60 - time.time() + 0.2)  # now the token is past exp + leeway
    assert jwt_session.value("select auth.user_id()") == "a"
    jwt_session.init(token)  # same token again: cached, so no jti or exp error
    jwt_session.conn.execute("reset pg_session_jwt.jwt")
    jwt_session.conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(token)))
    assert jwt_session.value("select auth.user_id()") == "a"
    # a new token with the same claims is checked in full
    error = fail(jwt_session, session_jwt.INIT_QUERY, [jwt_session.token({"sub": "a", "exp": exp})])
    assert_error(error, "Token used after it has expired", "23514", f"exp={exp}")


def test_a_token_set_directly_is_validated_on_first_read(jwt_session):
    first, second = jwt_session.token({"sub": "a"}), jwt_session.token({"sub": "b"})
    jwt_session.conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(second)))
    assert jwt_session.value("select auth.user_id()") == "b"
    # reading it recorded its jti, so the older token is now a replay
    assert_error(fail(jwt_session, session_jwt.INIT_QUERY, [first]),
                 "Token ID must be strictly monotonically increasing.", "23514")


def test_jwt_session_init_is_a_session_level_set(jwt_session):
    conn = jwt_session.conn
    first = jwt_session.login({"sub": "a"})
    with conn.transaction():
        second = jwt_session.login({"sub": "b"})
    assert jwt_session.value("select current_setting('pg_session_jwt.jwt')") == second
    assert jwt_session.value("select auth.user_id()") == "b"
    with conn.transaction(force_rollback=True):
        jwt_session.login({"sub": "c"})
        assert jwt_session.value("select auth.user_id()") == "c"
    assert jwt_session.value("select current_setting('pg_session_jwt.jwt')") == second
    assert first != second


def test_savepoints_roll_back_the_tokens_they_accepted(jwt_session):
    """A token accepted in a rolled-back savepoint is forgotten with the SET that named it; a released one's
    belongs to the enclosing transaction."""
    conn = jwt_session.conn
    jwt_session.login({"sub": "a"})
    with conn.transaction():
        conn.execute("savepoint s")
        jwt_session.login({"sub": "b"})
        conn.execute("rollback to savepoint s")
        assert jwt_session.value("select auth.user_id()") == "a"
        conn.execute("savepoint t")
        jwt_session.login({"sub": "c"})
        conn.execute("release savepoint t")
    assert jwt_session.value("select auth.user_id()") == "c"
    with conn.transaction():
        conn.execute("savepoint outer_sp")
        jwt_session.login({"sub": "d"})
        conn.execute("savepoint inner_sp")
        jwt_session.login({"sub": "e"})
        conn.execute("release savepoint inner_sp")
        assert jwt_session.value("select auth.user_id()") == "e"
        conn.execute("rollback to savepoint outer_sp")
        assert jwt_session.value("select auth.user_id()") == "c"
    assert jwt_session.value("select auth.user_id()") == "c"
    jwt_session.login({"sub": "f"})
    assert jwt_session.value("select auth.user_id()") == "f"


def test_init_twice_and_reset_all(jwt_session):
    jwt_session.conn.execute("select auth.init(); select auth.init()")
    jwt_session.login({"sub": "a"})
    jwt_session.conn.execute("reset all")
    # RESET ALL clears the token (a custom GUC resets to '', which counts as no token) and keeps the JWK
    assert row(jwt_session.conn) == (None, None, None, None, None, None)
    assert jwt_session.value("select current_setting('pg_session_jwt.jwk')") == jwt_session.options.split("=", 1)[1]
    jwt_session.login({"sub": "b"})
    assert jwt_session.value("select auth.user_id()") == "b"


def test_anonymous_role_works_the_same(cluster, db):
    session = JwtSession(cluster, db, user="anonymous")
    session.login({"sub": "anon"})
    assert session.value("select auth.user_id()") == "anon"
    session.close()


def force_parallel(conn, query: str) -> None:
    """Make `query` run in a parallel worker, and check that it will."""
    force = "debug_parallel_query" if conn.info.server_version >= 160000 else "force_parallel_mode"
    conn.execute(f"set max_parallel_workers_per_gather = 2; set {force} = on")
    plan = "\n".join(r[0] for r in conn.execute(f"explain (analyze, costs off) {query}"))
    assert "Workers Launched: 1" in plan


def test_parallel_worker_answers_for_its_leader(jwt_session):
    """A worker's pid is not the leader's: it reads the leader's state."""
    jwt_session.login({"sub": "a"})
    query = "select auth.user_id(), auth.session()"
    force_parallel(jwt_session.conn, query)
    assert row(jwt_session.conn, query) == ("a", {"sub": "a", "jti": 1})


def test_parallel_worker_in_the_fallback(owner):
    owner.execute("""set request.jwt.claims = '{"sub":"a"}'""")
    query = "select auth.user_id(), auth.session()"
    if owner.info.server_version < 160000:  # no pg_input_is_valid: parsing needs a subtransaction
        owner.execute("set max_parallel_workers_per_gather = 2; set force_parallel_mode = on")
        assert "cannot start subtransactions" in str(fail(owner, query))
        return
    force_parallel(owner, query)
    assert row(owner, query) == ("a", {"sub": "a"})


def test_secret_file_round_trip(tmp_path):
    secret = session_jwt.new_secret()
    session_jwt.write_secret(tmp_path, secret)
    path = tmp_path / session_jwt.SECRET_FILENAME
    assert (path.stat().st_mode & 0o777, len(secret), session_jwt.read_secret(tmp_path)) == (0o600, 32, secret)
    assert path.read_text() == secret.hex() + "\n"


@pytest.mark.parametrize("content", [None, "", "not hex", "ab" * 31])
def test_missing_or_malformed_secret_is_a_clear_error(cluster, db, content):
    path = cluster.data_dir / session_jwt.SECRET_FILENAME
    hidden = path.with_name(path.name + ".hidden")
    saved = path.read_bytes()
    try:
        if content is None:
            path.rename(hidden)
        else:
            path.write_text(content)  # in place, so the file keeps its owner and mode
        with pytest.raises(psycopg.Error) as caught:
            JwtSession(cluster, db)
        assert caught.value.sqlstate == "F0000"
        assert caught.value.diag.message_primary == (
            "neon_local_session.key in the data directory must hold 32 random bytes as hex")
    finally:
        if hidden.exists():
            hidden.rename(path)
        else:
            path.write_bytes(saved)


# --- Packaging: versions, attributes, ownership -----------------------------------------------------

# name: (return type, volatility, strict, parallel) as the extension declares them, except that the
# readers are not STRICT: that would keep the planner from inlining them (no difference otherwise,
# for functions without arguments).
FUNCTIONS = {
    "init": ("void", "v", True, "u"),
    "jwt_session_init": ("void", "v", True, "u"),
    "session": ("jsonb", "s", False, "s"),
    "user_id": ("text", "s", False, "s"),
    "uid": ("uuid", "s", False, "s"),
    "jwt": ("jsonb", "s", False, "s"),
    "organization": ("jsonb", "s", False, "s"),
    "organization_id": ("uuid", "s", False, "s"),
}
VERSION_FUNCTIONS = {
    "0.3.1": ["init", "jwt_session_init", "session", "user_id"],
    "0.4.0": ["init", "jwt_session_init", "session", "user_id", "uid", "jwt"],
    "0.5.0": list(FUNCTIONS),
}


def assert_version(conn, version: str) -> None:
    assert conn.execute("select extversion from pg_extension where extname = 'pg_session_jwt'").fetchone() == (version,)
    rows = conn.execute("""
        select p.proname, p.prorettype::regtype::text, p.provolatile, p.proisstrict, p.proparallel,
               pg_get_function_identity_arguments(p.oid)
        from pg_proc p where p.pronamespace = 'auth'::regnamespace""").fetchall()
    assert {name: tuple(attributes) for name, *attributes, _ in rows} == {name: FUNCTIONS[name] for name in VERSION_FUNCTIONS[version]}
    assert {name: args for name, *_, args in rows if args} == {"jwt_session_init": "jwt text"}


def assert_versions_update_and_downgrade(cluster, build: str) -> None:
    with scratch_database(cluster, "session_jwt_versions", version=None) as name:
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_session_jwt")  # default_version: what Neon's docs describe
            assert_version(conn, "0.4.0")
            for version in ("0.5.0", "0.4.0", "0.3.1", "0.4.0", "0.5.0"):
                conn.execute(sql.SQL("ALTER EXTENSION pg_session_jwt UPDATE TO {}").format(sql.Literal(version)))
                assert_version(conn, version)
            for version in ("0.3.1", "0.4.0", "0.5.0"):
                conn.execute("DROP EXTENSION pg_session_jwt")
                conn.execute(sql.SQL("CREATE EXTENSION pg_session_jwt VERSION {}").format(sql.Literal(version)))
                assert_version(conn, version)
                assert build_of(conn) == build


def test_versions_update_and_downgrade(cluster):
    assert_versions_update_and_downgrade(cluster, next(iter(BUILDS)))  # the C build where the engine can have it


@pytest.fixture(scope="module")
async def pg15(tmp_path_factory):
    """Debian's PostgreSQL 15, a server neon-local's module is not built for."""
    root = tmp_path_factory.mktemp("session-jwt-pg15")
    settings = Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, pg_bin=DEBIAN_PG15)
    pg = await start_cluster(settings, root / "data")
    yield pg
    await pg.stop()


def test_a_server_without_the_module_gets_the_sql_build_at_every_version(pg15):
    assert not contrib.session_jwt_module_built(pg15.binaries.major)
    assert_versions_update_and_downgrade(pg15, "sql")


def test_installed_by_a_non_superuser_and_owned_by_the_superuser(cluster, db):
    with psycopg.connect(cluster.conninfo(dbname=db), autocommit=True) as conn:
        assert row(conn, """select r.rolname, r.rolsuper from pg_extension e join pg_roles r on r.oid = e.extowner
                            where e.extname = 'pg_session_jwt'""") == (OWNER, False)
        owners = conn.execute("""select distinct pg_get_userbyid(p.proowner) from pg_proc p
                                 where p.pronamespace in ('auth'::regnamespace, '_pg_session_jwt'::regnamespace)""").fetchall()
        assert owners == [("cloud_admin",)]
        relocatable, superuser, trusted = row(conn, """select relocatable, superuser, trusted from pg_available_extension_versions
                                                        where name = 'pg_session_jwt' and version = '0.5.0'""")
        assert (relocatable, superuser, trusted) == (False, True, True)
        # The extension grants nothing: auth holds only the USAGE scratch_database gave the JWT roles.
        grantees = row(conn, """select array_agg(distinct a.grantee::regrole::text)
                                from pg_namespace n, aclexplode(n.nspacl) a where n.nspname = 'auth'""")[0]
        assert grantees == ["anonymous", "authenticated", "cloud_admin"]
        # The private schema's name is usable by all (the inlined readers run as their caller), but of
        # what it holds only the readers' slow ways may be executed by others, and the state table by nobody.
        if build_of(conn) == "c":  # its state is in backend memory: the private schema is empty, and nobody else's
            assert row(conn, "select nspacl from pg_namespace where nspname = '_pg_session_jwt'") == (None,)
            assert row(conn, """select count(*) from pg_class where relnamespace = '_pg_session_jwt'::regnamespace""") == (0,)
            assert row(conn, """select count(*) from pg_proc where pronamespace = '_pg_session_jwt'::regnamespace""") == (0,)
            return
        assert row(conn, "select nspacl::text[] from pg_namespace where nspname = '_pg_session_jwt'") == (
            ["cloud_admin=UC/cloud_admin", "=U/cloud_admin"],)
        public = conn.execute("""select p.proname from pg_proc p where p.pronamespace = '_pg_session_jwt'::regnamespace
                                 and has_function_privilege('authenticated', p.oid, 'execute') order by 1""").fetchall()
        assert [name for name, in public] == ["claims", "organization", "organization_id", "uid", "user_id"]
        assert all(conn.execute("""select p.prosecdef from pg_proc p where p.pronamespace = '_pg_session_jwt'::regnamespace
                                   and has_function_privilege('authenticated', p.oid, 'execute')""").fetchall())
        assert row(conn, "select relpersistence, relacl from pg_class where oid = '_pg_session_jwt.backend'::regclass") == ("u", None)


def test_an_auth_schema_that_is_not_the_extensions_blocks_it(cluster):
    with scratch_database(cluster, "session_jwt_planted", version=None) as name:
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA auth")
            error = fail(conn, "CREATE EXTENSION pg_session_jwt")
            assert "is not a member of extension" in error.diag.message_primary


# --- Cheaper paths that must answer exactly as the plain ones ---------------------------------------

def test_parallel_worker_without_a_remembered_identity(jwt_session):
    """After RESET ALL the leader has no remembered identity; a worker then asks the statistics for its leader."""
    token = jwt_session.login({"sub": "a"})
    jwt_session.conn.execute("reset all")
    jwt_session.conn.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(token)))
    query = "select auth.user_id(), auth.session()"
    force_parallel(jwt_session.conn, query)
    assert row(jwt_session.conn, query) == ("a", {"sub": "a", "jti": 1})


def test_reads_after_reset_all_and_relogin(jwt_session):
    for n, statement in enumerate(["reset all", "discard all", "discard sequences", "select 1"], start=1):
        jwt_session.login({"sub": f"u{n}"})
        assert row(jwt_session.conn, "select auth.user_id(), auth.user_id()") == (f"u{n}", f"u{n}")
        jwt_session.conn.execute(statement)


@pytest.mark.parametrize("db", ["sql"], indirect=True)
def test_hmac_pad_matches_rfc_2104(cluster, db):
    """The bit-string XOR gives the same key blocks as a byte-by-byte one."""
    with psycopg.connect(cluster.conninfo(dbname=db), autocommit=True) as admin:
        for key in (b"", b"\x00", bytes(range(32)), bytes(range(200, 256)) + bytes(range(8)), bytes(range(64)), bytes(range(70))):
            for fill in (0x36, 0x5C):
                expected = bytes((key[i] if i < len(key) else 0) ^ fill for i in range(64))
                assert admin.execute("select _pg_session_jwt.hmac_pad(%s, %s)", [key, fill]).fetchone()[0] == expected


@pytest.mark.parametrize("payload", [
    b"{}", b'{"jti":"x"}', b'{"a":1,"jti":5,"b":[1,2,{"c":"\\u00e9"}]}', '{"ü":"ß","n":1.5e300,"x":null}'.encode(),
    b'{"a":{"jti":1}}', b'{"z":0,"jti":1,"y":2}', b'{"s":"a\\"jti\\":1"}',
])
def test_token_payload_is_the_claims_reserialized(jwt_session, payload):
    for jti in (1, 2):
        segment = jwt_session.signer.token_for(payload).split(".")[1]
        claims = json.loads(payload) | {"jti": jti}
        expected = json.dumps(claims, separators=(",", ":"), ensure_ascii=False)
        assert base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode() == expected
