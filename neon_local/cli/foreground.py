"""`neon-local up` in the foreground (also the process `up -d` leaves running): start, print, wait for a signal."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable

import click

from neon_local.app import Emulator
from neon_local.cli.common import banner, fail, process_age
from neon_local.errors import NeonLocalError, UpstreamChangesNeeded
from neon_local.settings import Settings


def serve(settings: Settings, on_ready: Callable[[dict], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM/SIGHUP; once started, `on_ready(state)` (default: print the banner)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(settings, on_ready or _print_banner))
    else:
        uvloop.run(_serve(settings, on_ready or _print_banner))
    # Everything is stopped. The interpreter's exit would now walk the whole heap of the server's libraries
    # with the collector (~0.1-0.2 s that `down` waits for); frozen objects are left to the OS.
    gc.freeze()


def _confirm_upstream_changes(needed: UpstreamChangesNeeded) -> bool:
    click.echo(needed.listing.rstrip(), err=True)
    return click.confirm("Make these changes?", default=False, err=True)


def _print_banner(state: dict) -> None:
    click.echo(banner(state, ready_in=process_age()) + "\n\nPress Ctrl-C to stop.")
    sys.stdout.flush()


async def _serve(settings: Settings, on_ready: Callable[[dict], None]) -> None:
    emulator = Emulator(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def ready() -> None:
        # From here `down` may find it (state.json): a signal now stops it in order, once start() has finished.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        on_ready(emulator.state())

    try:
        await emulator.start(on_ready=ready)  # before the HTTP side's imports end (see Emulator.start)
    except NeonLocalError as exc:  # raised on purpose: the text is for the user
        await emulator.stop()
        if isinstance(exc, UpstreamChangesNeeded):  # --upstream without --upstream-yes: ask, when someone can answer
            if not (sys.stdin.isatty() and _confirm_upstream_changes(exc)):
                fail(str(exc))
            await _serve(settings.with_overrides(upstream_yes=True), on_ready)
            return
        fail(str(exc))
    except BaseException:
        await emulator.stop()
        raise
    await stop.wait()
    click.echo("Stopping...", err=True)
    await emulator.stop()
