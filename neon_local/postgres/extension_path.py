"""Make the pg_session_jwt stub installable by CREATE EXTENSION without writing to system directories.

PostgreSQL 18 has `extension_control_path`, so the server is simply pointed at the stub's folder.
Older servers find extensions only under their share directory, which they locate relative to the
real path of their own executable. For those, a "shadow" install is built once in the cache: a copy
of the `postgres` executable (symlinks would be resolved back to the original) beside a share
directory made of symlinks to the real one plus the stub's files. Nothing outside the cache changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from neon_local.postgres.binaries import PgBinaries
from neon_local.postgres.cache import cache_dir

STUB_DIR = Path(__file__).parent / "extension"
STUB_FILES_DIR = STUB_DIR / "extension"


def server_command(binaries: PgBinaries) -> list[str]:
    """The postgres executable and the arguments that make the stub visible to it."""
    if binaries.major >= 18:
        return [str(binaries.tool("postgres")), "-c", f"extension_control_path={STUB_DIR}:$system"]
    return [str(shadow_install(binaries))]


def _pg_config(binaries: PgBinaries) -> dict[str, Path]:
    tool = binaries.tool("pg_config")
    if not tool.is_file():
        raise FileNotFoundError(f"{tool} is missing; neon-local needs pg_config to install the pg_session_jwt stub on PostgreSQL {binaries.major}.")
    out = subprocess.run([tool, "--bindir", "--sharedir", "--pkglibdir"], capture_output=True, text=True, check=True).stdout
    bindir, sharedir, pkglibdir = (Path(line) for line in out.split())
    return {"bindir": bindir, "sharedir": sharedir, "pkglibdir": pkglibdir}


def shadow_install(binaries: PgBinaries) -> Path:
    """Build (once) and return the shadow `postgres` executable for a pre-18 server."""

    paths = _pg_config(binaries)
    stub_names = sorted(p.name for p in STUB_FILES_DIR.iterdir())
    key = hashlib.sha256(f"{binaries.bin_dir}:{binaries.version}:{stub_names}".encode()).hexdigest()[:12]
    root = cache_dir() / "shadow" / f"pg{binaries.version}-{key}"
    executable = root / paths["bindir"].relative_to("/") / "postgres"
    if executable.is_file():
        return executable
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shadow-", dir=root.parent))
    staging.chmod(0o755)  # the server may run as `nobody` (see cluster.RunAs)
    _mirror(staging, paths, binaries)
    try:
        os.rename(staging, root)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return executable


def _mirror(staging: Path, paths: dict[str, Path], binaries: PgBinaries) -> None:
    def inside(path: Path) -> Path:
        return staging / path.relative_to("/")

    inside(paths["bindir"]).mkdir(parents=True)
    shutil.copy2(binaries.tool("postgres"), inside(paths["bindir"]) / "postgres")
    inside(paths["pkglibdir"]).parent.mkdir(parents=True, exist_ok=True)
    if not inside(paths["pkglibdir"]).exists():
        inside(paths["pkglibdir"]).symlink_to(paths["pkglibdir"])
    share = inside(paths["sharedir"])
    share.mkdir(parents=True, exist_ok=True)
    for entry in paths["sharedir"].iterdir():
        if entry.name != "extension":
            (share / entry.name).symlink_to(entry)
    extension = share / "extension"
    extension.mkdir()
    for source in [*(paths["sharedir"] / "extension").iterdir(), *STUB_FILES_DIR.iterdir()]:
        (extension / source.name).symlink_to(source)
