"""Live reload: edits to neon_local.toml take effect in the running emulator, without a restart.

watchdog reports changes to the file (editors that write a temporary file and rename it included); the
file is then read as `up` reads it, and what changed among the reloadable settings is applied: test
users, custom roles (created in Postgres as at start), JWKS providers, [tenancy], rate limits and the
allow-list mode. A file that does not load is refused as a whole: the last good configuration stays in
force, the error is logged and shown by `neon-local status` until the file loads again. Other settings
(ports, data directory, database, ...) need a restart; a change to one is logged as such.

Neon has no such thing (its proxy reloads local_proxy.json on SIGHUP); this is neon-local's own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields, replace
from pathlib import Path

import psycopg

from neon_local.limits import ClientLimits
from neon_local.postgres.upstream import UpstreamError
from neon_local.settings import ConfigError, Settings, file_version, load_settings
from neon_local.watch import FolderWatch

__all__ = ["RELOADED", "ConfigReloader"]

log = logging.getLogger(__name__)

RELOADED = ("users", "roles", "role_specs", "providers", "tenancy", "upstream_yes", "rate_limit", "rate_limit_identity",
            "allowlist")


class ConfigReloader:
    """Watches the emulator's config file; `error` is the last refused edit's message (None when the file loads)."""

    def __init__(self, emulator, read_at_start: tuple[tuple[int, int] | None, Settings]) -> None:
        """`emulator`: a started neon_local.app.Emulator (not imported: app imports this module). `read_at_start`:
        the file's version (inode, mtime) and its settings without CLI flags, as the emulator read them at start."""
        self._emulator = emulator
        self.path: Path = emulator.settings.config_file
        self.error: str | None = None
        # (inode, mtime) of the file as last read, applied or refused; _from_file: what it said, to see what an edit changes
        self.seen, self._from_file = read_at_start
        self._read = asyncio.Condition()
        self._reading: tuple[int, int] | None = None
        self._watch = FolderWatch(self.path.parent, lambda path: path == str(self.path), self.reload,
                                  f"reloading {self.path} failed; the last good configuration stays in force")

    def start(self) -> None:
        # `up` reports ready before the watch begins (see Emulator.start): an edit made meanwhile is read at once.
        try:
            changed = file_version(self.path) != self.seen
        except OSError:  # gone meanwhile: reading it says so
            changed = True
        self._watch.start(changed=changed)

    async def stop(self) -> None:
        await self._watch.stop()

    async def wait_for(self, seen: tuple[int, int]) -> None:
        """Until the file as it is at `seen` (inode, mtime) has been read, and applied or refused."""
        async with self._read:
            await self._read.wait_for(lambda: self.seen == seen)

    def _load(self) -> Settings:
        self._reading = file_version(self.path)
        return load_settings(config_file=self.path)

    async def reload(self) -> None:
        """Read the file and apply what changed; a file that does not load changes nothing."""
        emulator = self._emulator
        try:
            new = await asyncio.to_thread(self._load)
            changed = [f.name for f in fields(Settings) if getattr(new, f.name) != getattr(self._from_file, f.name)]
            applied = {name: getattr(new, name) for name in changed if name in RELOADED}
            candidate = replace(emulator.settings, **applied)
            if applied:
                await apply_settings(emulator, candidate)
        except (ConfigError, UpstreamError) as exc:  # UpstreamError: --upstream cannot, or may not, make the new roles
            await self._refuse(str(exc))
            return
        except psycopg.Error as exc:
            await self._refuse(f"{self.path}: Postgres refused the change: {exc}")
            return
        restart = [name for name in changed if name not in RELOADED]
        if restart:
            log.warning("%s: %s changed; restart neon-local (`neon-local down`, `neon-local up`) to use %s",
                        self.path, ", ".join(restart), "it" if len(restart) == 1 else "them")
        self._from_file = new
        emulator.settings = candidate
        recovered, self.error = self.error is not None, None
        if applied or recovered:
            log.info("%s reloaded: %s", self.path, ", ".join(applied) or "back to a valid file")
            emulator.config_changed()
        await self._announce()

    async def _refuse(self, message: str) -> None:
        log.error("%s; the last good configuration stays in force until the file is fixed", message)
        self.error = message
        self._emulator.config_changed()
        await self._announce()

    async def _announce(self) -> None:
        async with self._read:
            self.seen = self._reading
            self._read.notify_all()


async def apply_settings(emulator, settings: Settings) -> None:
    """Make the running services use `settings`: what can fail (limits, Postgres roles) runs before anything
    is switched, so a refused change leaves the emulator as it was."""
    services = emulator.services
    limits = ClientLimits.of(settings)
    if (settings.jwt_roles, settings.role_specs) != (emulator.settings.jwt_roles, emulator.settings.role_specs):
        await emulator.bootstrap(settings)  # new roles, their grants and memberships, as at start
    # [tenancy]; mode "upstream": new or changed tenants' upstreams (all of them for new roles) prepared as at start
    await services.control_plane.use_tenancy(settings)
    for provider in emulator.settings.providers:
        if provider not in settings.providers:  # removed or changed (another URL or file): drop its keys
            services.providers.forget(provider)
    services.verifier.use_settings(settings)
    # Swapped in rather than rebuilt, so that pools, sessions and requests in flight carry on.
    services.issuer.use_settings(settings)
    services.sql.use_settings(settings, limits)
    services.pg_proxy.use_settings(settings, limits)
    if services.data_api is not None:
        services.data_api.use_settings(settings, limits)
    if services.console is not None:
        services.console.settings = settings
