"""The sans-io codec and startup vetting: playbooks of bytes in, packets or refusals out, plus a bounded fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neon_local.auth.scram import AuthenticationFailed, ScramError, ScramExchange, ScramVerifier
from neon_local.proxy.session import ClientError, parse_options, strip_password_hack, vet_startup
from neon_local.wire import messages as m
from neon_local.wire.codec import FrameDecoder, ProtocolViolation, parse_startup_packet

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_all(data: bytes, chunk: int | None = None, startup_first: bool = True) -> list:
    """Feed `data` in pieces of `chunk` bytes; return the packets, then the messages, in order."""
    decoder, out, in_startup = FrameDecoder(), [], startup_first
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        decoder.feed(piece)
        while True:
            item = decoder.next_startup() if in_startup else decoder.next_message(1 << 20)
            if item is None:
                break
            out.append(item)
            in_startup = in_startup and not isinstance(item, m.StartupMessage)
    return out


def test_startup_message_one_byte_at_a_time():
    raw = m.startup_message({"user": "alice", "database": "neondb", "application_name": "psql"})
    [packet] = decode_all(raw, chunk=1)
    assert packet == m.StartupMessage(3, 0, {"user": "alice", "database": "neondb", "application_name": "psql"})


def test_negotiation_packets_then_startup_then_messages_coalesced():
    raw = m.ssl_request() + m.gssenc_request() + m.startup_message({"user": "u"}) + m.query("select 1") + m.terminate()
    assert decode_all(raw) == [
        m.SSLRequest(), m.GSSENCRequest(), m.StartupMessage(3, 0, {"user": "u"}),
        m.Message(b"Q", b"select 1\0"), m.Message(b"X", b""),
    ]


def test_cancel_request_and_its_repr_hides_the_key():
    [packet] = decode_all(m.cancel_request(1234, -99))
    assert packet == m.CancelRequest(1234, -99)
    assert "-99" not in repr(packet)


@pytest.mark.parametrize("length", [0, 4, 7, 10005, 2**31 - 1, -1])
def test_startup_lengths_postgres_refuses_close_silently(length):
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!ii", length, m.PROTOCOL_3_0))
    with pytest.raises(ProtocolViolation) as caught:
        decoder.next_startup()
    assert caught.value.message is None


def test_largest_startup_packet_postgres_accepts_is_accepted():
    raw = m.startup_message({"user": "u", "application_name": "x" * (m.MAX_STARTUP_PACKET_LENGTH - 30)})
    assert len(raw) == m.MAX_STARTUP_PACKET_LENGTH + 4
    assert decode_all(raw)[0].params["user"] == "u"


def test_cancel_request_of_wrong_length_closes_silently():
    with pytest.raises(ProtocolViolation) as caught:
        parse_startup_packet(struct.pack("!iiii", m.CANCEL_REQUEST_CODE, 1, 2, 3))
    assert caught.value.message is None


@pytest.mark.parametrize("version", [2 << 16, 4 << 16, 1234 << 16 | 5000])
def test_other_protocol_versions_get_postgres_error(version):
    with pytest.raises(ProtocolViolation) as caught:
        parse_startup_packet(struct.pack("!i", version) + b"user\0u\0\0")
    assert caught.value.code == "0A000"
    assert caught.value.message.startswith(f"unsupported frontend protocol {version >> 16}.{version & 0xFFFF}")


@pytest.mark.parametrize("body", [b"", b"user\0u\0", b"user\0u", b"user\0", b"user\0u\0\0\0"])
def test_bad_layout_is_postgres_error(body):
    with pytest.raises(ProtocolViolation, match="invalid startup packet layout"):
        parse_startup_packet(struct.pack("!i", m.PROTOCOL_3_0) + body)


def test_minor_version_and_non_utf8_values_pass_through():
    packet = parse_startup_packet(struct.pack("!i", 3 << 16 | 2) + b"user\0caf\xe9\0_pq_.x\0y\0\0")
    assert (packet.major, packet.minor) == (3, 2)
    assert m.cstr(packet.params["user"]) == b"caf\xe9\0"


@pytest.mark.parametrize("length", [0, 3, (1 << 20) + 1])
def test_message_bad_length_closes_silently(length):
    decoder = FrameDecoder()
    decoder.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation):
        decoder.next_message(1 << 20)


def test_take_rest_returns_unparsed_pipeline():
    decoder = FrameDecoder()
    decoder.feed(m.password_message("tok") + m.query("select 1")[:3])
    assert decoder.next_message(100) == m.Message(b"p", b"tok\0")
    assert decoder.take_rest() == m.query("select 1")[:3]
    assert not decoder.has_data()


def test_error_response_round_trip():
    raw = m.error_response("FATAL", "28000", "nope", "why")
    message = decode_all(raw, startup_first=False)[0]
    assert m.error_fields(message.body) == {"S": "FATAL", "V": "FATAL", "C": "28000", "M": "nope", "D": "why"}


# --- startup vetting (pure) ---

def startup(**params: str) -> m.StartupMessage:
    return m.StartupMessage(3, 0, params)


def test_vetting_keeps_allowed_params_and_drops_the_rest():
    vetted = vet_startup(startup(user="u", application_name="a", IntervalStyle="iso_8601", search_path="evil",
                                 client_encoding="UTF8", DateStyle="ISO", TimeZone="UTC", extra_float_digits="3"))
    assert vetted.params == {"application_name": "a", "client_encoding": "UTF8", "DateStyle": "ISO",
                             "TimeZone": "UTC", "extra_float_digits": "3"}
    assert vetted.database == "u"


def test_vetting_names_are_clipped_like_postgres():
    vetted = vet_startup(startup(user="é" * 40, database="d" * 100))
    assert vetted.user == "é" * 31 and vetted.database == "d" * 63


@pytest.mark.parametrize("options, expected", [
    ("endpoint=ep-foo -c statement_timeout=5s", [("statement_timeout", "5s")]),
    ("project=irrelevant -cproxytest.option=value", [("proxytest.option", "value")]),
    ("-c proxytest.foo=\\ str", [("proxytest.foo", " str")]),
    ("--work-mem=64kB  neon_proxy_params_compat:true", [("work_mem", "64kB")]),
    ("", []),
])
def test_options_parsed_as_postgres_splits_them(options, expected):
    assert parse_options(options) == expected


@pytest.mark.parametrize("options", [
    "-c pg_session_jwt.jwk={}", "-c PG_SESSION_JWT.jwt=x", "-crequest.jwt.claims={}", "-c role=postgres",
    "--session-authorization=cloud_admin", "-c session_authorization=cloud_admin", "-c Role=x",
    # Postgres turns dashes into underscores in -c names too, so these name the same settings.
    "-c pg-session-jwt.jwk={}", "-c pg-session-jwt.jwt=x", "-c session-authorization=cloud_admin",
    "-c Pg-Session_Jwt.jwk={}",
])
def test_options_that_could_forge_identity_are_refused(options):
    with pytest.raises(ClientError) as caught:
        vet_startup(startup(user="authenticated", options=options))
    assert caught.value.code == "42501"


@pytest.mark.parametrize("options", ["-d 5", "-B 100", "-c", "-c nameonly", "garbage"])
def test_other_switches_are_refused(options):
    with pytest.raises(ClientError):
        parse_options(options)


@pytest.mark.parametrize("value", ["true", "database", "on", "1", "yes"])
def test_replication_is_refused(value):
    with pytest.raises(ClientError, match="replication"):
        vet_startup(startup(user="u", replication=value))


def test_missing_user_is_postgres_error():
    with pytest.raises(ClientError, match="no PostgreSQL user name specified in startup packet"):
        vet_startup(startup(database="d"))


def test_backend_params_escape_and_put_our_options_first():
    vetted = vet_startup(startup(user="u", options="-c application_name=a\\ b -c x.y=\\\\"))
    params = vetted.backend_params("-c pg_session_jwt.jwk=K")
    assert params["options"] == "-c pg_session_jwt.jwk=K -c application_name=a\\ b -c x.y=\\\\"
    assert parse_options(params["options"][len("-c pg_session_jwt.jwk=K "):]) == [("application_name", "a b"), ("x.y", "\\")]


@pytest.mark.parametrize("given, password", [
    (b"endpoint=ep-foo;secret", b"secret"), (b"project=irrelevant$pw;x", b"pw;x"), (b"endpoint=ep;", b""),
    (b"plain", b"plain"), (b"endpoint=no-separator", b"endpoint=no-separator"), (b"a.b.c", b"a.b.c"),
])
def test_neon_password_hack_prefix_is_dropped(given, password):
    assert strip_password_hack(given) == password


# --- bounded fuzz ---

@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_fuzz_any_bytes_give_packets_or_a_protocol_violation(data, chunk):
    try:
        whole = decode_all(data)
    except ProtocolViolation:
        whole = None
    try:
        pieces = decode_all(data, chunk)
    except ProtocolViolation:
        pieces = None
    # Splitting the stream differently may only stop earlier (a later packet is refused), never disagree.
    assert whole is None or pieces is None or whole == pieces


names = st.text(st.characters(blacklist_characters="\0", codec="utf-8"), min_size=1, max_size=20)
values = st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=40)


@FUZZ
@given(st.dictionaries(names, values, max_size=8), st.integers(min_value=1, max_value=17))
def test_fuzz_startup_round_trip(params, chunk):
    [packet] = decode_all(m.startup_message(params), chunk)
    assert packet.params == params


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(b"QPBEDSHXdcf"), st.binary(max_size=60)), max_size=10),
       st.integers(min_value=1, max_value=23))
def test_fuzz_message_framing_round_trip(items, chunk):
    raw = b"".join(m.frame(bytes([t]), body) for t, body in items)
    assert decode_all(raw, chunk, startup_first=False) == [m.Message(bytes([t]), body) for t, body in items]


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_options_parse_or_refuse(text):
    try:
        gucs = parse_options(text)
    except ClientError as exc:
        assert exc.code in ("0A000", "42501", "42601")
        return
    for name, _ in gucs:
        assert not name.lower().startswith(("pg_session_jwt.", "request.")) and name.lower() not in ("role", "session_authorization")


@FUZZ
@given(st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "PLAIN"]), st.binary(max_size=80), st.binary(max_size=120),
       st.booleans())
def test_fuzz_scram_messages_fail_only_with_scram_errors(mechanism, first, final, tls):
    exchange = ScramExchange(ScramVerifier.mock("u", b"k"), b"\x01" * 32 if tls else None, real=False)
    try:
        exchange.server_first(mechanism, first)
        exchange.server_final(final)
    except (ScramError, AuthenticationFailed):
        return
    pytest.fail("a mock verifier must never authenticate")
