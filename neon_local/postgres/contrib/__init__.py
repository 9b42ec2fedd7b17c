"""The extensions Neon supports that apps' migrations create, for servers that lack them.

- pgcrypto and uuid-ossp: neon-local's own (control files and scripts in extension/, a C module built from
  src/ when neon-local is installed, into lib/pg<major>/). Offered after the server's own extensions, so a
  server that has PostgreSQL's contrib always uses the real ones.
- pg_session_jwt's auth.* functions in C: a module of their own (src/session_jwt.c, built beside the other),
  which postgres.extension_path offers instead of the SQL stub when it was built for the server.
- Every other extension in NEON_EXTENSIONS: a placeholder, also after the server's own, whose install script
  fails with a message naming the extension and how to get it, instead of Postgres' bare "could not open
  extension control file". Placeholders are listed in pg_available_extensions with version 'unavailable'.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from neon_local.postgres.cache import cache_dir

CONTRIB_DIR = Path(__file__).parent
OWN_FILES_DIR = CONTRIB_DIR / "extension"
MODULE = "neon_local_contrib"
SESSION_JWT_MODULE = "neon_local_session_jwt"
PLACEHOLDER_VERSION = "unavailable"

# Extensions Neon documents as supported that migrations commonly create, with the Debian/Ubuntu package that
# provides each for PostgreSQL major NN ("contrib": in the server package itself; None: no package, build it).
NEON_EXTENSIONS: dict[str, str | None] = {
    **dict.fromkeys(("pgcrypto", "uuid-ossp", "pg_trgm", "citext", "hstore", "ltree", "unaccent", "btree_gin", "btree_gist", "pg_stat_statements",
                     "fuzzystrmatch", "intarray", "cube", "earthdistance", "tablefunc", "isn", "lo", "seg", "bloom", "dict_int", "intagg",
                     "tsm_system_rows", "tsm_system_time", "postgres_fdw", "dblink", "pg_prewarm", "pgrowlocks", "pgstattuple", "autoinc",
                     "insert_username", "moddatetime", "refint", "tcn"), "contrib"),
    "vector": "postgresql-NN-pgvector",
    **dict.fromkeys(("postgis", "postgis_raster", "postgis_topology", "postgis_tiger_geocoder", "postgis_sfcgal", "address_standardizer",
                     "address_standardizer_data_us"), "postgresql-NN-postgis-3"),
    "pgrouting": "postgresql-NN-pgrouting",
    "pg_uuidv7": "postgresql-NN-pg-uuidv7",
    "pg_partman": "postgresql-NN-partman",
    "pg_cron": "postgresql-NN-cron",
    "timescaledb": "timescaledb-2-postgresql-NN",
    "hypopg": "postgresql-NN-hypopg",
    "pg_hint_plan": "postgresql-NN-pg-hint-plan",
    "pg_repack": "postgresql-NN-repack",
    "pgtap": "postgresql-NN-pgtap",
    "rum": "postgresql-NN-rum",
    "semver": "postgresql-NN-semver",
    "prefix": "postgresql-NN-prefix",
    "ip4r": "postgresql-NN-ip4r",
    "hll": "postgresql-NN-hll",
    "unit": "postgresql-NN-unit",
    "plv8": "postgresql-NN-plv8",
    "h3": "postgresql-NN-h3",
    "pg_jsonschema": None,
    "pg_graphql": None,
    "pg_hashids": None,
    "pg_roaringbitmap": None,
    "pgjwt": None,
    "ulid": None,  # pgx_ulid
    "pg_tiktoken": None,
    "pg_ivm": None,
}

EXAMPLE_MAJOR = 17


def library_dir(major: int) -> Path:
    """Where the C module built for PostgreSQL `major` lives (setup.py builds it for the wheel's server)."""
    return CONTRIB_DIR / "lib" / f"pg{major}"


def own_module_built(major: int) -> bool:
    return (library_dir(major) / f"{MODULE}.so").is_file()


def session_jwt_module_built(major: int) -> bool:
    return (library_dir(major) / f"{SESSION_JWT_MODULE}.so").is_file()


def own_files(major: int) -> list[Path]:
    """neon-local's pgcrypto and uuid-ossp files, when their module was built for this server."""
    return sorted(OWN_FILES_DIR.iterdir()) if own_module_built(major) else []


def how_to_get(name: str) -> str:
    """The next step for a user whose server lacks `name` (shown as the placeholder's HINT and in README)."""
    package = NEON_EXTENSIONS[name]
    server = f"postgresql-{EXAMPLE_MAJOR}"
    if package == "contrib":
        steps = f"a server that includes PostgreSQL's contrib modules, e.g. Debian/Ubuntu's {server}"
    elif package:
        source = "apt.postgresql.org" if package.startswith("postgresql-") else "the project's apt repository"
        package = package.replace("NN", str(EXAMPLE_MAJOR))
        steps = f"a server that has it, e.g. Debian/Ubuntu's {server} with {package} (from {source})"
    else:
        steps = "a server where it is installed (built from its project's sources)"
    advice = (f"start neon-local with --pg-bin pointing at {steps}: "
              f"neon-local up --pg-bin /usr/lib/postgresql/{EXAMPLE_MAJOR}/bin.")
    if name in ("pgcrypto", "uuid-ossp"):
        return ("neon-local builds its own for the embedded PostgreSQL 18 when installed where gcc and libxcrypt's "
                "headers (libcrypt-dev) exist: install them and reinstall neon-local (make install), or " + advice)
    return advice[0].upper() + advice[1:]


def _placeholder_script(name: str) -> str:
    message = f'extension "{name}" is not available'
    detail = f"Neon supports {name}, but the PostgreSQL that neon-local runs (%s) does not include it."

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    # The message and SQLSTATE (0A000) are Postgres' own for a missing extension, so code that matches them still
    # does; DETAIL and HINT say why and what to do. The raise lives in a temporary function so that the error's
    # context names it rather than quoting this whole text.
    return (
        f"-- neon-local placeholder: {name} is not installed in this server; creating it explains how to get it.\n"
        "CREATE FUNCTION pg_temp.extension_not_installed() RETURNS void LANGUAGE plpgsql AS $placeholder$ BEGIN\n"
        f"  RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {literal(message)},\n"
        f"    DETAIL = format({literal(detail)}, current_setting('server_version')),\n"
        f"    HINT = {literal(how_to_get(name))};\n"
        "END $placeholder$;\n"
        "SELECT pg_temp.extension_not_installed();\n"
    )


def _placeholder_files() -> dict[str, str]:
    files = {}
    for name in NEON_EXTENSIONS:
        files[f"{name}.control"] = (
            f"# neon-local placeholder: CREATE EXTENSION {name} fails with how to get it.\n"
            f"comment = 'NOT INSTALLED in this server; CREATE EXTENSION says how to get it'\n"
            f"default_version = '{PLACEHOLDER_VERSION}'\nrelocatable = true\ntrusted = true\n"
        )
        files[f"{name}--{PLACEHOLDER_VERSION}.sql"] = _placeholder_script(name)
    return files


def placeholder_root() -> Path:
    """A directory whose extension/ subdirectory holds the placeholders, written once into the cache."""
    files = _placeholder_files()
    key = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]
    root = cache_dir() / "placeholders" / key
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
    staging.chmod(0o755)  # the server may run as `nobody` (see cluster.RunAs)
    (staging / "extension").mkdir(mode=0o755)
    for filename, text in files.items():
        (staging / "extension" / filename).write_text(text)
    try:
        os.rename(staging, root)
    except OSError:  # another process wrote it first
        shutil.rmtree(staging, ignore_errors=True)
    return root
