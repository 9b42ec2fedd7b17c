"""The verifier: Neon's rules and error texts word for word, the hardening attack matrix, compat, and the cache."""

import asyncio
import base64
import hashlib
import hmac
import importlib
import json
import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OctKey, RSAKey

from neon_local.auth.issuer import Issuer
from neon_local.auth.keys import KeyRing
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import MAX_TOKEN_BYTES, JwtError, Verifier, parse_token
from neon_local.settings import BUILTIN_PROVIDER_ID, Provider, Settings

# Neon's texts, copied from proxy/src/auth/backend/jwt.rs.
ENCODING = "Provided authentication token is not a valid JWT encoding"
MISSING_KID = "missing key id"
JWK_NOT_FOUND = "jwk not found"
ALG_NOT_SUPPORTED = "signature algorithm not supported"
INVALID_RSA_ALG = "invalid RSA signing algorithm"
INVALID_AUDIENCE = "invalid JWT token audience"
NOT_CONFIGURED = "failed to fetch auth rules: JWKs settings for this role were not configured"
EC_SIGNATURE = "signature error: signature error"
RSA_SIGNATURE = "signature error: signature error: verification error"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
NOW = int(time.time())


def b64(data) -> str:
    if isinstance(data, (dict, list)):
        data = json.dumps(data).encode()
    elif isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header, payload, sign=None) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def es256(private_key):
    def sign(data):
        r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def rs256(private_key):
    return lambda data: private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def hs256(secret):
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Our key ring plus two file providers: odd keys (P-384, HMAC) and one that requires aud "neon"."""
    root = tmp_path_factory.mktemp("verifier")
    ring = KeyRing.load_or_create(root / "keys")
    p384, oct_key, aud_key = ECKey.generate_key("P-384"), OctKey.generate_key(256), ECKey.generate_key("P-256")
    rsa_no_alg = RSAKey.generate_key(2048)
    rsa_1024 = rsa.generate_private_key(65537, 1024)
    small = rsa_1024.public_key().public_numbers()
    (root / "odd.json").write_text(json.dumps({"keys": [
        p384.as_dict(private=False) | {"kid": "p384"},
        oct_key.as_dict(private=True) | {"kid": "hmac"},
        rsa_no_alg.as_dict(private=False) | {"kid": "rsa-no-alg"},
        {"kty": "RSA", "kid": "rsa-1024", "n": b64(small.n.to_bytes(128, "big")), "e": b64(small.e.to_bytes(3, "big"))},
    ]}))
    (root / "aud.json").write_text(json.dumps({"keys": [aud_key.as_dict(private=False) | {"kid": "aud", "alg": "ES256"}]}))
    settings = Settings(
        project_dir=root,
        providers=(
            Provider(BUILTIN_PROVIDER_ID, provider_name="neon-local"),
            Provider("odd", role_names=("authenticated",), jwks_file=root / "odd.json"),
            Provider("aud", role_names=("audience_role",), jwks_file=root / "aud.json", jwt_audience="neon"),
        ),
    )
    return {
        "settings": settings,
        "ring": ring,
        "issuer": Issuer(settings, ring, "http://127.0.0.1:4444"),
        "cache": ProviderCache(settings, root / "jwks-cache"),
        "p384": p384.private_key,
        "oct": oct_key.raw_value,
        "aud": aud_key.private_key,
        "rsa-no-alg": rsa_no_alg.private_key,
        "rsa-1024": rsa_1024,
    }


def verifier(world, **changes):
    settings = world["settings"].with_overrides(**changes)
    return Verifier(settings, world["ring"], world["cache"])


def our(world, alg):
    key = world["ring"].active(alg)
    return key.kid, key.key.private_key


def es(world, payload=None, **header):
    kid, key = our(world, "ES256")
    return compact({"alg": "ES256", "kid": kid} | header, {"sub": "u", "exp": NOW + 600} if payload is None else payload, es256(key))


def rs(world, payload=None, **header):
    kid, key = our(world, "RS256")
    return compact({"alg": "RS256", "kid": kid} | header, {"sub": "u", "exp": NOW + 600} if payload is None else payload, rs256(key))


def resign(world, token, alg="ES256"):
    """Sign the token's raw first two segments, however odd, with our key for `alg`."""
    _kid, key = our(world, alg)
    signing_input = token.rsplit(".", 1)[0]
    sign = es256(key) if alg == "ES256" else rs256(key)
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def raw(header_json: str, payload_json: str) -> str:
    return f"{b64(header_json)}.{b64(payload_json)}.sig"


def kid_of(world, alg):
    return world["ring"].active(alg).kid


# (id, build(world) -> token, role, expected message)
ATTACKS = [
    # Encoding: Neon refuses all of these with one text.
    ("two segments", lambda w: "e30.e30", "authenticated", ENCODING),
    ("five segments (JWE)", lambda w: "e30.e30.e30.e30.e30", "authenticated", ENCODING),
    ("header not base64url", lambda w: "e3!.e30." , "authenticated", ENCODING),
    ("padded base64", lambda w: es(w).replace(".", "=.", 1), "authenticated", ENCODING),
    ("non-canonical trailing bits", lambda w: es(w)[:-1] + {"A": "B", "Q": "R", "g": "h", "w": "x"}.get(es(w)[-1], "B"), "authenticated", ENCODING),
    ("trailing garbage after the signature", lambda w: es(w) + "!!!!", "authenticated", ENCODING),
    ("header not JSON", lambda w: raw("{alg", "{}"), "authenticated", ENCODING),
    ("header is an array", lambda w: raw('["ES256"]', "{}"), "authenticated", ENCODING),
    ("payload not JSON", lambda w: resign(w, f"{b64({'alg': 'ES256', 'kid': kid_of(w, 'ES256')})}.{b64('nope')}.x"), "authenticated", ENCODING),
    ("payload NaN", lambda w: resign(w, raw(json.dumps({"alg": "ES256", "kid": kid_of(w, "ES256")}), '{"exp": NaN}')), "authenticated", ENCODING),
    ("header in UTF-16", lambda w: f"{b64(json.dumps({'alg': 'ES256'}).encode('utf-16'))}.e30.", "authenticated", ENCODING),
    ("unknown alg", lambda w: es(w, alg="HS257"), "authenticated", ENCODING),
    ("missing alg", lambda w: raw(json.dumps({"kid": kid_of(w, "ES256")}), "{}"), "authenticated", ENCODING),
    ("Ed25519 alg name outside extended mode", lambda w: es(w, alg="Ed25519"), "authenticated", ENCODING),
    ("kid is a number", lambda w: es(w, kid=7), "authenticated", ENCODING),
    ("exp as a string", lambda w: es(w, {"exp": str(NOW + 600)}), "authenticated", ENCODING),
    ("exp as a float", lambda w: es(w, {"exp": NOW + 600.5}), "authenticated", ENCODING),
    ("exp negative", lambda w: es(w, {"exp": -1}), "authenticated", ENCODING),
    ("nbf as a boolean", lambda w: es(w, {"nbf": True}), "authenticated", ENCODING),
    ("aud is a number", lambda w: es(w, {"aud": 5}), "authenticated", ENCODING),
    ("aud list with a number", lambda w: es(w, {"aud": ["neon", 5]}), "authenticated", ENCODING),
    ("sub is a number", lambda w: es(w, {"sub": 42}), "authenticated", ENCODING),
    ("deeply nested claims", lambda w: resign(w, raw(json.dumps({"alg": "ES256", "kid": kid_of(w, "ES256")}), '{"a":' + "[" * 5000 + "]" * 5000 + "}")), "authenticated", ENCODING),
    # kid and key lookup.
    ("no kid", lambda w: es(w, kid=None), "authenticated", MISSING_KID),
    ("unknown kid", lambda w: es(w, kid="nobody"), "authenticated", JWK_NOT_FOUND),
    ("kid path traversal", lambda w: compact({"alg": "HS256", "kid": "../../../../dev/null"}, {"sub": "u"}, hs256(b"")), "authenticated", JWK_NOT_FOUND),
    ("role not in any provider's role_names", lambda w: es(w), "postgres", JWK_NOT_FOUND),
    ("kid of a provider that does not serve this role", lambda w: compact({"alg": "ES384", "kid": "p384"}, {}), "anonymous", JWK_NOT_FOUND),
    # Algorithms: the key decides.
    ("alg none", lambda w: compact({"alg": "none", "kid": kid_of(w, "ES256")}, {"sub": "admin"}), "authenticated", ALG_NOT_SUPPORTED),
    ("HS256 keyed with the RSA public key PEM", lambda w: compact(
        {"alg": "HS256", "kid": kid_of(w, "RS256")}, {"sub": "admin"},
        hs256(our(w, "RS256")[1].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))),
        "authenticated", ALG_NOT_SUPPORTED),
    ("RS256 header on the ES256 key", lambda w: es(w, alg="RS256"), "authenticated", ALG_NOT_SUPPORTED),
    ("ES256 header on the RSA key", lambda w: rs(w, alg="ES256"), "authenticated", ALG_NOT_SUPPORTED),
    ("PS256 on an RSA key whose JWK says RS256", lambda w: rs(w, alg="PS256"), "authenticated", ALG_NOT_SUPPORTED),
    ("PS256 on an RSA key whose JWK names no alg", lambda w: compact({"alg": "PS256", "kid": "rsa-no-alg"}, {"sub": "u"}), "authenticated", INVALID_RSA_ALG),
    ("RSA key under 2048 bits", lambda w: compact({"alg": "RS256", "kid": "rsa-1024"}, {"sub": "u"}, rs256(w["rsa-1024"])), "authenticated", ALG_NOT_SUPPORTED),
    ("EdDSA outside extended mode", lambda w: w["issuer"].mint("alice", alg="EdDSA"), "authenticated", "unsupported key type Okp(Ed25519)"),
    ("HMAC key in a JWKS", lambda w: compact({"alg": "HS256", "kid": "hmac"}, {"sub": "u"}, hs256(w["oct"])), "authenticated", "unsupported key type Oct"),
    ("P-384 key", lambda w: compact({"alg": "ES384", "kid": "p384"}, {"sub": "u"}), "authenticated", "unsupported EC key type P384"),
    ("ES256 header on the P-384 key", lambda w: compact({"alg": "ES256", "kid": "p384"}, {"sub": "u"}), "authenticated", ALG_NOT_SUPPORTED),
    # Signatures.
    ("RS256 signature stripped", lambda w: rs(w).rsplit(".", 1)[0] + ".", "authenticated", RSA_SIGNATURE),
    ("ES256 signature stripped", lambda w: es(w).rsplit(".", 1)[0] + ".", "authenticated", EC_SIGNATURE),
    ("psychic signature r=s=0", lambda w: es(w).rsplit(".", 1)[0] + "." + b64(bytes(64)), "authenticated", EC_SIGNATURE),
    ("psychic signature r=s=n", lambda w: es(w).rsplit(".", 1)[0] + "." + b64(P256_ORDER.to_bytes(32, "big") * 2), "authenticated", EC_SIGNATURE),
    ("attacker key with our kid", lambda w: compact({"alg": "ES256", "kid": kid_of(w, "ES256")}, {"sub": "admin"}, es256(ec.generate_private_key(ec.SECP256R1()))), "authenticated", EC_SIGNATURE),
    ("payload swapped after signing", lambda w: ".".join([es(w).split(".")[0], b64({"sub": "admin"}), es(w).split(".")[2]]), "authenticated", EC_SIGNATURE),
    ("RS256 payload swapped after signing", lambda w: ".".join([rs(w).split(".")[0], b64({"sub": "admin"}), rs(w).split(".")[2]]), "authenticated", RSA_SIGNATURE),
    # Claims.
    ("expired", lambda w: es(w, {"sub": "u", "exp": NOW - 3600}), "authenticated", f"JWT token has expired (exp={NOW - 3600})"),
    ("not yet valid", lambda w: es(w, {"sub": "u", "nbf": NOW + 3600}), "authenticated", f"JWT token is not yet ready to use (nbf={NOW + 3600})"),
    ("no aud where one is required", lambda w: compact({"alg": "ES256", "kid": "aud"}, {"sub": "u"}, es256(w["aud"])), "audience_role", INVALID_AUDIENCE),
    ("empty aud list", lambda w: compact({"alg": "ES256", "kid": "aud"}, {"aud": []}, es256(w["aud"])), "audience_role", INVALID_AUDIENCE),
    ("wrong aud", lambda w: compact({"alg": "ES256", "kid": "aud"}, {"aud": "foo"}, es256(w["aud"])), "audience_role", INVALID_AUDIENCE),
    ("wrong aud list", lambda w: compact({"alg": "ES256", "kid": "aud"}, {"aud": ["foo", "bar"]}, es256(w["aud"])), "audience_role", INVALID_AUDIENCE),
    ("aud that only starts like ours", lambda w: compact({"alg": "ES256", "kid": "aud"}, {"aud": "neon-evil"}, es256(w["aud"])), "audience_role", INVALID_AUDIENCE),
    # Hardening Neon lacks: our own messages.
    ("token over the length cap", lambda w: es(w, {"sub": "u", "pad": "x" * MAX_TOKEN_BYTES}), "authenticated", None),
    ("duplicate claim", lambda w: resign(w, raw(json.dumps({"alg": "ES256", "kid": kid_of(w, "ES256")}), '{"role": "member", "role": "service_role"}')), "authenticated", 'duplicate key "role" in the JWT payload'),
    ("duplicate nested claim", lambda w: resign(w, raw(json.dumps({"alg": "ES256", "kid": kid_of(w, "ES256")}), '{"app": {"admin": false, "admin": true}}')), "authenticated", 'duplicate key "admin" in the JWT payload'),
    ("duplicate header alg", lambda w: resign(w, raw(f'{{"alg": "ES256", "alg": "none", "kid": "{kid_of(w, "ES256")}"}}', "{}")), "authenticated", 'duplicate key "alg" in the JWT header'),
    ("jku header", lambda w: es(w, jku="https://attacker.example/jwks.json"), "authenticated", 'JWT header parameter "jku" is not allowed: keys come only from the configured JWKS'),
    ("x5u header", lambda w: es(w, x5u="https://attacker.example/cert.pem"), "authenticated", 'JWT header parameter "x5u" is not allowed: keys come only from the configured JWKS'),
    ("embedded jwk header (CVE-2018-0114)", lambda w: es(w, jwk=ECKey.generate_key("P-256").as_dict(private=False)), "authenticated", 'JWT header parameter "jwk" is not allowed: keys come only from the configured JWKS'),
    ("x5c header", lambda w: es(w, x5c=["MIIB"]), "authenticated", 'JWT header parameter "x5c" is not allowed: keys come only from the configured JWKS'),
    ("unknown crit extension", lambda w: es(w, crit=["exp"], exp=1), "authenticated", "JWT header marks extensions ['exp'] as critical; none are supported"),
    ("b64=false (RFC 7797)", lambda w: es(w, b64=False, crit=["b64"]), "authenticated", "JWT header marks extensions ['b64'] as critical; none are supported"),
    ("nested JWT", lambda w: es(w, cty="JWT"), "authenticated", 'nested JWTs (cty "JWT") are not supported'),
    ("iat in the future", lambda w: es(w, {"sub": "u", "iat": NOW + 3600}), "authenticated", f"JWT was issued in the future (iat={NOW + 3600})"),
    ("iat as a string", lambda w: es(w, {"sub": "u", "iat": "yesterday"}), "authenticated", "iat must be a NumericDate (seconds since 1970), got 'yesterday'"),
]


@pytest.mark.parametrize("build, role, expected", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
async def test_attack_is_refused_with_a_clear_message(world, build, role, expected):
    token = build(world)
    with pytest.raises(JwtError) as refused:
        await verifier(world).verify(token, role)
    if expected is None:
        expected = f"JWT is too long: {len(token)} bytes, the limit is {MAX_TOKEN_BYTES}"
    assert refused.value.message == str(refused.value) == expected


# Tokens Neon accepts; we accept them too rather than refuse what production would let through.
NEON_ACCEPTS = [
    ("no exp (Neon's own auth-broker test has none)", lambda w: es(w, {"sub": "user1"}), "anonymous"),
    ("any iss (Neon does not check it)", lambda w: es(w, {"sub": "u", "iss": "https://evil.example"}), "authenticated"),
    ("no typ", lambda w: es(w), "authenticated"),
    ("typ other than JWT", lambda w: es(w, typ="at+jwt"), "authenticated"),
    ("exp within the 30 s leeway", lambda w: es(w, {"exp": int(time.time()) - 25}), "authenticated"),
    ("nbf within the 30 s leeway", lambda w: es(w, {"nbf": int(time.time()) + 25}), "authenticated"),
    ("null exp, nbf and sub", lambda w: es(w, {"exp": None, "nbf": None, "sub": None}), "authenticated"),
    ("aud list containing ours", lambda w: compact({"alg": "ES256", "kid": "aud"}, {"aud": ["audience1", "neon"]}, es256(w["aud"])), "audience_role"),
    ("RS256 from the built-in issuer", lambda w: w["issuer"].mint("bob", alg="RS256"), "anonymous"),
    ("RS256 from a JWK without alg", lambda w: compact({"alg": "RS256", "kid": "rsa-no-alg"}, {"sub": "u"}, rs256(w["rsa-no-alg"])), "authenticated"),
    ("the Cognito-shaped token of Neon's tests", lambda w: es(w, {"sub": "x", "iss": "https:\\\\cognito-idp.us-west-2.amazonaws.com", "token_use": "access", "auth_time": NOW, "exp": NOW + 60, "iat": NOW}), "authenticated"),
]


@pytest.mark.parametrize("build, role", [a[1:] for a in NEON_ACCEPTS], ids=[a[0] for a in NEON_ACCEPTS])
async def test_neon_compatible_tokens_are_accepted(world, build, role):
    verified = await verifier(world).verify(build(world), role)
    assert verified.claims == json.loads(verified.payload)


async def test_signature_is_checked_before_claims_as_in_neon(world):
    expired = es(world, {"exp": NOW - 3600})
    forged = expired.rsplit(".", 1)[0] + "." + b64(bytes(64))
    with pytest.raises(JwtError, match=f"^{EC_SIGNATURE}$"):
        await verifier(world).verify(forged, "authenticated")


async def test_no_providers_at_all_is_neon_s_configuration_error(world):
    with pytest.raises(JwtError) as refused:
        await verifier(world, providers=()).verify(es(world), "authenticated")
    assert refused.value.message == NOT_CONFIGURED


async def test_verified_token_keeps_the_payload_bytes_and_key_order(world):
    token = world["issuer"].mint("alice", claims={"zeta": 1, "alpha": [1, 2]})
    verified = await verifier(world).verify(token, "anonymous")
    assert verified.payload == base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert list(verified.claims)[:2] == ["iss", "sub"] and list(verified.claims)[-2:] == ["zeta", "alpha"]
    assert verified.provider_id == BUILTIN_PROVIDER_ID and verified.expires_at == verified.claims["exp"]


async def test_cache_hit_rechecks_the_role(world):
    v = verifier(world)
    token = world["issuer"].mint("alice")
    first = await v.verify(token, "authenticated")
    assert v.verify_cached(token, "authenticated") is first
    assert v.verify_cached(token, "postgres") is None
    with pytest.raises(JwtError, match=f"^{JWK_NOT_FOUND}$"):
        await v.verify(token, "postgres")


async def test_cache_hit_rechecks_exp(world):
    v = verifier(world)
    token = es(world, {"exp": int(time.time()) - 29})  # valid for one more second of leeway
    await v.verify(token, "authenticated")
    assert v.verify_cached(token, "authenticated") is not None
    time.sleep(1.1)
    assert v.verify_cached(token, "authenticated") is None
    with pytest.raises(JwtError, match=r"^JWT token has expired \(exp="):
        await v.verify(token, "authenticated")


async def test_cache_is_bounded(world):
    v = Verifier(world["settings"], world["ring"], world["cache"], cache_size=3)
    tokens = [world["issuer"].mint(sub=f"user{i}") for i in range(5)]
    for token in tokens:
        await v.verify(token, "authenticated")
    assert [v.verify_cached(t, "authenticated") is not None for t in tokens] == [False, False, True, True, True]


async def test_cache_evicts_the_least_recently_used(world):
    v = Verifier(world["settings"], world["ring"], world["cache"], cache_size=3)
    tokens = [world["issuer"].mint(sub=f"user{i}") for i in range(4)]
    for token in tokens[:3]:
        await v.verify(token, "authenticated")
    assert v.verify_cached(tokens[0], "authenticated") is not None  # used again: now the most recent
    await v.verify(tokens[3], "authenticated")
    assert [v.verify_cached(t, "authenticated") is not None for t in tokens] == [True, False, True, True]


async def test_removing_a_key_drops_its_cached_tokens(tmp_path):
    ring = KeyRing.load_or_create(tmp_path / "keys")
    settings = Settings(project_dir=tmp_path)
    v = Verifier(settings, ring, ProviderCache(settings))
    token = Issuer(settings, ring, "http://x").mint("alice")
    await v.verify(token, "authenticated")
    old = ring.active("ES256").kid
    ring.rotate(["ES256"])
    assert v.verify_cached(token, "authenticated") is None  # any key change empties the cache
    assert (await v.verify(token, "authenticated")).claims["sub"] == "user_alice"
    ring.remove(old)
    with pytest.raises(JwtError, match=f"^{JWK_NOT_FOUND}$"):
        await v.verify(token, "authenticated")


async def test_a_rotation_by_the_cli_process_is_picked_up(tmp_path):
    ring = KeyRing.load_or_create(tmp_path / "keys")
    settings = Settings(project_dir=tmp_path)
    v = Verifier(settings, ring, ProviderCache(settings))
    other_process = KeyRing.load_or_create(tmp_path / "keys")
    other_process.rotate(["RS256"])
    token = Issuer(settings, other_process, "http://x").mint("bob", alg="RS256")
    assert (await v.verify(token, "anonymous")).claims["sub"] == "user_bob"


async def test_extended_compat_admits_eddsa_and_missing_kid_and_always_logs(world, caplog):
    v = verifier(world, compat="extended")
    eddsa = world["issuer"].mint("alice", alg="EdDSA")
    no_kid = world["issuer"].mint("bob", kid=False)
    with caplog.at_level(logging.WARNING, logger="neon_local.auth.verifier"):
        assert (await v.verify(eddsa, "authenticated")).claims["sub"] == "user_alice"
        assert (await v.verify(no_kid, "authenticated")).claims["sub"] == "user_bob"
        assert v.verify_cached(eddsa, "authenticated") is not None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert 'unsupported key type Okp(Ed25519)' in messages[0] and 'missing key id' in messages[1]
    assert messages[2] == messages[0]


async def test_extended_compat_still_checks_signatures_and_accepts_the_rfc_9864_name(world):
    v = verifier(world, compat="extended")
    kid, key = our(world, "EdDSA")
    ed25519 = compact({"alg": "Ed25519", "kid": kid}, {"sub": "u"}, key.sign)
    assert (await v.verify(ed25519, "authenticated")).claims == {"sub": "u"}
    forged_no_kid = compact({"alg": "ES256"}, {"sub": "admin"}, es256(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(JwtError, match=f"^{EC_SIGNATURE}$"):
        await v.verify(forged_no_kid, "authenticated")
    with pytest.raises(JwtError, match="^signature error: EdDSA signature does not verify$"):
        await v.verify(ed25519[:-4] + "AAAA", "authenticated")


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet="eyJhbGciOiJFUzI1NiJ9.-_=!{}\"", max_size=200))
def test_parser_refuses_garbage_only_with_jwt_errors(text):
    try:
        parse_token(text)
    except JwtError as exc:
        assert exc.message


@pytest.fixture(scope="module")
def signed(world):
    return {alg: world["issuer"].mint("alice", alg=alg) for alg in ("ES256", "RS256")}


@hsettings(max_examples=200, deadline=None)
@given(alg=st.sampled_from(["ES256", "RS256"]), position=st.integers(min_value=0), char=st.sampled_from("AQgw_-.0z9="))
def test_any_changed_character_is_refused(world, signed, alg, position, char):
    token = signed[alg]
    position %= len(token)
    changed = token[:position] + char + token[position + 1 :]
    if changed == token:
        return
    with pytest.raises(JwtError):
        asyncio.run(Verifier(world["settings"], world["ring"], world["cache"]).verify(changed, "authenticated"))


async def test_a_verified_token_is_answered_from_the_cache_without_verifying_again(world):
    # How fast a cached answer is belongs to `make bench` (bench_auth's "cached" rows), not to a timed assertion.
    v = verifier(world)
    token = world["issuer"].mint("alice")
    assert v.verify_cached(token, "authenticated") is None
    verified = await v.verify(token, "authenticated")
    assert v.verify_cached(token, "authenticated") is verified
    assert await v.verify(token, "authenticated") is verified


def test_bench_reports_every_algorithm_and_mode(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent))  # bench/ is a package beside neon_local/
    bench = importlib.import_module("bench.bench_auth")
    rows = bench.run(cold_ops=20, cached_ops=1000)
    assert [(r["algorithm"], r["mode"]) for r in rows] == [
        (alg, mode) for alg in ("ES256", "RS256", "EdDSA") for mode in ("raw cryptography", "cold verify", "cached")
    ]
    assert all(r["ops_per_sec"] > 0 and r["us_per_op"] > 0 for r in rows)


@pytest.mark.parametrize("iss, accepted", [
    ("http://issuer.example", True),
    ("http://issuer.example/evil", False),  # a longer string starting with the configured one
    ("http://issuer.exampl", False),
    (None, False),
])
async def test_issuer_is_checked_only_when_configured_and_exactly(tmp_path, iss, accepted):
    ring = KeyRing.load_or_create(tmp_path / "keys")
    strict = Settings(project_dir=tmp_path, providers=(Provider(BUILTIN_PROVIDER_ID, jwt_issuer="http://issuer.example"),))
    claims = {"iss": iss} if iss else {}
    token = Issuer(Settings(project_dir=tmp_path), ring, "http://ignored").sign({"sub": "u", "exp": NOW + 600, **claims})
    if accepted:
        assert (await Verifier(strict, ring, ProviderCache(strict)).verify(token, "authenticated")).claims["iss"] == iss
    else:
        with pytest.raises(JwtError, match="is not the provider's jwt_issuer 'http://issuer.example'"):
            await Verifier(strict, ring, ProviderCache(strict)).verify(token, "authenticated")
    lax = Settings(project_dir=tmp_path)
    assert (await Verifier(lax, ring, ProviderCache(lax)).verify(token, "authenticated")).claims["sub"] == "u"
