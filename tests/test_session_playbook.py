"""Sans-io tests of the proxy's client session: whole conversations scripted as bytes in and bytes out.

The session is the real one (`neon_local.proxy.session.Session`) with the real JWT verifier and issuer,
the real TLS files, cancel map and role slots. Only its peers are doubles, each behind the interface
the session is given: the client (`ScriptedClient`, a `ClientChannel`), the Postgres it opens through
`ProxyContext.open_backend_socket` (`ScriptedCompute`) and the control plane that hands out role
secrets and prepares JWT sessions (`ScriptedControlPlane`, where Neon's proxy asks its control-plane
API). So a protocol corner case costs a few lines here; the same conversations over real sockets,
a real Postgres and real drivers are the integration layer (tests/test_proxy_*.py).

Each step is `await playbook.send(bytes)` (or `hang_up()`): the client's bytes go in, and what the
session wrote back before it next waited for the client, or ended, comes out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.scram import ScramVerifier
from neon_local.auth.verifier import Verifier
from neon_local.postgres import session_jwt
from neon_local.proxy import tls
from neon_local.proxy.limits import RoleSlots
from neon_local.proxy.session import INSECURE, MITM_DETAIL, UNENCRYPTED_DATA, ProxyContext, Session
from neon_local.settings import Settings
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder
from proxy_support import ScramClient, scram_secret

OWNER, OWNER_PASSWORD = "neondb_owner", "owner secret"
BACKEND_KEY = (4242, 777)  # the compute's own BackendKeyData, which clients must never see
COMPUTE_PARAMS = {"server_version": "17.4", "client_encoding": "UTF8", "DateStyle": "ISO, MDY"}
SESSION_SECRET = b"k" * 32
STEP_GUARD = 30.0  # a session that neither waits for its client nor ends by then is stuck: fail, don't hang


# --- the peers ---------------------------------------------------------------------------------

class ScriptedClient:
    """The client's side of a session: what the test sends is what `read()` returns, what the session writes is kept."""

    password_refusal: str | None = None

    def __init__(self, *, can_tls: bool = True, is_loopback: bool = True) -> None:
        self.can_tls, self.is_loopback, self.is_tls = can_tls, is_loopback, False
        self.tls_context: ssl.SSLContext | None = None
        self.sent = bytearray()
        self.closed = False
        self.relayed: tuple[ScriptedCompute, bytes, bytes] | None = None  # (backend, client's pending, backend's pending)
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.waiting = asyncio.Event()  # set while the session waits on this client

    async def read(self) -> bytes:
        if self.inbox.empty():
            self.waiting.set()
        return await self.inbox.get()

    def write(self, data: bytes) -> None:
        self.sent += data

    async def start_tls(self, context: ssl.SSLContext) -> None:
        self.tls_context, self.is_tls = context, True

    async def relay(self, backend: ScriptedCompute, pending: bytes, backend_pending: bytes) -> None:
        self.relayed = (backend, pending, backend_pending)
        self.waiting.set()
        while await self.inbox.get():  # the session lives until the client hangs up
            pass

    def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedCompute:
    """A Postgres that trusts the proxy: it answers the startup, runs the two session-init queries, takes cancels."""

    refusal: bytes = b""  # an ErrorResponse to answer the startup with
    hang_up_at_startup: bool = False
    startup: dict[str, str] | None = None
    statements: list[tuple[str, list[bytes | None]]] = field(default_factory=list)
    cancel: m.CancelRequest | None = None
    closed: bool = False
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _replies: bytearray = field(default_factory=bytearray)

    def write(self, data: bytes) -> None:
        self._decoder.feed(data)
        if self.startup is None and self.cancel is None:
            packet = self._decoder.next_startup()
            if isinstance(packet, m.CancelRequest):
                self.cancel, self.closed = packet, True  # Postgres reads a cancel and hangs up without a word
                return
            assert isinstance(packet, m.StartupMessage)
            self.startup = packet.params
            self._reply_to_startup()
        while (message := self._decoder.next_message(1 << 20)) is not None:
            self._reply_to(message)

    async def read(self) -> bytes:
        if not self._replies:  # the session only reads after asking something
            assert self.closed, "the proxy waits for an answer the compute has no reason to send"
            return b""
        data = bytes(self._replies)
        self._replies.clear()
        return data

    def close(self) -> None:
        self.closed = True

    def _reply_to_startup(self) -> None:
        if self.hang_up_at_startup:
            self.closed = True
        elif self.refusal:
            self._replies += self.refusal
            self.closed = True
        else:
            self._replies += m.authentication(m.AUTH_OK) + b"".join(m.parameter_status(k, v) for k, v in COMPUTE_PARAMS.items())
            self._replies += m.backend_key_data(*BACKEND_KEY) + m.ready_for_query()

    def _reply_to(self, message: m.Message) -> None:
        if message.type == b"P":
            self.statements.append((m.cstrings(message.body)[1], []))
        elif message.type == b"B":
            self.statements[-1][1].extend(_bind_params(message.body))
        elif message.type == b"S":
            sql = self.statements[-1][0]
            row = [b"4242", b"1700000000.5"] if sql == session_jwt.BIND_QUERY else [b""]
            self._replies += m.frame(b"1", b"") + m.frame(b"2", b"") + _data_row(row)
            self._replies += m.frame(b"C", m.cstr("SELECT 1")) + m.ready_for_query()
        elif message.type == b"X":
            self.closed = True


class ScriptedControlPlane:
    """The control plane's answers: role secrets, the password check, and a JWT session's bound backend."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    async def role_secret(self, role: str) -> str | None:
        return self.secrets.get(role)

    async def check_password(self, role: str, password: bytes) -> bool:
        verifier = ScramVerifier.parse(self.secrets.get(role))
        return verifier is not None and verifier.check_password(password)

    def remember_login(self, role: str, credential: object) -> None:
        """Kept for an upstream Postgres that wants the client's credential; this compute trusts the proxy."""

    async def tenant_database(self, claims: object, requested_db: str) -> str:
        return requested_db

    async def start_jwt_session(self, dbname: str, role: str, open_backend: Callable[[str], Awaitable]) -> tuple:
        backend = await open_backend(session_jwt.startup_options())
        pid, backend_start = await backend.first_row(session_jwt.BIND_QUERY)
        return backend, session_jwt.SessionSigner(SESSION_SECRET, int(pid), backend_start)


def _bind_params(body: bytes) -> list[bytes | None]:
    offset = body.index(b"\0", body.index(b"\0") + 1) + 1  # past the portal and statement names
    formats = struct.unpack_from("!h", body, offset)[0]
    offset += 2 + 2 * formats
    params: list[bytes | None] = []
    for _ in range(struct.unpack_from("!h", body, offset)[0]):
        length = m.int32(body, offset + 2)
        params.append(None if length < 0 else body[offset + 6:offset + 6 + length])
        offset += 4 + max(length, 0)
    return params


def _data_row(values: list[bytes]) -> bytes:
    return m.frame(b"D", struct.pack("!h", len(values)) + b"".join(struct.pack("!i", len(v)) + v for v in values))


# --- the playbook --------------------------------------------------------------------------------

class Playbook:
    """One real Session driven step by step from its client's side."""

    def __init__(self, ctx: ProxyContext, client: ScriptedClient) -> None:
        self.client = client
        self.session = Session(ctx, client)
        self.task: asyncio.Task | None = None

    async def send(self, *chunks: bytes) -> bytes:
        """The client sends `chunks` (each as one read); the bytes the session answered before it waited again."""
        for chunk in chunks:
            self.client.inbox.put_nowait(chunk)
        return await self._step()

    async def hang_up(self) -> bytes:
        return await self.send(b"")

    @property
    def ended(self) -> bool:
        """The session finished and closed its client."""
        return self.task is not None and self.task.done() and self.client.closed

    async def _step(self) -> bytes:
        self.client.waiting.clear()
        if self.task is None:
            self.task = asyncio.create_task(self.session.run())
        waiting = asyncio.create_task(self.client.waiting.wait())
        try:
            async with asyncio.timeout(STEP_GUARD):
                await asyncio.wait({self.task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if self.task.done():
            self.task.result()  # Session.run never raises: an exception here is a bug worth its traceback
        sent = bytes(self.client.sent)
        self.client.sent.clear()
        return sent


@dataclass
class World:
    """A ProxyContext wired to scripted peers, plus what the test needs to play the client."""

    issuer: Issuer
    control_plane: ScriptedControlPlane
    computes: list[ScriptedCompute] = field(default_factory=list)  # every connection the session opened, in order
    make_compute: Callable[[], ScriptedCompute] = ScriptedCompute  # how the next compute behaves
    ctx: ProxyContext = field(init=False)

    async def open_compute(self) -> ScriptedCompute:
        self.computes.append(self.make_compute())
        return self.computes[-1]

    def playbook(self, **client: bool) -> Playbook:
        return Playbook(self.ctx, ScriptedClient(**client))

    def token(self, **kwargs) -> str:
        return self.issuer.mint(sub="user_alice", **kwargs)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Settings, KeyRing, tls.TlsFiles, Path]:
    root = tmp_path_factory.mktemp("playbook")
    settings = Settings(project_dir=root, owner=OWNER)
    return settings, KeyRing.load_or_create(root / "keys"), tls.ensure_tls(root / "tls"), root


@pytest.fixture
def world(keys) -> World:
    settings, keyring, tls_files, root = keys
    world = World(Issuer(settings, keyring, "http://127.0.0.1:4444"), ScriptedControlPlane({OWNER: scram_secret(OWNER_PASSWORD)}))
    world.ctx = ProxyContext(
        jwt_roles=settings.jwt_roles,
        verifier=Verifier(settings, keyring, ProviderCache(settings, root / "jwks-cache")),
        open_backend_socket=world.open_compute,
        control_plane=world.control_plane,
        tls_context=tls.server_context(tls_files),
        channel_binding=tls.channel_binding_data(tls_files),
        mock_secret=b"m" * 32,
        role_slots=RoleSlots(exempt=OWNER),
    )
    return world


def messages(data: bytes) -> list[m.Message]:
    decoder, out = FrameDecoder(), []
    decoder.feed(data)
    while (message := decoder.next_message(1 << 20)) is not None:
        out.append(message)
    assert not decoder.has_data(), "a message was cut short"
    return out


def greeting(data: bytes) -> tuple[list[m.Message], tuple[int, int]]:
    """The messages after authentication, checked to end in BackendKeyData and ReadyForQuery; our cancel key."""
    out = messages(data)
    assert [x.type for x in out[-2:]] == [b"K", b"Z"] and out[-1].body == b"I"
    return out, (m.int32(out[-2].body), m.int32(out[-2].body, 4))


def startup(user: str, **params: str) -> bytes:
    return m.startup_message({"user": user, "database": "neondb", **params})


def sasl_mechanisms(data: bytes) -> list[str]:
    (message,) = messages(data)
    assert message.type == b"R" and m.int32(message.body) == m.AUTH_SASL
    return [name for name in m.cstrings(message.body[4:]) if name]  # the list ends in an empty name


def sasl_data(data: bytes, code: int) -> bytes:
    message = messages(data)[0]
    assert message.type == b"R" and m.int32(message.body) == code
    return message.body[4:]


CLEARTEXT_REQUEST = m.authentication(m.AUTH_CLEARTEXT)


async def scram_login(playbook: Playbook, scram: ScramClient, user: str = OWNER) -> bytes:
    """Startup, then the SCRAM exchange; what the session answered the client's final message."""
    assert scram.mechanism in sasl_mechanisms(await playbook.send(startup(user)))
    server_first = sasl_data(await playbook.send(m.sasl_initial_response(scram.mechanism, scram.first())), m.AUTH_SASL_CONTINUE)
    return await playbook.send(m.sasl_response(scram.final(server_first)))


# --- startup and TLS negotiation -------------------------------------------------------------------

async def test_ssl_request_is_answered_and_tls_started_with_the_proxy_certificate(world):
    playbook = world.playbook()
    assert await playbook.send(m.ssl_request()) == b"S"
    assert playbook.client.is_tls and playbook.client.tls_context is world.ctx.tls_context
    assert sasl_mechanisms(await playbook.send(startup(OWNER))) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


async def test_ssl_request_over_websocket_gets_n_and_the_session_goes_on(world):
    playbook = world.playbook(can_tls=False)
    assert await playbook.send(m.ssl_request()) == b"N"
    assert await playbook.send(startup(OWNER)) == CLEARTEXT_REQUEST  # inside the tunnel: cleartext, as on Neon


async def test_gssenc_request_gets_n_then_ssl_still_works(world):
    playbook = world.playbook()
    assert await playbook.send(m.gssenc_request()) == b"N"
    assert await playbook.send(m.ssl_request()) == b"S"


async def test_a_second_ssl_request_is_read_as_a_protocol_version_like_postgres(world):
    playbook = world.playbook()
    assert await playbook.send(m.ssl_request()) == b"S"
    assert await playbook.send(m.ssl_request()) == m.error_response(
        "FATAL", "0A000", "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0")
    assert playbook.ended


async def test_bytes_pipelined_after_ssl_request_are_refused_as_injected(world):
    playbook = world.playbook()
    assert await playbook.send(m.ssl_request() + startup(OWNER)) == b"S" + m.error_response(
        "FATAL", "08P01", UNENCRYPTED_DATA, MITM_DETAIL)
    assert playbook.ended and not playbook.client.is_tls


async def test_jwt_without_ssl_from_another_machine_is_refused_before_the_token_is_read(world):
    playbook = world.playbook(is_loopback=False)
    token = m.password_message(world.token())
    assert await playbook.send(startup("authenticated"), token) == m.error_response("ERROR", "28000", INSECURE)
    assert playbook.ended and world.computes == []
    assert playbook.client.inbox.get_nowait() == token, "the token must not have been read"


async def test_jwt_without_ssl_on_loopback_works_and_says_neon_would_refuse(world, caplog):
    playbook = world.playbook()
    with caplog.at_level(logging.WARNING, "neon_local.proxy.session"):
        assert await playbook.send(startup("authenticated")) == CLEARTEXT_REQUEST
        greeting(await playbook.send(m.password_message(world.token())))
    assert any("without TLS; Neon refuses that" in record.getMessage() for record in caplog.records)


async def test_newer_protocol_minor_and_unknown_protocol_options_are_negotiated_down(world):
    playbook = world.playbook()
    answer = await playbook.send(m.startup_message({"user": "authenticated", "_pq_.magic": "1"}, 3 << 16 | 2))
    assert answer == m.negotiate_protocol_version(0, ["_pq_.magic"]) + CLEARTEXT_REQUEST


@pytest.mark.parametrize("params, error", [
    ({"options": "-c role=neondb_owner"}, m.error_response("FATAL", "42501", 'permission denied to set parameter "role"')),
    ({"options": "--pg-session-jwt.jwk=x"}, m.error_response("FATAL", "42501", 'permission denied to set parameter "pg_session_jwt.jwk"')),
    ({"options": "-c request.jwt.claims={}"}, m.error_response("FATAL", "42501", 'permission denied to set parameter "request.jwt.claims"')),
    ({"options": "-c search_path"}, m.error_response("FATAL", "42601", "-c search_path requires a value")),
    ({"options": "-x1"}, m.error_response(
        "FATAL", "0A000", 'unsupported startup option "-x1": only -c name=value and --name=value are allowed')),
    ({"replication": "database"}, m.error_response("FATAL", "0A000", "replication connections are not supported by neon-local")),
    ({"user": ""}, m.error_response("FATAL", "28000", "no PostgreSQL user name specified in startup packet")),
], ids=["role", "pg_session_jwt", "request.jwt", "no value", "unknown switch", "replication", "no user"])
async def test_startup_option_errors_are_postgres_errors_and_end_the_session(world, params, error):
    playbook = world.playbook()
    assert await playbook.send(m.startup_message({"user": "authenticated", **params})) == error
    assert playbook.ended and world.computes == [] and not world.ctx.role_slots.counts


async def test_neon_routing_options_are_ignored_and_safe_settings_reach_postgres(world):
    playbook = world.playbook()
    await playbook.send(startup("authenticated", options=r"endpoint=ep-x -c search_path=a\ b --statement-timeout=5s",
                                application_name="app", _junk="dropped"))
    greeting(await playbook.send(m.password_message(world.token())))
    params = world.computes[0].startup
    assert params["application_name"] == "app" and "_junk" not in params
    assert params["options"].endswith(r"-c search_path=a\ b -c statement_timeout=5s")
    assert params["options"].startswith("-c pg_session_jwt.jwk=")


# --- password roles: SCRAM over TCP, cleartext over WebSocket ---------------------------------------

async def test_owner_scram_with_channel_binding_over_tls(world):
    playbook = world.playbook()
    assert await playbook.send(m.ssl_request()) == b"S"
    scram = ScramClient(OWNER_PASSWORD, binding=world.ctx.channel_binding)
    answer = await scram_login(playbook, scram)
    assert sasl_data(answer, m.AUTH_SASL_FINAL) == scram.expected_final
    out, ours = greeting(answer)
    assert [x.type for x in out] == [b"R", b"R", b"S", b"S", b"S", b"K", b"Z"] and out[1].body == b"\0\0\0\0"
    assert {m.cstrings(x.body)[0]: m.cstrings(x.body)[1] for x in out if x.type == b"S"} == COMPUTE_PARAMS
    assert ours != BACKEND_KEY
    backend, pending, backend_pending = playbook.client.relayed
    assert backend is world.computes[0] and (pending, backend_pending) == (b"", b"")
    assert backend.startup == {"user": OWNER, "database": "neondb"}  # no options: nothing to set


async def test_owner_scram_without_tls_offers_no_channel_binding(world):
    playbook = world.playbook()
    scram = ScramClient(OWNER_PASSWORD)  # libpq's client-first message: "n,,n=,r=<nonce>", an empty SCRAM username
    assert sasl_data(await scram_login(playbook, scram), m.AUTH_SASL_FINAL) == scram.expected_final
    assert playbook.client.relayed is not None


@pytest.mark.parametrize("user, password", [(OWNER, "wrong"), ("ghost", "anything")])
async def test_wrong_password_and_unknown_role_fail_alike(world, user, password):
    playbook = world.playbook()
    answer = await scram_login(playbook, ScramClient(password), user)
    assert answer == m.error_response("ERROR", "28P01", f"password authentication failed for user '{user}'")
    assert playbook.ended and world.computes == []


async def test_channel_binding_to_another_certificate_is_refused(world):
    playbook = world.playbook()
    await playbook.send(m.ssl_request())
    answer = await scram_login(playbook, ScramClient(OWNER_PASSWORD, binding=b"\0" * 32))
    assert answer == m.error_response("FATAL", "28000", "SCRAM channel binding check failed")


@pytest.mark.parametrize("mechanism, flag, message", [
    ("SCRAM-SHA-256", b"y", "SCRAM channel binding negotiation error"),  # "I could bind, the server seems not to": a downgrade
    ("SCRAM-SHA-256", b"p=tls-server-end-point", "channel binding was requested, but the mechanism does not support it"),
    ("SCRAM-SHA-256-PLUS", b"n", "channel binding is required, but client does not support it"),
    ("SCRAM-SHA-256-PLUS", b"p=tls-unique", "channel binding is required, but client does not support it"),
], ids=["y-flag", "p-flag-on-plain", "n-flag-on-plus", "tls-unique"])
async def test_binding_flags_that_do_not_match_the_mechanism_are_refused(world, mechanism, flag, message):
    playbook = world.playbook()
    await playbook.send(m.ssl_request())
    await playbook.send(startup(OWNER))
    scram = ScramClient(OWNER_PASSWORD, binding=world.ctx.channel_binding, flag=flag)
    answer = await playbook.send(m.sasl_initial_response(mechanism, scram.first()))
    assert answer == m.error_response("FATAL", "28000", message)
    assert playbook.ended and world.computes == []


async def test_plus_without_tls_is_an_invalid_mechanism(world):
    playbook = world.playbook()
    await playbook.send(startup(OWNER))
    answer = await playbook.send(m.sasl_initial_response("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"))
    assert answer == m.error_response("FATAL", "28000", "client selected an invalid SASL authentication mechanism")


async def test_websocket_owner_logs_in_with_a_cleartext_password(world):
    playbook = world.playbook(can_tls=False)
    assert await playbook.send(startup(OWNER)) == CLEARTEXT_REQUEST
    out, _ = greeting(await playbook.send(m.password_message(OWNER_PASSWORD)))
    assert out[0] == m.Message(b"R", b"\0\0\0\0")
    playbook = world.playbook(can_tls=False)
    await playbook.send(startup(OWNER))
    assert await playbook.send(m.password_message("wrong")) == m.error_response(
        "ERROR", "28P01", f"password authentication failed for user '{OWNER}'")


# --- JWT roles ---------------------------------------------------------------------------------------

def token_payload(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def test_valid_jwt_opens_a_backend_initialised_like_the_http_path(world):
    playbook = world.playbook()
    await playbook.send(m.ssl_request())
    assert await playbook.send(startup("authenticated")) == CLEARTEXT_REQUEST
    token = world.token(claims={"org_id": "org_x"})
    out, _ = greeting(await playbook.send(m.password_message(token)))
    assert out[0] == m.Message(b"R", b"\0\0\0\0")
    compute = world.computes[0]
    assert compute.startup["user"] == "authenticated" and compute.startup["options"].startswith("-c pg_session_jwt.jwk=")
    (bind_sql, _), (init_sql, [signed]) = compute.statements
    assert (bind_sql, init_sql) == (session_jwt.BIND_QUERY, session_jwt.INIT_QUERY)
    resigned = token_payload(signed.decode())  # the backend's own token: the verified claims, numbered by the proxy
    assert {k: v for k, v in resigned.items() if k != "jti"} == token_payload(token) and resigned["jti"] == 1


CHECK_THE_TOKEN = "Check the token, e.g. by decoding it; `neon-local token alice` makes a valid one."
NOT_A_JWT = "Provided authentication token is not a valid JWT encoding"


def refused_jwt(world: World, case: str) -> tuple[str, str, str]:
    """A token the verifier refuses, with the ErrorResponse's message and hint the client must get."""
    if case == "expired":
        token = world.token(expired=True)
        return token, f"JWT token has expired (exp={token_payload(token)['exp']})", "Get a fresh token, e.g. `neon-local token alice`."
    if case == "wrong signature":
        head, body, signature = world.token().split(".")
        return f"{head}.{body}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}", "signature error: signature error", CHECK_THE_TOKEN
    if case == "not a JWT":
        return "not-a-jwt", NOT_A_JWT, CHECK_THE_TOKEN
    return "", NOT_A_JWT, "authenticated is a JWT role: put a JWT in the password field (e.g. `neon-local token alice`)."


@pytest.mark.parametrize("case", ["expired", "wrong signature", "not a JWT", "empty"])
async def test_refused_jwts_get_neons_text_and_a_next_step(world, case):
    token, message, hint = refused_jwt(world, case)
    playbook = world.playbook()
    await playbook.send(m.ssl_request())
    await playbook.send(startup("authenticated"))
    assert await playbook.send(m.password_message(token)) == m.error_response("ERROR", "28000", message, hint=hint)
    assert playbook.ended and world.computes == [] and not world.ctx.role_slots.counts


async def test_a_jwt_is_only_a_wrong_password_for_a_password_role(world):
    playbook = world.playbook(can_tls=False)
    await playbook.send(startup(OWNER))
    assert await playbook.send(m.password_message(world.token())) == m.error_response(
        "ERROR", "28P01", f"password authentication failed for user '{OWNER}'")


# --- cancel, hang-ups, an unavailable Postgres -----------------------------------------------------------

async def test_cancel_request_with_our_key_reaches_the_backend_with_its_own_key(world):
    session = world.playbook()
    await session.send(startup("authenticated"))
    _, (pid, key) = greeting(await session.send(m.password_message(world.token())))
    for wrong in (m.cancel_request(pid, key ^ 1), m.cancel_request(pid ^ 1, key)):
        cancel = world.playbook()
        assert await cancel.send(wrong) == b"" and cancel.ended  # closed without a word, so keys cannot be probed
    assert len(world.computes) == 1
    cancel = world.playbook()
    assert await cancel.send(m.cancel_request(pid, key)) == b"" and cancel.ended
    assert world.computes[1].cancel == m.CancelRequest(*BACKEND_KEY)
    await session.hang_up()
    assert session.ended
    cancel = world.playbook()  # the session is over: its key is gone
    assert await cancel.send(m.cancel_request(pid, key)) == b"" and len(world.computes) == 2


@pytest.mark.parametrize("stage", ["before startup", "mid SCRAM", "at the JWT prompt"])
async def test_a_client_hanging_up_mid_auth_ends_the_session_quietly(world, stage):
    playbook = world.playbook()
    if stage == "mid SCRAM":
        await playbook.send(startup(OWNER))
        await playbook.send(m.sasl_initial_response("SCRAM-SHA-256", ScramClient(OWNER_PASSWORD).first()))
    elif stage == "at the JWT prompt":
        await playbook.send(startup("authenticated"))
    else:
        await playbook.send(startup(OWNER)[:7])  # half a packet
    assert await playbook.hang_up() == b""
    assert playbook.ended and world.computes == [] and not world.ctx.role_slots.counts


async def test_backend_refusing_connections_is_a_fatal_08006_with_the_next_step(world):
    async def refused() -> ScriptedCompute:
        raise ConnectionRefusedError(111, "Connection refused")

    world.ctx.open_backend_socket = refused
    playbook = world.playbook()
    await playbook.send(startup("authenticated"))
    assert await playbook.send(m.password_message(world.token())) == m.error_response(
        "FATAL", "08006", "neon-local could not reach Postgres: its socket refused the connection (Connection refused). "
                          "It may be restarting; try again in a moment.")
    assert playbook.ended and not world.ctx.role_slots.counts


async def test_backend_closing_during_startup_is_a_fatal_08006(world):
    world.make_compute = lambda: ScriptedCompute(hang_up_at_startup=True)
    playbook = world.playbook()
    answer = await scram_login(playbook, ScramClient(OWNER_PASSWORD))
    assert answer.endswith(m.error_response(
        "FATAL", "08006", "neon-local could not reach Postgres: it closed the connection. It may be restarting; try again in a moment."))
    assert world.computes[0].closed


async def test_backend_errors_at_startup_are_passed_on_byte_for_byte(world):
    refusal = m.error_response("FATAL", "3D000", 'database "nosuchdb" does not exist')
    world.make_compute = lambda: ScriptedCompute(refusal=refusal)
    playbook = world.playbook()
    assert (await scram_login(playbook, ScramClient(OWNER_PASSWORD))).endswith(refusal)
    assert playbook.ended
