"""The allow-list file (`neon_local.allowlist.toml`): read, write, and the entries it holds.

It is meant for code review, so it is plain TOML written in a stable order: the default mode,
per-role modes, one `[statements.<fingerprint>]` table per approved statement, and the latest
refused statements under `[refused.<fingerprint>]` so `neon-local allowlist approve` knows their SQL.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from neon_local.errors import NeonLocalError

__all__ = ["ALLOWLIST_FILENAME", "MODES", "Entry", "ListFile", "parse_list", "read_list", "write_list"]

ALLOWLIST_FILENAME = "neon_local.allowlist.toml"
MODES = ("off", "learn", "warn", "enforce")
LIMIT_KEYS = {"rate_limit", "rate_limit_identity"}
MAX_REFUSED = 100  # refused statements remembered in the file, newest kept
HEADER = """\
# neon-local's query allow-list: review it like code (README: "Lock down client SQL").
# mode: off | learn | warn | enforce, for JWT roles; [modes] sets one role's (the owner only if named there).
# [limits] rate_limit / rate_limit_identity override the settings of the same names.
# Edit with `neon-local allowlist list|approve|remove|mode|diff`; a running neon-local reloads it within a second.
"""


@dataclass
class Entry:
    sql: str
    roles: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    first_seen: str = ""
    last_seen: str = ""
    count: int = 0
    note: str = ""


@dataclass
class ListFile:
    mode: str | None = None
    modes: dict[str, str] = field(default_factory=dict)
    statements: dict[str, Entry] = field(default_factory=dict)
    refused: dict[str, Entry] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)  # rate_limit / rate_limit_identity, over the settings


class ListFileError(NeonLocalError, ValueError):
    """The file is not a valid allow-list; the message names the file and the key."""


def read_list(path: Path) -> ListFile:
    """The file's content (an empty list if there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ListFile()
    except UnicodeDecodeError as exc:
        raise ListFileError(f"{path} is not UTF-8 text: {exc}") from None
    return parse_list(text, str(path))


def parse_list(text: str, origin: str) -> ListFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ListFileError(f"{origin} is not valid TOML: {exc}") from None
    mode = raw.get("mode")
    modes = raw.get("modes", {})
    for where, value in [("mode", mode), *((f"modes.{k}", v) for k, v in modes.items())]:
        if value is not None and value not in MODES:
            raise ListFileError(f"{origin}: {where} must be one of {', '.join(MODES)}, got {value!r}")
    limits = raw.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - LIMIT_KEYS or not all(isinstance(v, str) for v in limits.values()):
        raise ListFileError(f"{origin}: [limits] takes only {', '.join(sorted(LIMIT_KEYS))}, as strings like \"neon\"")
    return ListFile(mode, dict(modes), _entries(origin, raw.get("statements", {})), _entries(origin, raw.get("refused", {})),
                    dict(limits))


def _entries(origin: str, table: dict) -> dict[str, Entry]:
    known = set(Entry.__dataclass_fields__)
    entries = {}
    for fingerprint, values in table.items():
        if not isinstance(values, dict) or "sql" not in values or set(values) - known:
            raise ListFileError(f"{origin}: [statements.{fingerprint}] needs sql and only the keys {sorted(known)}")
        entries[fingerprint] = Entry(**values)
    return entries


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def _table(name: str, fingerprint: str, entry: Entry) -> str:
    lines = [f"\n[{name}.{_string(fingerprint) if not fingerprint.isalnum() else fingerprint}]", f"sql = {_string(entry.sql)}"]
    lines.append("roles = [" + ", ".join(map(_string, sorted(entry.roles))) + "]")
    lines.append("paths = [" + ", ".join(map(_string, sorted(entry.paths))) + "]")
    lines += [f"first_seen = {_string(entry.first_seen)}", f"last_seen = {_string(entry.last_seen)}", f"count = {entry.count}"]
    lines.append(f"note = {_string(entry.note)}")
    return "\n".join(lines) + "\n"


def render(content: ListFile) -> str:
    out = [HEADER]
    if content.mode is not None:
        out.append(f"mode = {_string(content.mode)}\n")
    if content.modes:
        out.append("\n[modes]\n" + "".join(f"{_string(role)} = {_string(mode)}\n" for role, mode in sorted(content.modes.items())))
    if content.limits:
        out.append("\n[limits]\n" + "".join(f"{key} = {_string(value)}\n" for key, value in sorted(content.limits.items())))
    out += [_table("statements", fp, entry) for fp, entry in sorted(content.statements.items(), key=lambda kv: kv[1].sql)]
    refused = sorted(content.refused.items(), key=lambda kv: kv[1].last_seen)[-MAX_REFUSED:]
    out += [_table("refused", fp, entry) for fp, entry in refused]
    return "".join(out)


def write_list(path: Path, content: ListFile) -> None:
    write_rendered(path, render(content))


def write_rendered(path: Path, text: str) -> float:
    """Replace the file with `text` (a rendered list) atomically, so a reader never sees half of it; its new mtime."""
    descriptor, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)
    return path.stat().st_mtime
