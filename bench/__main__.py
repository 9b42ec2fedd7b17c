"""Run every benchmark module and write one Markdown table per module to bench/results.md."""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import ROUNDS

MODULES = ["bench.bench_engine", "bench.bench_cli", "bench.bench_auth", "bench.bench_stub", "bench.bench_http", "bench.bench_data_api",
           "bench.bench_wire", "bench.bench_websocket", "bench.bench_capacity", "bench.bench_pytest", "bench.bench_limits",
           "bench.bench_codegen", "bench.bench_tenancy", "bench.bench_image"]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    only = sys.argv[1:]
    started = time.perf_counter()
    sections = [f"# neon-local benchmarks\n\nMachine: {machine()}  \nRun: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                f"Figures read `median (min-max)` over {ROUNDS} rounds unless a table says otherwise; a ratio is the median "
                "of the per-round ratios (each round measures the baseline beside the figure), with their range.\n"]
    for name in MODULES:
        if only and not any(o in name for o in only):
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        result = module.run()  # one table's rows, or {subtitle: rows} for several tables
        tables = result.items() if isinstance(result, dict) else [("", result)]
        title = (module.__doc__ or name).strip().splitlines()[0]
        body = "\n\n".join((f"### {subtitle}\n\n" if subtitle else "") + table(rows) for subtitle, rows in tables)
        elapsed = time.perf_counter() - began
        print(f"  {name}: {elapsed:.0f} s", file=sys.stderr, flush=True)
        sections.append(f"## {title}\n\n{body}\n\n_{elapsed:.0f} s_\n")
    sections.append(f"_Whole run: {(time.perf_counter() - started) / 60:.1f} min_\n")
    out = Path(__file__).parent / "results.md"
    out.write_text("\n".join(sections))
    print(out.read_text())


if __name__ == "__main__":
    main()
