"""Watching a folder for file changes (watchdog), for live reload of neon_local.toml and `up --migrations --watch`
(FileEvents also serves `codegen --watch`, which waits on a threading.Event instead of an event loop).

watchdog calls from its own thread; the change is handed to the event loop, and the callback runs there once
the events settle, one call at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

__all__ = ["FileEvents", "FolderWatch"]

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.1  # an editor's save is several events (truncate, write, rename): act once they stop
# watchdog also reports reads (inotify's open and close-without-write): the callback's own reading of the files
# must not count as a change, or every pass would start the next one.
READS = frozenset(("opened", "closed_no_write"))


class FileEvents(FileSystemEventHandler):
    """Calls `notify` (from watchdog's thread) when an event touches a path that `wanted` accepts."""

    def __init__(self, wanted: Callable[[str], bool], notify: Callable[[], object]) -> None:
        self._wanted, self._notify = wanted, notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in READS:
            return
        paths = (event.src_path, getattr(event, "dest_path", None))
        if any(isinstance(path, str) and path and self._wanted(path) for path in paths):
            self._notify()


class FolderWatch:
    """Awaits `on_change()` whenever a file in `directory` (not its subfolders) that `wanted` accepts (by path)
    is written, created, moved or removed. A failing call is logged with `failure` and the watch goes on."""

    def __init__(self, directory: Path, wanted: Callable[[str], bool], on_change: Callable[[], Awaitable[None]],
                 failure: str) -> None:
        self._directory, self._wanted, self._on_change, self._failure = directory, wanted, on_change, failure
        self._changed = asyncio.Event()
        self._observer: BaseObserver | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, changed: bool = False) -> None:
        """`changed`: also call `on_change()` at once, for a change that may have come before the watch began."""
        loop = asyncio.get_running_loop()
        self._observer = Observer()
        self._observer.schedule(FileEvents(self._wanted, lambda: loop.call_soon_threadsafe(self._changed.set)),
                                str(self._directory), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self._task = loop.create_task(self._run())
        if changed:
            self._changed.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join)

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            while self._changed.is_set():
                self._changed.clear()
                await asyncio.sleep(SETTLE_SECONDS)
            try:
                await self._on_change()
            except Exception:  # a failing call must never end the watch, nor the emulator
                log.exception(self._failure)
