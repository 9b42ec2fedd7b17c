"""The package's shape: no import circles (type-only imports count too), one name per class, one error base."""

from __future__ import annotations

import ast
import importlib
import inspect
from collections import Counter
from pathlib import Path

from neon_local.errors import NeonLocalError

PACKAGE = Path(__file__).parent.parent / "neon_local"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, at any depth of the file (lazy and TYPE_CHECKING imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` imports the submodule, not the package's other modules.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known]
            names = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
        found.update(name for name in names if name in known)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) - {name} for name, path in files.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    circles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start and not _through_package_init(trail):
                    circles.append(" -> ".join([*trail, start]))
                elif nxt not in seen and nxt.startswith("neon_local"):
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles))[:20])


def _through_package_init(trail: list[str]) -> bool:
    """A package's __init__ importing its own submodules is how packages re-export, not a circle."""
    return any((PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() for name in trail[1:])


def test_each_class_name_is_used_once():
    names = Counter()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                names[node.name] += 1
    assert [name for name, count in names.items() if count > 1] == []


def test_every_exception_neon_local_defines_derives_from_neon_local_error():
    """One base, so `except NeonLocalError` (the CLI's) catches whatever neon-local raises on purpose."""
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name.endswith("__main__"):  # running it runs the CLI
            continue
        module = importlib.import_module(name)
        strays += [f"{name}.{cls.__name__}" for cls in vars(module).values()
                   if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name
                   and not issubclass(cls, NeonLocalError)]
    assert strays == []
