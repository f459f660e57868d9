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


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time used so far by process ``pid`` and all its descendants (a server: postmaster
    and every backend, walsender and worker, each in a session of its own; mariadbd), and
    the part of it used by PostgreSQL walsenders.

    A process that has exited counts once its parent has reaped it (the parent's children
    times); one that exits unreaped between two readings is missed.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(f) for f in fields[11:15])
    total = walsenders = 0
    for proc, used in ticks.items():
        walk = proc
        while walk > 1 and walk != pid:
            walk = parents.get(walk, 0)
        if walk != pid:
            continue
        total += used
        if _is_walsender(proc):
            walsenders += used
    return total / CLOCK_TICKS, walsenders / CLOCK_TICKS


def _is_walsender(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres: walsender")
    except OSError:
        return False


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
