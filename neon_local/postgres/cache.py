"""Where neon-local keeps what it can rebuild: initdb templates, shadow installs, copies of binaries."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Initdb templates and shadow installs. Root's lives where `nobody` can reach it (see cluster.RunAs)."""
    if os.environ.get("NEON_LOCAL_CACHE_DIR"):
        path = Path(os.environ["NEON_LOCAL_CACHE_DIR"])
    elif os.geteuid() == 0:
        path = Path("/var/cache/neon-local")
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "neon-local"
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        path.chmod(0o755)
    return path
