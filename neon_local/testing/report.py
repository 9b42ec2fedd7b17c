"""The session's cost in one line: emulator start-up, template build (once), databases cloned; one line per xdist worker."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pytest

WORKER_OUTPUT_KEY = "neon_local"


@dataclass
class Report:
    emulator: str = ""
    templates: list[str] = field(default_factory=list)
    clone_seconds: list[float] = field(default_factory=list)
    workers: dict[str, str] = field(default_factory=dict)  # controller only: worker id -> its line

    def line(self) -> str:
        if not self.emulator:
            return ""
        parts = [self.emulator, *self.templates]
        if self.clone_seconds:
            median = statistics.median(self.clone_seconds) * 1000
            parts.append(f"{len(self.clone_seconds)} test database(s), {median:.0f} ms median to clone")
        return "neon-local: " + "; ".join(parts)


_KEY = pytest.StashKey[Report]()


def of(config: pytest.Config) -> Report:
    return config.stash.setdefault(_KEY, Report())


def session_finished(config: pytest.Config) -> None:
    """On an xdist worker, hand the line to the controller, which prints the summary."""
    if hasattr(config, "workeroutput"):
        config.workeroutput[WORKER_OUTPUT_KEY] = of(config).line()


def worker_finished(config: pytest.Config, worker_id: str, output: dict) -> None:
    if output.get(WORKER_OUTPUT_KEY):
        of(config).workers[worker_id] = output[WORKER_OUTPUT_KEY]


def summary(config: pytest.Config, terminal) -> None:
    report = of(config)
    lines = [report.line()] + [f"[{worker}] {line}" for worker, line in sorted(report.workers.items())]
    for line in filter(None, lines):
        terminal.write_line(line)
