"""Incremental, I/O-free parsing of a client's byte stream: startup packets first, then typed messages.

Bytes go in with `feed()` in whatever pieces the transport delivers; `next_startup()` and
`next_message()` return one complete packet, or None until enough bytes have arrived. Malformed
input raises `ProtocolViolation`, whose fields say what Postgres would answer (or that it would
close the connection without a word).
"""

from __future__ import annotations

from neon_local.errors import NeonLocalError
from neon_local.wire.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LENGTH,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    Message,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    cstr,
    error_response,
    int32,
)


class ProtocolViolation(NeonLocalError):
    """The peer broke the protocol; `message` is None when Postgres closes silently in that case.

    `legacy` marks errors for a protocol 2 client, which Postgres answers in the old error format.
    """

    def __init__(self, message: str | None, code: str = "08P01", detail: str | None = None, legacy: bool = False) -> None:
        super().__init__(message or "connection closed without a reply")
        self.message = message
        self.code = code
        self.detail = detail
        self.legacy = legacy

    def encode(self) -> bytes:
        """The FATAL error to send before closing (empty when Postgres would send nothing)."""
        if self.message is None:
            return b""
        if self.legacy:
            return b"E" + cstr(f"FATAL:  {self.message}\n")
        return error_response("FATAL", self.code, self.message, self.detail)


class FrameDecoder:
    """A buffer that cuts a client's byte stream into startup packets and typed messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def has_data(self) -> bool:
        return bool(self._buffer)

    def take_rest(self) -> bytes:
        """Everything buffered and not yet parsed (pipelined messages to pass on as they are)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def next_startup(self) -> StartupPacket | None:
        if len(self._buffer) < 4:
            return None
        length = int32(self._buffer)
        # Postgres logs "invalid length of startup packet" and closes without replying (postmaster.c).
        if length < 8 or length - 4 > MAX_STARTUP_PACKET_LENGTH:
            raise ProtocolViolation(None)
        if len(self._buffer) < length:
            return None
        packet = bytes(self._buffer[4:length])
        del self._buffer[:length]
        return parse_startup_packet(packet)

    def next_message(self, max_length: int) -> Message | None:
        if len(self._buffer) < 5:
            return None
        length = int32(self._buffer, 1)
        # Postgres treats a bad length word as a broken connection: it logs and closes (pqcomm.c).
        if length < 4 or length > max_length:
            raise ProtocolViolation(None)
        if len(self._buffer) < length + 1:
            return None
        message = Message(bytes(self._buffer[:1]), bytes(self._buffer[5:length + 1]))
        del self._buffer[:length + 1]
        return message


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode a startup packet (without its length word) as ProcessStartupPacket does."""
    code = int32(packet)
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 12:
            raise ProtocolViolation(None)
        return CancelRequest(int32(packet, 4), int32(packet, 8))
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0", "0A000", legacy=major < 3
        )
    return StartupMessage(major, minor, _startup_params(packet))


def _startup_params(packet: bytes) -> dict[str, str]:
    # The same walk as postmaster.c: pairs of C strings, then one NUL that must be the last byte.
    # Names and values are bytes in an unknown encoding; surrogateescape carries them through unchanged.
    params: dict[str, str] = {}
    offset, end = 4, len(packet)
    while offset < end:
        name_end = _string_end(packet, offset)
        if name_end == offset:
            break
        value_offset = name_end + 1
        if value_offset >= end:
            break
        value_end = _string_end(packet, value_offset)
        name, value = packet[offset:name_end], packet[value_offset:value_end]
        params[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        offset = value_end + 1
    if offset != end - 1:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    return params


def _string_end(packet: bytes, start: int) -> int:
    # Postgres reads one byte past the packet, which it has zeroed: an unterminated string ends there.
    found = packet.find(b"\0", start)
    return len(packet) if found < 0 else found
