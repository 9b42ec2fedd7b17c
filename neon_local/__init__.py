"""neon-local: an offline emulator of Neon's row-level-security stack.

Map of the package (one folder per part):
  postgres/    find binaries, run the cluster, shape it like a Neon branch, the pg_session_jwt stub
  auth/        signing keys, the built-in issuer, external JWKS providers, JWT verification (Neon's rules)
  wire/        sans-io Postgres wire codec (server side)
  proxy/       Postgres over TCP (TLS, JWT in the password field), sessions, cancellation
  serverless/  SQL over HTTP (POST /sql) and the WebSocket adapter over the proxy session
  control_plane.py  the Postgres-side work every client path shares (credentials, JWT sessions)
  errors.py    NeonLocalError, the one base of neon-local's own errors
  app.py       the Emulator object that starts and stops all of it in one asyncio process
  cli/         the neon-local command
  pytest_plugin.py  fixtures for apps' test suites

The public API is what `__all__` lists here and in `neon_local.testing` (the README's "Using neon-local
from Python" says how to use it); everything else is internal and may change. The names below are imported
on first use (PEP 562), so `import neon_local` and `neon-local --version` do not load the server.
"""

from neon_local import _version

__version__ = _version.__version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms) on every start of the CLI
if TYPE_CHECKING:
    from neon_local.app import AlreadyRunning, Emulator, Endpoints
    from neon_local.errors import NeonLocalError
    from neon_local.settings import ConfigError, Settings, load_settings


_EXPORTS = {
    "AlreadyRunning": "app", "Emulator": "app", "Endpoints": "app",
    "NeonLocalError": "errors",
    "ConfigError": "settings", "Settings": "settings", "load_settings": "settings",
}

__all__ = ["AlreadyRunning", "ConfigError", "Emulator", "Endpoints", "NeonLocalError", "Settings", "load_settings"]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neon_local' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"neon_local.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
