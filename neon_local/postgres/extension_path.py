"""Make neon-local's extensions installable by CREATE EXTENSION without writing to system directories.

Three sets are offered, in this order of precedence: the pg_session_jwt stub (ahead of the server's own;
its C build when neon-local's module was built for this server, else the SQL one),
the server's own extensions, then (see postgres.contrib) neon-local's pgcrypto and uuid-ossp when their
module was built for this server, and placeholders that explain how to get a Neon-supported extension
the server lacks. A server's own extension therefore always wins over neon-local's.

PostgreSQL 18 has `extension_control_path`, so the server is simply pointed at these folders.
Older servers find extensions only under their share directory, which they locate relative to the
real path of their own executable. For those, a "shadow" install is built once in the cache: a copy
of the `postgres` executable (symlinks would be resolved back to the original) beside a share
directory made of symlinks to the real one plus neon-local's files. Nothing outside the cache changes.
C modules are found through `dynamic_library_path`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from neon_local.postgres import contrib
from neon_local.postgres.binaries import PgBinaries
from neon_local.postgres.cache import cache_dir

log = logging.getLogger(__name__)

STUB_DIR = Path(__file__).parent / "extension"
STUB_FILES_DIR = STUB_DIR / "extension"  # the SQL stub, for any server (and the only one for --upstream)
COMPILED_STUB_DIR = STUB_DIR / "compiled"
COMPILED_STUB_FILES_DIR = COMPILED_STUB_DIR / "extension"  # the C build's scripts


def stub_root(major: int) -> Path:
    """The folder whose extension/ holds the pg_session_jwt files a PostgreSQL `major` server gets."""
    return COMPILED_STUB_DIR if contrib.session_jwt_module_built(major) else STUB_DIR


def stub_files_dir(major: int) -> Path:
    return stub_root(major) / "extension"


def server_command(binaries: PgBinaries) -> list[str]:
    """The postgres executable and the arguments that make neon-local's extensions visible to it."""
    placeholders = contrib.placeholder_root()
    library_path = ["-c", f"dynamic_library_path=$libdir:{contrib.library_dir(binaries.major)}"]
    if binaries.major >= 18:
        own = [str(contrib.CONTRIB_DIR)] if contrib.own_files(binaries.major) else []
        if not own:
            _warn_if_pgcrypto_missing(binaries)
        control_path = ":".join([str(stub_root(binaries.major)), "$system", *own, str(placeholders)])
        return [str(binaries.tool("postgres")), "-c", f"extension_control_path={control_path}", *library_path]
    return [str(shadow_install(binaries, placeholders)), *library_path]


def _warn_if_pgcrypto_missing(binaries: PgBinaries) -> None:
    """Said at start-up because migrations fail on it much later: a server without contrib, and neon-local's own
    module was not built (no compiler at install)."""
    try:
        has_pgcrypto = (_pg_config(binaries)["sharedir"] / "extension" / "pgcrypto.control").is_file()
    except (OSError, subprocess.CalledProcessError):
        return
    if not has_pgcrypto:
        log.warning("pgcrypto and uuid-ossp are not available: %s has no contrib modules and neon-local's own were not "
                    "built. %s", binaries.describe(), contrib.how_to_get("pgcrypto"))


def _pg_config(binaries: PgBinaries) -> dict[str, Path]:
    tool = binaries.tool("pg_config")
    if not tool.is_file():
        raise FileNotFoundError(f"{tool} is missing; neon-local needs pg_config to install the pg_session_jwt stub on PostgreSQL {binaries.major}.")
    out = subprocess.run([tool, "--bindir", "--sharedir", "--pkglibdir"], capture_output=True, text=True, check=True).stdout
    bindir, sharedir, pkglibdir = (Path(line) for line in out.split())
    return {"bindir": bindir, "sharedir": sharedir, "pkglibdir": pkglibdir}


def shadow_install(binaries: PgBinaries, placeholders: Path) -> Path:
    """Build (once) and return the shadow `postgres` executable for a pre-18 server."""
    paths = _pg_config(binaries)
    offered = [*stub_files_dir(binaries.major).iterdir(), *contrib.own_files(binaries.major), placeholders]
    key = hashlib.sha256(f"{binaries.bin_dir}:{binaries.version}:{sorted(map(str, offered))}".encode()).hexdigest()[:12]
    root = cache_dir() / "shadow" / f"pg{binaries.version}-{key}"
    executable = root / paths["bindir"].relative_to("/") / "postgres"
    if executable.is_file():
        return executable
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shadow-", dir=root.parent))
    staging.chmod(0o755)  # the server may run as `nobody` (see cluster.RunAs)
    _mirror(staging, paths, binaries, placeholders)
    try:
        os.rename(staging, root)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return executable


def _mirror(staging: Path, paths: dict[str, Path], binaries: PgBinaries, placeholders: Path) -> None:
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
    for source in stub_files_dir(binaries.major).iterdir():
        (extension / source.name).symlink_to(source)
    # The same precedence as extension_control_path on 18: an extension comes from the first set that has it.
    taken = {p.name.split(".control")[0] for p in extension.glob("*.control")}
    for files in [(paths["sharedir"] / "extension").iterdir(), contrib.own_files(binaries.major),
                  (placeholders / "extension").iterdir()]:
        files = list(files)
        names = {p.name.removesuffix(".control") for p in files if p.name.endswith(".control")} - taken
        for source in files:
            if _extension_name(source.name) in names or not source.name.endswith((".control", ".sql")):
                (extension / source.name).symlink_to(source)
        taken |= names


def _extension_name(filename: str) -> str:
    """pg_trgm.control, pg_trgm--1.6.sql, pg_trgm--1.5--1.6.sql -> pg_trgm."""
    return filename.removesuffix(".control").split("--")[0]
