"""Postgres v3 wire messages as values, with encoders for what we send and decoders for what we read."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

PROTOCOL_3_0 = 3 << 16
CANCEL_REQUEST_CODE = 1234 << 16 | 5678
SSL_REQUEST_CODE = 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 1234 << 16 | 5680

# Postgres's own limits (src/include/libpq/pqcomm.h, libpq/auth.h): we refuse exactly what it refuses.
MAX_STARTUP_PACKET_LENGTH = 10000
MAX_AUTH_MESSAGE_LENGTH = 65535
NAMEDATALEN = 64

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")


@dataclass(frozen=True)
class SSLRequest:
    """The client asks to switch to TLS."""


@dataclass(frozen=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption, which we never offer."""


@dataclass(frozen=True)
class CancelRequest:
    """A cancel sent on a fresh connection, naming a session by its BackendKeyData."""

    pid: int
    key: int

    def __repr__(self) -> str:
        return f"CancelRequest(pid={self.pid}, key=[secure])"


@dataclass(frozen=True)
class StartupMessage:
    """The StartupMessage: protocol version and parameters in the order sent."""

    major: int
    minor: int
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One typed message: a type byte and its body (the length word stripped)."""

    type: bytes
    body: bytes

    def encode(self) -> bytes:
        return frame(self.type, self.body)


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def cstr(text: str | bytes) -> bytes:
    return (text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text) + b"\0"


def frame(type_: bytes, body: bytes) -> bytes:
    return _HEADER.pack(type_, len(body) + 4) + body


# --- frontend messages (what the proxy sends to Postgres, and what tests send to the proxy) ---

def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, key)


def password_message(password: str | bytes) -> bytes:
    return frame(b"p", cstr(password))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


def query(sql: str) -> bytes:
    return frame(b"Q", cstr(sql))


def parse(sql: str, name: str = "") -> bytes:
    return frame(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind(params: Sequence[str | None], portal: str = "", statement: str = "") -> bytes:
    values = b"".join(_I32.pack(-1) if p is None else _I32.pack(len(p.encode())) + p.encode() for p in params)
    body = cstr(portal) + cstr(statement) + struct.pack("!hh", 0, len(params)) + values + struct.pack("!h", 0)
    return frame(b"B", body)


def describe_portal(portal: str = "") -> bytes:
    return frame(b"D", b"P" + cstr(portal))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(b"E", cstr(portal) + _I32.pack(max_rows))


def sync() -> bytes:
    return frame(b"S", b"")


def terminate() -> bytes:
    return frame(b"X", b"")


# --- backend messages (what the proxy sends to its clients) ---

def authentication(code: int, data: bytes = b"") -> bytes:
    return frame(b"R", _I32.pack(code) + data)


def authentication_sasl(mechanisms: list[str]) -> bytes:
    return authentication(AUTH_SASL, b"".join(cstr(m) for m in mechanisms) + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return frame(b"K", struct.pack("!ii", pid, key))


def ready_for_query(status: bytes = b"I") -> bytes:
    return frame(b"Z", status)


def negotiate_protocol_version(minor: int, unrecognized: list[str]) -> bytes:
    body = struct.pack("!ii", minor, len(unrecognized)) + b"".join(cstr(o) for o in unrecognized)
    return frame(b"v", body)


def error_response(severity: str, code: str, message: str, detail: str | None = None, hint: str | None = None) -> bytes:
    fields = [(b"S", severity), (b"V", severity), (b"C", code), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    return frame(b"E", b"".join(tag + cstr(value) for tag, value in fields) + b"\0")


# --- decoders for message bodies ---

def int32(body: bytes | bytearray, offset: int = 0) -> int:
    return _I32.unpack_from(body, offset)[0]


def cstrings(body: bytes) -> list[str]:
    """The NUL-terminated strings of a body, as Postgres sends them in S and R(SASL) messages."""
    return [part.decode("utf-8", "replace") for part in body.split(b"\0")[:-1]]


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, keyed by their one-letter tag."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def data_row(body: bytes) -> list[bytes | None]:
    count = struct.unpack_from("!h", body)[0]
    values: list[bytes | None] = []
    offset = 2
    for _ in range(count):
        length = int32(body, offset)
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[offset:offset + length])
            offset += length
    return values
