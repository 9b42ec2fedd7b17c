"""TLS for neon-local's own connections to an upstream Postgres, with the meaning libpq gives `sslmode`."""

from __future__ import annotations

import ssl

__all__ = ["context_for"]


def context_for(sslmode: str, sslrootcert: str = "") -> ssl.SSLContext | None:
    """None when the connection starts in plaintext ("disable"; "allow", which libpq tries in plaintext first)."""
    if sslmode in ("disable", "allow"):
        return None
    context = ssl.create_default_context(cafile=sslrootcert or None)
    if sslmode != "verify-full":
        context.check_hostname = False
    if not sslmode.startswith("verify"):
        context.verify_mode = ssl.CERT_NONE  # prefer, require: encrypted, the server not checked (as libpq)
    return context
