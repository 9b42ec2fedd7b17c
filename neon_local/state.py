"""state.json: how commands find the emulator running for a data directory.

Kept apart from app.py so that `status`, `down` and `token` read it without importing the server.
"""

from __future__ import annotations

import json
from pathlib import Path

STATE_FILENAME = "state.json"


def is_live_neon_local(pid: int) -> bool:
    """True for a running (not zombie) neon-local process; a pid reused by another program does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and (b"neon_local" in cmdline or b"neon-local" in cmdline)


def read_state(data_dir: Path) -> dict | None:
    """The running emulator's state for this data dir, or None when none runs (stale files are ignored)."""
    try:
        state = json.loads((data_dir / STATE_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and is_live_neon_local(state.get("pid", -1)) else None
