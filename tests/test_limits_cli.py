"""`neon-local allowlist`: review and edit the list as a person would, in a project that is a git repository."""

from __future__ import annotations

import subprocess

from click.testing import CliRunner

from neon_local.cli import main
from neon_local.limits.allowlist import AllowList, Refused
from neon_local.limits.store import read_list


def _project(tmp_path):
    (tmp_path / "neon_local.toml").write_text('allowlist = "enforce"\n')
    return tmp_path / "neon_local.allowlist.toml"


def run(tmp_path, *args):
    return CliRunner().invoke(main, ["allowlist", *args[:1], "--config", str(tmp_path / "neon_local.toml"), *args[1:]])


def test_approve_a_refused_statement_by_prefix_then_remove_it(tmp_path):
    path = _project(tmp_path)
    guard = AllowList(path, "enforce")
    try:
        guard.check("authenticated", True, "delete from todos where id = 4", "http")
    except Refused as exc:
        fingerprint = exc.message.rsplit(" ", 1)[1]
    guard.flush()
    result = run(tmp_path, "approve", fingerprint[:6], "--note", "the app's delete button")
    assert result.exit_code == 0, result.output
    entry = read_list(path).statements[fingerprint]
    assert (entry.sql, entry.roles, entry.note) == ("delete from todos where id = $1", ["authenticated"], "the app's delete button")
    assert fingerprint not in read_list(path).refused
    guard.load()
    guard.check("authenticated", True, "DELETE FROM todos WHERE id = 99", "tcp")  # allowed now
    listed = run(tmp_path, "list")
    assert fingerprint in listed.output and "mode enforce" in listed.output
    assert run(tmp_path, "remove", fingerprint).exit_code == 0
    assert read_list(path).statements == {}


def test_approve_by_sql_and_set_modes(tmp_path):
    path = _project(tmp_path)
    assert run(tmp_path, "approve", "--sql", "select 1; select * from t where a = 'x'", "--role", "anonymous").exit_code == 0
    assert [e.roles for e in read_list(path).statements.values()] == [["anonymous"], ["anonymous"]]
    assert run(tmp_path, "mode", "warn").exit_code == 0
    assert run(tmp_path, "mode", "enforce", "--role", "neondb_owner").exit_code == 0
    content = read_list(path)
    assert content.mode == "warn" and content.modes == {"neondb_owner": "enforce"}
    assert AllowList(path).mode_for("neondb_owner", jwt=False) == "enforce"
    assert run(tmp_path, "approve", "zzzz").exit_code != 0


def test_diff_shows_what_learning_added_since_the_commit(tmp_path):
    path = _project(tmp_path)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    run(tmp_path, "approve", "--sql", "select 1")
    subprocess.run(["git", "add", path.name], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "list"], cwd=tmp_path, check=True)
    assert run(tmp_path, "diff").exit_code == 0
    learner = AllowList(path, "learn")
    learner.check("authenticated", True, "select * from todos where done = false", "http")
    learner.flush()
    result = run(tmp_path, "diff")
    assert result.exit_code == 1
    assert result.output.startswith("+ ") and "select * from todos where done = $1" in result.output
