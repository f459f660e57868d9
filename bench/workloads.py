"""The agent's workloads, each run side by side with its reference in the same command.

Every function starts its own servers and databases, runs ``runs`` rounds and prints a
table of medians (see :class:`bench.stats.Table`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from bench import load
from bench.env import (
    AgentRun,
    PgSide,
    Servers,
    Side,
    add_latency_audit,
    audit_times,
    create_source,
    create_target,
    pair,
    servers,
    workdir,
)
from bench.native import Native
from bench.stats import Table, cpu_seconds, percentile, poll, tree_cpu_seconds
from tests.e2e.agentproc import AgentProcess


@dataclass
class Rig:
    """Source, agent target and (PG->PG only) the native reference's target."""

    src: Side
    dst: Side
    agent: AgentRun
    native: Native | None
    native_dst: PgSide | None


def rig(found: Servers, direction: str, rows: int, prefix: str, *,
        audit: bool = False) -> Rig:
    src, dst = pair(found, direction, prefix)
    create_source(src, rows)
    create_target(dst, rows)
    if audit:
        add_latency_audit(dst)
    agent = AgentRun(workdir(), src, dst)
    agent.write()
    agent.cli("setup")
    _prime(src, dst, agent)
    native: Native | None = None
    native_dst: PgSide | None = None
    if direction == "pg-pg":
        assert isinstance(src, PgSide)
        side = found.side("pg", 1, prefix + "_native")
        assert isinstance(side, PgSide)
        native_dst = side
        create_target(native_dst, rows, linked=False)
        if audit:
            add_latency_audit(native_dst, replica=True)
        native = Native(src, native_dst)
    return Rig(src, dst, agent, native, native_dst)


def _prime(src: Side, dst: Side, agent: AgentRun) -> None:
    """Run the agent once through one change, so a checkpoint exists before any backlog.

    A MySQL source has no slot: an agent without a checkpoint starts at the end of the binlog
    and would skip a backlog written before its first run.
    """
    proc = agent.start()
    try:
        src.execute(src.full_update_sql(), {"r": -1, "lo": 1, "hi": 1})
        poll(partial(_has_seq, dst, 1, "src_id", -1), 60, what="priming change applied")
    finally:
        proc.stop(60)


@contextlib.contextmanager
def running_agent(r: Rig, table: Table, label: str) -> Iterator[AgentProcess]:
    proc = r.agent.start()
    try:
        yield proc
    finally:
        table.add(f"{label} peak RSS (VmHWM)", proc.peak_rss_mb(), "MiB")
        code = proc.stop(60)
        if code != 0:
            raise RuntimeError(f"agent exited {code}:\n{proc.log()[-3000:]}")


@contextlib.contextmanager
def running_native(r: Rig) -> Iterator[None]:
    assert r.native is not None
    r.native.enable()
    r.native.streaming()
    try:
        yield
    finally:
        r.native.disable()


def _has_seq(dst: Side, key: int, key_column: str, seq: int) -> bool:
    return dst.seq_of(key, key_column) == seq


def _all_applied(dst: Side, wanted: set[int]) -> bool:
    return wanted <= audit_times(dst).keys()


def _server_pids(*sides: Side) -> list[int]:
    """The (top) processes of the servers behind ``sides``, each once."""
    return sorted({pid for side in sides if (pid := side.server.pid) is not None})


@dataclass
class _Cpu:
    """CPU seconds used so far: the agent, the servers, the servers' walsenders."""

    agent: float
    servers: float
    walsenders: float

    @classmethod
    def now(cls, pid: int | None, server_pids: Sequence[int]) -> _Cpu:
        trees = [tree_cpu_seconds(s) for s in server_pids]
        return cls(cpu_seconds(pid) if pid is not None else 0.0,
                   sum(t[0] for t in trees), sum(t[1] for t in trees))

    def per_row(self, before: _Cpu, rows: int) -> _Cpu:
        """The CPU used since ``before``, in microseconds per row."""
        scale = 1e6 / rows
        return _Cpu((self.agent - before.agent) * scale, (self.servers - before.servers) * scale,
                    (self.walsenders - before.walsenders) * scale)


def _apply_rate(dst: Side, key_column: str, rows: int, run: int, timeout: float,
                pid: int | None = None,
                server_pids: Sequence[int] = ()) -> tuple[float, _Cpu]:
    """Rows/s applied, from the first visible commit of version ``run`` to the last row,
    and the CPU used per row meanwhile (us) by process ``pid`` and by the servers (the
    process trees ``server_pids``: every backend, walsender and worker).

    The rows already visible at the first sighting are not counted (nor their time). CPU
    per row is what the work costs: unlike rows/s it hardly moves when other processes load
    the machine. The servers' figure includes the bench's own polling (a few queries).
    """
    t_first = poll(lambda: dst.seq_of(1, key_column) == run, timeout, what="first change")
    first = _Cpu.now(pid, server_pids)
    seen = dst.count_seq(run)
    t_last = poll(lambda: dst.seq_of(rows, key_column) == run, timeout, what="last change")
    applied = max(rows - seen, 1)
    cpu = _Cpu.now(pid, server_pids).per_row(first, applied)
    return applied / max(t_last - t_first, 1e-6), cpu


def _slots_confirmed(dst: Side, timeout: float = 90) -> None:
    """Wait until the agent's slots on a PostgreSQL target confirm what was written so far.

    The reverse direction reads back (and drops) every row the agent wrote to the target;
    its slot moves on with the next heartbeat (every 10 s), as in any run longer than a
    few seconds. An agent stopped before that would make the next run's walsender decode
    this run's writes again at its start, inflating every run after the first.
    """
    if not isinstance(dst, PgSide):
        return
    end = dst.scalar("SELECT pg_current_wal_lsn()::text")
    poll(lambda: dst.scalar(
        "SELECT coalesce(bool_and(confirmed_flush_lsn >= %s::pg_lsn), true)"
        " FROM pg_replication_slots"
        " WHERE database = current_database()", (end,)),
        timeout, interval=0.2, what="the agent's slots on the target to confirm its writes")


def catchup(direction: str, rows: int, runs: int) -> Table:
    """Catch-up of a ``rows``-change backlog (500-row source transactions)."""
    table = Table(f"Catch-up of a {rows:,}-change backlog, {direction}",
                  f"python -m bench catchup --direction {direction} --rows {rows} --runs {runs}")
    with servers() as found:
        r = rig(found, direction, rows, "cu")
        for run in range(1, runs + 1):
            load.backlog(r.src, rows, run)
            if r.native is not None and r.native_dst is not None:
                with running_native(r):
                    native, used = _apply_rate(r.native_dst, "id", rows, run, 300,
                                               server_pids=_server_pids(r.src, r.native_dst))
                table.add("native logical replication", native, "rows/s")
                table.add("native: servers' CPU per row", used.servers, "us")
                table.add("native: of which walsender", used.walsenders, "us")
            proc = r.agent.start()
            try:
                agent, used = _apply_rate(r.dst, "src_id", rows, run, 600, proc.pid,
                                          _server_pids(r.src, r.dst))
                table.add("cdc-agent", agent, "rows/s")
                table.add("cdc-agent CPU per row (user + system)", used.agent, "us")
                table.add("cdc-agent: servers' CPU per row", used.servers, "us")
                table.add("cdc-agent: agent + servers' CPU per row", used.agent + used.servers,
                          "us")
                if "postgresql" in (r.src.engine, r.dst.engine):
                    table.add("cdc-agent: of which PostgreSQL walsenders", used.walsenders, "us")
                table.add("cdc-agent peak RSS (VmHWM)", proc.peak_rss_mb(), "MiB")
                _slots_confirmed(r.dst)
            finally:
                proc.stop(60)
            if r.native is not None:
                table.add("ratio agent / native", agent / native, "x")
    table.notes.append("servers' CPU = every process of both servers (backends, walsenders, "
                       "WAL writer, ...; MariaDB: mariadbd) over the same window; the agent's "
                       "walsenders include the reverse direction's, which decodes and sends "
                       "back every row the agent writes (PostgreSQL 15 cannot filter by origin); "
                       "after each run the agent runs on until its slots on the target have "
                       "moved past its writes (the next heartbeat), as they do in a long run")
    table.notes.append("rate = rows applied after the first visible target commit / time from "
                       "that commit to the last row visible (polled every 5 ms)")
    return table


def steady(direction: str, rows: int, batch: int, duration: float, runs: int) -> Table:
    """A source writing ``batch``-row transactions as fast as it can for ``duration`` s."""
    kind = "single-row" if batch == 1 else f"{batch}-row"
    table = Table(f"Steady {kind} source transactions for {duration:g}s, {direction}",
                  f"python -m bench steady --direction {direction} --batch {batch}"
                  f" --duration {duration:g} --runs {runs}")
    seq = 1
    with servers() as found:
        r = rig(found, direction, rows, "st")
        for _ in range(runs):
            consumers: list[tuple[str, Side, str]] = [("cdc-agent", r.dst, "src_id")]
            if r.native is not None and r.native_dst is not None:
                consumers.insert(0, ("native logical replication", r.native_dst, "id"))
            for label, dst, key_col in consumers:
                ctx = running_native(r) if label.startswith("native") else running_agent(
                    r, table, label)
                with ctx:
                    written, last, key, t_end = load.steady(r.src, rows, duration, batch, seq)
                    seq = last + 1
                    t_seen = poll(partial(_has_seq, dst, key, key_col, last), 300,
                                  what="last change applied")
                    table.add(f"{label}: source rows/s", written / duration, "rows/s")
                    table.add(f"{label}: lag after the last commit", (t_seen - t_end) * 1000,
                              "ms")
    table.notes.append("the source writes as fast as it can; lag = last source commit returned"
                       " -> its row visible on the target (polled every 5 ms)")
    return table


def latency(direction: str, rate: float, duration: float, runs: int) -> Table:
    """Commit on the source -> commit on the target at ``rate`` single-row changes/s."""
    table = Table(f"Latency at {rate:g} changes/s, {direction}",
                  f"python -m bench latency --direction {direction} --rate {rate:g}"
                  f" --duration {duration:g} --runs {runs}")
    threads = 1 if rate <= 200 else 4
    seq = 1
    keys = 1000
    with servers() as found:
        r = rig(found, direction, keys, "lat", audit=True)
        for _ in range(runs):
            consumers: list[tuple[str, Side]] = [("cdc-agent", r.dst)]
            if r.native is not None and r.native_dst is not None:
                consumers.insert(0, ("native logical replication", r.native_dst))
            for label, dst in consumers:
                ctx = running_native(r) if label.startswith("native") else running_agent(
                    r, table, label)
                with ctx:
                    time.sleep(1.0)  # let the consumer settle after connecting
                    sent = load.paced(r.src, rate, duration, keys, seq, threads)
                    seq = sent[-1][0] + 1
                    wanted = {s for s, _ in sent}
                    poll(partial(_all_applied, dst, wanted), 120, 0.1, "all changes applied")
                    applied = audit_times(dst)
                lat = [(applied[s] - t) * 1000 for s, t in sent]
                span = sent[-1][1] - sent[0][1]
                table.add(f"{label}: p50", percentile(lat, 50), "ms")
                table.add(f"{label}: p99", percentile(lat, 99), "ms")
                table.add(f"{label}: achieved source rate", len(sent) / max(span, 1e-6), "/s")
    table.notes.append("source time = when the source COMMIT returned to the writer; target "
                       "time = clock_timestamp() / SYSDATE(6) in an audit trigger on the target "
                       "row, just before the target COMMIT (the target's fsync is not counted)")
    return table


def bigtxn(direction: str, rows: int, runs: int) -> Table:
    """One ``rows``-row INSERT transaction on the source: time to apply and peak RSS."""
    table = Table(f"One {rows:,}-row transaction, {direction}",
                  f"python -m bench bigtxn --direction {direction} --rows {rows} --runs {runs}")
    with servers() as found:
        r = rig(found, direction, 10, "big")
        base = 10
        for _ in range(runs):
            with running_agent(r, table, "cdc-agent"):
                lo, hi = base + 1, base + rows
                started = time.time()
                if isinstance(r.src, PgSide):
                    r.src.execute("INSERT INTO customers (id, name, email, phone, street, city,"
                                  " country, balance, seq) SELECT g, 'Customer ' || g,"
                                  " 'c' || g || '@example.org', '+49 ' || g, 'Street ' || g,"
                                  " 'City ' || mod(g, 97), 'DE', mod(g, 10000), 1"
                                  " FROM generate_series(%s::int, %s::int) g", (lo, hi))
                else:
                    r.src.execute("INSERT INTO customers (id, name, email, phone, street, city,"
                                  " country, balance, seq) SELECT seq, CONCAT('Customer ', seq),"
                                  " CONCAT('c', seq, '@example.org'), CONCAT('+49 ', seq),"
                                  " CONCAT('Street ', seq), CONCAT('City ', MOD(seq, 97)), 'DE',"
                                  f" MOD(seq, 10000), 1 FROM seq_{lo}_to_{hi}")
                committed = time.time()
                done = poll(partial(_has_seq, r.dst, hi, "src_id", 1), 1800, 0.2,
                            "big transaction applied")
                table.add("source INSERT", committed - started, "s")
                table.add("applied after the source commit", done - committed, "s")
                table.add("agent rows/s", rows / max(done - committed, 1e-6), "rows/s")
            base = hi
    return table


IDLE_WARMUP = 15.0
"""Seconds an idle agent runs before its CPU is measured: past start-up and the first
heartbeat round (each heartbeat connection is made once; on MySQL its TLS set-up costs
about 25 ms of CPU, a third of a 30 s window's budget)."""


def idle(direction: str, seconds: float, runs: int) -> Table:
    """CPU used by a caught-up agent with nothing to replicate (default heartbeat interval)."""
    table = Table(f"Idle CPU, {direction}",
                  f"python -m bench idle --direction {direction} --seconds {seconds:g}"
                  f" --runs {runs}")
    with servers() as found:
        r = rig(found, direction, 10, "idle")
        for _ in range(runs):
            with running_agent(r, table, "cdc-agent") as proc:
                time.sleep(IDLE_WARMUP)  # measuring from here on: the steady state
                before, t0 = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(seconds)
                used = cpu_seconds(proc.pid) - before
                table.add("agent CPU", used / (time.monotonic() - t0) * 100, "% of one core")
    return table
