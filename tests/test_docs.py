"""The README documents every setting and every command, so the docs cannot fall behind the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from neon_local.cli import main
from neon_local.settings import SCALARS

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: s.name)
def test_every_setting_is_in_the_readme_table(scalar):
    assert f"| `{scalar.name}` | `{scalar.flag}` | `{scalar.env}` |" in README


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_is_in_the_readme(name):
    assert f"`neon-local {name}" in README
