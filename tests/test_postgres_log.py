"""postgres.log stays small: pooled /sql requests write nothing to it, and past a limit it keeps only its tail."""

from __future__ import annotations

import pytest

from http_support import sql_http  # noqa: F401 (fixture)
from neon_local.postgres.cluster import trim_log


def _new_lines(log_file, since: int) -> list[str]:
    """What Postgres wrote after byte `since`, without the periodic checkpoint reports (log_checkpoints)."""
    with open(log_file, "rb") as log:
        log.seek(since)
        return [line for line in log.read().decode(errors="replace").splitlines() if "checkpoint" not in line]


@pytest.mark.asyncio
async def test_sql_requests_write_nothing_to_postgres_log(sql_http):
    """Neon's reset between pooled requests used to begin with a ROLLBACK, which outside a transaction
    logs "WARNING: there is no transaction in progress": a line per request, without bound."""
    token = sql_http.token()
    requests = [
        lambda: sql_http.query("select 1 as one"),
        lambda: sql_http.query("select auth.user_id() as me", conn=sql_http.jwt_conn_string(), token=token),
        lambda: sql_http.post({"queries": [{"query": "select 1"}, {"query": "select 2"}]}),
        lambda: sql_http.query("BEGIN"),  # left open: the reset rolls it back, which is no warning
    ]
    for request in requests:  # first uses: connections opened, the stub's state made
        await request()
    size = sql_http.cluster.log_file.stat().st_size
    for _ in range(25):
        for request in requests:
            await request()
    assert _new_lines(sql_http.cluster.log_file, size) == []


def test_trim_keeps_the_tail_from_a_line_start(tmp_path):
    log = tmp_path / "postgres.log"
    log.write_bytes(b"".join(b"line %05d\n" % n for n in range(10_000)))  # 110,000 bytes
    assert not trim_log(log, limit=200_000, keep=1000)
    assert trim_log(log, limit=100_000, keep=1000)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("(neon-local: earlier lines removed")
    assert lines[1:] == [f"line {n:05d}" for n in range(10_000 - len(lines) + 1, 10_000)]
    assert 900 < log.stat().st_size < 1100


def test_trim_of_a_missing_log_does_nothing(tmp_path):
    assert not trim_log(tmp_path / "absent.log")
