"""Postgres v3 wire protocol without I/O: message values and encoders (`messages`), an incremental parser (`codec`).

Bytes go into a `FrameDecoder` in whatever pieces arrive; startup packets and typed messages come
out, or a `ProtocolViolation` that says what Postgres would answer. Nothing here touches a socket,
so every rule is tested by feeding bytes (tests/test_wire_codec.py, with a bounded hypothesis fuzz).
"""

from neon_local.wire.codec import FrameDecoder, ProtocolViolation
from neon_local.wire.messages import CancelRequest, GSSENCRequest, Message, SSLRequest, StartupMessage

__all__ = ["CancelRequest", "FrameDecoder", "GSSENCRequest", "Message", "ProtocolViolation", "SSLRequest", "StartupMessage"]
