"""Postgres over TCP (with TLS) and over WebSocket, with JWT roles taking a token as their password.

The pieces, in the order a connection meets them:
- `server`: the TCP listener and the Unix-socket connections to Postgres (the only socket I/O), and
  the `Conduit` relay: an asyncio Protocol pair with pause/resume flow control.
- `session`: one client from its first byte to the relay: SSLRequest/GSSENCRequest/CancelRequest,
  startup vetting (allow-listed parameters, `options` parsed), then JWT or password login.
  WebSocket clients (`neon_local.serverless.websocket`) run the very same session.
- `compute`: the proxy's side of a Postgres connection: startup, the session-init queries, cancels.
  Credentials and JWT-session set-up come from `neon_local.control_plane`, shared with /sql.
- `cancellation`: our own BackendKeyData mapped to real backends; `limits`: sessions per role,
  keepalive, idle sessions; `tls`: the local CA and the server certificate.
"""

from neon_local.proxy.server import PgProxyServer
from neon_local.proxy.tls import TlsFiles, ensure_tls

__all__ = ["PgProxyServer", "TlsFiles", "ensure_tls"]
