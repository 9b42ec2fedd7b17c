"""Postgres over TCP with real clients: psql, psycopg, asyncpg and node-postgres, JWT roles and password roles."""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg
import psycopg
import pytest

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.scram import ScramVerifier
from neon_local.proxy import tls
from neon_local.proxy.session import INSECURE
from neon_local.wire import messages as m
from proxy_support import RawClient, now, proxy, run_node, start_proxy, todos, wait_until_running  # noqa: F401 (fixtures)


async def fetch(url: str, sql: str, password: str | None = None):
    kwargs = {"password": password} if password is not None else {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, **kwargs) as conn:
        return await (await conn.execute(sql)).fetchall()


async def connect_error(url: str, password: str | None = None) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        await fetch(url, "select 1", password)
    return str(caught.value)


async def test_psycopg_jwt_each_user_sees_only_their_rows(proxy, todos):
    url = proxy.url("authenticated")
    alice = await fetch(url, "select task from todos order by id", proxy.token("user_alice"))
    bob = await fetch(url, "select task from todos order by id", proxy.token("user_bob"))
    assert alice == [("alice 1",), ("alice 2",)]
    assert bob == [("bob 1",)]


async def test_psycopg_jwt_session_is_initialised_like_the_http_path(proxy):
    token = proxy.token("user_carol", claims={"org_id": "org_x"})
    rows = await fetch(proxy.url("authenticated"), "select auth.user_id(), auth.session()->>'org_id', current_user", token)
    assert rows == [("user_carol", "org_x", "authenticated")]


async def test_anonymous_role_needs_a_token_too(proxy):
    assert await fetch(proxy.url("anonymous"), "select current_user", proxy.token("anon")) == [("anonymous",)]
    assert "Provided authentication token is not a valid JWT encoding" in await connect_error(proxy.url("anonymous"), "x")


async def test_wrong_expired_and_foreign_tokens_get_neons_messages(proxy, tmp_path):
    url = proxy.url("authenticated")
    foreign = Issuer(proxy.settings, KeyRing.load_or_create(tmp_path / "other-keys"), "http://elsewhere").mint(sub="mallory")
    assert "ERROR:  Provided authentication token is not a valid JWT encoding" in await connect_error(url, "not-a-jwt")
    assert "JWT token has expired (exp=" in await connect_error(url, proxy.token(expired=True))
    assert "jwk not found" in await connect_error(url, foreign)


@pytest.mark.parametrize("token, message, hint", [
    ("", "Provided authentication token is not a valid JWT encoding",
     "authenticated is a JWT role: put a JWT in the password field (e.g. `neon-local token alice`)."),
    ("expired", "JWT token has expired (exp=", "Get a fresh token, e.g. `neon-local token alice`."),
])
async def test_refusals_keep_neons_text_and_add_a_next_step(proxy, token, message, hint):
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(m.startup_message({"user": "authenticated", "database": "neondb"}))
        assert (await client.read_message()).type == b"R"
        await client.send(m.password_message(proxy.token(expired=True) if token == "expired" else token))
        reply = await client.read_message()
    finally:
        client.close()
    fields = {body[:1]: body[1:].decode() for body in reply.body.split(b"\0") if body}
    assert reply.type == b"E" and fields[b"C"] == "28000"
    assert fields[b"M"].startswith(message) and fields[b"H"] == hint


async def test_token_for_a_role_its_provider_does_not_list_is_refused(proxy):
    # neondb_owner is a password role: a JWT there is just a wrong password.
    message = await connect_error(proxy.url(proxy.settings.owner), proxy.token())
    assert f"password authentication failed for user '{proxy.settings.owner}'" in message


async def test_owner_scram_with_channel_binding(proxy):
    rows = await fetch(proxy.owner_url(channel_binding="require"), "select current_user")
    assert rows == [(proxy.settings.owner,)]


async def test_direct_tls_negotiation(proxy, todos):
    # libpq 17+: TLS from the first byte, no SSLRequest round trip.
    rows = await fetch(proxy.owner_url(sslnegotiation="direct", channel_binding="require"), "select count(*) from todos")
    assert rows == [(3,)]
    url = proxy.url("authenticated", sslmode="verify-full", sslnegotiation="direct", sslrootcert=proxy.ca)
    assert await fetch(url.replace("127.0.0.1", "localhost"), "select auth.user_id()", proxy.token("user_bob")) == [("user_bob",)]


async def test_owner_scram_without_tls_and_wrong_password(proxy):
    assert await fetch(proxy.owner_url(sslmode="disable"), "select 1") == [(1,)]
    message = await connect_error(proxy.url(proxy.settings.owner, "wrong"))
    assert f"password authentication failed for user '{proxy.settings.owner}'" in message
    assert "password authentication failed for user 'ghost'" in await connect_error(proxy.url("ghost", "x"))


async def test_verify_full_works_with_the_local_ca(proxy):
    rows = await fetch(proxy.owner_url(sslmode="verify-full", sslrootcert=proxy.ca).replace("127.0.0.1", "localhost"), "select 1")
    assert rows == [(1,)]


async def test_psql_with_jwt_password_and_sslmode_require(proxy, todos):
    result = await asyncio.to_thread(
        subprocess.run, ["psql", proxy.url("authenticated"), "-XAtc", "select count(*), min(task) from todos"],
        env={**os.environ, "PGPASSWORD": proxy.token("user_bob")}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1|bob 1"


async def test_psql_wrong_token_shows_neons_message(proxy):
    result = await asyncio.to_thread(
        subprocess.run, ["psql", proxy.url("authenticated", sslmode="verify-full", sslrootcert=proxy.ca), "-XAtc", "select 1"],
        env={**os.environ, "PGPASSWORD": proxy.token(expired=True)}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "JWT token has expired" in result.stderr


async def test_asyncpg_jwt_and_owner(proxy, todos):
    conn = await asyncpg.connect(proxy.url("authenticated"), password=proxy.token("user_alice"))
    try:
        assert await conn.fetchval("select count(*) from todos") == 2
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()
    owner = await asyncpg.connect(proxy.owner_url())
    try:
        assert await owner.fetchval("select count(*) from todos") == 3
    finally:
        await owner.close()


async def test_node_postgres_jwt_and_owner(proxy, todos):
    def url(user: str, password: str) -> str:
        return proxy.url(user, password).replace("127.0.0.1", "localhost")

    result = await run_node("pg_tcp.mjs", {
        "JWT_URL": url("authenticated", proxy.token("user_alice")), "BAD_URL": url("authenticated", proxy.token(expired=True)),
        "OWNER_URL": url(proxy.settings.owner, proxy.settings.owner_password), "CA": proxy.ca,
    })
    assert result == {"jwt": {"user": "user_alice", "rows": 2}, "owner": {"user": proxy.settings.owner, "rows": 3},
                      "bad": f"JWT token has expired (exp={result['bad_exp']})", "bad_exp": result["bad_exp"]}


async def test_parameter_status_forwarded_and_backend_key_is_ours(proxy):
    async with await psycopg.AsyncConnection.connect(proxy.url("authenticated"), password=proxy.token()) as conn:
        real_pid = (await (await conn.execute("select pg_backend_pid()")).fetchone())[0]
        settings = dict(await (await conn.execute(
            "select name, setting from pg_settings where name in ('server_version', 'server_encoding', 'client_encoding',"
            " 'integer_datetimes', 'standard_conforming_strings', 'is_superuser', 'session_authorization')")).fetchall())
        for name, value in settings.items():
            assert conn.info.parameter_status(name) == value, name
        assert conn.info.backend_pid != real_pid


async def test_startup_options_pass_safe_settings_and_drop_unknown_params(proxy):
    url = proxy.owner_url(options="endpoint%3Dep-foo%20-c%20statement_timeout%3D1234%20-cproxytest.option%3Dvalue")
    assert await fetch(url, "show statement_timeout") == [("1234ms",)]
    assert await fetch(url, "show proxytest.option") == [("value",)]


@pytest.mark.parametrize("option", ["-c pg_session_jwt.jwk={}", "-c request.jwt.claims={}", "-c role=cloud_admin",
                                    "-c session_authorization=cloud_admin"])
async def test_startup_options_that_forge_identity_are_refused(proxy, option):
    client = await RawClient.connect(proxy.port)
    await client.send(m.startup_message({"user": "authenticated", "database": "neondb", "options": option}))
    reply = await client.read_message()
    assert reply.type == b"E" and m.error_fields(reply.body)["C"] == "42501"
    assert await client.read_to_end() == b""


async def test_arbitrary_startup_params_are_dropped(proxy):
    client = await RawClient.connect(proxy.port)
    login = await client.login_jwt("authenticated", proxy.token(), IntervalStyle="iso_8601", search_path="evil")
    assert login[-1].type == b"Z"
    await client.send(m.query("select to_json('0 seconds'::interval)::text, current_setting('search_path')"))
    row = next(msg for msg in await client.read_until_ready() if msg.type == b"D")
    assert m.data_row(row.body) == [b'"00:00:00"', b'"$user", public']
    client.close()


async def test_cancel_with_our_key(proxy):
    async with await psycopg.AsyncConnection.connect(proxy.owner_url(), autocommit=True) as conn:
        query = asyncio.create_task(conn.execute("select pg_sleep(10)"))
        await wait_until_running(proxy, "select pg_sleep(10)")
        await conn.cancel_safe(timeout=5)
        with pytest.raises(psycopg.errors.QueryCanceled):
            await query
        assert await (await conn.execute("select 1")).fetchall() == [(1,)]


async def test_jwt_session_keeps_its_claims_after_the_token_expires(proxy):
    # Accepted within Neon's 30 s leeway, then past it while the session stays open (pg_session_jwt's rule).
    token = proxy.token("user_dave", lifetime=0, claims={"exp": now() - 24})
    async with await psycopg.AsyncConnection.connect(proxy.url("authenticated"), password=token, autocommit=True) as conn:
        await asyncio.sleep(7)
        assert await (await conn.execute("select auth.user_id()")).fetchall() == [("user_dave",)]
        assert "JWT token has expired" in await connect_error(proxy.url("authenticated"), token)


async def test_custom_jwt_role(settings, cluster, tmp_path):
    from neon_local.settings import BUILTIN_PROVIDER_ID, Provider
    custom = settings.with_overrides(roles=("app_reader",), providers=(
        Provider(BUILTIN_PROVIDER_ID, role_names=("authenticated", "anonymous", "app_reader"), provider_name="neon-local"),))
    async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=settings.database), autocommit=True) as conn:
        await conn.execute("drop role if exists app_reader; create role app_reader login; grant usage on schema auth to app_reader")
    started = await start_proxy(custom, cluster, tmp_path)
    try:
        rows = await fetch(started.url("app_reader"), "select current_user, auth.user_id()", started.token("user_erin"))
        assert rows == [("app_reader", "user_erin")]
    finally:
        await started.server.close()


async def test_scram_verifier_from_pg_authid_checks_passwords_like_postgres(proxy):
    verifier = ScramVerifier.parse(await proxy.server.context.control_plane.role_secret(proxy.settings.owner))
    assert verifier.check_password(proxy.settings.owner_password.encode())
    assert not verifier.check_password(b"wrong")
    assert await proxy.server.context.control_plane.role_secret("authenticated") is None


async def test_postgres_errors_at_connect_are_passed_on(proxy):
    message = await connect_error(proxy.owner_url().replace("/neondb?", "/nosuchdb?"))
    assert 'database "nosuchdb" does not exist' in message


async def test_newer_protocol_minor_is_negotiated_down(proxy):
    client = await RawClient.connect(proxy.port)
    await client.send(m.startup_message({"user": "authenticated", "database": "neondb", "_pq_.magic": "1"}, 3 << 16 | 2))
    assert await client.read_message() == m.Message(b"v", m.negotiate_protocol_version(0, ["_pq_.magic"])[5:])
    assert await client.read_message() == m.Message(b"R", b"\0\0\0\x03")
    client.close()


def test_tls_files_are_kept_and_the_server_certificate_renewed(tmp_path, monkeypatch):
    from cryptography import x509

    first = tls.ensure_tls(tmp_path)
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    assert tls.ensure_tls(tmp_path).server_cert.read_bytes() == server
    assert (first.ca_key.stat().st_mode & 0o777, first.server_key.stat().st_mode & 0o777) == (0o600, 0o600)
    names = x509.load_pem_x509_certificate(server).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["localhost", "127.0.0.1", "::1"]
    monkeypatch.setattr(tls, "SERVER_DAYS", 10)  # inside the renewal window from the start
    tls.ensure_tls(tmp_path / "short")
    short = (tmp_path / "short" / "server.crt").read_bytes()
    assert tls.ensure_tls(tmp_path / "short").server_cert.read_bytes() != short
    assert tls.ensure_tls(tmp_path).ca_cert.read_bytes() == ca


async def test_plain_tcp_on_loopback_works_but_says_neon_would_refuse(settings, cluster, tmp_path, caplog):
    own = await start_proxy(settings, cluster, tmp_path)
    try:
        for _ in range(2):
            assert await fetch(own.url("authenticated", sslmode="disable"), "select auth.user_id()", own.token("plain")) == [("plain",)]
    finally:
        await own.server.close()
    warnings = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert warnings == [f"a client connected over TCP without TLS; Neon refuses that ({INSECURE}), "
                        "neon-local allows it from this machine only. Use sslmode=require to match Neon."]
