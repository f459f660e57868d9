"""Medians, percentiles, process figures and the printed result tables."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.005,
         what: str = "condition") -> float:
    """Wait until ``predicate()`` is truthy; the wall-clock time (time.time()) it became so."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process ``pid`` (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Table:
    """Named figures collected over runs; printed as medians (and each run)."""

    title: str
    command: str
    rows: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, value: float, unit: str = "") -> None:
        self.rows.setdefault(label, []).append(value)
        self.units[label] = unit
        print(f"  {label}: {value:,.2f} {unit}", file=sys.stderr, flush=True)

    def median(self, label: str) -> float:
        return statistics.median(self.rows[label])

    def render(self) -> str:
        lines = [f"### {self.title}", "", f"`{self.command}`", "",
                 "| figure | median | runs |", "|---|---:|---|"]
        for label, values in self.rows.items():
            unit = self.units.get(label, "")
            runs = ", ".join(_fmt(v) for v in values)
            lines.append(f"| {label} | {_fmt(statistics.median(values))} {unit} | {runs} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def emit(self) -> None:
        print(self.render(), flush=True)
        out = os.environ.get("BENCH_RESULTS")
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps({"title": self.title, "command": self.command,
                                     "rows": self.rows, "units": self.units,
                                     "notes": self.notes}) + "\n")


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"
