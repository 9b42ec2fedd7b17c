"""The cached template cluster: initdb plus the Neon-shaped bootstrap, done once so new data dirs are copies.

A template is keyed by the Postgres install, by the settings the bootstrap reads (database, owner,
password, JWT roles, pg_session_jwt version) and by the stub's files, so changing any of them builds a
new one. Building happens in a staging directory renamed into place at the end, so parallel test
workers racing to build the same template each end up with a complete one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from neon_local.postgres import session_jwt
from neon_local.postgres.binaries import PgBinaries
from neon_local.postgres.cache import cache_dir
from neon_local.postgres.cluster import PostgresCluster, RunAs, initdb
from neon_local.postgres.stub_upgrade import stamp, stub_digest
from neon_local.settings import Settings

FORMAT = 8  # bump when what a template holds changes without its inputs changing


def _key(binaries: PgBinaries, settings: Settings) -> str:
    digest = hashlib.sha256()
    for part in (FORMAT, binaries.bin_dir, binaries.version, settings.database, settings.owner,
                 settings.owner_password, settings.jwt_roles, sorted(settings.role_specs.items()), settings.session_jwt_version,
                 stub_digest(binaries.major)):
        digest.update(repr(part).encode())
    return digest.hexdigest()[:12]


async def neon_template(binaries: PgBinaries, settings: Settings) -> Path:
    """The path of a stopped cluster shaped like a Neon branch for `settings`, built on first use."""
    run_as = RunAs()
    binaries = run_as.reachable(binaries)
    target = cache_dir() / "templates" / f"pg{binaries.version}-{_key(binaries, settings)}"
    if (target / "PG_VERSION").is_file():
        return target
    from neon_local.postgres.bootstrap import bootstrap  # psycopg (~0.1 s): only to build a template

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        run_as.give(staging)
        pgdata = staging / "pgdata"
        initdb(binaries, run_as, pgdata)
        builder = PostgresCluster(binaries, pgdata, staging / "build.log")
        builder.prepare(pgdata)
        await builder.start()
        try:
            await bootstrap(builder, settings)
        finally:
            await builder.stop()
        for leftover in ("postmaster.opts", session_jwt.SECRET_FILENAME):
            (pgdata / leftover).unlink(missing_ok=True)
        _drop_spare_wal(binaries, pgdata)
        stamp(pgdata, binaries.major)  # copies hold the current stub: no upgrade at their first start
        try:
            os.rename(pgdata, target)
        except OSError:  # another process built the same template first: keep theirs
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _drop_spare_wal(binaries: PgBinaries, pgdata: Path) -> None:
    """Keep only the WAL segment of the last checkpoint's redo point. A cleanly stopped cluster needs no other:
    the rest are segments recycled for later writes, which Postgres makes again when it needs them. Every
    copy of the template (each new data dir, each test database's cluster) then copies 6 of 37 MB less."""
    control = subprocess.run([str(binaries.tool("pg_controldata")), "-D", str(pgdata)], capture_output=True, text=True,
                             check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in control.splitlines())}
    if fields.get("Database cluster state") != "shut down":
        return
    keep = fields["Latest checkpoint's REDO WAL file"]
    for segment in (pgdata / "pg_wal").iterdir():
        if re.fullmatch(r"[0-9A-F]{24}", segment.name) and segment.name != keep:
            segment.unlink()
