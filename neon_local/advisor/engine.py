"""Run the lints on one database: `check(conn, roles=..., users=...)` gives the findings, most severe first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from neon_local.advisor.lints import ERROR, INFO, LINTS, WARN, Lint

__all__ = ["Finding", "assert_no_lints", "check", "exit_code", "format_text"]

_ORDER = {ERROR: 0, WARN: 1, INFO: 2}
# Claims every token has whatever the test user: a policy reading them is not reading an unknown claim.
_STANDARD_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "role")


@dataclass(frozen=True)
class Finding:
    name: str
    level: str
    title: str
    object: str
    detail: str
    why: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _run(conn: psycopg.Connection, lint: Lint, params: dict) -> list[Finding]:
    rows = conn.cursor(row_factory=dict_row).execute(lint.query, params).fetchall()
    if lint.refine:
        rows = [r for r in map(lint.refine, rows) if r is not None]
    return [Finding(lint.name, lint.level, lint.title, r["object"], r["detail"], lint.why, r["fix"]) for r in rows]


def check(conn: psycopg.Connection, *, roles: Iterable[str], users: Mapping[str, Mapping[str, Any]],
          only: Iterable[str] | None = None) -> list[Finding]:
    """Every lint's findings on the connected database. `roles`: the JWT roles; `users`: the test users'
    claims (neon_local.toml's [users.NAME]). Read-only: runs in a transaction that is rolled back."""
    claims = sorted({name for user in users.values() for name in user} | set(_STANDARD_CLAIMS))
    params = {"roles": list(roles), "claims": claims}
    wanted = set(only) if only is not None else None
    findings: list[Finding] = []
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION READ ONLY")
        for lint in LINTS:
            if wanted is None or lint.name in wanted:
                findings += _run(conn, lint, params)
    return sorted(findings, key=lambda f: _ORDER[f.level])


def assert_no_lints(conn: psycopg.Connection[Any], *, roles: Iterable[str], users: Mapping[str, Mapping[str, Any]],
                    ignore: Iterable[str] = ()) -> None:
    """For tests (the pytest plugin's `neon_db.assert_no_lints()`): fail listing every finding, fix SQL included,
    except the lints named in `ignore`."""
    __tracebackhide__ = True
    skipped = set(ignore)
    findings = [f for f in check(conn, roles=roles, users=users) if f.name not in skipped]
    if findings:
        raise AssertionError("the advisor found problems:\n" + format_text(findings))


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when an error-level lint fired (for CI), else 0."""
    return 1 if any(f.level == ERROR for f in findings) else 0


def format_text(findings: list[Finding]) -> str:
    if not findings:
        return "No lints: the advisor found nothing to fix."
    lines = []
    for f in findings:
        lines += [f"{f.level:5}  {f.name}  {f.object}", f"       {f.detail}", f"       why: {f.why}",
                  *(f"       fix: {line}" if i == 0 else f"            {line}" for i, line in enumerate(f.fix.splitlines())), ""]
    counts = {level: sum(f.level == level for f in findings) for level in (ERROR, WARN, INFO)}
    lines.append(", ".join(f"{n} {level.lower()}" for level, n in counts.items() if n))
    return "\n".join(lines)
