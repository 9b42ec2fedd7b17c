"""`neon-local up` in the foreground (also the process `up -d` leaves running): start, print, wait for a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

import click

from neon_local.app import Emulator
from neon_local.cli.common import banner, fail, process_age
from neon_local.errors import NeonLocalError
from neon_local.postgres.upstream import UpstreamChangesNeeded
from neon_local.settings import Settings


def serve(settings: Settings, on_ready: Callable[[dict], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM/SIGHUP; once started, `on_ready(state)` (default: print the banner)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(settings, on_ready or _print_banner))
    else:
        uvloop.run(_serve(settings, on_ready or _print_banner))


def _confirm_upstream_changes(needed: UpstreamChangesNeeded) -> bool:
    click.echo(needed.listing.rstrip(), err=True)
    return click.confirm("Make these changes?", default=False, err=True)


def _print_banner(state: dict) -> None:
    click.echo(banner(state, ready_in=process_age()) + "\n\nPress Ctrl-C to stop.")
    sys.stdout.flush()


async def _serve(settings: Settings, on_ready: Callable[[dict], None]) -> None:
    emulator = Emulator(settings)
    try:
        await emulator.start()
    except UpstreamChangesNeeded as exc:  # --upstream without --upstream-yes: ask, when someone can answer
        await emulator.stop()
        if not (sys.stdin.isatty() and _confirm_upstream_changes(exc)):
            fail(str(exc))
        await _serve(settings.with_overrides(upstream_yes=True), on_ready)
        return
    except NeonLocalError as exc:  # raised on purpose: the text is for the user
        await emulator.stop()
        fail(str(exc))
    except BaseException:
        await emulator.stop()
        raise
    on_ready(emulator.state())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    click.echo("Stopping...", err=True)
    await emulator.stop()
