"""External JWKS providers: fetched with Neon's limits, refreshed on Neon's schedule, and cached on disk.

Limits, as in Neon's proxy: no redirects, a 64 KiB body, 2 s to connect and 5 s in total, 3 retries of
transient failures. Schedule: refresh in the background after 5 minutes; refetch on an unknown kid at
most every 30 s. Unlike Neon, a failed fetch keeps the last good keys (Neon drops them), a key set over
an hour old is refreshed in the background rather than waited for, and every good fetch is written to
<data_dir>/jwks-cache, so an app that was tried online once keeps working offline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neon_local.auth.keys import PublicKeySet
from neon_local.errors import NeonLocalError
from neon_local.settings import Provider, Settings

if TYPE_CHECKING:
    import aiohttp

__all__ = ["FetchError", "Limits", "ProviderCache"]

log = logging.getLogger(__name__)

USER_AGENT = "neon-local"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class FetchError(NeonLocalError):
    """A JWKS could not be fetched or decoded; the message names the provider, the source and the cause."""


@dataclass(frozen=True)
class Limits:
    """Neon's JWKS fetch limits and refresh intervals (proxy/src/auth/backend/jwt.rs), in bytes and seconds."""

    max_body: int = 64 * 1024
    connect_timeout: float = 2.0
    total_timeout: float = 5.0
    retries: int = 3
    retry_backoff: float = 1.0
    min_renew: float = 30.0
    auto_renew: float = 300.0


@dataclass
class _Entry:
    keys: PublicKeySet = field(default_factory=lambda: PublicKeySet((), {}))
    document: Any = None
    fetched_at: float | None = None
    attempted_at: float | None = None
    attempts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refresh_task: asyncio.Task | None = None


class ProviderCache:
    """Key sets of the configured external providers; `version` changes whenever any key set changes."""

    def __init__(self, settings: Settings, directory: Path | None = None, limits: Limits = Limits()):
        self._settings = settings
        self.directory = directory if directory is not None else settings.resolved_data_dir / "jwks-cache"
        self.limits = limits
        self._entries: dict[str, _Entry] = {}
        self.version = 0

    async def keys(self, provider: Provider) -> PublicKeySet:
        """The provider's keys: from memory, else the disk cache, else a fetch; stale sets refresh in the background."""
        entry = self._entry(provider)
        now = time.monotonic()
        if entry.fetched_at is None:
            # No keys yet: wait for a fetch, but while offline try again only every `min_renew`.
            if entry.lock.locked() or entry.attempted_at is None or now - entry.attempted_at >= self.limits.min_renew:
                await self._refresh(provider, entry)
        elif now - entry.fetched_at > self.limits.auto_renew:
            self._refresh_in_background(provider, entry)
        return entry.keys

    async def refresh_unknown_kid(self, provider: Provider) -> bool:
        """Refetch because a token named an unknown kid, unless the last attempt was under `min_renew` ago."""
        entry = self._entry(provider)
        if entry.attempted_at is not None and time.monotonic() - entry.attempted_at < self.limits.min_renew:
            return False
        await self._refresh(provider, entry)
        return True

    def cached(self, provider: Provider) -> PublicKeySet:
        """The keys in memory or on disk, never fetched: for explaining a refusal without waiting on a provider."""
        return self._entry(provider).keys

    def status(self, provider: Provider) -> dict[str, Any]:
        """What `providers list` shows: key count and age of the cached key set, from memory or disk."""
        entry = self._entry(provider)
        fetched = None if entry.fetched_at is None else time.time() - (time.monotonic() - entry.fetched_at)
        return {"keys": len(entry.keys.keys), "fetched_at": fetched}

    def remember(self, provider: Provider, document: Any) -> None:
        """Take a JWKS fetched elsewhere (`providers add` checks it first) as freshly fetched, on disk too."""
        entry = self._entry(provider)
        entry.fetched_at = time.monotonic()
        self._store(provider, entry, document, PublicKeySet.from_jwks(document))

    def forget(self, provider: Provider) -> None:
        """Drop a removed provider's keys from memory and disk."""
        self._entries.pop(provider.id, None)
        self._cache_path(provider).unlink(missing_ok=True)
        self.version += 1

    def _entry(self, provider: Provider) -> _Entry:
        entry = self._entries.get(provider.id)
        if entry is None:
            entry = self._entries[provider.id] = _Entry()
            self._load_from_disk(provider, entry)
        return entry

    def _refresh_in_background(self, provider: Provider, entry: _Entry) -> None:
        if entry.refresh_task is None or entry.refresh_task.done():
            entry.refresh_task = asyncio.get_running_loop().create_task(self._refresh(provider, entry))

    async def _refresh(self, provider: Provider, entry: _Entry) -> None:
        """Fetch and swap in the new keys; callers that queued behind a fetch reuse its result."""
        attempts = entry.attempts
        async with entry.lock:
            if entry.attempts != attempts:
                return
            entry.attempted_at = time.monotonic()
            try:
                await self._fetch_into(provider, entry)
            finally:
                entry.attempts += 1

    async def _fetch_into(self, provider: Provider, entry: _Entry) -> None:
        try:
            document = await self._fetch(provider)
            keys = PublicKeySet.from_jwks(document)
        except ValueError as exc:
            log.warning("provider %s: %s; keeping the %d keys cached before", provider.id, exc, len(entry.keys.keys))
            return
        except FetchError as exc:
            log.warning("%s; keeping the %d keys cached before", exc, len(entry.keys.keys))
            return
        if not keys.keys:
            log.warning("provider %s: no usable signing keys in %s; keeping the cached ones", provider.id, _source(provider))
            return
        entry.fetched_at = time.monotonic()
        self._store(provider, entry, document, keys)

    def _store(self, provider: Provider, entry: _Entry, document: Any, keys: PublicKeySet) -> None:
        if document != entry.document:
            self.version += 1
        entry.document, entry.keys = document, keys
        if provider.jwks_url:
            self._save_to_disk(provider, document)

    async def _fetch(self, provider: Provider) -> Any:
        if provider.jwks_file is not None:
            return self._read_file(provider)
        return await fetch_jwks(provider.jwks_url or "", self.limits, provider.id)

    def _read_file(self, provider: Provider) -> Any:
        path = provider.jwks_file
        if path is not None and not path.is_absolute():
            path = self._settings.project_dir / path
        assert path is not None  # _fetch reads a file only for a jwks_file provider
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise FetchError(f"provider {provider.id}: cannot read {path}: {exc.strerror}") from None
        return _decode(raw, self.limits, f"provider {provider.id}: {path}")

    def _cache_path(self, provider: Provider) -> Path:
        return self.directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", provider.id) + ".json")

    def _save_to_disk(self, provider: Provider, document: Any) -> None:
        path = self._cache_path(provider)
        record = {"id": provider.id, "jwks_url": provider.jwks_url, "fetched_at": time.time(), "jwks": document}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError as exc:
            # The keys are in memory; only the offline copy is missing.
            log.warning("could not write the JWKS cache %s: %s", path, exc)

    def _load_from_disk(self, provider: Provider, entry: _Entry) -> None:
        if not provider.jwks_url:
            return
        path = self._cache_path(provider)
        try:
            record = json.loads(path.read_text())
            if record["id"] != provider.id or record["jwks_url"] != provider.jwks_url:
                return
            keys = PublicKeySet.from_jwks(record["jwks"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the damaged JWKS cache %s: %s", path, exc)
            return
        age = max(0.0, time.time() - float(record["fetched_at"]))
        entry.document, entry.keys = record["jwks"], keys
        entry.fetched_at = time.monotonic() - age


def _source(provider: Provider) -> str:
    return str(provider.jwks_file) if provider.jwks_file is not None else str(provider.jwks_url)


def _decode(raw: bytes, limits: Limits, where: str) -> Any:
    if len(raw) > limits.max_body:
        raise FetchError(f"{where}: the JWKS is larger than {limits.max_body} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FetchError(f"{where}: the JWKS is not JSON ({exc})") from None


async def fetch_jwks(url: str, limits: Limits, provider_id: str = "") -> Any:
    """GET a JWKS with Neon's limits; transient failures are retried with exponential backoff."""
    where = f"provider {provider_id}: {url}"
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"{where}: only http:// and https:// JWKS URLs are fetched")
    import aiohttp  # ~0.1 s: not for the TCP proxy's start, which imports this module

    timeout = aiohttp.ClientTimeout(total=limits.total_timeout, sock_connect=limits.connect_timeout)
    async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
        attempt = 0
        while True:
            try:
                return await _get_once(session, url, limits, where)
            except _Transient as exc:
                if attempt == limits.retries:
                    raise FetchError(f"{where}: {exc} (after {limits.retries} retries)") from None
            await asyncio.sleep(limits.retry_backoff * 2**attempt)
            attempt += 1


class _Transient(NeonLocalError):
    pass


async def _get_once(session: aiohttp.ClientSession, url: str, limits: Limits, where: str) -> Any:
    import aiohttp  # imported by fetch_jwks already

    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {response.status}")
            if response.status != 200:
                # Neon follows no redirects, so a 3xx is as much a failure as a 4xx.
                raise FetchError(f"{where}: HTTP {response.status}, expected 200 with the JWKS")
            if (response.content_length or 0) > limits.max_body:
                raise FetchError(f"{where}: the JWKS is larger than {limits.max_body} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(16 * 1024):
                body += chunk
                if len(body) > limits.max_body:
                    raise FetchError(f"{where}: the JWKS is larger than {limits.max_body} bytes")
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"{where}: {type(exc).__name__}: {exc}") from None
    return _decode(bytes(body), limits, where)
