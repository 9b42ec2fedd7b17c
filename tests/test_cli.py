"""The neon-local command as a user runs it: a real process in an empty directory, no config file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request

import psycopg
import pytest


def neon_local(*args: str, cwd, env=None, input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "neon_local", *args], cwd=cwd, env=full_env, input=input,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    return tmp_path


def test_version(project):
    result = neon_local("--version", cwd=project)
    assert result.returncode == 0 and result.stdout.startswith("neon-local, version ")


def test_up_detach_status_psql_down_reset(project):
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert up.returncode == 0, up.stderr
    assert "Owner URL" in up.stdout and "neon-local token alice" in up.stdout and "Running in the background" in up.stdout
    try:
        status = neon_local("status", "--json", cwd=project)
        state = json.loads(status.stdout)
        assert status.returncode == 0 and state["running"] is True
        assert state["data_dir"] == str(project.resolve() / ".neon-local")
        assert state["postgres"]["version"].startswith("18.")
        with psycopg.connect(state["urls"]["owner"]) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == ("neondb_owner", "neondb")
        again = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
        assert again.returncode == 1 and "already running" in again.stderr
        human = neon_local("status", cwd=project)
        assert f"Postgres {state['pg_port']}" in human.stdout
        owner = neon_local("psql", "-XAtc", "select current_user", cwd=project)  # the system's psql, over TLS
        assert owner.returncode == 0 and owner.stdout.strip() == "neondb_owner", owner.stderr
        no_psql_on_path = {"PATH": str(project)}  # the embedded psql, which has no TLS
        alice = neon_local("psql", "--as", "alice", "-XAtc", "select auth.user_id()", cwd=project, env=no_psql_on_path)
        assert alice.returncode == 0 and alice.stdout.strip() == "user_alice", alice.stderr
        assert "using the embedded one" in alice.stderr
        refused = neon_local("reset", "--yes", cwd=project)
        assert refused.returncode == 1 and "neon-local down" in refused.stderr
    finally:
        down = neon_local("down", cwd=project)
    assert down.returncode == 0 and "Stopped neon-local" in down.stdout
    stopped = neon_local("status", "--json", cwd=project)
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["running"] is False
    reset = neon_local("reset", cwd=project, input="y\n")
    assert reset.returncode == 0 and "Deleted" in reset.stdout
    assert not (project / ".neon-local" / "pgdata").exists()


def _banner_url(up: subprocess.CompletedProcess, label: str) -> str:
    return next(line.split()[-1] for line in up.stdout.splitlines() if line.strip().startswith(label))


def test_up_detach_answers_at_once_and_down_keeps_what_was_committed(project):
    """When `up -d` returns, every endpoint it printed answers (no retry here); `down` then `up` keeps committed rows."""
    up = neon_local("up", "-d", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert up.returncode == 0, up.stderr
    try:
        owner_url, sql_url = _banner_url(up, "Owner URL"), _banner_url(up, "SQL over HTTP")
        request = urllib.request.Request(sql_url, method="POST", headers={"Neon-Connection-String": owner_url},
                                         data=json.dumps({"query": "create table kept as select 'committed' as v", "params": []}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and json.load(response)["command"] == "SELECT"
        with psycopg.connect(owner_url, connect_timeout=30) as conn:
            assert conn.execute("select v from kept").fetchall() == [("committed",)]
    finally:
        down = neon_local("down", cwd=project)
    assert down.returncode == 0 and "Stopped neon-local" in down.stdout
    again = neon_local("up", "-d", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert again.returncode == 0, again.stderr
    try:
        with psycopg.connect(_banner_url(again, "Owner URL"), connect_timeout=30) as conn:
            assert conn.execute("select v from kept").fetchall() == [("committed",)]
    finally:
        neon_local("down", cwd=project)


def test_down_right_after_up_detach_stops_everything_in_order(project):
    """`down` while the HTTP side may still be loading: neon-local stops Postgres (fast shutdown) before it exits."""
    up = neon_local("up", "-d", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert up.returncode == 0, up.stderr
    state = json.loads((project / ".neon-local" / "state.json").read_text())
    down = neon_local("down", cwd=project)
    assert down.returncode == 0 and "Stopped neon-local" in down.stdout
    assert not os.path.exists(f"/proc/{state['postgres']['pid']}")
    assert not (project / ".neon-local" / "state.json").exists()
    assert "database system is shut down" in (project / ".neon-local" / "postgres.log").read_text()


def test_port_in_use_is_a_clear_error(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = neon_local("up", "--ephemeral", "--pg-port", "0", cwd=project, env={"NEON_LOCAL_HTTP_PORT": str(port)})
    assert result.returncode == 1
    assert f"error: port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--http-port PORT" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_is_a_clear_error(project):
    (project / "neon_local.toml").write_text("http_port = 'eighty'\n")
    result = neon_local("status", cwd=project)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {project / 'neon_local.toml'}: http_port must be a port number from 0 to 65535, got 'eighty'."


def test_bad_flag_value_is_a_clear_error(project):
    result = neon_local("up", "--compat", "loose", cwd=project)
    assert result.returncode == 2 and "'loose' is not one of 'neon', 'extended'" in result.stderr


def test_up_again_after_neon_local_was_killed(project):
    """kill -9 of neon-local leaves its Postgres behind (or stops it via the parent-death signal); `up` recovers either way."""
    first = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert first.returncode == 0, first.stderr
    state = json.loads(neon_local("status", "--json", cwd=project).stdout)
    with psycopg.connect(state["urls"]["owner"], autocommit=True) as conn:
        conn.execute("create table kept (v text); insert into kept values ('before kill -9')")
    os.kill(state["pid"], 9)
    second = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
    try:
        assert second.returncode == 0, second.stderr
        state = json.loads(neon_local("status", "--json", cwd=project).stdout)
        with psycopg.connect(state["urls"]["owner"]) as conn:
            assert conn.execute("select v from kept").fetchall() == [("before kill -9",)]
    finally:
        neon_local("down", cwd=project)


def test_an_ephemeral_instance_is_found_by_status_and_down(project):
    up = neon_local("up", "--detach", "--ephemeral", "--http-port", "0", "--pg-port", "0", "--database", "appdb", cwd=project)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(neon_local("status", "--json", cwd=project).stdout)
        assert state["running"] and state["ephemeral"] and state["database"] == "appdb"
        assert not state["data_dir"].startswith(str(project))  # the data itself lives elsewhere (in memory)
    finally:
        down = neon_local("down", cwd=project)
    assert down.returncode == 0 and "Stopped neon-local" in down.stdout
    assert not os.path.exists(state["data_dir"])


def test_only_up_takes_every_setting_flag(project):
    assert "--owner-password" in neon_local("up", "--help", cwd=project).stdout
    status_help = neon_local("status", "--help", cwd=project).stdout
    assert "--data-dir" in status_help and "--owner-password" not in status_help
