"""Testing apps on Neon RLS with neon-local: the machinery behind the pytest plugin, usable without it.

  server.py      a running emulator: started on a private thread, or the project's `neon-local up` reused
  janitor.py     the session's databases: a template built once, a clone per test, all dropped
  migrations.py  what builds the template: .sql files, a module:function, or a command such as drizzle-kit
  database.py    one test's database and each way to act on it
  clients.py     SQL over HTTP, the Data API, psycopg through the TCP proxy, direct connections; dict rows
  tokens.py      JWTs for named test users and ad-hoc claims
  identity.py    authenticate_as (act as a user at SQL level), RLS and policy-shape checks
  access.py      what each user may do to a table (assert_access, access_matrix), and which policy decided it
  websocket.py   a local port whose connections go over the emulator's WebSocket path
  explain.py     why a query was refused: role, claims, and the policy or grant Postgres points at
  config.py, factories.py, report.py   the pytest side: settings, fixture factories, the summary line

Names are imported on first use (PEP 562), so loading the plugin does not import psycopg or aiohttp.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AccessMatrix": "access",
    "AsyncNeonConnection": "clients", "HttpClient": "clients", "NeonConnection": "clients", "QueryError": "clients",
    "RestClient": "clients",
    "Database": "database", "RollbackDatabase": "database",
    "Explainer": "explain", "Identity": "explain",
    "assert_policies": "identity", "assert_policy": "identity", "assert_rls_enabled": "identity",
    "authenticate_as": "identity", "tables_without_rls": "identity",
    "Janitor": "janitor",
    "MigrationError": "migrations",
    "NeonLocal": "server", "NotRunning": "server",
    "NotAJwt": "tokens", "TokenFactory": "tokens", "User": "tokens", "claims_of": "tokens",
    "factories": None,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neon_local.testing' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        return importlib.import_module(f"neon_local.testing.{name}")
    return getattr(importlib.import_module(f"neon_local.testing.{module}"), name)
