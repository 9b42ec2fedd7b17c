"""The whole run: read the query files, describe them on the running emulator, write the module in one step."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from psycopg import Connection

from neon_local.codegen.annotations import read_queries
from neon_local.codegen.describe import Described, describe_all
from neon_local.codegen.typescript import module


def generate(conn: Connection, queries: Path) -> tuple[str, list[Described]]:
    described = describe_all(conn, read_queries(queries))
    return module(described, f"{queries.name}/*.sql"), described


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old module or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
