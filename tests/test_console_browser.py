"""The console in a real browser (Debian's chromium driven by Playwright) against `neon-local up -d` running
the todos sample app. Each scenario saves a screenshot of its page: to a temporary directory, or with
NEON_LOCAL_SCREENSHOTS=docs to docs/ (shown in the README), so a test run leaves the checkout as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import expect, sync_playwright

from test_cli import neon_local

TODOS = Path(__file__).parent.parent / "fixtures" / "todos"
DOCS = Path(__file__).parent.parent / "docs" if os.environ.get("NEON_LOCAL_SCREENSHOTS") == "docs" else Path(tempfile.mkdtemp())
NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """`neon-local up -d` in a project with the todos app's users, its migration and seed applied."""
    project = tmp_path_factory.mktemp("console")
    shutil.copy(TODOS / "neon_local.toml", project)
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert up.returncode == 0, up.stderr
    state = json.loads(neon_local("status", "--json", cwd=project).stdout)
    assert re.search(r"Console +http://127\.0\.0\.1:\d+/console\?key=\S{20,}", up.stdout)
    assert f"Console            {state['urls']['console']}" in neon_local("status", cwd=project).stdout
    assert (project / ".neon-local" / "state.json").stat().st_mode & 0o777 == 0o600  # it holds the console's key
    with psycopg.connect(state["urls"]["owner"], autocommit=True) as conn:
        conn.execute((TODOS / "migrations" / "0000_todos.sql").read_text().replace("--> statement-breakpoint", ""))
        conn.execute((TODOS / "seed.sql").read_text())
    yield state
    neon_local("down", cwd=project)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, emulator):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(emulator["urls"]["console"])  # with ?key=: sets the cookie, then drops the key from the address
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    assert page.url.endswith("/console")
    yield page
    context.close()


def owner(emulator) -> psycopg.Connection:
    return psycopg.connect(emulator["urls"]["owner"], autocommit=True)


def run_as(page, identity: str, sql: str) -> None:
    page.select_option("#identity", label=identity)
    page.fill("#editor", sql)
    page.press("#editor", "Control+Enter")


def test_alice_then_bob_see_their_own_rows(page):
    run_as(page, "alice", "select id, task, user_id, null::text as nothing, '' as empty from todos order by id")
    grid = page.locator("#results table")
    expect(grid.locator("tbody tr")).to_have_count(2)
    expect(grid.locator("thead")).to_contain_text("text")  # column types are shown
    expect(grid.locator("tbody td.null").first).to_have_text("NULL")  # NULL is not the empty string
    expect(grid.locator("tbody td.empty")).to_have_count(2)
    expect(page.locator("#results")).to_contain_text("SELECT · 2 row(s)")
    page.screenshot(path=DOCS / "console-sql.png")
    run_as(page, "bob", "select task from todos order by id")
    expect(page.locator("#results tbody tr")).to_have_count(1)
    expect(page.locator("#results tbody")).to_have_text("walk the dog")


def test_explain_and_the_history_of_an_identity(page):
    run_as(page, "bob", "select task from todos where id > 1")
    expect(page.locator("#results tbody tr")).to_have_count(1)
    page.fill("#editor", "select 1")
    page.click("#explain")
    expect(page.locator("#results pre.plan")).to_contain_text("Result")
    page.select_option("#history", "select task from todos where id > 1")  # bob's statements, newest first
    expect(page.locator("#editor")).to_have_value("select task from todos where id > 1")
    page.select_option("#identity", label="alice")
    expect(page.locator("#history option", has_text="where id > 1")).to_have_count(0)


def test_an_error_is_marked_at_its_position(page):
    run_as(page, "alice", "select * from todoz")
    expect(page.locator("#results .error")).to_contain_text('42P01: relation "todoz" does not exist')
    expect(page.locator("#results .error")).to_contain_text("^")
    selected = page.evaluate("() => { const e = document.getElementById('editor'); return e.value.slice(e.selectionStart, e.selectionEnd) }")
    assert selected == "todoz"


def test_compare_mode_highlights_rows_one_identity_sees(page):
    page.check("#compare")
    page.select_option("#identity2", label="bob")
    run_as(page, "alice", "select id, task, user_id from todos order by id")
    expect(page.locator("#results tr.only-left")).to_have_count(2)
    expect(page.locator("#results tr.only-right")).to_have_count(1)
    expect(page.locator("#results .compare-summary")).to_have_text("2 row(s) only the left sees, 1 only the right")
    page.screenshot(path=DOCS / "console-compare.png")


def test_a_template_policy_changes_the_matrix(page, emulator):
    with owner(emulator) as conn:
        conn.execute("create table projects (id int generated always as identity primary key, name text not null,"
                     " user_id text not null default (auth.user_id()));"
                     "alter table projects enable row level security;"
                     "insert into projects (name, user_id) values ('apollo', 'user_alice'), ('gemini', 'user_bob')")
    page.goto(page.url + "#matrix")
    page.select_option("#mx-table", "public.projects")
    page.fill("#mx-row", '{"name": "new"}')
    page.click("#mx-run")
    alice = page.locator('#matrix-grid tr[data-identity="alice"]')
    expect(alice.locator('td[data-command="select"]')).to_have_text("0 row(s)")
    expect(alice.locator('td[data-command="insert"]')).to_contain_text("refused")
    alice.locator('td[data-command="insert"] summary').click()
    expect(alice.locator('td[data-command="insert"] pre')).to_contain_text("No INSERT policy on public.projects applies to authenticated")

    page.goto(page.url.split("#")[0] + "#policies")
    page.select_option("#pol-table", "public.projects")
    page.select_option("#pol-template", "owner_only")
    expect(page.locator("#pol-sql")).to_have_value(re.compile(r'crud-authenticated-policy-select" ON "public"\."projects"'))
    page.screenshot(path=DOCS / "console-policies.png")
    page.click("#pol-apply")
    expect(page.locator("#pol-status")).to_have_text(re.compile("Applied"))

    page.goto(page.url.split("#")[0] + "#matrix")
    page.select_option("#mx-table", "public.projects")
    page.fill("#mx-row", '{"name": "new"}')
    page.click("#mx-run")
    for who, project in (("alice", "apollo"), ("bob", "gemini")):
        row = page.locator(f'#matrix-grid tr[data-identity="{who}"]')
        select = row.locator('td[data-command="select"]')
        expect(select.locator("summary")).to_have_text("1 row(s)")
        select.locator("summary").click()  # which row: their own
        expect(select.locator("pre")).to_have_text(f"(1,{project},user_{who})" if who == "alice" else f"(2,{project},user_{who})")
        expect(row.locator('td[data-command="insert"]')).to_have_text("allowed")
    owner_row = page.locator('#matrix-grid tr[data-identity="owner"]')
    expect(owner_row.locator('td[data-command="select"] summary')).to_have_text("2 row(s)")
    # the owner has no sub, so DEFAULT auth.user_id() is NULL: the real error shows, not "refused"
    expect(owner_row.locator('td[data-command="insert"]')).to_contain_text("23502")
    page.screenshot(path=DOCS / "console-matrix.png")

    page.goto(page.url.split("#")[0] + "#rls")
    card = page.locator('.card[data-table="public.projects"]')
    expect(card).to_contain_text("RLS enabled")
    expect(card).to_contain_text("crud-authenticated-policy-update")
    expect(card.locator(".chip").first).to_have_text("auth.user_id()")
    page.screenshot(path=DOCS / "console-rls.png", full_page=True)


def test_the_advisor_flags_rls_off_and_its_fix_clears_it(page, emulator):
    with owner(emulator) as conn:
        conn.execute("create table audit (id int, note text)")
    page.goto(page.url + "#advisor")
    finding = page.locator('.finding[data-lint="rls_disabled_in_public"]')
    expect(finding).to_contain_text("public.audit")
    expect(finding).to_contain_text("ALTER TABLE public.audit ENABLE ROW LEVEL SECURITY;")
    page.screenshot(path=DOCS / "console-advisor.png")
    finding.locator(".apply-fix").click()
    expect(page.locator('.finding[data-lint="rls_disabled_in_public"]')).to_have_count(0)
    with owner(emulator) as conn:
        assert conn.execute("select relrowsecurity from pg_class where relname = 'audit'").fetchone() == (True,)


def test_mint_then_decode_a_token(page):
    page.goto(page.url + "#tokens")
    page.select_option("#tk-user", "alice")
    page.fill("#tk-claims", '{"org_id": "org_x"}')
    page.click("#tk-mint")
    token = page.locator("#tk-token").inner_text()
    assert token.count(".") == 2
    expect(page.locator("#tk-out")).to_contain_text('"org_id": "org_x"')
    page.get_by_text("Verify it →").click()
    expect(page.locator("#tk-verdict .verdict")).to_contain_text("Valid for role authenticated")
    expect(page.locator("#tk-verdict")).to_contain_text('"sub": "user_alice"')
    page.screenshot(path=DOCS / "console-tokens.png")
    head, payload, signature = token.split(".")
    page.fill("#tk-paste", f"{head}.{payload}.{signature[:-4]}AAAA")
    page.click("#tk-decode")
    expect(page.locator("#tk-verdict .verdict")).to_have_text("Refused: signature error: signature error")


def test_the_request_log_shows_a_node_apps_request(page, emulator):
    page.goto(page.url + "#log")
    jwt = subprocess.run(["neon-local" if shutil.which("neon-local") else str(Path(os.sys.executable).parent / "neon-local"),
                          "token", "alice"], cwd=Path(emulator["data_dir"]).parent, capture_output=True, text=True)
    assert jwt.returncode == 0, jwt.stderr
    node = subprocess.run(["node", "console_request.mjs"], cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SQL_URL": emulator["urls"]["sql"], "JWT": jwt.stdout.strip(),
                               "DB_URL": f"postgresql://authenticated@127.0.0.1/{emulator['database']}"})
    assert node.returncode == 0, node.stderr
    assert json.loads(node.stdout)["rows"] == []  # alice does not see bob's todo
    entry = page.locator("#log tbody tr", has_text="-- from node")
    expect(entry).to_contain_text("/sql")
    expect(entry).to_contain_text("user_alice")
    page.fill("#log-filter", "user_bob")
    expect(entry).to_be_hidden()
    page.fill("#log-filter", "alice")
    expect(entry).to_be_visible()
    page.screenshot(path=DOCS / "console-log.png")
    with psycopg.connect(emulator["urls"]["owner"]):  # a TCP session: a log row with no statement to re-run
        pass
    session = page.locator("#log tbody tr", has_text="(session)").first
    expect(session).to_contain_text("tcp")
    page.fill("#log-filter", "")
    session.click()
    assert page.url.endswith("#log")
    entry.click()  # re-run in the editor as that identity
    expect(page.locator("#editor")).to_have_value(re.compile("-- from node"))
    expect(page.locator("#custom-claims")).to_have_value(re.compile('"sub":"user_alice"'))


EVIL_PAGE = """<!doctype html><script>
const target = "%s";
async function attack() {
  const results = {};
  try {
    await fetch(target + "/console/api/owner-sql", {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify({sql: "create table pwned (x int)"})});
    results.post = "sent";
  } catch (e) { results.post = "blocked: " + e.message; }
  try {
    const r = await fetch(target + "/console/api/info", {credentials: "include"});
    results.read = await r.text();
  } catch (e) { results.read = "blocked: " + e.message; }
  document.title = "done";
  document.body.textContent = JSON.stringify(results);
}
attack();
</script><body></body>"""


def test_a_page_from_another_origin_cannot_call_the_console_api(page, emulator, tmp_path):
    """The attacker's page is on 127.0.0.1 too (another port: the same site, so the SameSite cookie goes along)."""
    console = emulator["urls"]["console"].split("/console")[0]
    (tmp_path / "evil.html").write_text(EVIL_PAGE % console)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/evil.html")
        expect(page).to_have_title("done")
        results = json.loads(page.locator("body").inner_text())
    finally:
        server.shutdown()
    assert results["read"].startswith("blocked")  # no CORS for the console's API: the page cannot read it
    with owner(emulator) as conn:
        assert conn.execute("select to_regclass('public.pwned')").fetchone() == (None,)


def test_limits_counts_in_the_console_and_status(page, emulator):
    """Enforce the allow-list on the running instance: a /sql statement and a Data API request refused show up in
    `neon-local status` (text and --json), on the Limits page, and (the Data API one) in the request log."""
    project = Path(emulator["data_dir"]).parent
    token = neon_local("token", "alice", cwd=project).stdout.strip()
    sql_headers = {"Authorization": f"Bearer {token}",
                   "Neon-Connection-String": f"postgresql://authenticated@127.0.0.1/{emulator['database']}"}

    def sql_status(query: str) -> int:
        return httpx.post(emulator["urls"]["sql"], json={"query": query, "params": []}, headers=sql_headers).status_code

    def until(status: int, query: str) -> None:  # the running instance reads the list file within a second
        for _ in range(100):
            if sql_status(query) == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"{query!r} never answered {status}")

    assert neon_local("allowlist", "mode", "enforce", cwd=project).returncode == 0
    try:
        until(400, "select 'probe' as limits_probe")
        before = json.loads(neon_local("status", "--json", cwd=project).stdout)["limits"]
        assert before["allowlist"]["mode"] == "enforce" and before["paths"]["data_api"]["refused"] == 0
        refused = httpx.get(emulator["urls"]["data_api"] + "/todos?select=id,task", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403 and refused.json()["code"] == "42501"
        after = json.loads(neon_local("status", "--json", cwd=project).stdout)["limits"]
        assert after["paths"]["data_api"]["refused"] == 1 and after["paths"]["http"]["refused"] >= 1
        assert after["allowlist"]["recent_refusals"][-1]["sql"] == "Data API: GET todos?select=id,task"

        text = neon_local("status", cwd=project).stdout
        assert "Allow-list         enforce for JWT roles; 0 approved fingerprints" in text
        assert re.search(r"Since start +path +rate-limited +refused +warned +learned +allowed", text)
        assert re.search(r"\n +Data API +0 +1 +0 +0 +0\n", text)
        assert re.search(rf"\n +/sql +0 +{after['paths']['http']['refused']} +0 +0 +0\n", text)
        assert re.search(r"\n  Latest refusals +\d\d:\d\d:\d\d Data API anonymous [0-9a-f]{16}  Data API: GET todos\?select=id,task\n", text)

        page.goto(page.url + "#limits")
        expect(page.locator("#lim-summary")).to_contain_text("allow-list enforce for JWT roles")
        expect(page.locator('#lim-paths tr[data-path="data_api"] td.refused')).to_have_text("1")
        expect(page.locator("#lim-recent tbody tr").first).to_contain_text("Data API: GET todos?select=id,task")
        page.screenshot(path=DOCS / "console-limits.png")

        page.goto(page.url.split("#")[0] + "#log")
        entry = page.locator("#log tbody tr", has_text="GET /neondb/rest/v1/todos")
        expect(entry).to_contain_text("select=id,task")
        expect(entry).to_contain_text("403")
        expect(entry).to_contain_text("user_alice")
    finally:
        neon_local("allowlist", "mode", "off", cwd=project)
        until(200, "select 'probe' as limits_probe")
