"""JWT verifications per second per algorithm: the raw `cryptography` verify (the floor), cold and cached.

"cold verify" is `Verifier.verify` on a token it has not seen (strict parse, key lookup, signature,
claims, cache insert); "cached" is `Verifier.verify_cached` on a token it has. EdDSA needs
compat = "extended", and its per-use warning is silenced here so the numbers measure verification.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import ROUNDS, show, spread
from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import ALGORITHMS, KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import Verifier, parse_token
from neon_local.settings import Settings


def _rounds(measure, n: int) -> list[float]:
    """Seconds per operation in each of ROUNDS runs of `measure(n)`."""
    return [measure(n) / n for _ in range(ROUNDS)]


def _raw(ring: KeyRing, alg: str, token: str):
    parsed = parse_token(token, extended=True)
    key = ring.public_keys().by_kid[ring.active(alg).kid]

    def measure(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            key.verify(alg, parsed.signature, parsed.signing_input)
        return time.perf_counter() - started

    return measure


def _cold(verifier: Verifier, tokens: list[str]):
    async def verify_all(batch: list[str]) -> float:
        started = time.perf_counter()
        for token in batch:
            await verifier.verify(token, "authenticated")
        return time.perf_counter() - started

    def measure(n: int) -> float:
        verifier.clear_cache()
        return asyncio.run(verify_all(tokens[:n]))

    return measure


def _cached(verifier: Verifier, token: str):
    asyncio.run(verifier.verify(token, "authenticated"))

    def measure(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            verifier.verify_cached(token, "authenticated")
        return time.perf_counter() - started

    return measure


def _row(alg: str, mode: str, seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"algorithm": alg, "mode": mode, "ops_per_sec": round(1 / median), "us_per_op": round(median * 1e6, 2),
            "us_per_op (median, range)": spread(seconds, 2, 1e6)}


def _measure(tmp: Path, cold_ops: int, cached_ops: int) -> list[dict]:
    settings = Settings(project_dir=tmp, compat="extended")
    ring = KeyRing.load_or_create(tmp / "keys")
    issuer = Issuer(settings, ring, "http://127.0.0.1:4444")
    verifier = Verifier(settings, ring, ProviderCache(settings), cache_size=cold_ops + 1)
    rows = []
    for alg in ALGORITHMS:
        tokens = [issuer.mint("alice", alg=alg, claims={"jti": str(i)}) for i in range(cold_ops)]
        rows.append(_row(alg, "raw cryptography", _rounds(_raw(ring, alg, tokens[0]), cold_ops)))
        rows.append(_row(alg, "cold verify", _rounds(_cold(verifier, tokens), cold_ops)))
        rows.append(_row(alg, "cached", _rounds(_cached(verifier, tokens[0]), cached_ops)))
    return rows


def run(cold_ops: int = 1000, cached_ops: int = 200_000) -> list[dict]:
    """One row per (algorithm, mode): raw cryptography, cold verify, cached."""
    verifier_log = logging.getLogger("neon_local.auth.verifier")
    level = verifier_log.level
    verifier_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _measure(Path(tmp), cold_ops, cached_ops)
    finally:
        verifier_log.setLevel(level)


if __name__ == "__main__":
    show(run())
