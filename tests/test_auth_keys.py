"""KeyRing: keys made on first start, kept 0600, rotated and removed, and the `keys` CLI."""

import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from neon_local.auth.keys import ALGORITHMS, KeyRing, KeyRingError, PublicKeySet, verify_key_from_jwk
from neon_local.cli.auth import keys

PRIVATE_PARTS = {"d", "p", "q", "dp", "dq", "qi", "k"}


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_makes_one_active_key_per_algorithm_in_private_files(tmp_path):
    ring = KeyRing.load_or_create(tmp_path / "keys")
    assert mode(tmp_path / "keys") == 0o700
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["keyring.json"]
    assert mode(tmp_path / "keys" / "keyring.json") == 0o600
    assert sorted(k.alg for k in ring.keys) == sorted(ALGORITHMS)
    assert {ring.active(alg).alg for alg in ALGORITHMS} == set(ALGORITHMS)


def test_second_start_reads_the_same_keys(tmp_path):
    first = KeyRing.load_or_create(tmp_path)
    second = KeyRing.load_or_create(tmp_path)
    assert [k.kid for k in first.keys] == [k.kid for k in second.keys]
    assert second.jwks() == first.jwks()


def test_jwks_publishes_public_parts_with_kid_alg_and_use(tmp_path):
    document = KeyRing.load_or_create(tmp_path).jwks()
    by_alg = {k["alg"]: k for k in document["keys"]}
    assert set(by_alg) == set(ALGORITHMS)
    for key in document["keys"]:
        assert key["use"] == "sig" and key["kid"].startswith(key["alg"].lower() + "-")
        assert not PRIVATE_PARTS & set(key)
    assert by_alg["ES256"]["kty"] == "EC" and by_alg["ES256"]["crv"] == "P-256"
    assert by_alg["RS256"]["kty"] == "RSA" and len(by_alg["RS256"]["n"]) == 342  # 2048 bits in base64url
    assert by_alg["EdDSA"]["kty"] == "OKP" and by_alg["EdDSA"]["crv"] == "Ed25519"


def test_rotate_keeps_old_keys_published_and_signs_with_the_new_one(tmp_path):
    ring = KeyRing.load_or_create(tmp_path)
    old = ring.active("ES256").kid
    (new,) = ring.rotate(["ES256"])
    kids = [k["kid"] for k in ring.jwks()["keys"]]
    assert ring.active("ES256").kid == new.kid != old
    assert old in kids and kids.index(new.kid) < kids.index(old)
    assert old in ring.public_keys().by_kid
    assert KeyRing.load_or_create(tmp_path).active("ES256").kid == new.kid


def test_remove_drops_a_retired_key(tmp_path):
    ring = KeyRing.load_or_create(tmp_path)
    old = ring.active("RS256").kid
    ring.rotate(["RS256"])
    ring.remove(old)
    assert old not in [k["kid"] for k in ring.jwks()["keys"]]
    assert old not in [k.kid for k in KeyRing.load_or_create(tmp_path).keys]


def test_remove_refuses_the_active_key_and_unknown_kids(tmp_path):
    ring = KeyRing.load_or_create(tmp_path)
    active = ring.active("ES256").kid
    with pytest.raises(KeyRingError, match=f"{active} is the active ES256 key; run `neon-local keys rotate` first"):
        ring.remove(active)
    with pytest.raises(KeyRingError, match="no key with kid 'nope'"):
        ring.remove("nope")


def test_reload_sees_a_rotation_by_another_process(tmp_path):
    server, cli = KeyRing.load_or_create(tmp_path), KeyRing.load_or_create(tmp_path)
    version = server.version
    assert not server.reload()
    (new,) = cli.rotate(["ES256"])
    assert server.reload() and server.version > version
    assert server.active("ES256").kid == new.kid


def test_damaged_key_file_is_reported_with_the_fix(tmp_path):
    (tmp_path / "keyring.json").write_text("{not json")
    (tmp_path / "keyring.json").chmod(0o600)
    with pytest.raises(KeyRingError, match="keyring.json is damaged .*move it away"):
        KeyRing.load_or_create(tmp_path)


def test_loose_permissions_are_tightened(tmp_path, caplog):
    KeyRing.load_or_create(tmp_path)
    (tmp_path / "keyring.json").chmod(0o644)
    KeyRing.load_or_create(tmp_path)
    assert mode(tmp_path / "keyring.json") == 0o600
    assert "readable by other users" in caplog.text


def test_verify_keys_check_signatures_for_each_algorithm(tmp_path):
    ring = KeyRing.load_or_create(tmp_path)
    data = b"header.payload"
    signatures = {
        "RS256": ring.active("RS256").key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        "EdDSA": ring.active("EdDSA").key.private_key.sign(data),
    }
    r, s = decode_dss_signature(ring.active("ES256").key.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    signatures["ES256"] = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    keys = ring.public_keys().by_kid
    for alg, signature in signatures.items():
        key = keys[ring.active(alg).kid]
        assert key.verify(alg, signature, data)
        assert not key.verify(alg, signature, data + b"x")
    assert isinstance(keys[ring.active("EdDSA").kid].public, ed25519.Ed25519PublicKey)


def test_jwks_entries_that_are_not_signing_keys_are_skipped(tmp_path):
    good = KeyRing.load_or_create(tmp_path).jwks()["keys"][0]
    document = {"keys": [good | {"kid": "enc", "use": "enc"}, {"kty": "RSA", "kid": "broken", "n": "!!"}, 42, good]}
    keys = PublicKeySet.from_jwks(document)
    assert list(keys.by_kid) == [good["kid"]]
    assert verify_key_from_jwk({"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}).kty == "oct"
    with pytest.raises(ValueError, match='"keys" list'):
        PublicKeySet.from_jwks({"kids": []})


def test_keys_cli_lists_rotates_and_removes(tmp_path):
    runner = CliRunner(env={"NEON_LOCAL_DATA_DIR": str(tmp_path / ".neon-local")})
    listed = runner.invoke(keys, ["list"])
    assert listed.exit_code == 0 and listed.output.count("active") == 3
    rotated = runner.invoke(keys, ["rotate", "--alg", "ES256"])
    assert rotated.exit_code == 0 and rotated.output.startswith("new ES256 key es256-")
    lines = runner.invoke(keys, ["list"]).output.splitlines()
    assert sum("active" in line for line in lines) == 3
    (retired,) = [line.split()[0] for line in lines if line.endswith("retired")]
    removed = runner.invoke(keys, ["remove", retired])
    assert removed.exit_code == 0 and removed.output == f"removed ES256 key {retired}\n"
    active = KeyRing.load_or_create(tmp_path / ".neon-local" / "keys").active("RS256").kid
    refused = runner.invoke(keys, ["remove", active])
    assert refused.exit_code == 1 and "is the active RS256 key" in refused.output
