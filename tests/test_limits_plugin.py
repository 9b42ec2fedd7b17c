"""The pytest plugin learns the allow-list from an app's own suite; the same suite then passes under enforce."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import neon_local.services  # noqa: F401  (see test_pytest_plugin: imported before pytester's runs)
from neon_local.limits.store import read_list

pytest_plugins = ["pytester"]

SAMPLE = Path(__file__).parent.parent / "fixtures" / "todos"


def test_learn_from_the_suite_then_enforce(pytester: pytest.Pytester, monkeypatch):
    shutil.copytree(SAMPLE, pytester.path, dirs_exist_ok=True)
    learned = pytester.runpytest_subprocess("--neon-local-learn-allowlist")
    outcomes = learned.parseoutcomes()
    assert outcomes.get("passed") and not outcomes.get("failed")
    statements = read_list(pytester.path / "neon_local.allowlist.toml").statements
    assert statements and all(entry.roles for entry in statements.values())
    assert any("todos" in entry.sql for entry in statements.values())
    (pytester.path / "tests" / "test_unlearned.py").write_text(
        'def test_unlearned(neon_http):\n    neon_http("alice").sql("select count(*) from todos where id > 0")\n')
    monkeypatch.setenv("NEON_LOCAL_ALLOWLIST", "enforce")
    enforced = pytester.runpytest_subprocess()
    assert enforced.parseoutcomes() == {**outcomes, "failed": 1}  # everything the suite runs was learned
    enforced.stdout.fnmatch_lines(['*statement not in the allow-list for role "authenticated" (fingerprint *'])
