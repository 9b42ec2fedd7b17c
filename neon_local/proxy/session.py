"""One client's Postgres session: startup → TLS negotiation → authentication → backend → relay.

TCP and WebSocket clients are both a `ClientChannel` that hands over bytes in whatever pieces
they came; this module cuts them into packets with the sans-io codec and never touches a socket.
Everything else a session talks to comes in through `ProxyContext` as an interface too: the compute
(a `BackendChannel` from the `Opener` it is given) and the `SessionControlPlane`, so a whole
conversation can be scripted without a socket (tests/test_session_playbook.py).
JWT roles send a token as a cleartext password and get a backend initialised with
pg_session_jwt exactly as the HTTP path does; password roles authenticate with SCRAM (TCP) or
a cleartext password checked against the SCRAM verifier (WebSocket, as on Neon).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from neon_local.auth import scram
from neon_local.auth.verifier import JwtError, Verifier
from neon_local.console.request_log import RequestLog
from neon_local.errors import ClientGone, NeonLocalError, PostgresErrorResponse, PostgresUnavailable
from neon_local.limits import ClientLimits, RateLimited
from neon_local.limits.relay import StatementFilter
from neon_local.postgres import session_jwt
from neon_local.proxy.cancellation import CancelKey, CancelMap
from neon_local.proxy.compute import BackendError, ComputeConnection, Opener, open_compute, send_cancel
from neon_local.proxy.limits import RoleSlots, TooManySessions
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder, ProtocolViolation

log = logging.getLogger(__name__)

FORWARDED_PARAMS = {"application_name", "client_encoding", "datestyle", "timezone", "extra_float_digits"}
DENIED_GUC_PREFIXES = ("pg_session_jwt.", "request.")
DENIED_GUCS = {"role", "session_authorization"}
IGNORED_OPTION_PREFIXES = ("endpoint=", "project=", "neon_")  # Neon's routing hints: meaningless locally
TRUE_WORDS = {"on", "1", "t", "tr", "tru", "true", "y", "ye", "yes"}  # what Postgres reads as a boolean's true
INSECURE = "connection is insecure (try using `sslmode=require`)"
UNENCRYPTED_DATA = "received unencrypted data after SSL request"
MITM_DETAIL = "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack."


class ClientChannel(Protocol):
    """What a transport offers a session: bytes in, bytes out, TLS on request, then a relay."""

    is_tls: bool
    is_loopback: bool
    can_tls: bool  # False on WebSocket: no TLS inside the tunnel
    password_refusal: str | None  # why password roles are refused here (a disallowed web origin), if they are

    async def read(self) -> bytes: ...  # b"" once the client is gone

    def write(self, data: bytes) -> None: ...

    async def start_tls(self, context: ssl.SSLContext) -> None: ...

    async def relay(self, backend, pending: bytes, backend_pending: bytes) -> None: ...

    def close(self) -> None: ...


class SessionControlPlane(Protocol):
    """What a session asks the control plane (`control_plane.ControlPlane`): role secrets, and JWT sessions set up."""

    async def role_secret(self, role: str) -> str | None: ...

    async def check_password(self, role: str, password: bytes) -> bool: ...

    def remember_login(self, role: str, credential: scram.ClientCredential) -> None: ...

    async def tenant_database(self, claims: Mapping[str, Any] | None, requested_db: str) -> str: ...

    async def start_jwt_session(self, dbname: str, role: str, open_backend: Callable[[str], Awaitable[ComputeConnection]]
                                ) -> tuple[ComputeConnection, session_jwt.SessionSigner]: ...


@dataclass
class ProxyContext:
    """Everything a session needs, passed down from the server: config, Postgres, keys, JWT verifier."""

    jwt_roles: tuple[str, ...]
    verifier: Verifier
    open_backend_socket: Opener
    control_plane: SessionControlPlane
    backend_credential: Callable[[str], scram.ClientCredential | None] = lambda role: None  # an upstream's login
    # (database, role) → (opener, database there, login) when the database is a tenant's upstream ([tenancy] mode "upstream")
    tenant_compute: Callable[[str, str], tuple[Opener, str, scram.ClientCredential | None] | None] = lambda db, role: None
    cancellations: CancelMap = field(default_factory=CancelMap)
    tls_context: ssl.SSLContext | None = None
    channel_binding: bytes | None = None
    mock_secret: bytes = b""
    auth_timeout: float = 60.0  # Postgres's authentication_timeout: no connection idles in the handshake
    role_slots: RoleSlots = field(default_factory=RoleSlots)  # sessions per role (owner exempt)
    limits: ClientLimits | None = None  # rate limits and the query allow-list
    request_log: RequestLog = field(default_factory=RequestLog)  # what the console's live log shows
    warned: set[str] = field(default_factory=set)

    def warn_once(self, key: str, message: str) -> None:
        """Say once per process where neon-local is looser than Neon, without flooding the log."""
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)


class ClientError(NeonLocalError):
    """An error for the client to read: its text (Neon's or Postgres's), SQLSTATE and severity."""

    def __init__(self, message: str, code: str, severity: str = "FATAL", hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.severity, self.hint = message, code, severity, hint

    def encode(self) -> bytes:
        return m.error_response(self.severity, self.code, self.message, hint=self.hint)


def jwt_refusal_hint(message: str, token: str, role: str) -> str:
    """The next step for a refused JWT; the message itself stays Neon's, word for word."""
    if not token:
        return f"{role} is a JWT role: put a JWT in the password field (e.g. `neon-local token alice`)."
    if message.startswith(("JWT token has expired", "JWT token is not yet ready")):
        return "Get a fresh token, e.g. `neon-local token alice`."
    if message.startswith("unsupported key type") or message == "missing key id":
        return 'Neon accepts only ES256 and RS256 tokens with a kid; compat = "extended" admits others locally.'
    if message == "jwk not found":
        return f"No provider whose role_names include {role} has this token's kid: check [[jwks]] in neon_local.toml."
    return "Check the token, e.g. by decoding it; `neon-local token alice` makes a valid one."


@dataclass(frozen=True)
class ClientStartup:
    """A StartupMessage after vetting: who, where, and the settings allowed through to Postgres."""

    user: str
    database: str
    params: dict[str, str]
    gucs: list[tuple[str, str]]
    minor: int = 0
    unrecognized: list[str] = field(default_factory=list)

    def backend_params(self, extra_options: str = "") -> dict[str, str]:
        options = " ".join(filter(None, [extra_options, *(f"-c {_escape(k)}={_escape(v)}" for k, v in self.gucs)]))
        params = {"user": self.user, "database": self.database, **self.params}
        return {**params, "options": options} if options else params


def vet_startup(startup: m.StartupMessage) -> ClientStartup:
    """Check a StartupMessage against Postgres's rules and our allow-list; raise ClientError if refused."""
    params, unrecognized, gucs = {}, [], []
    raw = startup.params
    for name, value in raw.items():
        if name.startswith("_pq_."):
            unrecognized.append(name)
        elif name.lower() in FORWARDED_PARAMS:
            params[name] = value
    if raw.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise ClientError("replication connections are not supported by neon-local", "0A000")
    user = _clip(raw.get("user", ""))
    if not user:
        raise ClientError("no PostgreSQL user name specified in startup packet", "28000")
    database = _clip(raw.get("database") or user)
    gucs = parse_options(raw.get("options", ""))
    return ClientStartup(user, database, params, gucs, startup.minor, unrecognized)


def parse_options(text: str) -> list[tuple[str, str]]:
    """The `-c name=value` / `--name=value` settings in an `options` string, split as Postgres splits it."""
    words, gucs = _split_options(text), []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            index += 1
            gucs.append(_guc(words[index]))
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            gucs.append(_guc(word[2:]))
        elif not word.startswith(IGNORED_OPTION_PREFIXES):
            raise ClientError(f'unsupported startup option "{word}": only -c name=value and --name=value are allowed', "0A000")
        index += 1
    return gucs


def _guc(setting: str) -> tuple[str, str]:
    name, sep, value = setting.partition("=")
    if not sep:
        raise ClientError(f'-c {setting} requires a value', "42601")
    name = name.replace("-", "_")  # as Postgres' ParseLongOption does for -c and -- alike, before the name is looked up
    if name.lower().startswith(DENIED_GUC_PREFIXES) or name.lower() in DENIED_GUCS:
        raise ClientError(f'permission denied to set parameter "{name}"', "42501")
    return name, value


def _split_options(text: str) -> list[str]:
    # pg_split_opts: whitespace separates words, a backslash takes the next character literally.
    words, current, escaped, in_word = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped, in_word = False, True
        elif char == "\\":
            escaped, in_word = True, True
        elif char.isspace():
            if in_word:
                words.append("".join(current))
            current, in_word = [], False
        else:
            current.append(char)
            in_word = True
    if in_word:
        words.append("".join(current))
    return words


def strip_password_hack(password: bytes) -> bytes:
    """Drop Neon's "password hack" prefix (`endpoint=<id>;` or `$`) that clients without SNI put before the password."""
    if password.startswith((b"endpoint=", b"project=")):
        cut = min((i for i in (password.find(b";"), password.find(b"$")) if i >= 0), default=-1)
        if cut >= 0:
            return password[cut + 1:]
    return password


def _escape(text: str) -> str:
    return "".join("\\" + c if c == "\\" or c.isspace() else c for c in text)


def _clip(name: str) -> str:
    # Postgres truncates user and database names to NAMEDATALEN - 1 bytes, on a character boundary.
    raw = name.encode("utf-8", "surrogateescape")[: m.NAMEDATALEN - 1]
    return raw.decode("utf-8", "ignore")


class Session:
    """Drives one client from its first byte to the end of the relay."""

    def __init__(self, ctx: ProxyContext, client: ClientChannel) -> None:
        self.ctx = ctx
        self.client = client
        self.decoder = FrameDecoder()
        self.cancel_key: CancelKey | None = None
        self.role: str | None = None  # holds one of its role's slots while set
        self.token: str | None = None  # a JWT role's token, for the request log
        self.began = time.perf_counter()

    async def run(self) -> None:
        try:
            await self._run()
        except (ProtocolViolation, ClientError) as exc:
            self.client.write(exc.encode())
        except BackendError as exc:
            self.client.write(exc.raw)
        except PostgresErrorResponse as exc:  # refused by the control plane, or by Postgres to it
            f = exc.fields
            self.client.write(m.error_response(f.get("S", "FATAL"), exc.sqlstate or "XX000", f.get("M", ""), f.get("D"), f.get("H")))
        except PostgresUnavailable as exc:
            log.warning("Postgres unavailable for a client: %s", exc)
            message = f"neon-local could not reach Postgres: {exc}. It may be restarting; try again in a moment."
            self.client.write(m.error_response("FATAL", "08006", message))
        except (ClientGone, TimeoutError):
            pass
        except Exception:
            log.exception("unexpected error in a Postgres client session")
            self.client.write(m.error_response("FATAL", "XX000", "internal error in the neon-local proxy"))
        finally:
            if self.cancel_key is not None:
                self.ctx.cancellations.unregister(self.cancel_key)
            if self.role is not None:
                self.ctx.role_slots.give(self.role)
            self.client.close()

    async def _run(self) -> None:
        async with asyncio.timeout(self.ctx.auth_timeout):
            try:
                backend = await self._handshake()
            except Exception as exc:
                self._log_session(getattr(exc, "message", None) or str(exc) or type(exc).__name__)
                raise
        if backend is not None:
            self._log_session(None)
            await self.client.relay(self._checked(backend), self.decoder.take_rest(), backend.take_rest())

    def _checked(self, backend: ComputeConnection):
        """The backend as the client's side of the relay sees it: behind the allow-list if it checks this role."""
        limits, role, conduit = self.ctx.limits, cast(str, self.role), backend.conduit
        jwt = role in self.ctx.jwt_roles
        if limits is None or limits.allowlist.mode_for(role, jwt) == "off":
            return conduit
        path, allowlist = "tcp" if self.client.can_tls else "ws", limits.allowlist
        return StatementFilter(conduit, allowlist.wire_check(role, jwt, path),
                               lambda: allowlist.check_function_call(role, jwt, path),
                               lambda raw, on: allowlist.check_strings(role, jwt, path, raw, on),
                               backend.parameters.get("standard_conforming_strings") == "on")

    def _log_session(self, error: str | None) -> None:
        """One request-log entry per session that got as far as naming its role: opened, or refused and why."""
        if self.role is not None:
            self.ctx.request_log.record("tcp" if self.client.can_tls else "ws", self.role, token=self.token,
                                        statement="(session)", began=self.began, error=error)

    async def _handshake(self) -> ComputeConnection | None:
        startup = await self._negotiate()
        if startup is None:
            return None
        vetted = vet_startup(startup)
        if self.client.can_tls and not self.client.is_tls:
            self.ctx.warn_once("plaintext-tcp", f"a client connected over TCP without TLS; Neon refuses that ({INSECURE}), "
                                                "neon-local allows it from this machine only. Use sslmode=require to match Neon.")
        if vetted.minor > 0 or vetted.unrecognized:
            self.client.write(m.negotiate_protocol_version(0, vetted.unrecognized))
        if vetted.user not in self.ctx.jwt_roles and self.client.password_refusal:  # a web page's WebSocket
            raise ClientError(self.client.password_refusal, "28000")
        try:  # before any backend opens, so a role can never hold more than its share of Postgres
            self.ctx.role_slots.take(vetted.user)
        except TooManySessions as exc:
            raise ClientError(exc.message, "53300", hint=exc.hint) from None
        self.role = vetted.user
        self._rate_check(lambda limits: limits.admit_endpoint("tcp" if self.client.can_tls else "ws"))
        if vetted.user in self.ctx.jwt_roles:
            self._refuse_nonstandard_strings(vetted)
            backend, final = await self._jwt_login(vetted), b""
        else:
            backend, final = await self._password_login(vetted)
        self._greet(backend, final)
        return backend

    def _refuse_nonstandard_strings(self, vetted: ClientStartup) -> None:
        """A JWT session that asks for standard_conforming_strings off while the allow-list enforces: refused, since
        every statement would be (the allow-list reads SQL with it on)."""
        limits = self.ctx.limits
        if limits is None or limits.allowlist.mode_for(vetted.user, True) != "enforce":
            return
        for name, value in vetted.gucs:
            if name.lower() == "standard_conforming_strings" and value.lower() not in TRUE_WORDS:
                raise ClientError(f'standard_conforming_strings={value} refused for role "{vetted.user}": the query '
                                  "allow-list reads SQL with standard_conforming_strings on", "42501",
                                  hint="Leave it out of the connection's options; write backslash escapes as E'...' strings.")

    def _rate_check(self, check) -> None:
        """Neon's answer to a connection past a rate limit: an ErrorResponse with XX000."""
        limits = self.ctx.limits
        if limits is not None and limits.rate.enabled:
            try:
                check(limits)
            except RateLimited as exc:
                raise ClientError(exc.message, "XX000", "ERROR") from None

    async def _negotiate(self) -> m.StartupMessage | None:
        """Answer SSLRequest/GSSENCRequest and CancelRequest until the StartupMessage arrives."""
        ssl_done = gss_done = self.client.is_tls  # direct TLS: no negotiation inside it
        while True:
            packet = await self._next(self.decoder.next_startup)
            if isinstance(packet, m.SSLRequest) and not ssl_done:
                await self._answer_ssl()
                ssl_done, gss_done = True, gss_done or self.client.is_tls
            elif isinstance(packet, m.GSSENCRequest) and not gss_done:
                self._answer_plain(b"N")
                gss_done = True
            elif isinstance(packet, m.CancelRequest):
                await self._cancel(packet)
                return None
            elif isinstance(packet, m.StartupMessage):
                return packet
            else:  # a second SSLRequest or GSSENCRequest: Postgres reads its code as a protocol version
                code = m.SSL_REQUEST_CODE if isinstance(packet, m.SSLRequest) else m.GSSENC_REQUEST_CODE
                raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0", "0A000")

    async def _answer_ssl(self) -> None:
        if not (self.client.can_tls and self.ctx.tls_context):
            self._answer_plain(b"N")
            return
        self._answer_plain(b"S")
        await self.client.start_tls(self.ctx.tls_context)

    def _answer_plain(self, answer: bytes) -> None:
        self.client.write(answer)
        # Bytes sent before the handshake's answer could only have been injected (CVE-2021-23214).
        if self.decoder.has_data():
            raise ProtocolViolation(UNENCRYPTED_DATA, detail=MITM_DETAIL)

    async def _cancel(self, request: m.CancelRequest) -> None:
        # Like Postgres, close without a word either way, so keys cannot be probed.
        target = self.ctx.cancellations.lookup(request.pid, request.key)
        if target is not None:
            await send_cancel(target.opener or self.ctx.open_backend_socket, target)

    async def _next(self, parse):
        while True:
            packet = parse()
            if packet is not None:
                return packet
            data = await self.client.read()
            if not data:
                raise ClientGone()
            self.decoder.feed(data)

    async def _read_password(self) -> bytes:
        message = await self._next(lambda: self.decoder.next_message(m.MAX_AUTH_MESSAGE_LENGTH))
        if message.type != b"p":
            raise ProtocolViolation(f"expected password response, got message type {message.type[0]}")
        return message.body

    async def _cleartext_password(self) -> bytes:
        self.client.write(m.authentication(m.AUTH_CLEARTEXT))
        body = await self._read_password()
        if body.find(b"\0") != len(body) - 1:
            raise ProtocolViolation("invalid password packet size")
        return strip_password_hack(body[:-1])

    async def _jwt_login(self, vetted: ClientStartup) -> ComputeConnection:
        if not (self.client.is_tls or self.client.is_loopback):
            raise ClientError(INSECURE, "28000", "ERROR")
        token = self.token = (await self._cleartext_password()).decode("utf-8", "replace")
        try:
            verified = await self.ctx.verifier.verify(token, vetted.user)
        except JwtError as exc:
            log.info("refused a JWT for role %s: %s", vetted.user, exc.detail or exc.message)
            raise ClientError(exc.message, "28000", "ERROR", exc.hint or jwt_refusal_hint(exc.message, token, vetted.user)) from None
        self._rate_check(lambda limits: limits.admit_identity("tcp" if self.client.can_tls else "ws", vetted.user,
                                                              verified.claims.get("sub")))
        vetted = replace(vetted, database=await self.ctx.control_plane.tenant_database(verified.claims, vetted.database))
        opener, database, credential = (self.ctx.tenant_compute(vetted.database, vetted.user)
                                        or (self.ctx.open_backend_socket, vetted.database, self.ctx.backend_credential(vetted.user)))
        # The same steps as the HTTP path: a prepared database, a bound backend, a re-signed token.
        backend, signer = await self.ctx.control_plane.start_jwt_session(
            vetted.database, vetted.user,
            lambda options: open_compute(opener, replace(vetted, database=database).backend_params(options), credential))
        if opener is not self.ctx.open_backend_socket and backend.key is not None:  # a cancel goes to the tenant's server
            backend.key = replace(backend.key, opener=opener)
        try:
            await backend.first_row(session_jwt.INIT_QUERY, [signer.token_for(verified.payload)])
        except BaseException:
            backend.close()
            raise
        return backend

    async def _password_login(self, vetted: ClientStartup) -> tuple[ComputeConnection, bytes]:
        try:
            if self.client.can_tls:  # TCP: SCRAM end to end, as Postgres and Neon do
                verifier = scram.ScramVerifier.parse(await self.ctx.control_plane.role_secret(vetted.user))
                real = verifier is not None
                final = await self._scram(verifier or scram.ScramVerifier.mock(vetted.user, self.ctx.mock_secret), real,
                                          vetted.user)
            else:  # WebSocket: cleartext inside the tunnel, as Neon does, so pipelined connects work
                final = b""
                if not await self.ctx.control_plane.check_password(vetted.user, await self._cleartext_password()):
                    raise scram.AuthenticationFailed()
        except scram.AuthenticationFailed:
            raise ClientError(f"password authentication failed for user '{vetted.user}'", "28P01", "ERROR") from None
        except scram.ScramError as exc:
            raise ProtocolViolation(str(exc), "28000") from None
        return await open_compute(self.ctx.open_backend_socket, vetted.backend_params(),
                                  self.ctx.backend_credential(vetted.user)), final

    async def _scram(self, verifier: scram.ScramVerifier, real: bool, role: str) -> bytes:
        binding = self.ctx.channel_binding if self.client.is_tls else None
        exchange = scram.ScramExchange(verifier, binding, real)
        self.client.write(m.authentication_sasl(exchange.mechanisms))
        mechanism, client_first = _sasl_initial(await self._read_password())
        self.client.write(m.authentication(m.AUTH_SASL_CONTINUE, exchange.server_first(mechanism, client_first)))
        final = exchange.server_final(await self._read_password())
        # An upstream Postgres asks the proxy to log in as this role: the key the client just proved is the way in.
        self.ctx.control_plane.remember_login(role, scram.ClientCredential(client_key=exchange.client_key))
        return final

    def _greet(self, backend: ComputeConnection, sasl_final: bytes) -> None:
        self.cancel_key = self.ctx.cancellations.register(cast(CancelKey, backend.key))  # Postgres sends BackendKeyData
        out = [m.authentication(m.AUTH_SASL_FINAL, sasl_final)] if sasl_final else []
        out.append(m.authentication(m.AUTH_OK))
        out += [m.parameter_status(k, v) for k, v in backend.parameters.items()]
        out += [m.backend_key_data(self.cancel_key.pid, self.cancel_key.key), m.ready_for_query(b"I")]
        self.client.write(b"".join(out))


def _sasl_initial(body: bytes) -> tuple[str, bytes]:
    name_end = body.find(b"\0")
    if name_end < 0 or len(body) < name_end + 5:
        raise ProtocolViolation("malformed SASL message")
    length, data = m.int32(body, name_end + 1), body[name_end + 5:]
    if length != len(data) and not (length == -1 and not data):
        raise ProtocolViolation("malformed SASL message")
    return body[:name_end].decode("utf-8", "replace"), data
