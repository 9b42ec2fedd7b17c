"""`--upstream`: neon-local fronts a Postgres it did not start, here Debian's PostgreSQL 15 with password auth on TCP.

The upstream is initdb'd by the test as a user's own server would be (a superuser `postgres` with a
password, scram-sha-256 for every connection); neon-local creates the JWT roles there, installs the
pg_session_jwt stub as plain SQL, and serves /sql and TCP in front of it with the same RLS and JWT
behaviour as in front of its embedded Postgres.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import errors, sql

from neon_local.app import Emulator
from neon_local.postgres import session_jwt
from neon_local.postgres.cluster import RunAs
from neon_local.proxy import tls
from neon_local.settings import Settings, load_settings
from neon_local.testing.server import NeonLocal
from neon_local.testing.websocket import WebSocketBridge
from test_cli import neon_local
from test_reload import edit

PG15 = Path("/usr/lib/postgresql/15/bin")  # .ci/run installs postgresql-15
PASSWORD = "upstream secret"  # a space, to check the URL's quoting

SCHEMA = """
create table todos (id serial primary key, user_id text not null default auth.user_id(), task text not null);
alter table todos enable row level security;
create policy own_todos on todos to authenticated using (user_id = auth.user_id()) with check (user_id = auth.user_id());
insert into todos (user_id, task) values ('user_alice', 'alice''s task'), ('user_bob', 'bob''s task');
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with debian_postgres(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@contextlib.contextmanager
def debian_postgres(root: Path, database: str = "app"):
    """Debian's PostgreSQL 15 as "the user's existing Postgres": `database`, superuser postgres, and
    a role without rights (plain_user) for the refusal test."""
    run_as = RunAs()  # Postgres refuses to run as root: as `nobody` then, as neon-local does
    run_as.give(root)
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    run_as.give(pwfile)
    subprocess.run([*run_as.prefix(), str(PG15 / "initdb"), "-D", str(root / "pgdata"), "-U", "postgres",
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync"],
                   check=True, capture_output=True)
    port = free_port()
    # TLS only over TCP, as a team server would have it: a CA and a certificate for 127.0.0.1.
    (root / "pgdata" / "pg_hba.conf").write_text("local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    tls_files = tls.ensure_tls(root / "tls")
    for pem in (tls_files.server_cert, tls_files.server_key):
        pem.chmod(0o600)
        run_as.give(pem)
    run_as.give(tls_files.directory)
    with open(root / "postgres.log", "ab") as log:
        server = subprocess.Popen([*run_as.prefix(), str(PG15 / "postgres"), "-D", str(root / "pgdata"),
                                   "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                                   "-c", f"unix_socket_directories={root}", "-c", "fsync=off", "-c", "ssl=on",
                                   "-c", f"ssl_cert_file={tls_files.server_cert}", "-c", f"ssl_key_file={tls_files.server_key}"],
                                  stdout=log, stderr=log, start_new_session=True)
    admin = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": PASSWORD, "autocommit": True}
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(dbname="postgres", **admin) as conn:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
                conn.execute("create role plain_user login password 'plain'")
            break
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "postgres.log").read_text()) from None
            time.sleep(0.1)
    url = f"postgresql://postgres:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}/{database}"
    try:
        yield {"port": port, "admin": admin, "url": url, "ca": tls_files.ca_cert,
               "verified_url": f"{url}?sslmode=verify-full&sslrootcert={tls_files.ca_cert}"}
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
async def emulator(upstream, tmp_path_factory):
    root = tmp_path_factory.mktemp("fronting")
    settings = Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, upstream=upstream["verified_url"],
                        upstream_yes=True)
    emu = Emulator(settings, write_state=False)
    await emu.start()
    async with await psycopg.AsyncConnection.connect(emu.endpoints.owner_url, autocommit=True) as owner:
        await owner.execute(SCHEMA)  # through the proxy, as the owner: the URL's user
    yield emu
    await emu.stop()


async def post_sql(emulator, query: str, params=(), *, user: str | None = None, as_owner: bool = False) -> httpx.Response:
    e = emulator.endpoints
    if as_owner:
        headers = {"Neon-Connection-String": e.owner_url}
    else:
        headers = {"Neon-Connection-String": f"postgresql://authenticated@{e.host}/{e.database}",
                   "Authorization": f"Bearer {emulator.services.issuer.mint(user)}"}
    async with httpx.AsyncClient() as client:
        return await client.post(e.sql_url, json={"query": query, "params": list(params)}, headers=headers)


async def tcp_as(emulator, user: str) -> psycopg.AsyncConnection:
    e = emulator.endpoints
    return await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, user="authenticated", dbname=e.database,
                                                 password=emulator.services.issuer.mint(user), sslmode="require",
                                                 autocommit=True)


def upstream_query(upstream, query: str, dbname: str = "app"):
    with psycopg.connect(dbname=dbname, **upstream["admin"]) as conn:
        return conn.execute(query).fetchall()


async def test_the_upstream_got_the_roles_and_the_stub_as_plain_sql(emulator, upstream):
    roles = upstream_query(upstream, "select rolname, rolcanlogin, rolsuper, rolbypassrls from pg_roles"
                                     " where rolname in ('authenticated', 'anonymous') order by 1")
    assert roles == [("anonymous", True, False, False), ("authenticated", True, False, False)]
    # no extension (nothing was installed in the server's share directory), but the same functions
    assert upstream_query(upstream, "select count(*) from pg_extension where extname = 'pg_session_jwt'") == [(0,)]
    functions = upstream_query(upstream, "select proname from pg_proc where pronamespace = 'auth'::regnamespace order by 1")
    assert [f for (f,) in functions] == ["init", "jwt", "jwt_session_init", "session", "uid", "user_id"]
    assert emulator.state()["postgres"]["version"].startswith("15.")
    assert emulator.state()["postgres"]["upstream"] == upstream["url"].replace(f":{PASSWORD.replace(' ', '%20')}", "")


async def test_every_connection_to_the_upstream_is_encrypted_and_verified(emulator):
    """sslmode=verify-full: libpq's connections (pools, neon-local's own) and the proxy's raw ones alike."""
    query = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
    over_http = await post_sql(emulator, query, user="alice")
    assert over_http.json()["rows"] == [{"ssl": True}], over_http.text
    async with await tcp_as(emulator, "bob") as bob:
        assert (await (await bob.execute(query)).fetchone()) == (True,)
    e = emulator.endpoints
    async with await psycopg.AsyncConnection.connect(e.owner_url) as owner:
        assert (await (await owner.execute(query)).fetchone()) == (True,)


async def test_sql_over_http_as_owner_and_as_alice(emulator):
    owner = await post_sql(emulator, "select current_user, current_database()", as_owner=True)
    assert owner.status_code == 200, owner.text
    assert owner.json()["rows"] == [{"current_user": "postgres", "current_database": "app"}]
    alice = await post_sql(emulator, "select current_user, auth.user_id() as uid", user="alice")
    assert alice.status_code == 200, alice.text
    assert alice.json()["rows"] == [{"current_user": "authenticated", "uid": "user_alice"}]


async def test_rls_isolates_alice_and_bob_over_http_and_tcp(emulator):
    response = await post_sql(emulator, "insert into todos (task) values ($1) returning user_id", ["alice's second"], user="alice")
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"user_id": "user_alice"}]
    alice = await post_sql(emulator, "select user_id, task from todos order by id", user="alice")
    assert alice.json()["rows"] == [{"user_id": "user_alice", "task": "alice's task"},
                                    {"user_id": "user_alice", "task": "alice's second"}]
    async with await tcp_as(emulator, "bob") as bob:
        rows = await (await bob.execute("select user_id, task from todos")).fetchall()
        assert rows == [("user_bob", "bob's task")]
        with pytest.raises(errors.InsufficientPrivilege):  # WITH CHECK: bob cannot write a row as alice
            await bob.execute("insert into todos (user_id, task) values ('user_alice', 'forged')")
    everything = await post_sql(emulator, "select count(*)::int as n from todos where task <> 'forged'", as_owner=True)
    assert everything.json()["rows"] == [{"n": 3}]  # the owner (a superuser here) sees every row


async def test_tcp_with_a_jwt_password_and_a_wrong_one(emulator):
    async with await tcp_as(emulator, "alice") as alice:
        row = await (await alice.execute("select current_user, auth.user_id(), auth.session() ->> 'email'")).fetchone()
        assert row == ("authenticated", "user_alice", "alice@example.com")
    e = emulator.endpoints
    with pytest.raises(psycopg.OperationalError, match="password authentication failed for user 'postgres'"):
        await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, user=e.owner, password="wrong",
                                              dbname=e.database, sslmode="require")
    async with await psycopg.AsyncConnection.connect(e.owner_url, autocommit=True) as owner:  # SCRAM, passed through
        assert (await (await owner.execute("select current_user")).fetchone()) == ("postgres",)


async def test_websocket_as_alice_and_as_the_owner(emulator):
    e = emulator.endpoints
    bridge = WebSocketBridge(e.ws_url).start()  # psycopg over /v2, as @neondatabase/serverless connects
    try:
        async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=bridge.port, user="authenticated",
                                                         password=emulator.services.issuer.mint("alice"),
                                                         dbname=e.database, sslmode="disable") as alice:
            assert ("user_bob",) not in (await (await alice.execute("select user_id from todos")).fetchall())
            assert ("alice's task",) in (await (await alice.execute("select task from todos")).fetchall())
        async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=bridge.port, user=e.owner,
                                                         password=e.owner_password, dbname=e.database,
                                                         sslmode="disable") as owner:
            assert (await (await owner.execute("select count(*) from todos where user_id = 'user_bob'")).fetchone()) == (1,)
    finally:
        bridge.stop()


async def test_data_api_applies_rls_upstream(emulator):
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{emulator.endpoints.data_api_url}/todos?select=task",
                                    headers={"Authorization": f"Bearer {emulator.services.issuer.mint('bob')}"})
    assert response.status_code == 200, response.text
    assert response.json() == [{"task": "bob's task"}]


async def test_another_password_role_logs_in_upstream_with_what_its_client_proved(emulator, upstream):
    """plain_user's password is known only to its clients: over TCP the proxy logs in upstream with the SCRAM key
    the client proved (the password never reaches the proxy), over /sql with the password in the connection string."""
    e = emulator.endpoints
    async with await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, user="plain_user", password="plain",
                                                     dbname=e.database, sslmode="require") as conn:
        assert (await (await conn.execute("select current_user")).fetchone()) == ("plain_user",)
    async with httpx.AsyncClient() as client:
        response = await client.post(e.sql_url, json={"query": "select session_user", "params": []}, headers={
            "Neon-Connection-String": f"postgresql://plain_user:plain@{e.host}/{e.database}"})
    assert response.json()["rows"] == [{"session_user": "plain_user"}]


async def test_a_jwt_session_cannot_forge_its_identity(emulator):
    async with await tcp_as(emulator, "alice") as alice:
        for statement in ("""set request.jwt.claims = '{"sub":"mallory"}'""",
                          """select set_config('request.jwt.claims', '{"sub":"mallory"}', false)"""):
            await alice.execute(statement)
            assert (await (await alice.execute("select auth.user_id()")).fetchone()) == ("user_alice",)
        row = await (await alice.execute(session_jwt.BIND_QUERY)).fetchone()
        forged = f"eyJhbGciOiJIUzI1NiJ9.{session_jwt._b64url(json.dumps({'sub': 'mallory', 'jti': 10**6}).encode())}"
        forged += "." + session_jwt.SessionSigner(b"\0" * 32, int(row[0]), row[1]).sign(forged)
        await alice.execute(sql.SQL("set pg_session_jwt.jwt = {}").format(sql.Literal(forged)))
        with pytest.raises(errors.CheckViolation, match="invalid JWT signature"):
            await alice.execute("select auth.user_id()")
        for query, table in (("select * from _pg_session_jwt.instance_secret", "instance_secret"),
                             ("select * from _pg_session_jwt.backend", "backend")):
            with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for table {table}"):
                await alice.execute(query)
    e = emulator.endpoints
    with pytest.raises(psycopg.OperationalError):  # the proxy refuses the extension's settings at startup
        await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, user="authenticated", dbname=e.database,
                                              password=emulator.services.issuer.mint("alice"), sslmode="require",
                                              options="-c request.jwt.claims={}")


async def test_a_restart_changes_nothing_on_the_upstream(emulator, upstream, tmp_path, caplog):
    settings = Settings(project_dir=tmp_path, data_dir=emulator.settings.data_dir, http_port=0, pg_port=0,
                        upstream=upstream["url"])
    second = Emulator(settings, write_state=False)
    with caplog.at_level("INFO"):
        await second.start()
    try:
        assert "is ready for neon-local (nothing to change)" in caplog.text
        assert second.cluster.session_secret == emulator.cluster.session_secret
        response = await post_sql(second, "select auth.user_id() as uid", user="bob")
        assert response.json()["rows"] == [{"uid": "user_bob"}]
    finally:
        await second.stop()


async def test_a_custom_role_added_while_running_is_made_upstream(upstream, emulator, tmp_path):
    """Live reload: [roles.editor] appears in neon_local.toml; the role is created upstream, with a password for the proxy."""
    config = tmp_path / "neon_local.toml"
    base = f'http_port = 0\npg_port = 0\nupstream = "{upstream["url"]}"\nupstream_yes = true\n'
    config.write_text(base)
    running = Emulator(load_settings(config_file=config, env={}), write_state=False)
    await running.start()
    try:
        await edit(running, base + '\n[roles.editor]\ninherits = ["authenticated"]\n')
        assert running.reloader.error is None
        e = running.endpoints
        async with httpx.AsyncClient() as client:
            response = await client.post(e.sql_url, json={"query": "select current_user, user_id from todos", "params": []},
                                         headers={"Neon-Connection-String": e.database_url("editor"),
                                                  "Authorization": f"Bearer {running.services.issuer.mint('bob')}"})
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == [{"current_user": "editor", "user_id": "user_bob"}]  # authenticated's policy
    finally:
        await running.stop()


def test_the_pytest_plugin_runs_its_own_postgres_even_when_the_project_fronts_one(upstream, tmp_path):
    (tmp_path / "neon_local.toml").write_text(f'upstream = "{upstream["url"]}"\n')
    server = NeonLocal.open(tmp_path, None, reuse=False)  # what the plugin does for a session
    try:
        assert (server.endpoints.database, server.settings.upstream) == ("neondb", "")
        with psycopg.connect(server.superuser_conninfo()) as conn:
            assert conn.execute("select current_user").fetchone() == ("cloud_admin",)
    finally:
        server.stop()


def up(url: str, cwd: Path) -> subprocess.CompletedProcess:
    return neon_local("up", "--upstream", url, "--http-port", "0", "--pg-port", "0", cwd=cwd)


def test_changes_to_the_upstream_wait_for_consent(upstream, tmp_path):
    with psycopg.connect(dbname="postgres", **upstream["admin"]) as conn:
        conn.execute("create database fresh")
    url = upstream["url"].replace("/app", "/fresh")
    stub_schemas = "select count(*) from pg_namespace where nspname in ('auth', '_pg_session_jwt')"
    refused = up(url, tmp_path)  # no terminal to ask in: the list, and the flag that allows it
    assert refused.returncode != 0
    assert "needs these changes before neon-local can front it:" in refused.stderr
    assert "  - database fresh: install neon-local's pg_session_jwt 0.4.0 stand-in as plain SQL" in refused.stderr
    assert "Nothing was changed. Run again with --upstream-yes" in refused.stderr
    assert upstream_query(upstream, stub_schemas, dbname="fresh") == [(0,)]
    # In a terminal `up` asks; "n" changes nothing either (script(1) gives it one).
    command = " ".join(["exec", sys.executable, "-m", "neon_local", "up", "--upstream", shlex.quote(url), "--http-port", "0", "--pg-port", "0"])
    asked = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=tmp_path, input="n\n", capture_output=True,
                           text=True, timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")})
    assert asked.returncode != 0
    assert "Make these changes? [y/N]" in asked.stdout and "  - database fresh: install" in asked.stdout
    assert upstream_query(upstream, stub_schemas, dbname="fresh") == [(0,)]
    started = neon_local("up", "-d", "--upstream", url, "--upstream-yes", "--http-port", "0", "--pg-port", "0", cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        assert "(PostgreSQL 15." in started.stdout and "from upstream postgresql://postgres@127.0.0.1:" in started.stdout
        log = (tmp_path / ".neon-local" / "neon-local.log").read_text()
        assert "made this change: database fresh: install neon-local's pg_session_jwt" in log
    finally:
        neon_local("down", cwd=tmp_path)
    assert upstream_query(upstream, stub_schemas, dbname="fresh") == [(2,)]


def test_yes_in_the_terminal_makes_the_changes_and_serves_on_the_ports_asked_for(upstream, tmp_path):
    with psycopg.connect(dbname="postgres", **upstream["admin"]) as conn:
        conn.execute("create database asked")
    http_port, pg_port = free_port(), free_port()
    # exec: without it /bin/sh (what `script` runs when SHELL is unset, as in CI) dies of the Ctrl-C itself
    command = " ".join(["exec", sys.executable, "-m", "neon_local", "up", "--upstream", shlex.quote(upstream["url"].replace("/app", "/asked")),
                        "--http-port", str(http_port), "--pg-port", str(pg_port)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    with subprocess.Popen(["script", "-qec", command, "/dev/null"], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as up_process:
        out = b""
        while b"Make these changes? [y/N]" not in out:
            out += up_process.stdout.read1(4096)
        up_process.stdin.write(b"y\n")
        up_process.stdin.flush()
        while b"Press Ctrl-C to stop." not in out and b"error:" not in out:
            chunk = up_process.stdout.read1(4096)
            assert chunk, out.decode(errors="replace")
            out += chunk
        assert b"Press Ctrl-C to stop." in out, out.decode(errors="replace")
        response = httpx.post(f"http://127.0.0.1:{http_port}/sql", json={"query": "select auth.user_id() as uid", "params": []},
                              headers={"Neon-Connection-String": "postgresql://authenticated@127.0.0.1/asked",
                                       "Authorization": f"Bearer {token_from_the_cli(tmp_path)}"})
        assert response.json()["rows"] == [{"uid": "user_alice"}]
        up_process.stdin.write(b"\x03")
        up_process.stdin.flush()
        assert up_process.wait(60) == 0


def token_from_the_cli(project: Path) -> str:
    result = neon_local("token", "alice", cwd=project)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_unreachable_upstream_is_a_clear_error(tmp_path):
    result = up(f"postgresql://postgres:x@127.0.0.1:{free_port()}/app", tmp_path)
    assert result.returncode != 0
    assert "cannot connect to the upstream Postgres postgresql://postgres@127.0.0.1:" in result.stderr
    assert "Is it running, and listening on that host and port" in result.stderr


def test_a_user_without_rights_is_refused_before_anything_changes(upstream, tmp_path):
    result = up(f"postgresql://plain_user:plain@127.0.0.1:{upstream['port']}/app", tmp_path)
    assert result.returncode != 0
    assert "plain_user is not a superuser on the upstream" in result.stderr
    assert 'ALTER ROLE "plain_user" SUPERUSER;' in result.stderr


def test_a_certificate_from_another_ca_is_refused(upstream, tmp_path):
    other_ca = tls.ensure_tls(tmp_path / "other-ca").ca_cert
    result = up(upstream["verified_url"].replace(str(upstream["ca"]), str(other_ca)), tmp_path)
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr and "Check sslmode and sslrootcert in the URL" in result.stderr


def test_a_wrong_password_and_a_missing_database_say_what_to_do(upstream, tmp_path):
    result = up(f"postgresql://postgres:wrong@127.0.0.1:{upstream['port']}/app", tmp_path)
    assert "password authentication failed" in result.stderr and "Check the user and password in the URL." in result.stderr
    result = up(f"postgresql://postgres:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{upstream['port']}/nosuchdb", tmp_path)
    assert 'database "nosuchdb" does not exist' in result.stderr and "Create the database first" in result.stderr



async def test_a_missing_database_is_postgres_own_error_on_every_path(emulator):
    e = emulator.endpoints
    alice = emulator.services.issuer.mint("alice")
    async with httpx.AsyncClient() as client:
        for connection_string, headers in ((f"postgresql://authenticated@{e.host}/nosuch", {"Authorization": f"Bearer {alice}"}),
                                           (e.owner_url.replace(f"/{e.database}?", "/nosuch?"), {})):
            response = await client.post(e.sql_url, json={"query": "select 1", "params": []},
                                         headers={"Neon-Connection-String": connection_string, **headers})
            assert (response.status_code, response.json()["code"]) == (400, "3D000"), response.text
    for user, password in (("authenticated", alice), (e.owner, e.owner_password)):
        with pytest.raises(psycopg.OperationalError, match='database "nosuch" does not exist'):
            await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, user=user, password=password,
                                                  dbname="nosuch", sslmode="require")
