"""Which pg_session_jwt version a database gets, and who may change it: Neon's docs version by default,
installed as the database owner so that the owner can update it, as on Neon.

Run on PostgreSQL 15 too: NEON_LOCAL_PG_BIN=/usr/lib/postgresql/15/bin pytest tests/test_session_jwt_versions.py
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from neon_local.postgres import session_jwt
from neon_local.settings import SCALARS, Settings
from session_jwt_support import OWNER, JwtSession, scratch_database

USER_UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def extension(conn) -> tuple[str, str]:
    return conn.execute("""select extversion, extowner::regrole::text from pg_extension
                           where extname = 'pg_session_jwt'""").fetchone()


def test_the_setting_defaults_to_neons_docs_version_and_offers_the_packaged_ones():
    scalar = next(s for s in SCALARS if s.name == "session_jwt_version")
    assert (Settings().session_jwt_version, scalar.default, scalar.choices) == ("0.4.0", "0.4.0", session_jwt.EXTENSION_VERSIONS)


def test_uid_works_right_after_start(cluster, settings):
    """The database bootstrap made, with nothing run by hand: auth.uid() and auth.jwt() exist."""
    session = JwtSession(cluster, settings.database)
    try:
        session.login({"sub": USER_UUID})
        assert session.conn.execute("select auth.uid()::text, auth.jwt() ->> 'sub'").fetchone() == (USER_UUID, USER_UUID)
    finally:
        session.close()


def test_plain_create_extension_gives_neons_docs_version(cluster):
    with scratch_database(cluster, "session_jwt_plain", version=None) as name:
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as owner:
            owner.execute("CREATE EXTENSION pg_session_jwt")
            assert extension(owner) == ("0.4.0", OWNER)


@pytest.mark.parametrize("version", session_jwt.EXTENSION_VERSIONS)
def test_installed_as_the_owner_who_can_update_it(cluster, version):
    with scratch_database(cluster, "session_jwt_install", version=None) as name:
        with psycopg.connect(cluster.conninfo(dbname=name), autocommit=True) as admin:
            admin.execute(session_jwt.install_statement(version, OWNER))
            admin.execute("GRANT USAGE ON SCHEMA auth TO authenticated")
            assert admin.execute("select current_user").fetchone() == ("cloud_admin",)  # the role lasted one message
            assert extension(admin) == (version, OWNER)
            owners = admin.execute("""select distinct pg_get_userbyid(p.proowner) from pg_proc p
                                      where p.pronamespace = 'auth'::regnamespace""").fetchall()
            assert owners == [("cloud_admin",)]
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as owner:
            for target in ("0.5.0", "0.3.1", "0.4.0"):
                owner.execute(sql.SQL("ALTER EXTENSION pg_session_jwt UPDATE TO {}").format(sql.Literal(target)))
                assert extension(owner) == (target, OWNER)
        session = JwtSession(cluster, name)
        try:
            session.login({"sub": USER_UUID})
            assert session.value("select auth.uid()::text") == USER_UUID
        finally:
            session.close()


def test_an_existing_install_keeps_its_version(cluster):
    with scratch_database(cluster, "session_jwt_existing", version="0.3.1") as name:
        with psycopg.connect(cluster.conninfo(dbname=name), autocommit=True) as admin:
            admin.execute(session_jwt.install_statement("0.5.0", OWNER))
            assert extension(admin) == ("0.3.1", OWNER)


def test_an_unpackaged_version_is_refused():
    with pytest.raises(ValueError, match="0.3.1, 0.4.0, 0.5.0"):
        session_jwt.install_statement("0.6.0", OWNER)
