"""The query allow-list on every path: learn from a run, enforce, and what a hostile client gets.

Real Postgres, real proxy and /sql handler, real clients (psycopg, asyncpg, psql); the allow-list
file is edited as a person or the CLI would and reloaded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess

import asyncpg
import psycopg
import pytest
from aiohttp import web

from http_support import serve_sql_http
from neon_local.limits import ClientLimits
from neon_local.limits.store import Entry, read_list, write_list
from neon_local.serverless.websocket import WebSocketAdapter
from neon_local.testing.websocket import WebSocketBridge
from neon_local.wire import messages as m
from proxy_support import RawClient, start_proxy

ALLOWED = "select body from lim_items where id = 1"
CHANGED = "select body, id from lim_items where id = 1"


def refusal_text(fingerprint: str) -> str:
    return (f'statement not in the allow-list for role "authenticated" (fingerprint {fingerprint}); '
            f"approve it with: neon-local allowlist approve {fingerprint}")


def fingerprint(text: str) -> str:
    from pglast.parser import fingerprint as fp
    return fp(text)


@pytest.fixture(scope="module")
async def guarded(settings, cluster, tmp_path_factory):
    """/sql, TCP and WebSocket sharing one allow-list file (starting in learn mode)."""
    directory = tmp_path_factory.mktemp("allowlist")
    guarded_settings = settings.with_overrides(allowlist="learn", allowlist_file=directory / "allow.toml")
    admin = await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=settings.database), autocommit=True)
    await admin.execute("create table if not exists lim_items (id int primary key, body text);"
                        "grant select, insert, update, delete on lim_items to authenticated;"
                        "insert into lim_items values (1, 'one'), (2, 'two') on conflict do nothing")
    await admin.close()
    proxy = await start_proxy(guarded_settings, cluster, directory / "proxy")
    adapter = WebSocketAdapter(proxy.server)
    app = web.Application()
    app.router.add_get("/{tail:.*}", adapter.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    bridge = WebSocketBridge(f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v2").start()
    async with serve_sql_http(guarded_settings, cluster, directory / "http") as http:
        yield Guarded(http, proxy, bridge, ClientLimits.of(guarded_settings).allowlist)
    bridge.stop()
    await runner.cleanup()
    await proxy.server.close()
    await proxy.server.context.control_plane.close()


class Guarded:
    def __init__(self, http, proxy, bridge, allowlist) -> None:
        self.http, self.proxy, self.bridge, self.allowlist = http, proxy, bridge, allowlist

    def set_mode(self, mode: str) -> None:
        self.allowlist.flush()
        content = read_list(self.allowlist.path)
        content.mode = mode
        write_list(self.allowlist.path, content)
        self.allowlist.load()

    async def sql(self, query, params=None):
        body = query if isinstance(query, dict) else {"query": query, "params": params or []}
        return await self.http.post(body, conn=self.http.jwt_conn_string(), token=self.http.token())

    def tcp_url(self) -> str:
        return self.proxy.url("authenticated", self.proxy.token())

    def ws_url(self) -> str:
        return f"postgresql://authenticated:{self.proxy.token()}@127.0.0.1:{self.bridge.port}/neondb?sslmode=disable"


@pytest.fixture
async def enforcing(guarded):
    """Learn ALLOWED (and an insert) on every path, then enforce."""
    guarded.set_mode("learn")
    assert (await guarded.sql(ALLOWED)).status_code == 200
    assert (await guarded.sql("insert into lim_items values ($1, $2) on conflict do nothing", [3, "x"])).status_code == 200
    for url in (guarded.tcp_url(), guarded.ws_url()):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(ALLOWED)  # psycopg without parameters: a simple Query
            await conn.execute("select body from lim_items where id = %s", [1])  # extended: Parse
    guarded.set_mode("enforce")
    yield guarded
    guarded.set_mode("learn")


async def test_learn_records_each_statement_with_role_and_path(enforcing):
    entries = read_list(enforcing.allowlist.path).statements
    entry = entries[fingerprint(ALLOWED)]
    assert entry.roles == ["authenticated"]
    assert set(entry.paths) == {"http", "tcp", "ws"}
    assert entry.sql == "select body from lim_items where id = $1"
    assert entry.count >= 3 and entry.first_seen <= entry.last_seen


async def test_sql_enforce_passes_other_literals_and_refuses_a_changed_statement(enforcing):
    ok = await enforcing.sql("SELECT body FROM lim_items WHERE id = 2 -- another literal")
    assert ok.status_code == 200 and ok.json()["rows"] == [{"body": "two"}]
    refused = await enforcing.sql(CHANGED)
    assert refused.status_code == 400
    body = refused.json()
    assert body["message"] == refusal_text(fingerprint(CHANGED))
    assert body["code"] == "42501" and len(body) == 17


async def test_sql_batch_is_checked_before_anything_runs(enforcing):
    batch = {"queries": [{"query": "insert into lim_items values ($1, $2) on conflict do nothing", "params": [9, "batch"]},
                         {"query": CHANGED, "params": []}]}
    refused = await enforcing.sql(batch)
    assert refused.status_code == 400 and refused.json()["code"] == "42501"
    admin = await enforcing.http.admin()
    assert await (await admin.execute("select count(*) from lim_items where id = 9")).fetchone() == (0,)
    await admin.close()


@pytest.mark.parametrize("path", ["tcp", "ws"])
async def test_psycopg_simple_and_extended_refused_and_transaction_aborted(enforcing, path):
    url = enforcing.tcp_url() if path == "tcp" else enforcing.ws_url()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        assert await (await conn.execute("select body from lim_items where id = %s", [2])).fetchall() == [("two",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            await conn.execute(CHANGED)
        assert refused.value.diag.message_primary == refusal_text(fingerprint(CHANGED))
        # Inside a transaction, as after any error: aborted until rollback.
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await conn.execute(ALLOWED)
        await conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # extended protocol: refused at Parse
            await conn.execute("select body, id from lim_items where id = %s", [1])
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await conn.execute("select body from lim_items where id = %s", [1])
        await conn.rollback()
        assert await (await conn.execute(ALLOWED)).fetchall() == [("one",)]


async def test_prepared_statement_checked_once_at_parse(enforcing):
    async with await psycopg.AsyncConnection.connect(enforcing.tcp_url(), autocommit=True) as conn:
        for value in range(1, 4):  # prepared once, then Bind/Execute only
            await conn.execute("select body from lim_items where id = %s", [value], prepare=True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("select body, id from lim_items where id = %s", [1], prepare=True)
        assert await (await conn.execute("select body from lim_items where id = %s", [2], prepare=True)).fetchall() == [("two",)]


async def test_asyncpg_prepared_statements(enforcing):
    conn = await asyncpg.connect(enforcing.tcp_url(), ssl=_no_verify())
    try:
        assert await conn.fetchval("select body from lim_items where id = $1", 2) == "two"
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
            await conn.prepare(CHANGED.replace("= 1", "= $1"))
        assert "neon-local allowlist approve" in str(refused.value)
        async with conn.transaction():
            await conn.fetchval("select body from lim_items where id = $1", 1)
        assert await conn.fetchval("select body from lim_items where id = $1", 1) == "one"
    finally:
        await conn.close()


def _no_verify():
    import ssl
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


async def test_psql_simple_query(enforcing):
    env = {**os.environ, "PGPASSWORD": enforcing.proxy.token()}
    url = enforcing.proxy.url("authenticated", sslmode="require")

    def psql(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], env=env,
                              capture_output=True, text=True, timeout=60)

    assert (await asyncio.to_thread(psql, "select body from lim_items where id = 2")).stdout.strip() == "two"
    refused = await asyncio.to_thread(psql, "select body from lim_items where id = 2; select 1")
    assert refused.returncode != 0 and "not in the allow-list" in refused.stderr


@pytest.mark.parametrize("hostile", [
    f"{ALLOWED}; delete from lim_items",  # ;-joined: the second is checked too
    "DO $$ BEGIN DELETE FROM lim_items; END $$",
    "/* select body from lim_items where id = 1 */ delete from lim_items",
    "SeLeCt body FROM lim_items WHERE id = 1 OR true",
    "/* /* nested */ begin */ delete from lim_items",  # comments nest in SQL: this is a DELETE, not a BEGIN
    "begin; delete from lim_items; commit",
    "select body from lim_items where id = \u0661",  # a column named ARABIC-INDIC DIGIT ONE, not a number
])
async def test_hostile_inputs_refused_on_every_path(enforcing, hostile):
    assert (await enforcing.sql(hostile)).json()["code"] == "42501"
    async with await psycopg.AsyncConnection.connect(enforcing.tcp_url(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(hostile)
    admin = await enforcing.http.admin()
    assert (await (await admin.execute("select count(*) from lim_items")).fetchone())[0] >= 2
    await admin.close()


async def test_case_comments_and_whitespace_do_not_change_the_fingerprint(enforcing):
    for variant in ("SELECT   body\nFROM lim_items /* c */ WHERE id=42", "select body from LIM_ITEMS where id = 7;"):
        assert (await enforcing.sql(variant)).status_code == 200


async def test_unparsable_and_very_long_statements_refused_with_a_clear_error(enforcing):
    syntax = (await enforcing.sql("selec body from lim_items")).json()
    assert syntax["code"] == "42601" and syntax["message"] == 'syntax error at or near "selec"'
    long = "select body from lim_items where id in (" + ",".join(["1"] * 60_000) + ")"
    body = (await enforcing.sql(long)).json()
    assert body["code"] == "54000" and "too long for the allow-list check" in body["message"]


async def test_owner_is_exempt(enforcing):
    response = await enforcing.http.post({"query": CHANGED, "params": []})
    assert response.status_code == 200
    async with await psycopg.AsyncConnection.connect(enforcing.proxy.owner_url(), autocommit=True) as conn:
        await conn.execute(CHANGED)


async def test_live_changes_apply_without_restart(enforcing):
    assert (await enforcing.sql(CHANGED)).status_code == 400
    enforcing.allowlist.flush()  # the refusal on file now, not at the watcher's next round
    content = read_list(enforcing.allowlist.path)
    content.statements[fingerprint(CHANGED)] = content.refused.pop(fingerprint(CHANGED))
    content.statements[fingerprint(CHANGED)].roles = ["authenticated"]
    write_list(enforcing.allowlist.path, content)
    os.utime(enforcing.allowlist.path, (1, 1))  # a new mtime even within the file system's resolution
    for _ in range(100):  # the watcher checks the file every second
        if (await enforcing.sql(CHANGED)).status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert (await enforcing.sql(CHANGED)).status_code == 200
    content = read_list(enforcing.allowlist.path)
    del content.statements[fingerprint(CHANGED)]
    write_list(enforcing.allowlist.path, content)
    enforcing.allowlist.load()


async def test_warn_serves_logs_and_records(guarded, caplog):
    guarded.set_mode("warn")
    try:
        warned = guarded.allowlist.total("warned")
        statement = "select id from lim_items where body = 'warned'"
        assert (await guarded.sql(statement)).status_code == 200
        assert guarded.allowlist.total("warned") == warned + 1
        assert "allow-list (warn): statement not in the allow-list" in caplog.text
        guarded.allowlist.flush()
        assert fingerprint(statement) in read_list(guarded.allowlist.path).refused
    finally:
        guarded.set_mode("learn")


async def test_function_call_message_refused_under_enforce(enforcing):
    client = await RawClient.connect(enforcing.proxy.port)
    try:
        assert (await client.login_jwt("authenticated", enforcing.proxy.token()))[-1].type == b"Z"
        now_oid = 1299  # pg_catalog.now()
        await client.send(b"F" + (14).to_bytes(4, "big") + now_oid.to_bytes(4, "big") + bytes(6))
        error, ready = await client.read_until_ready()
        assert error.type == b"E" and b"C42501\0" in error.body and b"FunctionCall" in error.body
        assert ready == m.Message(b"Z", b"I")
        await client.send(m.query(ALLOWED))
        assert [msg.type for msg in await client.read_until_ready()] == [b"T", b"D", b"C", b"Z"]
    finally:
        client.writer.close()


async def test_refused_parse_in_the_middle_of_a_batch(enforcing):
    """After allowed messages in one batch, and after one that failed (Postgres then skips to the Sync): no hang."""
    client = await RawClient.connect(enforcing.proxy.port)
    try:
        await client.login_jwt("authenticated", enforcing.proxy.token())
        allowed = "select body from lim_items where id = $1"
        refused_parse = m.parse(CHANGED) + m.bind([]) + m.execute()
        await client.send(m.parse(allowed) + m.bind(["2"]) + m.execute() + refused_parse + m.sync())
        replies = await client.read_until_ready()
        assert [r.type for r in replies[:4]] == [b"1", b"2", b"D", b"C"]
        assert replies[-2].type == b"E" and b"C42501\0" in replies[-2].body and replies[-1] == m.Message(b"Z", b"I")
        await client.send(m.parse(allowed) + m.bind(["not a number"]) + m.execute() + refused_parse + m.sync())
        replies = await client.read_until_ready()
        assert [r.type for r in replies] == [b"1", b"E", b"Z"] and b"C22P02\0" in replies[1].body
        await client.send(m.query(ALLOWED))
        assert [msg.type for msg in await client.read_until_ready()] == [b"T", b"D", b"C", b"Z"]
    finally:
        client.writer.close()


async def test_messages_cut_across_reads_are_checked_whole(enforcing):
    """A client's bytes may arrive cut anywhere (in a header, in a text): each statement is still checked as a whole."""
    client = await RawClient.connect(enforcing.proxy.port)
    try:
        await client.login_jwt("authenticated", enforcing.proxy.token())
        stream = (m.parse("select body from lim_items where id = $1") + m.bind(["2"]) + m.execute() + m.sync()
                  + m.query(ALLOWED) + m.query(CHANGED))
        cuts = [0, 3, 17, 40, len(stream) - len(m.query(CHANGED)) + 2, len(stream) - 9, len(stream)]
        for start, end in itertools.pairwise(cuts):
            await client.send(stream[start:end])
            await asyncio.sleep(0.05)  # its own read on the proxy's side
        assert [r.type for r in await client.read_until_ready()] == [b"1", b"2", b"D", b"C", b"Z"]
        assert [r.type for r in await client.read_until_ready()] == [b"T", b"D", b"C", b"Z"]
        error, ready = await client.read_until_ready()
        assert error.type == b"E" and b"C42501\0" in error.body and ready.type == b"Z"
    finally:
        client.writer.close()


# With standard_conforming_strings on (how pglast reads SQL) this is `body = $1 and body = $2`, an approved shape;
# with it off, Postgres reads `'\' and body = '` as one string and runs `body = $1 or true`: every row.
SMUGGLED = r"select body from lim_items where body = '\' and body = ' or true --'"
STRINGS_OFF = "set standard_conforming_strings = off"
STRINGS_REFUSED = "standard_conforming_strings is off in this session, and the allow-list reads SQL with it on"


@pytest.fixture
async def strings_approved(guarded):
    """SMUGGLED's shape, ALLOWED and `SET standard_conforming_strings = off` (one fingerprint with `= on`) approved;
    enforce."""
    guarded.allowlist.flush()
    content = read_list(guarded.allowlist.path)
    for statement in ("select body from lim_items where body = 'a' and body = 'b'", STRINGS_OFF, ALLOWED):
        content.statements[fingerprint(statement)] = Entry(statement, ["authenticated"])
    write_list(guarded.allowlist.path, content)
    guarded.set_mode("enforce")
    yield guarded
    guarded.set_mode("learn")


@pytest.mark.parametrize("path", ["tcp", "ws"])
async def test_statements_refused_while_standard_conforming_strings_is_off(strings_approved, path):
    url = strings_approved.tcp_url() if path == "tcp" else strings_approved.ws_url()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert await (await conn.execute(SMUGGLED)).fetchall() == []  # read as approved: nothing matches
        await conn.execute(STRINGS_OFF)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            await conn.execute(SMUGGLED)
        assert refused.value.diag.message_primary.startswith(STRINGS_REFUSED)
        assert "SET standard_conforming_strings = on" in refused.value.diag.message_hint
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # every statement, not only those with a backslash
            await conn.execute(ALLOWED)
        await conn.execute("SET standard_conforming_strings TO on")  # let through: the way back
        assert await (await conn.execute(SMUGGLED)).fetchall() == []
        assert await (await conn.execute(ALLOWED)).fetchall() == [("one",)]


async def test_pipelined_statement_with_a_backslash_refused_after_one_that_may_turn_it_off(strings_approved):
    """Postgres reports the change only at ReadyForQuery: a text sent before that cannot be trusted to read as checked."""
    client = await RawClient.connect(strings_approved.proxy.port)
    try:
        await client.login_jwt("authenticated", strings_approved.proxy.token())
        await client.send(m.query(STRINGS_OFF) + m.query(SMUGGLED))
        assert [r.type for r in await client.read_until_ready()] == [b"C", b"S", b"Z"]
        error, ready = await client.read_until_ready()
        assert error.type == b"E" and b"C42501\0" in error.body and b"sent before Postgres answered" in error.body
        assert ready == m.Message(b"Z", b"I")
        await client.send(m.parse(STRINGS_OFF.replace("off", "on")) + m.bind([]) + m.execute()
                          + m.parse(SMUGGLED) + m.bind([]) + m.execute() + m.sync())
        replies = await client.read_until_ready()
        assert replies[-2].type == b"E" and b"C42501\0" in replies[-2].body and replies[-1].type == b"Z"
    finally:
        client.writer.close()


async def test_sql_batch_that_turns_it_off_is_refused_before_anything_runs(strings_approved):
    batch = {"queries": [{"query": STRINGS_OFF, "params": []}, {"query": SMUGGLED, "params": []}]}
    refused = await strings_approved.sql(batch)
    assert refused.status_code == 400 and refused.json()["code"] == "42501"
    assert "standard_conforming_strings off" in refused.json()["message"]
    ok = await strings_approved.sql({"queries": [{"query": STRINGS_OFF, "params": []}, {"query": ALLOWED, "params": []}]})
    assert ok.status_code == 200  # no backslash: read alike either way


async def test_sql_on_a_connection_whose_role_default_turns_it_off(strings_approved):
    http = strings_approved.http
    admin = await http.admin()
    database = http.settings.database
    try:
        await admin.execute(f"alter role authenticated in database {database} set standard_conforming_strings = off")
        await http.handler.pools.close_idle(database)
        refused = await strings_approved.sql(ALLOWED)
        assert refused.status_code == 400 and refused.json()["message"].startswith(STRINGS_REFUSED)
        strings_approved.set_mode("warn")
        warned = strings_approved.allowlist.counts["warned", "http"]
        assert (await strings_approved.sql(ALLOWED)).json()["rows"] == [{"body": "one"}]
        assert strings_approved.allowlist.counts["warned", "http"] == warned + 1
    finally:
        await admin.execute(f"alter role authenticated in database {database} reset standard_conforming_strings")
        await admin.close()
        await http.handler.pools.close_idle(database)


async def test_warn_serves_and_counts_statements_while_it_is_off(strings_approved):
    strings_approved.set_mode("warn")
    async with await psycopg.AsyncConnection.connect(strings_approved.tcp_url(), autocommit=True) as conn:
        await conn.execute(STRINGS_OFF)
        warned = strings_approved.allowlist.counts["warned", "tcp"]
        assert len(await (await conn.execute(SMUGGLED)).fetchall()) >= 2  # served as Postgres reads it
        assert strings_approved.allowlist.counts["warned", "tcp"] == warned + 1


async def test_startup_option_that_turns_it_off_refused(strings_approved):
    with pytest.raises(psycopg.OperationalError, match="standard_conforming_strings=off refused"):
        await psycopg.AsyncConnection.connect(strings_approved.tcp_url(), options="-c standard_conforming_strings=off")
    async with await psycopg.AsyncConnection.connect(strings_approved.tcp_url(), autocommit=True,
                                                     options="-c standard_conforming_strings=on") as conn:
        assert await (await conn.execute(ALLOWED)).fetchall() == [("one",)]


async def test_statements_learned_while_the_watcher_saves_are_all_kept(tmp_path):
    """The watcher's file I/O runs in a thread while the event loop goes on learning: nothing learned is dropped."""
    from neon_local.limits.allowlist import AllowList

    learner = AllowList(tmp_path / "allow.toml", default_mode="learn")
    texts: list[str] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5  # several of the watcher's rounds (one a second), learning all along
    while loop.time() < until:
        # letters only: pglast gives one fingerprint for names that differ in their digits
        texts.append(f"select body from lim_items_{len(texts):x}".translate(str.maketrans("0123456789", "ghijklmnop")))
        learner.check("authenticated", True, texts[-1], "http")
        await asyncio.sleep(0)
    learner.flush()
    assert set(read_list(learner.path).statements) == {fingerprint(text) for text in texts}
