"""Shared fixtures: one real Postgres (and one running emulator) per test session, on free ports."""

from __future__ import annotations

import tempfile
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
    return Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0)


@pytest.fixture(scope="session")
async def cluster(settings):
    """A started Postgres shaped like a Neon branch (neondb, neondb_owner, authenticated, anonymous)."""
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    pg = PostgresCluster(find_binaries(settings.pg_bin), data_dir / "pgdata", data_dir / "postgres.log")
    pg.prepare(await neon_template(pg.binaries, settings))
    await pg.start()
    await bootstrap(pg, settings)
    yield pg
    await pg.stop()
