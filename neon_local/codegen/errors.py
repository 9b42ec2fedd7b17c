"""The one error codegen raises: it names the file and line a person has to fix."""

from __future__ import annotations

from pathlib import Path


class CodegenError(Exception):
    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message
