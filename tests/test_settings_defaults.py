"""Each scalar setting's default is written once, as its `Settings` field's default, and every place that shows or
applies it follows: `Settings()`, the NEON_LOCAL_* variables' parsing, the CLI flag's help and the README table."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import neon_local.settings
from neon_local.cli import main
from neon_local.settings import SCALARS, Scalar, Settings, load_settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def readme_default(name: str) -> str:
    """The default column of the README's settings table for `name`, without the code quotes."""
    rows = [line.split("|") for line in README.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"{name} has no row in the README's settings table"
    return rows[0][4].strip().replace("`", "")


def documented(scalar: Scalar, cell: str) -> bool:
    """Whether the README cell states the default: as the flag spells it, or "none" for an empty one.
    Defaults of None (a path found beside the config) are described in words, so any text stands."""
    if scalar.default is None:
        return bool(cell)
    return cell.startswith(scalar.default_text or "none")


def help_shows(help_text: str, scalar: Scalar) -> bool:
    expected = f"[env {scalar.env}; default {scalar.default_text}]" if scalar.default_text else f"[env {scalar.env}]"
    return expected in " ".join(help_text.split())


@pytest.fixture(scope="module")
def up_help() -> str:
    return CliRunner().invoke(main, ["up", "--help"], terminal_width=200).output


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: s.name)
def test_the_default_is_the_same_everywhere(scalar: Scalar, up_help: str, tmp_path: Path) -> None:
    assert getattr(Settings(), scalar.name) == scalar.default
    assert getattr(load_settings(cwd=tmp_path, env={}), scalar.name) == scalar.default
    if scalar.default is not None:  # the default, spelt as in a variable, reads back as itself
        assert getattr(load_settings(cwd=tmp_path, env={scalar.env: scalar.default_text}), scalar.name) == scalar.default
    assert help_shows(up_help, scalar), f"`neon-local up --help` does not show {scalar.name}'s default"
    assert documented(scalar, readme_default(scalar.name)), \
        f"README's settings table says {readme_default(scalar.name)!r} for {scalar.name}, whose default is {scalar.default!r}"


def test_the_scalars_are_the_settings_fields_with_help() -> None:
    scalar_fields = [f for f in dataclasses.fields(Settings) if f.metadata]
    assert [s.name for s in SCALARS] == [f.name for f in scalar_fields]
    assert [s.default for s in SCALARS] == [f.default for f in scalar_fields]


# Runs in a fresh interpreter: neon_local.settings from its source with one default edited, then the CLI on top.
EDITED = """
import importlib.util, json, sys
from pathlib import Path

source, old, new = sys.argv[1:]
spec = importlib.util.spec_from_loader("neon_local.settings", loader=None, origin=source)
module = importlib.util.module_from_spec(spec)
sys.modules["neon_local.settings"] = module
text = Path(source).read_text()
assert text.count(old) == 1, old
exec(compile(text.replace(old, new), source, "exec"), module.__dict__)

from click.testing import CliRunner
from neon_local.cli import main

scalar = next(s for s in module.SCALARS if s.name == "http_port")
print(json.dumps({
    "settings": module.Settings().http_port,
    "scalar": scalar.default,
    "loaded": module.load_settings(cwd=Path.cwd(), env={}).http_port,
    "beside_another_variable": module.load_settings(cwd=Path.cwd(), env={"NEON_LOCAL_PG_PORT": "1"}).http_port,
    "help": " ".join(CliRunner().invoke(main, ["up", "--help"]).output.split()),
}))
"""


def test_editing_a_default_in_its_one_place_changes_it_everywhere(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEON_LOCAL_")}
    result = subprocess.run(
        [sys.executable, "-c", EDITED, neon_local.settings.__file__, "http_port: int = field(default=4444,",
         "http_port: int = field(default=4545,"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["settings"], seen["scalar"], seen["loaded"], seen["beside_another_variable"]) == (4545, 4545, 4545, 4545)
    assert "[env NEON_LOCAL_HTTP_PORT; default 4545]" in seen["help"]
    # And the README, written by hand, would be caught out of date by the test above.
    edited = Scalar("http_port", int, 4545, "")
    assert not documented(edited, readme_default("http_port"))
