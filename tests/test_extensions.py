"""The extensions apps' migrations create: pgcrypto and uuid-ossp as the owner, on the default engine (neon-local's
own module) and on Debian's PostgreSQL 15 (PostgreSQL's contrib), with the same results; and a helpful error for
a Neon-supported extension the server lacks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import bcrypt
import psycopg
import pytest
from psycopg import errors

from conftest import start_cluster
from http_support import sql_http  # noqa: F401 (fixture)
from neon_local.postgres.contrib import NEON_EXTENSIONS, PLACEHOLDER_VERSION
from neon_local.settings import Settings

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")
README = Path(__file__).parent.parent / "README.md"

# As apps write them: quoted, IF NOT EXISTS, then tables whose defaults use the functions.
MIGRATION = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE TABLE accounts (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    public_id uuid NOT NULL DEFAULT gen_random_uuid(),
    email text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    api_key bytea NOT NULL DEFAULT gen_random_bytes(32)
);
"""

HASHES = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"]


ENGINES = {"default engine": None, "Debian PostgreSQL 15": DEBIAN_PG15}


@pytest.fixture(scope="module")
async def servers(tmp_path_factory):
    """One started cluster per engine: the wheel's PostgreSQL 18 (no contrib) and Debian's 15 (with contrib)."""
    started = {}
    try:
        for name, pg_bin in ENGINES.items():
            root = tmp_path_factory.mktemp("extensions")
            settings = Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0, pg_bin=pg_bin)
            started[name] = await start_cluster(settings, root)
        yield started
    finally:
        for pg in started.values():
            await pg.stop()


@pytest.fixture(scope="module", params=ENGINES)
def server(request, servers):
    return servers[request.param]


def owner_session(server, dbname: str, migration: str) -> psycopg.Connection:
    """The owner's session in a new database, after `migration` ran as the owner (who is not a superuser)."""
    with psycopg.connect(server.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname} OWNER neondb_owner")
    conn = psycopg.connect(server.conninfo(user="neondb_owner", dbname=dbname), autocommit=True)
    assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (False,)
    conn.execute(migration)
    return conn


@pytest.fixture(scope="module")
def owner(server):
    with owner_session(server, "extensions_app", MIGRATION) as conn:
        yield conn


def one(conn: psycopg.Connection, query: str, params=()):
    return conn.execute(query, params).fetchone()[0]


def test_the_owner_creates_both_extensions(owner):
    rows = owner.execute(
        "select extname, extversion, pg_get_userbyid(extowner) from pg_extension where extname in ('pgcrypto', 'uuid-ossp') order by 1"
    ).fetchall()
    assert rows == [("pgcrypto", "1.3", "neondb_owner"), ("uuid-ossp", "1.1", "neondb_owner")]
    owner.execute("insert into accounts (email, password_hash) values ('ann@example.com', crypt('pw', gen_salt('bf')))")
    account_id, public_id, key_length = owner.execute(
        "select id, public_id, length(api_key) from accounts where email = 'ann@example.com'"
    ).fetchone()
    assert uuid.UUID(str(account_id)).version == 4 and uuid.UUID(str(public_id)).version == 4 and key_length == 32


@pytest.mark.parametrize("algorithm", HASHES)
def test_digest_and_hmac_equal_hashlib(owner, algorithm):
    text = "naïve café ✓"
    data = bytes(range(256)) * 3
    long_key = b"k" * 200  # longer than every block size: hashed first, per RFC 2104
    assert bytes(one(owner, "select digest(%s::text, %s)", (text, algorithm))) == hashlib.new(algorithm, text.encode()).digest()
    assert bytes(one(owner, "select digest(%s::bytea, %s)", (data, algorithm))) == hashlib.new(algorithm, data).digest()
    assert bytes(one(owner, "select digest(''::bytea, upper(%s))", (algorithm,))) == hashlib.new(algorithm, b"").digest()
    assert bytes(one(owner, "select hmac(%s::text, 'secret'::text, %s)", (text, algorithm))) == \
        hmac.new(b"secret", text.encode(), algorithm).digest()
    assert bytes(one(owner, "select hmac(%s::bytea, %s::bytea, %s)", (data, long_key, algorithm))) == \
        hmac.new(long_key, data, algorithm).digest()


def test_unknown_digest_is_refused_with_pgcryptos_text(owner):
    with pytest.raises(errors.InvalidParameterValue, match='^Cannot use "whirlpool2": No such hash algorithm$'):
        owner.execute("select digest('x', 'whirlpool2')")


@pytest.mark.parametrize("password", ["correct horse battery staple", "pässwörd ✓", "x" * 72], ids=["ascii", "utf8", "72 bytes"])
def test_bcrypt_hashes_interoperate_with_python_bcrypt(owner, password):
    made_here = one(owner, "select crypt(%s, gen_salt('bf', 5))", (password,))
    assert re.fullmatch(r"\$2a\$05\$[./A-Za-z0-9]{53}", made_here)
    assert bcrypt.checkpw(password.encode(), made_here.encode())
    assert not bcrypt.checkpw(b"wrong", made_here.encode())

    made_by_python = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5, prefix=b"2a")).decode()
    assert one(owner, "select crypt(%s, %s) = %s", (password, made_by_python, made_by_python)) is True
    assert one(owner, "select crypt('wrong', %s) = %s", (made_by_python, made_by_python)) is False
    # bcrypt reads 72 bytes at most; what follows does not change the hash (Python's bcrypt refuses longer input).
    assert one(owner, "select crypt(%s, %s) = %s", (password + "x" * 72, made_here, made_here)) is (len(password) == 72)


def test_bcrypt_2b_hashes_get_pgcryptos_des_fallback(owner):
    """pgcrypto knows $2a$ (and $2x$) only; a $2b$ salt is read as a DES salt. Python's bcrypt writes $2b$ by default,
    so such hashes never verify in SQL, on Neon or here: make them with prefix=b"2a"."""
    made_by_python = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    assert made_by_python.startswith("$2b$")
    result = one(owner, "select crypt('pw', %s)", (made_by_python,))
    assert result != made_by_python and len(result) == 13 and result[:2] == "$2"


def test_md5_and_des_crypt_give_pgcryptos_results(owner):
    # Values computed by PostgreSQL's own pgcrypto; the Debian PostgreSQL 15 run of this test checks them.
    assert owner.execute(
        "select crypt('x', '$1$abcdefgh$'), crypt('x', '$1$abcdefghijkl$'), crypt('x', 'ab'), crypt('x', 'plaintext'), "
        "crypt('x', '_J9..a$cd'), crypt('x', '$2a$06$abcdefghijklmnopqrstuu')"
    ).fetchone() == (
        "$1$abcdefgh$znAnv9M.XU2pRYfmSs46h/", "$1$abcdefgh$znAnv9M.XU2pRYfmSs46h/", "abiQ6Ep3EYTHc", "plY2Q82LqpBaA",
        "_J9..a$cdPXcGbFxxwl6", "$2a$06$abcdefghijklmnopqrstuu6UU9xzVsCmnpwOtAmb83C8f/bD4EL9K",
    )
    stored = one(owner, "select crypt('s3cret', gen_salt('md5'))")
    assert one(owner, "select crypt('s3cret', %s) = %s, crypt('other', %s) = %s", (stored, stored, stored, stored)) is True


def test_gen_salt_formats_and_pgcryptos_errors(owner):
    salts = owner.execute(
        "select gen_salt('bf'), gen_salt('BF', 10), gen_salt('md5'), gen_salt('des'), gen_salt('xdes'), gen_salt('xdes', 3)"
    ).fetchone()
    patterns = [r"\$2a\$06\$[./A-Za-z0-9]{22}", r"\$2a\$10\$[./A-Za-z0-9]{22}", r"\$1\$[./A-Za-z0-9]{8}",
                r"[./A-Za-z0-9]{2}", r"_J9\.\.[./A-Za-z0-9]{4}", r"_1\.\.\.[./A-Za-z0-9]{4}"]
    for salt, pattern in zip(salts, patterns):
        assert re.fullmatch(pattern, salt), (salt, pattern)
    for call in ("gen_salt('bf', 3)", "gen_salt('bf', 32)", "gen_salt('md5', 5)", "gen_salt('xdes', 4)"):
        with pytest.raises(errors.InvalidParameterValue, match="^gen_salt: Incorrect number of rounds$"):
            owner.execute(f"select {call}")
    with pytest.raises(errors.InvalidParameterValue, match="^gen_salt: Unknown salt algorithm$"):
        owner.execute("select gen_salt('argon2')")
    with pytest.raises(errors.InvalidParameterValue, match="^invalid salt$"):
        owner.execute("select crypt('x', '$2a$06$short')")


def test_sha_crypt_follows_the_servers_pgcrypto(server, owner):
    """PostgreSQL 18's pgcrypto added sha256crypt/sha512crypt (the default engine's module follows it); 15's reads a
    $5$ salt as a DES one and knows no such salt type."""
    if server.binaries.major < 18:
        assert len(one(owner, "select crypt('x', '$5$saltstring')")) == 13
        with pytest.raises(errors.InvalidParameterValue, match="^gen_salt: Unknown salt algorithm$"):
            owner.execute("select gen_salt('sha256crypt')")
        return
    # The test vectors of the SHA-crypt specification (akkadia.org/drepper/SHA-crypt.txt).
    assert owner.execute(
        "select crypt('This is just a test', '$5$rounds=5000$toolongsaltstring'), crypt('Hello world!', '$6$saltstring')"
    ).fetchone() == (
        "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    )
    salt256, salt512 = owner.execute("select gen_salt('sha256crypt'), gen_salt('SHA512CRYPT', 1000)").fetchone()
    assert re.fullmatch(r"\$5\$rounds=5000\$[./A-Za-z0-9]{16}", salt256)
    assert re.fullmatch(r"\$6\$rounds=1000\$[./A-Za-z0-9]{16}", salt512)
    stored = one(owner, "select crypt('pw', %s)", (salt512,))
    assert one(owner, "select crypt('pw', %s) = %s and crypt('pv', %s) <> %s", (stored, stored, stored, stored)) is True
    with pytest.raises(errors.InvalidParameterValue, match="^gen_salt: Incorrect number of rounds$"):
        owner.execute("select gen_salt('sha256crypt', 999)")
    notices = []

    def collect(notice):
        notices.append(notice.message_primary)

    owner.add_notice_handler(collect)
    try:
        assert one(owner, "select crypt('x', '$5$rounds=10$abc')").startswith("$5$rounds=1000$abc$")
    finally:
        owner.remove_notice_handler(collect)
    assert notices == ["rounds=10 is below supported value (1000), using 1000 instead"]


def test_gen_random_bytes_limits(owner):
    assert one(owner, "select length(gen_random_bytes(1)) + length(gen_random_bytes(1024))") == 1025
    assert one(owner, "select count(distinct gen_random_bytes(16)) from generate_series(1, 100)") == 100
    for length in (0, 1025):
        with pytest.raises(errors.ExternalRoutineInvocationException, match="^Length not in range$"):
            owner.execute("select gen_random_bytes(%s)", (length,))


@pytest.mark.parametrize("namespace", ["dns", "url", "oid", "x500"])
def test_name_based_uuids_equal_pythons(owner, namespace):
    python_namespace = getattr(uuid, f"NAMESPACE_{namespace.upper()}")
    assert one(owner, f"select uuid_ns_{namespace}()") == python_namespace
    for name in ["example.com", "", "ünïcode ✓"]:
        v3, v5 = owner.execute(
            f"select uuid_generate_v3(uuid_ns_{namespace}(), %s), uuid_generate_v5(uuid_ns_{namespace}(), %s)", (name, name)
        ).fetchone()
        assert (v3, v5) == (uuid.uuid3(python_namespace, name), uuid.uuid5(python_namespace, name))


def test_generated_uuids_have_their_version_and_variant(owner):
    nil, v1, v1mc, v4, random_uuid = owner.execute(
        "select uuid_nil(), uuid_generate_v1(), uuid_generate_v1mc(), uuid_generate_v4(), public.gen_random_uuid()"
    ).fetchone()
    assert nil == uuid.UUID(int=0)
    assert [u.version for u in (v1, v1mc, v4, random_uuid)] == [1, 1, 4, 4]
    assert all(u.variant == uuid.RFC_4122 for u in (v1, v1mc, v4, random_uuid))
    assert v1mc.node & (1 << 40), "v1mc's node id is a random multicast address"
    server_now = one(owner, "select extract(epoch from now())")
    assert abs((v1.time - 0x01B21DD213814000) / 1e7 - float(server_now)) < 3600
    assert one(owner, "select count(distinct uuid_generate_v1()) from generate_series(1, 1000)") == 1000


def test_a_neon_extension_the_server_lacks_says_how_to_get_it(owner):
    for statement in ("CREATE EXTENSION postgis", "CREATE EXTENSION IF NOT EXISTS postgis"):
        with pytest.raises(errors.FeatureNotSupported) as caught:
            owner.execute(statement)
        diag = caught.value.diag
        assert diag.message_primary == 'extension "postgis" is not available'
        assert diag.message_detail.startswith("Neon supports postgis, but the PostgreSQL that neon-local runs (")
        assert "--pg-bin" in diag.message_hint and "postgresql-17-postgis-3" in diag.message_hint
    assert owner.execute("select default_version from pg_available_extensions where name = 'postgis'").fetchall() == \
        [(PLACEHOLDER_VERSION,)]
    assert owner.execute("select 1 from pg_extension where extname = 'postgis'").fetchall() == []


def test_an_extension_unknown_to_neon_keeps_postgres_message(owner):
    with pytest.raises(errors.FeatureNotSupported, match='^extension "no_such_thing" is not available') as caught:
        owner.execute("CREATE EXTENSION no_such_thing")
    assert caught.value.diag.message_hint == "The extension must first be installed on the system where PostgreSQL is running."


def test_the_servers_own_contrib_wins_over_neon_locals(server, owner):
    """The default engine has no contrib, so pgcrypto is neon-local's; Debian's server has its own, which is used."""
    expected = "neon_local_contrib" if server.binaries.major >= 18 else "$libdir/pgcrypto"
    assert one(owner, "select probin from pg_proc where proname = 'crypt'") == expected


# PostgreSQL's pgcrypto 1.3 and uuid-ossp 1.1 (read from Debian's PostgreSQL 15, whose run of the test checks it):
# signature, result, volatility, strictness. Migrations and schema diffs see exactly these.
CONTRIB_FUNCTIONS = """
pgcrypto armor(bytea) text i strict|pgcrypto armor(bytea,text[],text[]) text i strict|pgcrypto crypt(text,text) text i strict
pgcrypto dearmor(text) bytea i strict|pgcrypto decrypt(bytea,bytea,text) bytea i strict
pgcrypto decrypt_iv(bytea,bytea,bytea,text) bytea i strict|pgcrypto digest(bytea,text) bytea i strict
pgcrypto digest(text,text) bytea i strict|pgcrypto encrypt(bytea,bytea,text) bytea i strict
pgcrypto encrypt_iv(bytea,bytea,bytea,text) bytea i strict|pgcrypto gen_random_bytes(integer) bytea v strict
pgcrypto gen_salt(text) text v strict|pgcrypto gen_salt(text,integer) text v strict|pgcrypto hmac(bytea,bytea,text) bytea i strict
pgcrypto hmac(text,text,text) bytea i strict|pgcrypto pgp_armor_headers(text) record i strict|pgcrypto pgp_key_id(bytea) text i strict
pgcrypto pgp_pub_decrypt(bytea,bytea) text i strict|pgcrypto pgp_pub_decrypt(bytea,bytea,text) text i strict
pgcrypto pgp_pub_decrypt(bytea,bytea,text,text) text i strict|pgcrypto pgp_pub_decrypt_bytea(bytea,bytea) bytea i strict
pgcrypto pgp_pub_decrypt_bytea(bytea,bytea,text) bytea i strict|pgcrypto pgp_pub_decrypt_bytea(bytea,bytea,text,text) bytea i strict
pgcrypto pgp_pub_encrypt(text,bytea) bytea v strict|pgcrypto pgp_pub_encrypt(text,bytea,text) bytea v strict
pgcrypto pgp_pub_encrypt_bytea(bytea,bytea) bytea v strict|pgcrypto pgp_pub_encrypt_bytea(bytea,bytea,text) bytea v strict
pgcrypto pgp_sym_decrypt(bytea,text) text i strict|pgcrypto pgp_sym_decrypt(bytea,text,text) text i strict
pgcrypto pgp_sym_decrypt_bytea(bytea,text) bytea i strict|pgcrypto pgp_sym_decrypt_bytea(bytea,text,text) bytea i strict
pgcrypto pgp_sym_encrypt(text,text) bytea v strict|pgcrypto pgp_sym_encrypt(text,text,text) bytea v strict
pgcrypto pgp_sym_encrypt_bytea(bytea,text) bytea v strict|pgcrypto pgp_sym_encrypt_bytea(bytea,text,text) bytea v strict
pgcrypto public.gen_random_uuid() uuid v
uuid-ossp uuid_generate_v1() uuid v strict|uuid-ossp uuid_generate_v1mc() uuid v strict
uuid-ossp uuid_generate_v3(uuid,text) uuid i strict|uuid-ossp uuid_generate_v4() uuid v strict
uuid-ossp uuid_generate_v5(uuid,text) uuid i strict|uuid-ossp uuid_nil() uuid i strict|uuid-ossp uuid_ns_dns() uuid i strict
uuid-ossp uuid_ns_oid() uuid i strict|uuid-ossp uuid_ns_url() uuid i strict|uuid-ossp uuid_ns_x500() uuid i strict
"""


def test_functions_have_contribs_signatures(owner):
    """Every function of both extensions, as PostgreSQL declares them, so migrations and schema diffs match Neon's."""
    rows = owner.execute("""
        select e.extname || ' ' || p.oid::regprocedure::text || ' ' || p.prorettype::regtype::text || ' '
               || p.provolatile::text || case when p.proisstrict then ' strict' else '' end
        from pg_depend d join pg_extension e on e.oid = d.refobjid join pg_proc p on p.oid = d.objid
        where d.classid = 'pg_proc'::regclass and d.deptype = 'e' and e.extname in ('pgcrypto', 'uuid-ossp')
        order by 1""").fetchall()
    assert [row for (row,) in rows] == sorted(re.split(r"[|\n]", CONTRIB_FUNCTIONS.strip()))


def test_functions_pgcrypto_does_not_provide_here_still_load(owner):
    """Public-key PGP, armor and raw ciphers exist on both engines, so migrations that mention them load."""
    owner.execute(
        "create or replace function seal(secret text, key bytea) returns bytea language sql "
        "as $$ select pgp_pub_encrypt(secret, dearmor(armor(key))) $$"
    )


PGP_OPTIONS = ["", "cipher-algo=aes256, compress-algo=1", "compress-algo=2, s2k-mode=1, s2k-digest-algo=md5",
               "sess-key=1, cipher-algo=aes192", "cipher-algo=3des, s2k-mode=0", "s2k-count=1024, unicode-mode=1"]
SECRET = "card 4242 ✓\n" + "x" * 300


@pytest.mark.parametrize("options", PGP_OPTIONS)
def test_pgp_sym_round_trips(owner, options):
    sealed = one(owner, "select pgp_sym_encrypt(%s, 'pässword', %s)", (SECRET, options))
    assert one(owner, "select pgp_sym_decrypt(%s, 'pässword')", (sealed,)) == SECRET
    data = bytes(range(256)) * 100
    sealed = one(owner, "select pgp_sym_encrypt_bytea(%s, 'k', %s)", (data, options))
    assert bytes(one(owner, "select pgp_sym_decrypt_bytea(%s, 'k')", (sealed,))) == data


def test_pgp_sym_errors_are_pgcryptos(owner):
    sealed = one(owner, "select pgp_sym_encrypt('abc', 'k')")
    for query, params, message in [
        ("select pgp_sym_decrypt(%s, 'wrong')", (sealed,), "Wrong key or corrupt data"),
        ("select pgp_sym_decrypt(substr(%s, 1, 30), 'k')", (sealed,), "Wrong key or corrupt data"),
        ("select pgp_sym_decrypt(pgp_sym_encrypt_bytea('abc', 'k'), 'k')", (), "Not text data"),
        ("select pgp_sym_encrypt('abc', 'k', 'cipher-algo=aes999')", (), "Unsupported cipher algorithm"),
        ("select pgp_sym_encrypt('abc', 'k', 'no-such-option=1')", (), "Illegal argument to function"),
        ("select pgp_sym_encrypt('abc', 'k', 's2k-count=5')", (), "Illegal argument to function"),
    ]:
        with pytest.raises(errors.ExternalRoutineInvocationException, match=f"^{message}$"):
            owner.execute(query, params)
    assert one(owner, "select pgp_sym_decrypt(%s, 'k', 'convert-crlf=1')", (sealed,)) == "abc"
    # With sess-key a wrong password opens the session key to random bytes, cipher id included: never a decryption,
    # and pgcrypto's messages only (PostgreSQL's own says "Cipher cannot be initialized" for ids OpenSSL lacks).
    owner.execute("""
        create or replace function pg_temp.wrong_password_messages() returns setof text language plpgsql as $$
        begin
            for i in 1..300 loop
                begin
                    perform pgp_sym_decrypt(pgp_sym_encrypt('x', 'k', 'sess-key=1'), 'wrong');
                    return next 'decrypted';
                exception when others then
                    return next sqlerrm;
                end;
            end loop;
        end $$""")
    messages = {m for (m,) in owner.execute("select distinct m from pg_temp.wrong_password_messages() m")}
    assert "Wrong key or corrupt data" in messages
    assert messages <= {"Wrong key or corrupt data", "encrypt error: Cipher cannot be initialized"}


ARMORED_ABC = "-----BEGIN PGP MESSAGE-----\n\nYWJj\n=uhx7\n-----END PGP MESSAGE-----\n"


def test_armor_is_pgcryptos_layout(owner):
    # Layouts as PostgreSQL's pgcrypto writes them (checked by this test's Debian PostgreSQL 15 run).
    assert one(owner, "select armor('abc')") == ARMORED_ABC
    assert one(owner, "select armor(''::bytea)") == "-----BEGIN PGP MESSAGE-----\n\n=twTO\n-----END PGP MESSAGE-----\n"
    assert one(owner, "select armor(decode(repeat('ab', 100), 'hex'), array['Version', 'Comment'], array['1.0', 'hi'])") == (
        "-----BEGIN PGP MESSAGE-----\nVersion: 1.0\nComment: hi\n\n" + "q6ur" * 19 + "\n" + "q6ur" * 14 + "qw==\n"
        "=LwXV\n-----END PGP MESSAGE-----\n")
    for keys, values, error, message in [
        ("array['a']", "array['b', 'c']", errors.ArraySubscriptError, "mismatched array dimensions"),
        ("array[['a', 'b']]", "array[['c', 'd']]", errors.ArraySubscriptError, "wrong number of array subscripts"),
        ("array[null]", "array['b']", errors.NullValueNotAllowed, "null value not allowed for header key"),
        ("array['a: x']", "array['b']", errors.InvalidParameterValue, 'header key must not contain ": "'),
        ("array['a']", "array[E'b\\n']", errors.InvalidParameterValue, "header value must not contain newlines"),
    ]:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            owner.execute(f"select armor('abc', {keys}::text[], {values}::text[])")


def test_dearmor_reads_what_pgcrypto_reads(owner):
    for armored in [
        ARMORED_ABC,
        "junk\n-----BEGIN PGP MESSAGE-----\nVersion: x\n\nYW\nJj\n=uhx7\n-----END PGP MESSAGE-----\njunk",
        ARMORED_ABC.replace("\n", "\r\n"),
        ARMORED_ABC.replace("MESSAGE", "PUBLIC KEY BLOCK"),
        ARMORED_ABC.replace("YWJj", "YW Jj"),
    ]:
        assert bytes(one(owner, "select dearmor(%s)", (armored,))) == b"abc", armored
    for corrupt in ["", "garbage", ARMORED_ABC.replace("uhx7", "AAAA"), ARMORED_ABC.replace("=uhx7\n", ""),
                    ARMORED_ABC.replace("-----END PGP MESSAGE-----\n", ""), ARMORED_ABC.replace("\n\n", "\n"),
                    ARMORED_ABC.replace("YWJj", "YW*Jj")]:
        with pytest.raises(errors.ExternalRoutineInvocationException, match="^Corrupt ascii-armor$"):
            owner.execute("select dearmor(%s)", (corrupt,))
    sealed = one(owner, "select armor(pgp_sym_encrypt('secret', 'k'))")
    assert one(owner, "select pgp_sym_decrypt(dearmor(%s), 'k')", (sealed,)) == "secret"


@pytest.fixture(scope="module")
def owners_on_both(servers):
    """An owner session with pgcrypto on each engine."""
    sessions = {name: owner_session(pg, "pgp_cross", "CREATE EXTENSION pgcrypto") for name, pg in servers.items()}
    yield sessions
    for conn in sessions.values():
        conn.close()


@pytest.mark.parametrize("options", PGP_OPTIONS)
def test_pgp_sym_messages_cross_between_engines(owners_on_both, options):
    """What one engine encrypts the other decrypts: neon-local's module against PostgreSQL's pgcrypto, both ways."""
    ours, postgres = owners_on_both["default engine"], owners_on_both["Debian PostgreSQL 15"]
    for sender, receiver in [(ours, postgres), (postgres, ours)]:
        sealed = one(sender, "select pgp_sym_encrypt(%s, 'pässword', %s)", (SECRET, options))
        assert one(receiver, "select pgp_sym_decrypt(%s, 'pässword')", (sealed,)) == SECRET
        sealed = one(sender, "select pgp_sym_encrypt_bytea(%s, 'k', %s)", (b"\x00\xff" * 20000, options))
        assert bytes(one(receiver, "select pgp_sym_decrypt_bytea(%s, 'k')", (sealed,))) == b"\x00\xff" * 20000
        armored = one(sender, "select armor(pgp_sym_encrypt(%s, 'k', %s))", (SECRET, options))
        assert one(receiver, "select pgp_sym_decrypt(dearmor(%s), 'k')", (armored,)) == SECRET


async def test_over_neons_sql_http_a_migration_and_the_hint_arrive(sql_http):
    """Through /sql as the owner, as a serverless app's migration runs: the extension, bcrypt, and the placeholder's
    DETAIL and HINT in Neon's JSON error body."""
    async with await sql_http.admin(dbname="postgres") as admin:
        await admin.execute("CREATE DATABASE extensions_http OWNER neondb_owner")
    conn = sql_http.conn_string(dbname="extensions_http")
    await sql_http.query('CREATE EXTENSION IF NOT EXISTS "pgcrypto"', conn=conn)
    result = await sql_http.query("select crypt($1, gen_salt('bf', 4)) as hash", ["hunter2"], conn=conn)
    assert bcrypt.checkpw(b"hunter2", result["rows"][0]["hash"].encode())
    response = await sql_http.post({"query": "CREATE EXTENSION IF NOT EXISTS postgis", "params": []}, conn=conn)
    body = response.json()
    assert response.status_code == 400 and body["code"] == "0A000"
    assert body["message"] == 'extension "postgis" is not available'
    assert body["detail"].startswith("Neon supports postgis") and "--pg-bin" in body["hint"]


# Run from an install of neon-local made without a C compiler: start the default engine; as the owner, read pg_session_jwt's
# version and build, and create pgcrypto and uuid-ossp.
WITHOUT_MODULE = """
import asyncio, json, logging, sys
from pathlib import Path
import psycopg
import neon_local
from conftest import start_cluster
from neon_local.settings import Settings

async def main(root):
    pg = await start_cluster(Settings(project_dir=root, data_dir=root / "data", http_port=0, pg_port=0), root)
    try:
        with psycopg.connect(pg.conninfo(user="neondb_owner"), autocommit=True) as conn:
            outcome = {"package": neon_local.__file__, "session_jwt": conn.execute(
                "select e.extversion, l.lanname from pg_extension e, pg_proc p join pg_language l on l.oid = p.prolang "
                "where e.extname = 'pg_session_jwt' and p.oid = 'auth.uid()'::regprocedure").fetchone()}
            for name in ("pgcrypto", "uuid-ossp"):
                try:
                    conn.execute(f'CREATE EXTENSION "{name}"')
                except psycopg.Error as error:
                    outcome[name] = {"sqlstate": error.sqlstate, "message": error.diag.message_primary,
                                     "hint": error.diag.message_hint}
            print(json.dumps(outcome))
    finally:
        await pg.stop()

logging.basicConfig()
asyncio.run(main(Path(sys.argv[1])))
"""


def test_an_install_without_a_compiler_works_and_says_how_to_get_pgcrypto_and_uuid_ossp(tmp_path):
    """No C compiler at install (CC=false): the install succeeds without the modules, start-up warns, CREATE
    EXTENSION pgcrypto and uuid-ossp fail with what to install, instead of Postgres' bare message, and
    pg_session_jwt is the SQL build, with auth.uid()."""
    source, target = tmp_path / "source", tmp_path / "site"
    # A copy without build products, so that nothing built earlier in the checkout can stand in for the compiler.
    shutil.copytree(README.parent, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "dist", "*.so", "__pycache__", ".neon-local"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, str(source)],
        env={**os.environ, "CC": "false"}, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    assert (target / "neon_local" / "postgres" / "contrib" / "extension" / "pgcrypto.control").is_file()
    assert not list(target.rglob("*.so"))
    script = tmp_path / "create_pgcrypto.py"
    script.write_text(WITHOUT_MODULE)
    run = subprocess.run(
        [sys.executable, script, tmp_path / "pg"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(Path(__file__).parent)])})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["package"].startswith(str(target))
    for name in ("pgcrypto", "uuid-ossp"):
        assert (outcome[name]["sqlstate"], outcome[name]["message"]) == ("0A000", f'extension "{name}" is not available')
        assert "libcrypt-dev" in outcome[name]["hint"] and "--pg-bin" in outcome[name]["hint"]
    assert outcome["session_jwt"] == ["0.4.0", "sql"]  # the SQL build of the stub, at Neon's docs version
    assert "pgcrypto and uuid-ossp are not available" in run.stderr


def _readme_extension_rows() -> dict[str, list[str]]:
    """extension name -> its row's cells after the first, from README's Extensions table."""
    section = README.read_text().split("### Extensions", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            names, *cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for name in names.split(","):
                rows[name.strip().strip("`")] = cells
    return rows


def test_readme_table_says_what_the_default_engine_has_and_how_to_get_the_rest(cluster):
    """The README's table describes the default engine (the session's cluster) and names each extension's package."""
    rows = _readme_extension_rows()
    assert {"pgcrypto", "uuid-ossp", "vector", "postgis", "pg_trgm", "citext", "pg_uuidv7"} <= rows.keys()
    with psycopg.connect(cluster.conninfo()) as conn:
        available = {name for (name,) in conn.execute(
            "select name from pg_available_extensions where default_version <> %s", (PLACEHOLDER_VERSION,))}
    for name, (default_engine, otherwise) in rows.items():
        assert name in NEON_EXTENSIONS, name
        assert default_engine.startswith("yes") == (name in available), (name, default_engine)
        package = NEON_EXTENSIONS[name]
        assert (package or "sources") in otherwise, (name, otherwise)
