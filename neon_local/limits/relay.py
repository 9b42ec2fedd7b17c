"""The client→Postgres side of a TCP or WebSocket session whose role the allow-list checks.

Only such sessions pay for it: others keep the plain byte relay. Query ('Q') is checked statement
by statement, Parse ('P') once (Bind and Execute of a prepared statement are not re-checked), and a
FunctionCall ('F', a function by OID with no SQL) is refused in enforce mode. A
refused message is replaced by a DO block that makes Postgres raise the error itself, so the
session and its transaction end up exactly as after any other error. For a refused Parse the rest
of the extended-protocol batch, up to and including its Sync, is dropped: the DO block's own
ReadyForQuery answers that Sync.

The fingerprints read SQL with standard_conforming_strings on; with it off Postgres reads a `\\` in a
'...' string as an escape, so one text could be two statements. The relay follows the setting from
the server's ParameterStatus (`BackendWatch`, on the Postgres→client side) and has the allow-list
refuse every text while it is off. Postgres reports a change only at the next ReadyForQuery, so a
text with a backslash sent while earlier statements are unanswered (pipelined) is treated the same.
"""

from __future__ import annotations

from collections.abc import Callable

from neon_local.limits.allowlist import Refused

__all__ = ["StatementFilter", "raising_query"]

_HEADER = 5  # type byte + int32 length
_EXTENDED = b"PBDEC"  # Parse, Bind, Describe, Execute, Close: a batch that a Sync ends
_CHECKED = b"QPF"  # Query, Parse, FunctionCall: what the allow-list looks at
_SYNC = ord("S")
_ANSWERED = b"QSF"  # what Postgres answers with one ReadyForQuery: Query, Sync, FunctionCall
_READY, _PARAMETER = ord("Z"), ord("S")
_STRINGS = b"standard_conforming_strings\0"


def dollar_quote(text: str, tag: str) -> str:
    """`text` as a dollar-quoted literal whose tag does not occur in it."""
    n = 0
    while f"${tag}{n}$" in text:
        n += 1
    return f"${tag}{n}${text}${tag}{n}$"


def raising_query(refused: Refused) -> bytes:
    """A simple Query message whose execution raises `refused` with its SQLSTATE, message, detail and hint."""
    options = [f"ERRCODE = '{refused.code}'", f"MESSAGE = {dollar_quote(refused.message, 'm')}"]
    if refused.detail:
        options.append(f"DETAIL = {dollar_quote(refused.detail, 'd')}")
    if refused.hint:
        options.append(f"HINT = {dollar_quote(refused.hint, 'h')}")
    body = f"BEGIN RAISE EXCEPTION USING {', '.join(options)}; END"
    text = f"DO {dollar_quote(body, 'neon_local')}".encode() + b"\0"
    return _message(b"Q", text)


def raising_execution(refused: Refused) -> bytes:
    """The same DO block as Parse, Bind and Execute of the unnamed statement, for the middle of a batch."""
    text = raising_query(refused)[_HEADER:]
    return (_message(b"P", b"\0" + text + b"\0\0") + _message(b"B", b"\0\0" + bytes(6))
            + _message(b"E", b"\0" + bytes(4)))


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


class StatementFilter:
    """Stands in for the backend conduit on the client's side of the relay; only `write` differs."""

    def __init__(self, backend, check: Callable[[bytes], None], check_call: Callable[[], None],
                 check_strings: Callable[[bytes, bool], bool] = lambda raw, on: False, strings_on: bool = True) -> None:
        self._backend = backend
        self._check_list = check
        self._check_call = check_call  # a FunctionCall ('F') runs a function by OID, with no SQL to check
        self._check_strings = check_strings  # AllowList.check_strings of this session
        self.strings_on = strings_on  # standard_conforming_strings, as Postgres last reported it
        self.unanswered = 0  # Query, Sync and FunctionCall messages sent on whose ReadyForQuery has not come back
        self._buffer = bytearray()
        self._dropping = False  # after a refused Parse, until the batch's Sync
        self._sync_answered = False  # whether the refusal's own ReadyForQuery stands in for that Sync
        self._in_batch = False  # extended-protocol messages went through since the last Sync

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def join(self, peer, pending: bytes = b"") -> None:
        """The backend's messages go to `peer` through a BackendWatch that reports standard_conforming_strings here."""
        self._backend.join(BackendWatch(peer, self), pending)

    def _check(self, raw: bytes) -> None:
        on = self.strings_on
        if (not on or ((self.unanswered or self._in_batch) and b"\\" in raw)) and self._check_strings(raw, on):
            return  # the statement that turns it back on
        self._check_list(raw)

    def write(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:  # the rest of a message that an earlier read cut short
            buffer += data
            if len(buffer) < _HEADER or len(buffer) <= int.from_bytes(buffer[1:_HEADER], "big"):
                return  # still not whole: a long message grows in place (no copy per read)
            data = bytes(buffer)
            buffer.clear()
        if (data[:1] == b"Q" and len(data) > _HEADER and not self._dropping
                and len(data) == 1 + int.from_bytes(data[1:_HEADER], "big")):  # one whole Query: no framing, no copy
            try:
                self._check(data[_HEADER:-1])
            except Refused as refused:
                data = raising_query(refused)
            else:
                self._in_batch = False
            self.unanswered += 1
            self._backend.write(data)
            return
        out: list[bytes] = []
        position, size, passed = 0, len(data), 0  # data[passed:position]: messages that go on as they are
        while size - position >= _HEADER:
            kind = data[position]
            end = position + 1 + int.from_bytes(data[position + 1:position + _HEADER], "big")
            if end < position + _HEADER:  # a corrupt length: let Postgres refuse the stream as it would
                position = size
                break
            if end > size:
                break
            if self._dropping or kind in _CHECKED:
                inspected = self._inspect(kind, data, position, end)
                out += (data[passed:position], inspected)
                passed = end
                self.unanswered += inspected[:1] in (b"Q", b"S", b"F")
            else:  # Bind, Execute, Sync...: only the batch's state to follow
                self._in_batch = kind != _SYNC and (self._in_batch or kind in _EXTENDED)
                self.unanswered += kind == _SYNC
            position = end
        if position < size:
            buffer += data[position:]
        if not out:  # nothing looked at: the whole messages as they came
            if position:
                self._backend.write(data if position == size else data[:position])
            return
        out.append(data[passed:position])
        self._backend.write(b"".join(out))

    def _inspect(self, kind: int, buffer: bytes, start: int, end: int) -> bytes:
        """A Query, Parse or FunctionCall message, or any message of a batch dropped after a refused Parse."""
        if self._dropping:
            if kind != _SYNC:
                return b""
            self._dropping = self._in_batch = False
            return b"" if self._sync_answered else buffer[start:end]
        if kind == ord("Q"):
            text = buffer[start + _HEADER:end - 1]
        elif kind == ord("P"):
            name_end = buffer.find(0, start + _HEADER, end)
            text_end = buffer.find(0, name_end + 1, end) if name_end >= 0 else -1
            if text_end < 0:  # malformed: Postgres refuses it itself
                return buffer[start:end]
            text = buffer[name_end + 1:text_end]
        else:  # FunctionCall
            text = None
        try:
            self._check_call() if text is None else self._check(text)
        except Refused as refused:
            if kind != ord("P"):
                return raising_query(refused)
            # First in its batch: a simple Query answers for the whole batch (its ReadyForQuery for the Sync).
            # Later in one, Postgres may already be skipping to the Sync after an error, so the Sync must reach it.
            self._dropping, self._sync_answered = True, not self._in_batch
            return raising_query(refused) if self._sync_answered else raising_execution(refused)
        self._in_batch = kind == ord("P")
        return buffer[start:end]


class BackendWatch:
    """Stands in for the client as the backend's relay peer: frames what Postgres sends, on its way unchanged, for the
    ParameterStatus of standard_conforming_strings and each ReadyForQuery; tells the StatementFilter of both."""

    def __init__(self, peer, statements: StatementFilter) -> None:
        self._peer = peer
        self._statements = statements
        self._skip = 0  # bytes of the current message still to come
        self._carry = b""  # the start of a message whose header, or whole ParameterStatus, has not all come

    def __getattr__(self, name: str):
        return getattr(self._peer, name)

    def write(self, data: bytes) -> None:
        self._scan(data)
        self._peer.write(data)

    def _scan(self, data: bytes) -> None:
        position, size = self._skip, len(data)
        if position >= size:
            self._skip = position - size
            return
        if self._carry:  # only ever with nothing to skip
            data, self._carry = self._carry + data, b""
            size = len(data)
        statements = self._statements
        while size - position >= _HEADER:
            kind = data[position]
            end = position + 1 + int.from_bytes(data[position + 1:position + _HEADER], "big")
            if end < position + _HEADER:  # a corrupt stream: assume the worst from here on
                statements.strings_on, self._skip = False, 1 << 62
                return
            if kind == _READY:
                statements.unanswered -= 1
            elif kind == _PARAMETER:
                if end > size:
                    self._skip, self._carry = 0, data[position:]
                    return
                if data.startswith(_STRINGS, position + _HEADER):
                    statements.strings_on = data[position + _HEADER + len(_STRINGS):end] == b"on\0"
            position = end
        if position > size:
            self._skip = position - size
        else:
            self._skip, self._carry = 0, data[position:]
