"""The session's cost in one line: emulator start-up, template build (once), databases cloned, tests rolled back.

Under xdist each worker sends its line and its numbers to the controller, which prints one line per
worker and one total line (median and p95 over every worker's clones and rollbacks).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pytest

WORKER_OUTPUT_KEY = "neon_local"


def _cost(count: int, what: str, seconds: list[float], verb: str) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[max(0, round(len(ms) * 0.95) - 1)]
    digits = 0 if ms[len(ms) // 2] >= 10 else 1
    return f"{count} {what}, {statistics.median(ms):.{digits}f} ms median, {p95:.{digits}f} ms p95 to {verb}"


@dataclass
class Report:
    emulator: str = ""
    started: int = 0  # emulators this process started (0 when reused)
    templates: list[str] = field(default_factory=list)
    clone_seconds: list[float] = field(default_factory=list)
    rollback_seconds: list[float] = field(default_factory=list)
    workers: dict[str, dict] = field(default_factory=dict)  # controller only: worker id -> its output

    def line(self) -> str:
        if not self.emulator:
            return ""
        parts = [self.emulator, *self.templates]
        if self.clone_seconds:
            parts.append(_cost(len(self.clone_seconds), "test database(s)", self.clone_seconds, "clone"))
        if self.rollback_seconds:
            parts.append(_cost(len(self.rollback_seconds), "rolled-back test(s)", self.rollback_seconds,
                               "begin and roll back"))
        return "neon-local: " + "; ".join(parts)

    def output(self) -> dict:
        return {"line": self.line(), "started": self.started, "templates": len(self.templates),
                "clone_seconds": self.clone_seconds, "rollback_seconds": self.rollback_seconds}

    def total(self) -> str:
        """All workers together: emulators started, templates built, databases cloned, costs."""
        outputs = list(self.workers.values())
        clones = [s for out in outputs for s in out["clone_seconds"]]
        rollbacks = [s for out in outputs for s in out["rollback_seconds"]]
        parts = [f"{sum(out['started'] for out in outputs)} emulator(s) started",
                 f"{sum(out['templates'] for out in outputs)} template(s) built"]
        if clones:
            parts.append(_cost(len(clones), "database(s) cloned", clones, "clone"))
        if rollbacks:
            parts.append(_cost(len(rollbacks), "rolled-back test(s)", rollbacks, "begin and roll back"))
        return f"neon-local total over {len(outputs)} worker(s): " + "; ".join(parts)


_KEY = pytest.StashKey[Report]()


def of(config: pytest.Config) -> Report:
    return config.stash.setdefault(_KEY, Report())


def session_finished(config: pytest.Config) -> None:
    """On an xdist worker, hand the line and the numbers to the controller, which prints the summary."""
    if hasattr(config, "workeroutput"):
        config.workeroutput[WORKER_OUTPUT_KEY] = of(config).output()


def worker_finished(config: pytest.Config, worker_id: str, output: dict) -> None:
    if output.get(WORKER_OUTPUT_KEY, {}).get("line"):
        of(config).workers[worker_id] = output[WORKER_OUTPUT_KEY]


def summary(config: pytest.Config, terminal: pytest.TerminalReporter) -> None:
    report = of(config)
    lines = [report.line()] + [f"[{worker}] {out['line']}" for worker, out in sorted(report.workers.items())]
    if report.workers:
        lines.append(report.total())
    for line in filter(None, lines):
        terminal.write_line(line)
