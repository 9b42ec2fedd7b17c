"""`codegen --emit-allowlist`: the generated statements approved in the query allow-list, so what the app ships
and what the database accepts come from the same SQL files. The entries go through the allow-list's own
store (neon_local.limits), fingerprinted by the text the generated functions send."""

from __future__ import annotations

from pathlib import Path

from neon_local.codegen.describe import Described
from neon_local.codegen.errors import CodegenError


def approve(path: Path, described: list[Described], roles: tuple[str, ...]) -> list[str]:
    """Add each statement to the allow-list at `path` for `roles`; the fingerprints, in statement order."""
    from neon_local.limits.fingerprint import Fingerprinter, StatementError
    from neon_local.limits.store import Entry, read_list, write_list

    content = read_list(path)
    fingerprinter = Fingerprinter()
    fingerprints = []
    for d in described:
        statement = d.statement
        try:
            (parsed,) = fingerprinter.statements(statement.sql)
        except (StatementError, ValueError) as exc:
            raise CodegenError(statement.path, statement.line, f"{statement.name}: the allow-list cannot read it: {exc}") from None
        entry = content.statements.get(parsed.fingerprint) or Entry(parsed.normalized())
        entry.roles = sorted(set(entry.roles) | set(roles))
        entry.note = entry.note or f"neon-local codegen: {statement.name} ({statement.path.name}:{statement.line})"
        content.statements[parsed.fingerprint] = entry
        content.refused.pop(parsed.fingerprint, None)
        fingerprints.append(parsed.fingerprint)
    write_list(path, content)
    return fingerprints
