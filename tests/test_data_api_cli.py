"""The Data API in the product: `neon-local up` serves /<db>/rest/v1 (status prints it), `data-api types`,
`data-api refresh` and `POST /data-api/refresh` work against the running emulator, and a token from
`neon-local token alice` is enough."""

from __future__ import annotations

import json

import httpx
import psycopg

from neon_local.cli.common import socket_conninfo
from neon_local.settings import load_settings
from test_cli import neon_local, project  # noqa: F401 (fixture)

TABLE_SQL = """
create table todos (id serial primary key, user_id text not null default auth.user_id(), task text not null);
alter table todos enable row level security;
create policy crud on todos to authenticated using (user_id = auth.user_id()) with check (user_id = auth.user_id());
"""


def test_up_serves_the_data_api(project):
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(neon_local("status", "--json", cwd=project).stdout)
        url = state["urls"]["data_api"]
        assert url.endswith("/neondb/rest/v1") and "Data API" in up.stdout
        with psycopg.connect(state["urls"]["owner"], autocommit=True) as conn:
            conn.execute(TABLE_SQL)  # the bootstrap's default privileges grant it to authenticated
        token = neon_local("token", "alice", cwd=project).stdout.strip()
        headers = {"Authorization": f"Bearer {token}", "Prefer": "return=representation"}
        created = httpx.post(f"{url}/todos?select=task,user_id", json={"task": "first"}, headers=headers)
        assert created.status_code == 201 and created.json() == [{"task": "first", "user_id": "user_alice"}]
        assert httpx.get(f"{url}/todos?select=task", headers=headers).json() == [{"task": "first"}]
        assert httpx.get(f"{url}/todos").json() == []  # no token: the anonymous role, which no policy admits
        types = neon_local("data-api", "types", "--lang", "ts", cwd=project)
        assert types.returncode == 0 and "todos: {" in types.stdout and "task: string" in types.stdout
        refresh = neon_local("data-api", "refresh", cwd=project)
        assert refresh.returncode == 0 and "reloads" in refresh.stdout
        assert httpx.get(f"{url}/todos?select=task", headers=headers).status_code == 200
        # A config change is no DDL: the HTTP refresh endpoint makes the Data API read it (a page may not).
        httpx.post(f"{url}/todos", json={"task": "second"}, headers=headers)
        with psycopg.connect(socket_conninfo(load_settings(cwd=project, env={}), None), autocommit=True) as conn:
            conn.execute("alter role authenticator set pgrst.db_max_rows = '1'")  # what Neon's Console settings do
        assert len(httpx.get(f"{url}/todos", headers=headers).json()) == 2
        refresh_url = url.replace("/neondb/rest/v1", "/data-api/refresh")
        foreign = httpx.post(refresh_url, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and "refuses" in foreign.json()["message"]
        refreshed = httpx.post(refresh_url + "?db=neondb")
        assert refreshed.status_code == 200 and refreshed.json()["db"] == "neondb"
        assert len(httpx.get(f"{url}/todos", headers=headers).json()) == 1
    finally:
        neon_local("down", cwd=project)
