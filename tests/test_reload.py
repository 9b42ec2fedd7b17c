"""Live reload of neon_local.toml: users, roles, providers and limits apply to the running emulator while
requests are in flight; a bad edit is refused (log and `status`) and the last good configuration stays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from neon_local.app import Emulator
from neon_local.auth.issuer import Issuer, IssuerError
from neon_local.auth.keys import KeyRing
from neon_local.settings import load_settings

FIRST = """\
# the app's settings
http_port = 0
pg_port = 0
"""

SECOND = FIRST + """
[users.carol]
sub = "user_carol"
org_id = "org_c"

[roles.editor]
inherits = ["authenticated"]

[[jwks]]
id = "partner"
jwks_file = "partner-jwks.json"
roles = ["authenticated"]
"""


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("NEON_LOCAL_")]:
        monkeypatch.delenv(name)


async def sql(emulator: Emulator, query: str, token: str, role: str = "authenticated") -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(emulator.endpoints.sql_url, json={"query": query},
                                 headers={"Neon-Connection-String": emulator.endpoints.database_url(role),
                                          "Authorization": f"Bearer {token}"})


async def edit(emulator: Emulator, text: str) -> None:
    """Write the file as an editor does (a new file renamed over the old one) and wait until it is taken in."""
    config = emulator.settings.config_file
    temp = config.with_name(".neon_local.toml.swp")
    temp.write_text(text)
    os.replace(temp, config)
    stat = config.stat()
    await asyncio.wait_for(emulator.reloader.wait_for((stat.st_ino, stat.st_mtime_ns)), 30)


async def test_edits_apply_while_requests_are_in_flight_and_bad_edits_are_kept_out(tmp_path, caplog):
    partner_keys = KeyRing.load_or_create(tmp_path / "partner-keys")
    (tmp_path / "partner-jwks.json").write_text(json.dumps(partner_keys.jwks()))
    config = tmp_path / "neon_local.toml"
    config.write_text(FIRST)
    emulator = Emulator(load_settings(config_file=config, env={}))
    await emulator.start()
    try:
        issuer = emulator.services.issuer
        alice = issuer.mint("alice")
        partner_token = Issuer(emulator.settings, partner_keys, "https://partner.example").mint(sub="user_partner")
        assert (await sql(emulator, "select 1", partner_token)).json()["message"] == "jwk not found"
        with pytest.raises(IssuerError):
            issuer.mint("carol")
        e = emulator.endpoints
        tcp = await psycopg.AsyncConnection.connect(host=e.host, port=e.pg_port, dbname=e.database, user="authenticated",
                                                    password=alice, sslmode="require", autocommit=True)

        # A /sql request and a TCP session are in flight while the file changes under them.
        slow = asyncio.create_task(sql(emulator, "select pg_sleep(1), auth.user_id() as uid", alice))
        await asyncio.sleep(0.2)
        await edit(emulator, SECOND)
        answer = await slow
        assert answer.status_code == 200 and answer.json()["rows"][0]["uid"] == "user_alice"
        assert await (await tcp.execute("select auth.user_id()")).fetchone() == ("user_alice",)
        await tcp.close()

        # The new user, role and provider are in force.
        carol = issuer.mint("carol")
        answer = await sql(emulator, "select current_user, auth.user_id() as uid, pg_has_role('authenticated', 'member') as m",
                           carol, role="editor")
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [{"current_user": "editor", "uid": "user_carol", "m": True}]
        answer = await sql(emulator, "select auth.user_id() as uid", partner_token)
        assert answer.status_code == 200 and answer.json()["rows"] == [{"uid": "user_partner"}]
        assert emulator.state()["config_error"] is None

        # A bad edit: refused as a whole, logged, shown by status; the last good configuration stays.
        with caplog.at_level(logging.ERROR, logger="neon_local.reload"):
            await edit(emulator, SECOND + "\n[roles.viewer]\ngrants = \"all\"\n")
        assert "[roles.viewer]: grants must be one of 'default', 'none', got 'all'" in emulator.reloader.error
        assert any("the last good configuration stays in force" in r.getMessage() for r in caplog.records)
        assert "grants must be one of" in json.loads((emulator.data_dir / "state.json").read_text())["config_error"]
        assert issuer.mint("carol")
        assert (await sql(emulator, "select 1 as one", carol, role="editor")).status_code == 200

        # Fixed, with a rate limit per identity: the error clears and the limit applies from the next request.
        await edit(emulator, SECOND.replace("pg_port = 0\n", 'pg_port = 0\nrate_limit_identity = "0.05@1m"\n'))
        assert emulator.reloader.error is None and emulator.state()["config_error"] is None
        answers = [await sql(emulator, "select 1 as one", carol) for _ in range(4)]  # 0.05/s for a minute: 3
        assert [a.status_code for a in answers] == [200, 200, 200, 429], answers[3].text
        services = emulator.services  # one set of limits for every path, the reloaded one
        assert services.data_api.limits is services.sql.limits is services.pg_proxy.context.limits

        # A provider whose key source changes: tokens signed with the old keys stop working, the new ones work.
        other_keys = KeyRing.load_or_create(tmp_path / "other-keys")
        (tmp_path / "other-jwks.json").write_text(json.dumps(other_keys.jwks()))
        await edit(emulator, SECOND.replace("partner-jwks.json", "other-jwks.json"))
        assert (await sql(emulator, "select 1", partner_token)).json()["message"] == "jwk not found"
        other_token = Issuer(emulator.settings, other_keys, "https://other.example").mint(sub="user_other")
        assert (await sql(emulator, "select auth.user_id() as uid", other_token)).json()["rows"] == [{"uid": "user_other"}]

        # A removed provider's tokens stop working at once.
        await edit(emulator, FIRST)
        assert (await sql(emulator, "select 1", other_token)).json()["message"] == "jwk not found"
        assert (await sql(emulator, "select 1", partner_token)).json()["message"] == "jwk not found"
    finally:
        await emulator.stop()


def neon_local(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    return subprocess.run([sys.executable, "-m", "neon_local", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def status_until(cwd, shows: bool) -> str:
    """`neon-local status` once the running emulator has (or no longer has) a config error to show."""
    for _ in range(300):
        output = neon_local("status", cwd=cwd)
        if ("Config error" in output.stdout) == shows:
            return output.stdout + output.stderr
        time.sleep(0.1)
    raise AssertionError(f"status never {'showed' if shows else 'cleared'} the config error:\n{output.stdout}{output.stderr}")


@contextlib.contextmanager
def detached(project):
    """`neon-local up -d` in `project` (its neon_local.toml: FIRST) for the block, then `down`; the config file's path."""
    config = project / "neon_local.toml"
    config.write_text(FIRST)
    up = neon_local("up", "-d", cwd=project)
    assert up.returncode == 0, up.stderr
    try:
        yield config
    finally:
        assert neon_local("down", cwd=project).returncode == 0


def test_status_of_a_running_emulator_shows_a_refused_edit(tmp_path):
    with detached(tmp_path) as config:
        config.write_text(FIRST + "[[jwks]]\nid = \"clerk\"\n")
        shown = status_until(tmp_path, shows=True)
        assert "is running" in shown and "[[jwks]] entry 1 (clerk) needs jwks_url or jwks_file" in shown
        assert "the last good configuration stays in force" in shown
        config.write_text(FIRST)
        assert "is running" in status_until(tmp_path, shows=False)


def test_an_edit_made_right_after_up_detach_returns_is_applied(tmp_path):
    """`up -d` reports ready before the watch begins; an edit made at once is still read and applied."""
    with detached(tmp_path) as config:
        config.write_text(FIRST + '\n[users.dave]\nsub = "user_dave"\n')
        for _ in range(300):
            token = neon_local("token", "dave", cwd=tmp_path)
            if token.returncode == 0:
                break
            time.sleep(0.1)
        assert token.returncode == 0, token.stderr
        assert json.loads(base64_payload(token.stdout.strip()))["sub"] == "user_dave"


def base64_payload(token: str) -> bytes:
    import base64

    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
