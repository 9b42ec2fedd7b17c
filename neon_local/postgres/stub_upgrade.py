"""Bring the pg_session_jwt stub in a data directory made by an older neon-local up to date, in place.

The stub's SQL changes between neon-local releases while the versions it installs keep the real
extension's names (0.3.1, 0.4.0, 0.5.0), so `ALTER EXTENSION ... UPDATE` cannot tell an older build of
0.3.1 from this one, and older releases created the extension as the superuser, so the database's
owner could not update it at all. A cluster therefore records which build of the stub its databases
hold: STAMP_FILENAME in PGDATA, the digest of the stub's files (templates carry it, so a new data
directory has it from the start). At start, a cluster without it or with another one gets, in every
database that has the extension, in one transaction each:

- the private schema _pg_session_jwt dropped and made again from the current files: internal
  functions and the per-backend state, which holds nothing that outlives a backend;
- the auth.* functions replaced in place (CREATE OR REPLACE): their oids stay, and so do the
  policies, defaults and views that call them, and the grants on them;
- the extension handed to the database's owner when the superuser holds it, as a fresh install by
  the owner has it, so the owner can `ALTER EXTENSION pg_session_jwt UPDATE` as on Neon.

The installed version stays what it was. A database where something outside the stub depends on its
private schema is left alone, with a warning saying how to bring it up to date by hand.

The same refresh switches a data directory between the stub's two builds, the SQL one and the C one
(extension_path.stub_files_dir: the C one when its module was built for the server): the digest covers the
build's files, so a data directory made with the SQL stub moves to the C functions at its next start with
the module present (same oids, so policies keep working), and back again when the module is gone.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from neon_local.errors import NeonLocalError
from neon_local.postgres.cluster import PostgresCluster
from neon_local.postgres.extension_path import stub_files_dir

if TYPE_CHECKING:  # psycopg (~0.1 s) only when there is something to upgrade: not on every start
    import psycopg

log = logging.getLogger(__name__)

EXTENSION = "pg_session_jwt"
PRIVATE_SCHEMA = "_pg_session_jwt"
STAMP_FILENAME = "neon_local_stub.digest"


def stub_digest(major: int) -> str:
    """Names and contents of the stub's files for a PostgreSQL `major` server: what makes one build of the stub another."""
    digest = hashlib.sha256()
    for stub_file in sorted(stub_files_dir(major).iterdir()):
        digest.update(stub_file.name.encode() + b"\0" + stub_file.read_bytes())
    return digest.hexdigest()


def stamp(pgdata: Path, major: int) -> None:
    """Record that the databases of the cluster at `pgdata` (a PostgreSQL `major` one) hold the current stub."""
    (pgdata / STAMP_FILENAME).write_text(stub_digest(major) + "\n")


def is_current(pgdata: Path, major: int) -> bool:
    try:
        return (pgdata / STAMP_FILENAME).read_text().strip() == stub_digest(major)
    except FileNotFoundError:
        return False


def script_chain(version: str, files_dir: Path) -> list[Path]:
    """The scripts CREATE EXTENSION ... VERSION `version` runs: an install script, then the shortest chain of
    update scripts from its version (as PostgreSQL picks them)."""
    installs = {m.group(1): p for p in files_dir.glob(f"{EXTENSION}--*.sql")
                if (m := re.fullmatch(rf"{EXTENSION}--([^-]+(?:-[^-]+)?)\.sql", p.name)) and "--" not in m.group(1)}
    updates = {(m.group(1), m.group(2)): p for p in files_dir.glob(f"{EXTENSION}--*--*.sql")
               if (m := re.fullmatch(rf"{EXTENSION}--(.+?)--(.+)\.sql", p.name))}
    paths = {start: [script] for start, script in installs.items()}
    frontier = list(paths)
    while frontier and version not in paths:
        following = []
        for start in frontier:
            for (source, target), script in sorted(updates.items()):
                if source == start and target not in paths:
                    paths[target] = [*paths[start], script]
                    following.append(target)
        frontier = following
    if version not in paths:
        raise LookupError(f"{EXTENSION} {version} cannot be installed from {files_dir}")
    return paths[version]


def refresh_sql(version: str, files_dir: Path) -> str:
    """The scripts in `files_dir` for `version` as plain SQL that replaces existing functions (they run outside
    CREATE EXTENSION, which strips the psql-only \\echo lines the same way)."""
    text = "\n".join(p.read_text() for p in script_chain(version, files_dir))
    text = re.sub(r"^\\echo.*$", "", text, flags=re.MULTILINE)
    return re.sub(r"\bCREATE FUNCTION\b", "CREATE OR REPLACE FUNCTION", text)


# Objects outside the private schema that depend on something in it (views, policies, functions with SQL-standard
# bodies): dropping the schema would take them along.
_OUTSIDE_DEPENDENTS = """
WITH private AS (
    SELECT 'pg_catalog.pg_proc'::regclass AS classid, p.oid FROM pg_catalog.pg_proc p WHERE p.pronamespace = %(schema)s::regnamespace
    UNION ALL SELECT 'pg_catalog.pg_class'::regclass, c.oid FROM pg_catalog.pg_class c WHERE c.relnamespace = %(schema)s::regnamespace
    UNION ALL SELECT 'pg_catalog.pg_type'::regclass, t.oid FROM pg_catalog.pg_type t WHERE t.typnamespace = %(schema)s::regnamespace
)
SELECT DISTINCT CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass  -- a view's rule: name the view
    THEN pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, (SELECT r.ev_class FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid), 0)
    ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) END
FROM pg_catalog.pg_depend d JOIN private p ON d.refclassid = p.classid AND d.refobjid = p.oid
WHERE d.deptype = 'n' AND NOT EXISTS (SELECT FROM private q WHERE q.classid = d.classid AND q.oid = d.objid)
ORDER BY 1
"""

# The extension's members in or being the private schema, as ALTER EXTENSION ... DROP names them.
_PRIVATE_MEMBERS = """
SELECT o.type, o.identity
FROM pg_catalog.pg_depend d, pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) AS o
WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = %(extension)s AND d.deptype = 'e'
  AND (o.schema = %(schema)s OR (o.type = 'schema' AND o.identity = pg_catalog.quote_ident(%(schema)s)))
  -- a table's row type and its array go with the table
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem
                  WHERE d.classid = 'pg_catalog.pg_type'::regclass AND t.oid = d.objid AND (t.typrelid <> 0 OR e.typrelid <> 0))
"""

# What the scripts made in the private schema and in auth that is not yet a member (the private schema is new).
_NOT_MEMBERS = """
SELECT kind, name FROM (
    SELECT 'SCHEMA' AS kind, n.oid::regnamespace::text AS name, 'pg_catalog.pg_namespace'::regclass AS classid, n.oid
    FROM pg_catalog.pg_namespace n WHERE n.nspname = %(schema)s
    UNION ALL SELECT 'TABLE', c.oid::regclass::text, 'pg_catalog.pg_class'::regclass, c.oid
    FROM pg_catalog.pg_class c WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind = 'r'
    UNION ALL SELECT 'FUNCTION', p.oid::regprocedure::text, 'pg_catalog.pg_proc'::regclass, p.oid
    FROM pg_catalog.pg_proc p WHERE p.pronamespace = %(schema)s::regnamespace OR p.oid = ANY(%(auth)s::regprocedure[])
) made
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = made.classid AND d.objid = made.oid
                  AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e')
"""

# auth.* members the current scripts no longer make.
_AUTH_MEMBERS = """
SELECT p.oid::regprocedure::text
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = %(extension)s AND d.deptype = 'e'
  AND p.pronamespace = 'auth'::regnamespace
"""

# Older releases created the extension as the superuser. A fresh install by the owner records the owner in
# pg_extension and in pg_shdepend (the bootstrap superuser, being pinned, is never recorded there); PostgreSQL has
# no ALTER EXTENSION ... OWNER TO, so the catalog rows are written as CREATE EXTENSION would have written them.
_HAND_TO_OWNER = """
WITH owner AS (SELECT d.oid AS dbid, d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
moved AS (
    UPDATE pg_catalog.pg_extension e SET extowner = owner.datdba FROM owner
    WHERE e.oid = %(extension)s AND e.extowner = 10 AND owner.datdba <> 10  -- 10: the bootstrap superuser
    RETURNING owner.dbid, e.oid, e.extowner
)
INSERT INTO pg_catalog.pg_shdepend (dbid, classid, objid, objsubid, refclassid, refobjid, deptype)
SELECT moved.dbid, 'pg_catalog.pg_extension'::regclass, moved.oid, 0, 'pg_catalog.pg_authid'::regclass, moved.extowner, 'o'
FROM moved
RETURNING refobjid::regrole::text
"""


def _auth_functions(script: str) -> list[str]:
    """The auth.* functions the scripts make, as regprocedure input (every one takes no argument but jwt_session_init)."""
    made = re.findall(r"CREATE OR REPLACE FUNCTION (auth\.\w+\([^)]*\))", script)
    return [re.sub(r"\((\w+) (\w+)\)", r"(\2)", name) for name in made]


class StubUpgradeRefused(NeonLocalError):
    """Something outside the stub depends on its private objects: they are left as they are."""


async def refresh_database(conn: psycopg.AsyncConnection, dbname: str, files_dir: Path) -> str | None:
    """Make the stub in the connected database the one whose scripts are in `files_dir`; what was done, or None
    when it has no stub."""
    from psycopg import sql

    cur = await conn.execute("SELECT oid, extversion, extowner::regrole::text FROM pg_catalog.pg_extension WHERE extname = %s",
                             (EXTENSION,))
    row = await cur.fetchone()
    if row is None:
        return None
    extension, version, owner_before = row
    script = refresh_sql(version, files_dir)
    names = {"extension": extension, "schema": PRIVATE_SCHEMA}
    async with conn.transaction():
        dependents = [r[0] for r in await (await conn.execute(_OUTSIDE_DEPENDENTS, names)).fetchall()]
        if dependents:
            raise StubUpgradeRefused(", ".join(dependents))
        for kind, identity in await (await conn.execute(_PRIVATE_MEMBERS, names)).fetchall():
            await conn.execute(sql.SQL("ALTER EXTENSION {} DROP {} {}").format(
                sql.Identifier(EXTENSION), sql.SQL(kind.upper()), sql.SQL(identity)))
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(PRIVATE_SCHEMA)))
        await conn.execute(script)
        made = _auth_functions(script)
        for kind, name in await (await conn.execute(_NOT_MEMBERS, {**names, "auth": made})).fetchall():
            await conn.execute(sql.SQL("ALTER EXTENSION {} ADD {} {}").format(sql.Identifier(EXTENSION), sql.SQL(kind), sql.SQL(name)))
        made_oids = {r[0] for r in await (await conn.execute("SELECT unnest(%s::regprocedure[])::text", (made,))).fetchall()}
        for (stale,) in await (await conn.execute(_AUTH_MEMBERS, names)).fetchall():
            if stale not in made_oids:
                await conn.execute(sql.SQL("ALTER EXTENSION {} DROP FUNCTION {}").format(sql.Identifier(EXTENSION), sql.SQL(stale)))
                await conn.execute(sql.SQL("DROP FUNCTION {}").format(sql.SQL(stale)))
        owner_after = await (await conn.execute(_HAND_TO_OWNER, names)).fetchone()
    handed = f", and now belongs to {owner_after[0]} (was {owner_before})" if owner_after else ""
    return f"{EXTENSION} {version} in database {dbname}: functions refreshed, policies and data kept{handed}"


async def upgrade_stub(cluster: PostgresCluster) -> list[str]:
    """Refresh the stub in every database of a running cluster whose stamp is not the current stub's; returns (and
    logs) what was done. Costs one file read when the cluster is current."""
    major = cluster.binaries.major
    if is_current(cluster.data_dir, major):
        return []
    import psycopg

    async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
        cur = await conn.execute("SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname")
        databases = [r[0] for r in await cur.fetchall()]
    done, refused = [], []
    for dbname in databases:
        async with await psycopg.AsyncConnection.connect(cluster.conninfo(dbname=dbname), autocommit=True) as conn:
            try:
                what = await refresh_database(conn, dbname, stub_files_dir(major))
            except StubUpgradeRefused as exc:
                refused.append(dbname)
                log.warning("%s in database %s was made by an older neon-local and is left as it was, because these use "
                            "its private schema %s: %s. Drop them and restart neon-local to bring it up to date.",
                            EXTENSION, dbname, PRIVATE_SCHEMA, exc)
                continue
        if what:
            log.info("data directory from an older neon-local: %s", what)
            done.append(what)
    if not refused:
        stamp(cluster.data_dir, major)
    return done
