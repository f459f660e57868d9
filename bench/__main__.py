"""``python -m bench [WORKLOAD] [options]``: the benchmark suite (see BENCHMARKS.md).

Without a workload every workload runs for every direction (``make bench``; about an hour
on a 2-core machine). Each command prints a Markdown table of medians; set BENCH_RESULTS to
a file to also collect the figures as JSON lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial

from bench import refs, workloads
from bench.env import DIRECTIONS
from bench.stats import Table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="workload")

    def add(name: str, help_text: str, direction: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        if direction:
            p.add_argument("--direction", choices=DIRECTIONS, default="pg-mysql")
        p.add_argument("--runs", type=int, default=3)
        return p

    add("catchup", "catch-up of a backlog").add_argument("--rows", type=int, default=100_000)
    p = add("steady", "a steady source of N-row transactions")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--rows", type=int, default=100_000)
    p = add("latency", "commit-to-commit latency at a fixed rate")
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--duration", type=float, default=15)
    add("bigtxn", "one huge source transaction").add_argument("--rows", type=int,
                                                              default=1_000_000)
    add("idle", "CPU when idle").add_argument("--seconds", type=float, default=30)
    add("apply", "raw apply limits of psycopg and PyMySQL", direction=False).add_argument(
        "--rows", type=int, default=20_000)
    add("read", "reading speed: our readers vs pg_recvlogical / mysql-replication",
        direction=False).add_argument("--rows", type=int, default=100_000)
    return parser


def _all(runs: int) -> list[Callable[[], Table]]:
    jobs: list[Callable[[], Table]] = [partial(refs.apply_limits, 20_000, runs),
                                       partial(refs.read_speed, 100_000, runs)]
    for d in DIRECTIONS:
        jobs += [
            partial(workloads.catchup, d, 100_000, runs),
            partial(workloads.steady, d, 100_000, 500, 15, runs),
            partial(workloads.steady, d, 100_000, 1, 15, runs),
            partial(workloads.latency, d, 20, 15, runs),
            partial(workloads.latency, d, 1000, 10, runs),
            partial(workloads.bigtxn, d, 1_000_000, 1),
            partial(workloads.idle, d, 30, runs),
        ]
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    w = args.workload
    if w is None:
        for job in _all(3):
            job().emit()
        return 0
    jobs: dict[str, Callable[[], Table]] = {
        "catchup": lambda: workloads.catchup(args.direction, args.rows, args.runs),
        "steady": lambda: workloads.steady(args.direction, args.rows, args.batch,
                                           args.duration, args.runs),
        "latency": lambda: workloads.latency(args.direction, args.rate, args.duration,
                                             args.runs),
        "bigtxn": lambda: workloads.bigtxn(args.direction, args.rows, args.runs),
        "idle": lambda: workloads.idle(args.direction, args.seconds, args.runs),
        "apply": lambda: refs.apply_limits(args.rows, args.runs),
        "read": lambda: refs.read_speed(args.rows, args.runs),
    }
    jobs[w]().emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
