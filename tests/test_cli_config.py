"""`neon-local config` and `neon-local users`: in-place edits that keep the user's file, and refusals that write nothing."""

from __future__ import annotations

import base64
import json
import os

import pytest
from click.testing import CliRunner

from neon_local.cli import main
from neon_local.settings import DEFAULT_USERS, load_settings

ORIGINAL = """\
# neon-local settings for the todo app
http_port = 5000  # the app's .env points here

# who can sign in
[users.alice]
sub = "user_alice"  # matches the seed data
email = "alice@example.com"
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("NEON_LOCAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # commands find neon_local.toml from the working directory
    (tmp_path / "neon_local.toml").write_text(ORIGINAL)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_edits_keep_comments_order_and_unrelated_lines(project):
    assert run("config", "set", "pg_port", "6000")[0] == 0
    assert run("config", "set", "http_port", "5001")[0] == 0
    assert run("config", "set", "allowed_origins", "https://app.example, https://admin.example")[0] == 0
    assert run("users", "add", "carol", "--claim", "org_id=org_x", "--claim", "admin=true")[0] == 0
    assert run("config", "set", "users.alice.role", "admin")[0] == 0
    assert (project / "neon_local.toml").read_text() == """\
# neon-local settings for the todo app
http_port = 5001  # the app's .env points here
pg_port = 6000
allowed_origins = ["https://app.example", "https://admin.example"]

# who can sign in
[users.alice]
sub = "user_alice"  # matches the seed data
email = "alice@example.com"
role = "admin"

[users.carol]
sub = "user_carol"
org_id = "org_x"
admin = true
"""
    settings = load_settings()
    assert (settings.http_port, settings.pg_port) == (5001, 6000)
    assert settings.users["carol"] == {"sub": "user_carol", "org_id": "org_x", "admin": True}
    for key in ("pg_port", "allowed_origins", "users.alice.role"):
        assert run("config", "unset", key)[0] == 0
    assert run("users", "remove", "carol")[0] == 0
    assert (project / "neon_local.toml").read_text() == ORIGINAL.replace("5000", "5001")


@pytest.mark.parametrize("args, named", [
    (("config", "set", "http_port", "eighty"), "http_port must be a port number from 0 to 65535, got 'eighty'"),
    (("config", "set", "pg_port", "70000"), "pg_port must be a port number from 0 to 65535"),
    (("config", "set", "compat", "loose"), 'compat must be one of "neon", "extended", got \'loose\''),
    (("config", "set", "log_level", "loud"), 'log_level must be one of "debug", "info", "warning", "error"'),
    (("config", "set", "ephemeral", "maybe"), "ephemeral must be true or false, got 'maybe'"),
    (("config", "set", "--", "http_idle_timeout", "-5"), "http_idle_timeout must be a whole number from 0"),
    (("config", "set", "no_such_setting", "1"), "unknown setting 'no_such_setting'. Known settings: "),
    (("config", "set", "users.alice", "x"), "[users.NAME] tables must hold claims"),
    (("config", "set", "jwks.0.id", "x"), "neon-local providers add"),
    (("users", "add", "alice"), "test user 'alice' exists already"),
    (("users", "add", "dave", "--claim", "team=null"), "claim.team is null, which TOML cannot hold"),
    (("users", "remove", "mallory"), "no test user 'mallory' (known: alice)"),
])
def test_invalid_changes_are_refused_naming_the_key_and_nothing_is_written(project, args, named):
    code, output = run(*args)
    assert code != 0 and named in output, output
    assert (project / "neon_local.toml").read_text() == ORIGINAL
    assert [p.name for p in project.iterdir()] == ["neon_local.toml"]  # no temporary file left behind


def test_a_refused_change_creates_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run("config", "set", "http_port", "eighty")
    assert code == 1 and "Nothing was written" in output
    assert list(tmp_path.iterdir()) == []


def test_list_and_get_show_values_in_effect_and_where_they_come_from(project, monkeypatch):
    monkeypatch.setenv("NEON_LOCAL_PG_PORT", "7777")
    code, output = run("config", "list", "--json")
    listing = json.loads(output)
    assert listing["config_file"] == str(project / "neon_local.toml")
    assert listing["settings"]["http_port"] == {"value": 5000, "source": "file"}
    assert listing["settings"]["pg_port"] == {"value": 7777, "source": "env NEON_LOCAL_PG_PORT"}
    assert listing["settings"]["compat"] == {"value": "neon", "source": "default"}
    flagged = json.loads(run("config", "list", "--json", "--data-dir", "elsewhere")[1])["settings"]["data_dir"]
    assert flagged == {"value": str(project / "elsewhere"), "source": "flag --data-dir"}
    human = run("config", "list")[1]
    assert 'compat                = "neon"' in human and "# default" in human
    assert run("config", "get", "http_port") == (0, "5000\n")
    assert run("config", "get", "users.alice.email", "--json") == (0, '"alice@example.com"\n')
    code, output = run("config", "get", "users.bob.email")
    assert code == 1 and "users.bob.email is not set" in output


def test_the_first_user_added_keeps_the_built_in_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run("users", "add", "carol", "--sub", "user_c", "--claims", '{"org_id": "org_acme", "tags": ["a", 1]}')
    assert code == 0 and "alice, bob" in output
    users = json.loads(run("users", "list", "--json")[1])
    assert users == {**DEFAULT_USERS, "carol": {"sub": "user_c", "org_id": "org_acme", "tags": ["a", 1]}}
    code, token = run("token", "carol")
    assert code == 0
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert (payload["sub"], payload["org_id"], payload["tags"]) == ("user_c", "org_acme", ["a", 1])
    assert run("users", "remove", "bob")[0] == 0
    assert set(load_settings().users) == {"alice", "carol"}


def test_set_and_unset_repair_a_file_that_no_longer_loads(project):
    broken = ORIGINAL.replace("http_port = 5000", "http_port = 'eighty'").replace("# who", "compat = 'loose'\n# who")
    (project / "neon_local.toml").write_text(broken)
    code, output = run("status")
    assert code == 1 and "http_port must be a port number" in output
    code, output = run("config", "set", "pg_port", "6000")  # the file would still be invalid: refused, naming why
    assert code == 1 and "http_port must be a port number" in output and "Nothing was written" in output
    assert (project / "neon_local.toml").read_text() == broken
    assert run("config", "set", "http_port", "5000")[0] == 1  # compat is still wrong
    assert run("config", "unset", "compat")[0] == 1  # and so is http_port
    (project / "neon_local.toml").write_text(broken.replace("compat = 'loose'\n", ""))
    code, output = run("config", "set", "http_port", "5000")
    assert code == 0, output
    assert (project / "neon_local.toml").read_text() == ORIGINAL
