"""Shared fixtures: one real Postgres (and one running emulator) per test session, on free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neon_local.postgres.binaries import find_binaries
from neon_local.postgres.bootstrap import bootstrap
from neon_local.postgres.cluster import PostgresCluster
from neon_local.postgres.template import neon_template
from neon_local.settings import Settings


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("neon-local")
    pg_bin = os.environ.get("NEON_LOCAL_PG_BIN")  # e.g. Debian's PostgreSQL 15, to run the tests on another engine
    return Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, pg_bin=Path(pg_bin) if pg_bin else None)


async def start_cluster(settings: Settings, directory: Path) -> PostgresCluster:
    """A started Postgres in `directory`, shaped like a Neon branch (neondb, neondb_owner, authenticated, anonymous)."""
    directory.mkdir(parents=True, exist_ok=True)
    pg = PostgresCluster(find_binaries(settings.pg_bin), directory / "pgdata", directory / "postgres.log")
    pg.prepare(await neon_template(pg.binaries, settings))
    await pg.start()
    await bootstrap(pg, settings)
    return pg


@pytest.fixture(scope="session")
async def cluster(settings):
    """The session's Postgres, shared by every test that only needs a database."""
    pg = await start_cluster(settings, settings.resolved_data_dir)
    yield pg
    await pg.stop()
