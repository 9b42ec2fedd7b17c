"""The one error codegen raises: it names the file and line a person has to fix."""

from __future__ import annotations

from pathlib import Path

from neon_local.errors import NeonLocalError


class CodegenError(NeonLocalError):
    def __init__(self, path: Path, line: int, message: str) -> None:
        """`line` 0: the message is about the whole file or folder."""
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path, self.line, self.message = path, line, message
