"""The public API, pinned: what each public module lists in `__all__`, that the README documents exactly that,
that every name imports, that docs and sample apps import nothing else, and that the README's examples run.

Changing the public API means changing PUBLIC below on purpose, and the README table with it.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

PUBLIC: dict[str, list[str]] = {
    "neon_local": ["AlreadyRunning", "ConfigError", "Emulator", "Endpoints", "NeonLocalError", "Settings", "load_settings"],
    "neon_local.app": ["AlreadyRunning", "Emulator", "Endpoints"],
    "neon_local.settings": ["ConfigError", "Provider", "RoleSpec", "Settings", "Tenancy", "load_settings"],
    "neon_local.testing": [
        "AccessMatrix", "AsyncNeonConnection", "Database", "Explainer", "HttpClient", "Identity", "Janitor",
        "MigrationError", "NeonConnection", "NeonLocal", "NotAJwt", "NotRunning", "QueryError", "RestClient",
        "RollbackDatabase", "TokenFactory", "User", "assert_policies", "assert_policy", "assert_rls_enabled",
        "authenticate_as", "claims_of", "factories", "tables_without_rls",
    ],
    "neon_local.testing.factories": ["neon_db", "neon_local", "neon_template"],
}
FIXTURES = ["neon_connect", "neon_db", "neon_http", "neon_local", "neon_owner", "neon_rest", "neon_template",
            "neon_token", "neon_user", "neon_ws"]


def clean_env() -> dict[str, str]:
    """This machine's environment without settings or pytest options that would change what a user sees."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("NEON_LOCAL_", "PYTEST_"))}


def readme_section() -> str:
    start = README.index("\n## Using neon-local from Python\n")
    return README[start:README.index("\n## ", start + 1)]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.M | re.S)


@pytest.mark.parametrize("module", PUBLIC)
def test_all_is_exactly_the_public_api(module: str) -> None:
    assert sorted(importlib.import_module(module).__all__) == sorted(PUBLIC[module])


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_imports(module: str) -> None:
    # In a fresh interpreter, so the lazy (PEP 562) names are looked up for real, not found already loaded.
    names = ", ".join(PUBLIC[module])
    result = subprocess.run([sys.executable, "-c", f"from {module} import {names}"],
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_top_level_names_are_the_modules_own() -> None:
    import neon_local
    import neon_local.app
    import neon_local.errors
    import neon_local.settings

    for name in PUBLIC["neon_local"]:
        home = next(m for m in (neon_local.app, neon_local.settings, neon_local.errors) if name in m.__all__)
        assert getattr(neon_local, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'Emulatr'"):
        neon_local.Emulatr  # noqa: B018


def test_import_neon_local_loads_nothing_else_until_a_name_is_used() -> None:
    probe = "import sys, neon_local; print(sorted(m for m in sys.modules if m.startswith('neon_local') or m == 'typing'))"
    result = subprocess.run([sys.executable, "-c", probe], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "['neon_local', 'neon_local._version']", result.stderr


def test_the_readme_documents_exactly_the_public_api() -> None:
    rows = re.findall(r"^\| `(neon_local[\w.]*)` \| (.*) \|$", readme_section(), re.M)
    documented = {module: sorted(re.findall(r"`(\w+)`", names)) for module, names in rows}
    assert documented == {module: sorted(names) for module, names in PUBLIC.items() if module != "neon_local.app"}


def test_the_readme_names_every_fixture_the_plugin_defines(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider"],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    defined, section = set(), ""
    for line in result.stdout.splitlines():
        if line.startswith("-"):
            section = line
        elif "defined from neon_local." in section and (found := re.match(r"(neon_\w+)( \[\w+ scope\])? -- ", line)):
            defined.add(found[1])
    assert sorted(defined) == FIXTURES
    bullet = next(line for line in readme_section().split("\n- ") if "need no import" in line)
    assert sorted(re.findall(r"`(neon_\w+)`", bullet)) == FIXTURES


def imported_names(source: str) -> list[tuple[str, str]]:
    """(module, name) for each `from neon_local... import name` and (module, "") for `import neon_local...`."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "neon_local":
            found += [(node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "neon_local"]
    return found


def app_sources() -> list[object]:
    """What users copy or read: the sample apps' code and the Python examples in the docs."""
    sources = [(str(path.relative_to(ROOT)), path.read_text()) for path in sorted((ROOT / "fixtures").rglob("*.py"))]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        sources += [(f"{doc.name} example {n}", block) for n, block in enumerate(python_blocks(doc.read_text()), 1)]
    return [pytest.param(where, source, id=where) for where, source in sources]


@pytest.mark.parametrize("where, source", app_sources())
def test_apps_and_docs_import_only_public_names(where: str, source: str) -> None:
    private = [f"{module}.{name}" if name else module for module, name in imported_names(source)
               if module not in PUBLIC or (name and name not in PUBLIC[module])]
    assert not private, f"{where} imports {private}, which are not in the public API (see PUBLIC)"


def test_the_readme_embedding_example_runs(tmp_path: Path) -> None:
    """Start an emulator, query as alice through the TCP proxy, stop it: the README's code as it stands."""
    embedding = python_blocks(readme_section())[0]
    result = subprocess.run([sys.executable, "-c", embedding], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "('user_alice',)\n"
    # Stopped: the state file that tells `neon-local status` it runs was removed with everything else.
    assert not (tmp_path / ".neon-local" / "state.json").exists()


def test_the_readme_pytest_example_passes(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(python_blocks(readme_section())[1])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^3 passed", result.stdout, re.M), result.stdout
