"""Fixture factories, as in pytest-postgresql: the plugin's default fixtures are built with these, and so can yours.

    # conftest.py: a second template without seed data, and databases cloned from it
    from neon_local.testing import factories
    bare_template = factories.neon_template(seed=[])
    bare_db = factories.neon_db("bare_template")

Arguments win over the plugin's settings; None means "use the setting". The machinery is imported
inside the fixtures: psycopg, httpx and aiohttp take ~0.4 s to import, which every pytest run of a
project with neon-local installed would otherwise pay.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neon_local.testing import report
from neon_local.testing.config import get_config

if TYPE_CHECKING:
    from neon_local.testing.database import Database
    from neon_local.testing.janitor import Janitor
    from neon_local.testing.server import NeonLocal

__all__ = ["neon_db", "neon_local", "neon_template"]


def _worker_id(config: pytest.Config) -> str:
    # Not PYTEST_XDIST_WORKER: a pytester run inside a worker inherits that variable but is not a worker.
    return str(getattr(config, "workerinput", {}).get("workerid", "main"))


def neon_local(*, config_file: str | Path | None = None, reuse: bool | None = None) -> Any:  # pytest's fixture type is private
    """A session-scoped emulator: a private one on free ports, or with `reuse` the project's `neon-local up`."""

    @pytest.fixture(scope="session")
    def neon_local_fixture(pytestconfig: pytest.Config) -> Iterator[NeonLocal]:
        from neon_local.testing.server import NeonLocal, NotRunning

        settings = get_config(pytestconfig, os.environ)
        chosen = Path(config_file) if config_file is not None else settings.config
        try:
            server = NeonLocal.open(settings.rootdir, chosen, settings.reuse if reuse is None else reuse)
        except NotRunning as exc:  # nothing a test could do about it: stop the session with one message
            pytest.exit(f"neon-local: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        report.of(pytestconfig).emulator = (
            f"emulator started in {server.started_in:.2f} s" if server.started_in is not None
            else f"reused the emulator at {server.endpoints.http_url}")
        report.of(pytestconfig).started = int(server.started_in is not None)
        yield server
        server.stop()

    return neon_local_fixture


def neon_template(server: str = "neon_local", *, migrations: Any = None, seed: Any = None) -> Any:
    """A session-scoped template database: Neon's grants, then the migrations and seed, applied once."""

    @pytest.fixture(scope="session")
    def neon_template_fixture(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Iterator[Janitor]:
        from neon_local.testing.janitor import Janitor, run_all
        from neon_local.testing.migrations import MigrationError, steps_from

        settings = get_config(pytestconfig, os.environ)
        steps = steps_from(settings.migrations if migrations is None else migrations)
        steps += steps_from(settings.seed if seed is None else seed)
        janitor = Janitor(request.getfixturevalue(server), f"nl_{_worker_id(pytestconfig)}_{secrets.token_hex(3)}")
        try:
            name = janitor.build_template(steps)
        except MigrationError as exc:  # one line per affected test, not a traceback each
            run_all([janitor.close])
            pytest.fail(f"neon-local could not build the template database: {exc}", pytrace=False)
        except BaseException as exc:
            run_all([janitor.close], pending=exc)
        report.of(pytestconfig).templates.append(
            f"template {name} built once in {janitor.template_seconds:.2f} s ({len(steps)} step(s))")
        yield janitor
        report.of(pytestconfig).clone_seconds += janitor.clone_seconds
        report.of(pytestconfig).rollback_seconds += janitor.rollback_seconds
        janitor.close()

    return neon_template_fixture


def neon_db(template: str = "neon_template", *, isolation: str | None = None) -> Any:
    """A database per test: a fresh clone of the template dropped afterwards (`clone`), or the session's shared
    clone inside a transaction rolled back afterwards (`rollback`). Precedence: the test's marker
    (`@pytest.mark.neon_clone` / `@pytest.mark.neon_rollback`), then `isolation`, then the setting."""

    @pytest.fixture
    def neon_db_fixture(request: pytest.FixtureRequest) -> Iterator[Database]:
        from neon_local.testing.database import Database, RollbackDatabase
        from neon_local.testing.janitor import run_all

        janitor = request.getfixturevalue(template)
        if _isolation(request, isolation) == "rollback":
            began = time.perf_counter()
            name, session = janitor.shared()
            database: Database = RollbackDatabase(name, janitor.server, session)
            begin_cost = time.perf_counter() - began
            yield database
            began = time.perf_counter()
            database.close()
            janitor.rollback_seconds.append(begin_cost + time.perf_counter() - began)
            return
        name = janitor.clone()
        database = Database(name, janitor.server)
        yield database
        run_all([database.close, lambda: janitor.drop(name)])

    return neon_db_fixture


def _isolation(request: pytest.FixtureRequest, default: str | None) -> str:
    if request.node.get_closest_marker("neon_rollback"):
        return "rollback"
    if request.node.get_closest_marker("neon_clone"):
        return "clone"
    return default or get_config(request.config, os.environ).isolation
