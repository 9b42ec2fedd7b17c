"""Helpers shared by the pg_session_jwt stub tests: a scratch database, and connections driven like the proxy drives them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import errors, sql

from neon_local.postgres import contrib, session_jwt, stub_upgrade
from neon_local.postgres.binaries import find_binaries
from neon_local.postgres.extension_path import COMPILED_STUB_FILES_DIR, STUB_FILES_DIR, stub_files_dir

OWNER = "neondb_owner"
ORG_ID = "11111111-1111-1111-1111-111111111111"



def _engine_major() -> int:
    """The PostgreSQL major the tests run on (conftest's `settings`: NEON_LOCAL_PG_BIN, else the embedded server)."""
    pg_bin = os.environ.get("NEON_LOCAL_PG_BIN")
    return find_binaries(Path(pg_bin) if pg_bin else None).major


# The stub's builds, by the language of their auth.* functions: the C one, which the embedded server gets (its
# module is built at install), and the SQL one, which every server can have. Tests that take a `db` run on each
# that the test engine can have.
BUILDS = {"c": COMPILED_STUB_FILES_DIR, "sql": STUB_FILES_DIR}
if not contrib.session_jwt_module_built(_engine_major()):
    del BUILDS["c"]


def b64url(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def build_of(conn) -> str:
    """Which build of the stub the connected database holds."""
    return conn.execute("select l.lanname from pg_proc p join pg_language l on l.oid = p.prolang "
                        "where p.oid = 'auth.user_id()'::regprocedure").fetchone()[0]


async def _switch_build(cluster, dbname: str, build: str) -> None:
    async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=dbname), autocommit=True) as conn:
        await stub_upgrade.refresh_database(conn, dbname, BUILDS[build])


@contextmanager
def scratch_database(cluster, name: str, version: str | None = "0.5.0", build: str | None = None):
    """A fresh database owned by neondb_owner, with the stub created by that (non-superuser) owner
    and USAGE on auth for the JWT roles, as local_proxy grants it. Dropped afterwards.

    `build` ("c" or "sql"): the stub's build, made from the server's own as a data directory switches between
    them (stub_upgrade.refresh_database), so that one server tests both; None keeps the server's."""
    with psycopg.connect(cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(OWNER)))
    if version is not None:
        with psycopg.connect(cluster.conninfo(user=OWNER, dbname=name), autocommit=True) as owner:
            owner.execute(sql.SQL("CREATE EXTENSION pg_session_jwt VERSION {}").format(sql.Literal(version)))
        if build is not None and BUILDS[build] != stub_files_dir(cluster.binaries.major):
            asyncio.run(_switch_build(cluster, name, build))
        with psycopg.connect(cluster.conninfo(dbname=name), autocommit=True) as admin:
            admin.execute("GRANT USAGE ON SCHEMA auth TO authenticated, anonymous")
            if build is not None:
                assert build_of(admin) == build
    try:
        yield name
    finally:
        with psycopg.connect(cluster.conninfo(dbname="postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class JwtSession:
    """One backend connection opened as the proxy opens it: as the JWT role, with a fresh startup JWK,
    bound with BIND_QUERY, then fed tokens with INIT_QUERY. RawCursor so that $1 passes through."""

    def __init__(self, cluster, dbname: str, user: str = "authenticated", options: str | None = None):
        self.cluster = cluster
        self.options = options if options is not None else session_jwt.startup_options()
        self.conn = psycopg.connect(
            cluster.conninfo(user=user, dbname=dbname, options=self.options),
            autocommit=True, cursor_factory=psycopg.RawCursor,
        )
        self.pid, self.backend_start = self.conn.execute(session_jwt.BIND_QUERY).fetchone()
        self.signer = session_jwt.SessionSigner(cluster.session_secret, self.pid, self.backend_start)

    def token(self, claims: dict | None = None) -> str:
        return self.signer.token_for(json.dumps(claims or {}).encode())

    def init(self, token: str) -> None:
        self.conn.execute(session_jwt.INIT_QUERY, [token])

    def login(self, claims: dict) -> str:
        token = self.token(claims)
        self.init(token)
        return token

    def value(self, query: str, params=None):
        return self.conn.execute(query, params).fetchone()[0]

    def raw_token(self, header: str, payload: str) -> str:
        """A token over arbitrary (already encoded) segments, correctly signed for this connection."""
        signing_input = f"{header}.{payload}"
        return f"{signing_input}.{self.signer.sign(signing_input)}"

    def close(self) -> None:
        self.conn.close()


def fail(session_or_conn, query: str, params=None) -> errors.Error:
    """Run a query that must fail and return the error, for its message, SQLSTATE and DETAIL."""
    conn = session_or_conn.conn if isinstance(session_or_conn, JwtSession) else session_or_conn
    try:
        conn.execute(query, params)
    except psycopg.Error as error:
        return error
    raise AssertionError(f"{query!r} succeeded")


def assert_error(error: psycopg.Error, message: str, sqlstate: str, detail: str | None = None) -> None:
    assert (error.diag.message_primary, error.sqlstate) == (message, sqlstate)
    if detail is not None:
        assert error.diag.message_detail == detail
