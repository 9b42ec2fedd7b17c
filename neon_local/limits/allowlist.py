"""The query allow-list at run time: the mode per role, the check per statement, learning, live reload.

A JWT role's statements are checked by fingerprint against `neon_local.allowlist.toml`; the owner
and other password roles only when [modes] names them. `learn` records what it sees (written to
the file within a second, off the hot path), `warn` serves and logs, `enforce` refuses with
SQLSTATE 42501 and the command that approves the statement. Functions are trusted once allowed:
SQL they run (EXECUTE of dynamic text included) is not seen by the proxy.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import datetime
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from neon_local.errors import NeonLocalError
from neon_local.limits.fingerprint import Fingerprinter, ParsedStatement, StatementError
from neon_local.limits.store import ALLOWLIST_FILENAME, Entry, ListFile, ListFileError, read_list, render, write_rendered

__all__ = ["AllowList", "Refused"]

log = logging.getLogger(__name__)
PARSER_HINT = ("The allow-list reads statements with pglast (PostgreSQL 17's parser) and refuses, in enforce mode, "
               "what it cannot read.")
RELOAD_INTERVAL = 1.0  # seconds between checks of the file's mtime (in a background task)
STRINGS_HINT = ("Run SET standard_conforming_strings = on (a role or database default that turns it off: "
                "ALTER ROLE/DATABASE ... RESET standard_conforming_strings); write backslash escapes as E'...' strings.")
# The one statement let through while standard_conforming_strings is off, without the list: it only turns it back on,
# and reads the same with it on or off (no backslash, no quote but around the value).
_STRINGS_ON = re.compile(rb"\s*set\s+(?:session\s+|local\s+)?standard_conforming_strings\s*(?:=|to)\s*"
                         rb"(?:on|true|'on'|'true')\s*;?\s*\Z", re.I)


class Refused(NeonLocalError):
    """A statement the allow-list refuses: Postgres error fields for the client."""

    def __init__(self, code: str, message: str, hint: str | None = None, detail: str | None = None,
                 position: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.detail, self.position = code, message, hint, detail, position

    def fields(self) -> dict[str, str]:
        found = {"S": "ERROR", "V": "ERROR", "C": self.code, "M": self.message, "D": self.detail, "H": self.hint,
                 "P": None if self.position is None else str(self.position)}
        return {k: v for k, v in found.items() if v is not None}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def refusal(role: str, statement: ParsedStatement) -> Refused:
    fp = statement.fingerprint
    return Refused("42501", f'statement not in the allow-list for role "{role}" (fingerprint {fp}); '
                            f"approve it with: neon-local allowlist approve {fp}",
                   hint="neon-local allowlist list shows what is approved; learn mode records what your tests run.",
                   detail=f"normalised statement: {statement.normalized()}")


def strings_refusal(maybe: bool) -> Refused:
    """Statements refused while standard_conforming_strings is off (or, `maybe`, may be): with it off Postgres reads
    `'...\\'...'` otherwise than the parser that fingerprints it, so an approved text could run as another statement."""
    if maybe:
        return Refused("42501", "statement with a backslash sent before Postgres answered the statements ahead of it, "
                                "which may turn standard_conforming_strings off; the allow-list reads SQL with it on",
                       hint="Send it once those are answered, or pass the value as a parameter.")
    return Refused("42501", "standard_conforming_strings is off in this session, and the allow-list reads SQL with it "
                            "on: statements are refused until it is on again", hint=STRINGS_HINT)


class AllowList:
    """`check(role, jwt, text, path)` raises Refused or returns; `mode_for(role, jwt)` says whether to call it."""

    def __init__(self, path: Path, default_mode: str = "off", on_load: Callable[[ListFile], None] | None = None) -> None:
        self.path = path
        self.on_load = on_load  # told of each newly read file (the rate limits it sets)
        self.default_mode = default_mode
        self.fingerprints = Fingerprinter()
        # (event, path) -> how many: allowed, learned, warned, refused; path is http (/sql), tcp, ws or data_api
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.recent: collections.deque[dict] = collections.deque(maxlen=50)  # the latest refusals
        self._content = ListFile()
        self._mtime: float | None = None
        self._dirty = False
        self._saving = threading.Lock()  # the watcher's thread and a synchronous caller may both save
        self._watcher: asyncio.Task | None = None
        self.load()
        atexit.register(self.flush)

    def load(self) -> None:
        """Read the file (blocking: at start); a broken file keeps the last good list."""
        try:
            mtime = _mtime(self.path)
            content = read_list(self.path)
        except (OSError, ListFileError) as exc:
            log.error("allow-list not reloaded, keeping the previous one: %s", exc)
            return
        self._adopt(content, mtime)

    def _adopt(self, content: ListFile, mtime: float | None) -> None:
        self._content, self._mtime = content, mtime
        if self.on_load is not None:
            self.on_load(content)

    def mode_for(self, role: str, jwt: bool) -> str:
        self._ensure_watcher()
        content = self._content
        if role in content.modes:
            return content.modes[role]
        return (content.mode or self.default_mode) if jwt else "off"

    def check(self, role: str, jwt: bool, text: str, path: str, note: str = "") -> None:
        """`note`: what a reviewer reads next to a statement first recorded here (the Data API's request shape)."""
        mode = self.mode_for(role, jwt)
        if mode == "off":
            return
        try:
            statements = self.fingerprints.statements(text)
        except StatementError as exc:
            if mode == "enforce":
                self.counts["refused", path] += 1
                raise Refused(exc.code, exc.message, position=exc.position, hint=PARSER_HINT) from None
            return  # learn and warn: Postgres answers it as it would anyway
        for statement in statements:
            if not statement.transaction_control:
                self._check_one(role, mode, statement, path, note)

    def wire_check(self, role: str, jwt: bool, path: str) -> Callable[[bytes], None]:
        """`check` for the Query and Parse texts of a TCP or WebSocket session (UTF-8 bytes, as the wire carries them),
        which began with `mode_for` (that started the watcher). Called per message: a text, or a shape, approved
        before costs a few lookups, no decoding and no call between; anything else goes to `check` (learn mode too,
        since it records every sighting)."""
        known, counts, allowed = self.fingerprints.known, self.counts, ("allowed", path)

        def check_wire(raw: bytes) -> None:
            content = self._content
            mode = content.modes.get(role, (content.mode or self.default_mode) if jwt else "off")
            if mode == "enforce" or mode == "warn":
                fingerprints = known(raw)
                if fingerprints is not None:
                    approved = content.statements
                    for fingerprint in fingerprints:
                        entry = approved.get(fingerprint)
                        if entry is None or role not in entry.roles:
                            break
                    else:
                        counts[allowed] += len(fingerprints)
                        return
            elif mode == "off":
                return
            self.check(role, jwt, raw.decode("utf-8", "replace"), path)

        return check_wire

    def check_strings(self, role: str, jwt: bool, path: str, raw: bytes, on: bool) -> bool:
        """A text (UTF-8) sent while standard_conforming_strings is off, or (`on`) while it may have been turned off
        by statements not yet answered: raises Refused in enforce, counts and logs in warn. True for the statement
        that turns it back on while it is off: let through without the list."""
        if not on and _STRINGS_ON.match(raw):
            return True
        mode = self.mode_for(role, jwt)
        if mode == "enforce" or mode == "warn":
            refused = strings_refusal(on)
            if mode == "enforce":
                self.counts["refused", path] += 1
                raise refused
            self.counts["warned", path] += 1
            log.warning("allow-list (warn): %s", refused.message)
        return False

    def check_function_call(self, role: str, jwt: bool, path: str) -> None:
        """A FunctionCall message names a function by OID: nothing to fingerprint, so only enforce has a say."""
        if self.mode_for(role, jwt) == "enforce":
            self.counts["refused", path] += 1
            raise Refused("42501", f'function calls by OID (the FunctionCall message) are refused for role "{role}" '
                                   "while the allow-list is enforced",
                          hint="Call the function in a SQL statement instead (SELECT f(...)), and approve that.")

    def _check_one(self, role: str, mode: str, statement: ParsedStatement, path: str, note: str) -> None:
        entry = self._content.statements.get(statement.fingerprint)
        if entry is not None and role in entry.roles:
            self.counts["allowed", path] += 1
            if mode == "learn":
                self._record(self._content.statements, role, statement, path, note)
            return
        if mode == "learn":
            self.counts["learned", path] += 1
            self._record(self._content.statements, role, statement, path, note)
            return
        refused = refusal(role, statement)
        self._record(self._content.refused, role, statement, path, note)
        self.recent.append({"at": _now(), "role": role, "fingerprint": statement.fingerprint, "path": path,
                            "sql": (note or statement.text)[:500], "mode": mode})
        if mode == "warn":
            self.counts["warned", path] += 1
            log.warning("allow-list (warn): %s", refused.message)
            return
        self.counts["refused", path] += 1
        raise refused

    def total(self, event: str) -> int:
        """How many statements met `event` (allowed, learned, warned, refused) on every path."""
        return sum(n for (kind, _), n in self.counts.items() if kind == event)

    def describe(self) -> dict:
        """The file, the modes, and the fingerprints it holds: approved (or learned), and refused lately."""
        content = self._content
        return {"file": str(self.path), "mode": content.mode or self.default_mode, "modes": dict(content.modes),
                "fingerprints": {"approved": len(content.statements), "refused": len(content.refused)},
                "recent_refusals": list(self.recent)}

    def _record(self, table: dict[str, Entry], role: str, statement: ParsedStatement, path: str, note: str) -> None:
        now = _now()
        entry = table.get(statement.fingerprint)
        if entry is None:
            entry = table[statement.fingerprint] = Entry(statement.normalized(), first_seen=now, note=note)
        if role not in entry.roles:
            entry.roles.append(role)
        if path not in entry.paths:
            entry.paths.append(path)
        entry.last_seen, entry.count = now, entry.count + 1
        self._dirty = True

    def flush(self) -> None:
        """Write what learn mode recorded, merged into the file as it is now (the CLI may have changed it).
        Blocking, for synchronous callers (the CLI, tests, exit); the watcher saves without blocking the loop."""
        if not self._dirty:
            return
        try:
            text = render(self._merged(read_list(self.path)))
            with self._saving:
                self._mtime = write_rendered(self.path, text)
        except (OSError, ListFileError) as exc:
            self._dirty = True
            log.error("allow-list not saved to %s: %s", self.path, exc)

    def _merged(self, merged: ListFile) -> ListFile:
        """`merged` (the file as read) with what was learned here added, made the list in force. Called on the thread
        that records (the event loop's), and with no await inside, so nothing learned while it runs can be lost."""
        self._dirty = False
        for name in ("statements", "refused"):
            mine, theirs = getattr(self._content, name), getattr(merged, name)
            for fp, entry in mine.items():
                if fp in theirs:
                    theirs[fp].roles = sorted(set(theirs[fp].roles) | set(entry.roles))
                    theirs[fp].paths = sorted(set(theirs[fp].paths) | set(entry.paths))
                    theirs[fp].last_seen, theirs[fp].count = entry.last_seen, max(entry.count, theirs[fp].count)
                else:
                    theirs[fp] = entry
        for fp in merged.statements:
            merged.refused.pop(fp, None)
        self._adopt(merged, self._mtime)
        return merged

    def _ensure_watcher(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: a synchronous caller (CLI, tests), nothing to watch
            return
        task = self._watcher
        if task is None or task.done() or task.get_loop() is not loop:  # one emulator may follow another
            self._watcher = loop.create_task(self._watch())

    async def _watch(self) -> None:
        """Save what was learned and pick up edits. Only the file's I/O runs in a thread: the list in force is
        swapped on the event loop, where statements are recorded, so a swap never drops one learned meanwhile."""
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                mtime = await asyncio.to_thread(_mtime, self.path)
                if not self._dirty and mtime == self._mtime:
                    continue
                on_disk = await asyncio.to_thread(read_list, self.path)
                if not self._dirty:
                    self._adopt(on_disk, mtime)
                    continue
                text = render(self._merged(on_disk))
                try:
                    self._mtime = await asyncio.to_thread(self._write, text)
                except OSError:
                    self._dirty = True
                    raise
            except (OSError, ListFileError) as exc:
                log.error("allow-list not saved or reloaded (%s): %s", self.path, exc)
            except Exception:  # keep watching whatever one round met
                log.exception("allow-list watcher")

    def _write(self, text: str) -> float:
        with self._saving:  # a synchronous flush() may be writing too
            return write_rendered(self.path, text)


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def default_path(settings) -> Path:
    """The allow-list file: the setting (relative to the project), else neon_local.allowlist.toml in the project."""
    return settings.project_dir / (settings.allowlist_file or ALLOWLIST_FILENAME)
