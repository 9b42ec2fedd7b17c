"""neon-local's pytest plugin (entry point `pytest11`): its options and default fixtures, built by the factories.

    neon_local     session: the running emulator (started in about a second, or reused)
    neon_template  session: the template database the migrations and seed were applied to, once
    neon_db        per test: a fresh database cloned from the template, dropped afterwards (or, in rollback
                   mode, the shared one in a transaction rolled back afterwards)
    neon_token     JWTs: neon_token("alice"), neon_token(sub="u1", org_id="o1")
    neon_user      identities on the fly: neon_user(sub="u1", claims={"org_id": "o1"}, role="authenticated")
    neon_http      neon_http("alice").sql("select ...") over SQL over HTTP
    neon_connect   neon_connect("alice"): psycopg through the TCP proxy, the JWT as password
    neon_ws        neon_ws("alice"): psycopg over the WebSocket path (/v2), the JWT as password
    neon_rest      neon_rest("alice").get("todos", select="id,task"): Neon's Data API (PostgREST)
    neon_owner     a direct owner connection to the test's database
"""

from __future__ import annotations

import os

import pytest

from neon_local.testing import config, factories, report
from neon_local.testing.tokens import TokenFactory


def pytest_addoption(parser: pytest.Parser) -> None:
    config.add_options(parser)
    parser.getgroup("neon-local").addoption(
        "--neon-local-learn-allowlist", action="store_true", default=False,
        help="Record every statement JWT roles run into the query allow-list (an emulator this run starts).")


neon_local = factories.neon_local()
neon_template = factories.neon_template()
neon_db = factories.neon_db()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("neon_local_learn_allowlist"):  # read by the emulator's settings when the fixture starts it
        os.environ["NEON_LOCAL_ALLOWLIST"] = "learn"
    config.addinivalue_line("markers", "neon_rollback: run this test's neon_db in a transaction rolled back at its end")
    config.addinivalue_line("markers", "neon_clone: give this test a fresh database of its own (the default)")


@pytest.fixture(scope="session")
def neon_token(neon_local) -> TokenFactory:
    return neon_local.tokens


@pytest.fixture(scope="session")
def neon_user():
    """`neon_user(sub="u1", claims={"org_id": "o1"})`, `neon_user("alice", role=...)`, `neon_user(role="anonymous")`."""
    from neon_local.testing.tokens import User

    return User


@pytest.fixture
def neon_http(neon_db):
    return neon_db.http


@pytest.fixture
def neon_connect(neon_db):
    return neon_db.connect


@pytest.fixture
def neon_ws(neon_db):
    return neon_db.ws


@pytest.fixture
def neon_rest(neon_db):
    return neon_db.rest


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


def pytest_assertrepr_compare(config: pytest.Config, op: str, left, right):
    """`assert neon_db.access_matrix(...) == EXPECTED`: each differing cell with the policy that decided it."""
    if op != "==":
        return None
    for matrix, expected in ((left, right), (right, left)):
        compare = getattr(matrix, "explain_difference", None)  # an AccessMatrix (no import: it needs psycopg)
        if compare is not None and isinstance(expected, str):
            return compare(expected)
    return None
