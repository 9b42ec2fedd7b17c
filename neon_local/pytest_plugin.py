"""neon-local's pytest plugin (entry point `pytest11`): its options and default fixtures, built by the factories.

    neon_local     session: the running emulator (started in about a second, or reused)
    neon_template  session: the template database the migrations and seed were applied to, once
    neon_db        per test: a fresh database cloned from the template, dropped afterwards
    neon_token     JWTs: neon_token("alice"), neon_token(sub="u1", org_id="o1")
    neon_http      neon_http("alice").sql("select ...") over SQL over HTTP
    neon_connect   neon_connect("alice"): psycopg through the TCP proxy, the JWT as password
    neon_owner     a direct owner connection to the test's database
"""

from __future__ import annotations

import pytest

from neon_local.testing import config, factories, report
from neon_local.testing.tokens import TokenFactory


def pytest_addoption(parser: pytest.Parser) -> None:
    config.add_options(parser)


neon_local = factories.neon_local()
neon_template = factories.neon_template()
neon_db = factories.neon_db()


@pytest.fixture(scope="session")
def neon_token(neon_local) -> TokenFactory:
    return TokenFactory(neon_local.mint)


@pytest.fixture
def neon_http(neon_db):
    return neon_db.http


@pytest.fixture
def neon_connect(neon_db):
    return neon_db.connect


@pytest.fixture
def neon_owner(neon_db):
    return neon_db.owner()


def pytest_sessionfinish(session: pytest.Session) -> None:
    report.session_finished(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    report.worker_finished(node.config, node.gateway.id, getattr(node, "workeroutput", {}))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    report.summary(config, terminalreporter)
