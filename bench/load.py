"""Source load generators: backlogs, steady streams and paced single-row updates."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

from bench.env import MySide, PgSide, Side

BATCH = 500


def backlog(src: Side, rows: int, run: int, batch: int = BATCH) -> None:
    """Full-row updates of rows 1..rows to version ``run``, ``batch`` rows per transaction."""
    sql = src.full_update_sql()
    for lo in range(1, rows + 1, batch):
        src.execute(sql, {"r": run, "lo": lo, "hi": min(rows, lo + batch - 1)})


def steady(src: Side, rows: int, duration: float, batch: int,
           first_seq: int) -> tuple[int, int, int, float]:
    """Write ``batch``-row transactions for ``duration`` s as fast as the source takes them.

    Each transaction gets its own version number (seq), starting at ``first_seq``. Returns
    (rows written, last seq, last key written, wall time of the last commit).
    """
    sql = src.full_update_sql()
    end = time.monotonic() + duration
    seq, lo, written = first_seq, 1, 0
    hi = lo
    while time.monotonic() < end:
        hi = min(rows, lo + batch - 1)
        src.execute(sql, {"r": seq, "lo": lo, "hi": hi})
        written += hi - lo + 1
        seq += 1
        lo = hi + 1 if hi < rows else 1
    return written, seq - 1, hi, time.time()


def paced(src: Side, rate: float, duration: float, keys: int, first_seq: int,
          threads: int = 1) -> list[tuple[int, float]]:
    """Single-row updates at ``rate``/s for ``duration`` s; (seq, time its commit returned)."""
    total = int(rate * duration)
    start = time.monotonic() + 0.2
    out: list[tuple[int, float]] = []
    lock = threading.Lock()

    def work(part: int) -> None:
        conn = _connection(src)
        sql = src.full_update_sql()
        mine: list[tuple[int, float]] = []
        try:
            for i in range(part, total, threads):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                key = random.randint(1, keys)
                _run(conn, sql, {"r": first_seq + i, "lo": key, "hi": key})
                mine.append((first_seq + i, time.time()))
        finally:
            conn.close()
        with lock:
            out.extend(mine)

    workers = [threading.Thread(target=work, args=(p,)) for p in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sorted(out)


def _connection(src: Side) -> Any:
    assert isinstance(src, PgSide | MySide)
    return src.connect()


def _run(conn: Any, sql: str, args: dict[str, int]) -> None:
    if isinstance(conn, psycopg.Connection):
        conn.execute(sql, args)
        return
    with conn.cursor() as cur:
        cur.execute(sql, args)
