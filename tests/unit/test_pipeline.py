"""Pipeline batching, loop filter and checkpoint order, with in-memory Source/Sink fakes.

The fakes implement the protocols only (a list of transactions, a list of calls); database
behaviour is tested against real servers in tests/integration and tests/e2e.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from agent.apply import Applier, Exchange
from agent.errors import TransientError
from agent.events import Op, RowChange, TableId, Transaction
from agent.pipeline import Pipeline, Settings
from agent.ports import Write
from agent.routes import FieldRoute, LinkKind, Route, build_route_table
from agent.rules import Judge
from tests.polling import wait_until

SRC = TableId("public", "accounts")
DST = TableId("erp", "customers")
HEARTBEATS = TableId("cdc_agent", "heartbeats")
TS = datetime(2026, 1, 1, tzinfo=UTC)


class ListSource:
    def __init__(self, items: list[Transaction]) -> None:
        self.items = list(items)
        self.opened_after: str | None = "unset"
        self.confirmed: list[str] = []
        self.lock = threading.Lock()

    def open(self, after: str | None) -> None:
        self.opened_after = after

    def poll(self, timeout: float) -> Transaction | None:
        with self.lock:
            return self.items.pop(0) if self.items else None

    def confirm(self, position: str) -> None:
        self.confirmed.append(position)

    def close(self) -> None:
        pass


class CallSink:
    def __init__(self, checkpoint: str | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.checkpoint = checkpoint

    def open(self) -> None:
        pass

    def read_checkpoint(self, direction: str) -> str | None:
        return self.checkpoint

    def begin(self, direction: str) -> None:
        self.calls.append(("begin", direction))

    def write(self, writes: Sequence[Write]) -> None:
        self.calls.append(("write", [w.key for w in writes]))

    def generated_keys(self) -> Mapping[int, object]:
        return {}

    def commit(self, direction: str, position: str, source_commit_ts: datetime) -> None:
        self.calls.append(("commit", position))
        self.checkpoint = position

    def rollback(self) -> None:
        self.calls.append(("rollback", None))

    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        return {}

    def close(self) -> None:
        pass


def applier(route: Route) -> Applier:
    return Applier("crm_to_erp", build_route_table("crm_to_erp", [route]), Judge(), Exchange(),
                   "cdc_agent")


def change(key: int) -> RowChange:
    return RowChange(SRC, Op.INSERT, new={"id": key, "name": f"n{key}"})


def txn(pos: int, *keys: int, origin: str | None = None, final: bool = True) -> Transaction:
    return Transaction(f"0/{pos:X}", TS, tuple(change(k) for k in keys), origin=origin, final=final)


def run_pipeline(items: list[Transaction], sink: CallSink, **settings: Any) -> ListSource:
    route = Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
                  "crm_id", (FieldRoute("name", "name", "name", "crm"),),
                  source="crm", target="erp")
    source = ListSource(items)
    pipeline = Pipeline("crm_to_erp", lambda: source, lambda: sink,
                        applier(route), own_origins=frozenset({"mine"}),
                        heartbeat_table=HEARTBEATS, settings=Settings(**settings))
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: (not source.items and sink.checkpoint == items[-1].position)
                   or bool(source.confirmed and source.confirmed[-1] == items[-1].position),
                   timeout=5, message="pipeline did not reach the last position")
    finally:
        stop.set()
        thread.join(5)
    return source


def test_checkpoint_commits_after_writes_and_before_confirm() -> None:
    sink = CallSink()
    source = run_pipeline([txn(16, 1)], sink)
    assert sink.calls[:3] == [("begin", "crm_to_erp"), ("write", [{"crm_id": 1}]),
                              ("commit", "0/10")]
    assert source.confirmed[0] == "0/10"


def test_resumes_after_stored_checkpoint() -> None:
    sink = CallSink(checkpoint="0/5")
    source = run_pipeline([txn(16, 1)], sink)
    assert source.opened_after == "0/5"


def test_many_small_transactions_share_a_target_transaction() -> None:
    sink = CallSink()
    run_pipeline([txn(i, i) for i in range(1, 201)], sink, max_rows=1000, max_delay=0.5)
    commits = [c for c in sink.calls if c[0] == "commit"]
    assert len(commits) < 50
    assert commits[-1] == ("commit", "0/C8")


def test_own_transactions_are_dropped_and_stored_with_the_next_foreign_position() -> None:
    sink = CallSink()
    items = [txn(16, 1, origin="mine"), Transaction("0/20", TS, ())]
    source = run_pipeline(items, sink, advance_interval=0.0)
    assert not [c for c in sink.calls if c[0] == "write"]
    assert sink.calls[-1] == ("commit", "0/20")
    assert source.confirmed == ["0/20"]  # confirmed only once stored


def test_own_transactions_alone_are_never_stored_so_directions_cannot_ping_pong() -> None:
    sink = CallSink()
    route = Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
                  "crm_id", (FieldRoute("name", "name", "name", "crm"),),
                  source="crm", target="erp")
    source = ListSource([txn(16, 1, origin="mine")])
    pipeline = Pipeline("crm_to_erp", lambda: source, lambda: sink,
                        applier(route), own_origins=frozenset({"mine"}),
                        heartbeat_table=HEARTBEATS, settings=Settings(advance_interval=0.0))
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    wait_until(lambda: not source.items, timeout=5)
    stop.set()
    thread.join(5)
    assert sink.calls == [] and source.confirmed == []


def test_large_transaction_gets_its_own_target_transaction() -> None:
    sink = CallSink()
    items = [txn(1, 1), txn(2, 2, 3, final=False), txn(2, 4, final=True)]
    run_pipeline(items, sink, max_rows=1000, max_delay=0.5)
    kinds = [c[0] for c in sink.calls]
    first_commit = kinds.index("commit")
    assert sink.calls[first_commit] == ("commit", "0/1")
    assert sink.calls[-1] == ("commit", "0/2")


class _RowSink(CallSink):
    """A target holding one row (its fetch answers from it)."""

    def __init__(self, row: dict[str, object]) -> None:
        super().__init__()
        self.row = row

    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        return {k: dict(self.row) for k in keys}


def test_a_chain_of_corrections_of_one_row_applies_in_order() -> None:
    """Each correction expects what the one before it writes: all apply, the last wins."""
    from agent.conflicts import Remedy

    a = applier(Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
                      "crm_id", (FieldRoute("phone", "phone", "phone", "both"),)))
    sink = _RowSink({"phone": "c1"})
    chain = [Remedy(SRC, ("id", 7), {"phone": new}, {"phone": old}, "customer", "conflict")
             for old, new in (("c1", "e1"), ("e1", "e2"), ("e2", "e3"))]
    stale = Remedy(SRC, ("id", 7), {"phone": "x"}, {"phone": "c1"}, "customer", "conflict")
    writes = a.remedy_writes(sink, [*chain, stale])
    assert [w.values for w in writes] == [{"phone": "e1"}, {"phone": "e2"}, {"phone": "e3"}]


class _LockSink(_RowSink):
    """Notes whether each read of the target's rows asked for a lock."""

    def __init__(self) -> None:
        super().__init__({"phone": "old", "street": "old"})
        self.locks: list[bool] = []

    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        self.locks.append(lock)
        return super().fetch(table, key_column, keys, columns, lock=lock)


def _read_locks(*owners: str) -> list[bool]:
    fields = tuple(FieldRoute(name, name, name, owner)
                   for name, owner in zip(("phone", "street"), owners, strict=False))
    route = Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
                  "crm_id", fields, source="crm", target="erp")
    sink = _LockSink()
    change = RowChange(SRC, Op.UPDATE, new={"id": 7, "phone": "new", "street": "new"})
    applier(route).apply(sink, [(change, TS, "0/1")])
    return sink.locks


def test_rows_are_read_with_a_lock_only_where_a_rule_decides_on_them() -> None:
    """Source-owned fields take the source's value whatever the target holds: a plain read
    (no row lock) is enough; a field the target or both sides own needs the locking read."""
    assert _read_locks("crm", "crm") == [False]
    assert _read_locks("crm", "both") == [True]
    assert _read_locks("erp") == [True]


# --- writing behind: batch N is written while batch N+1 is planned (agent.writebehind) ----

PLAIN = Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
              "crm_id", (FieldRoute("name", "name", "name", "crm"),),
              source="crm", target="erp")


class _ReadsSink(CallSink):
    """The second connection: answers reads from ``rows`` (which no write changes)."""

    def __init__(self, rows: dict[object, dict[str, object]]) -> None:
        super().__init__()
        self.rows = rows

    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        self.calls.append(("fetch", lock))
        return {k: dict(self.rows[k]) for k in keys if k in self.rows}


class _FetchCountingSink(CallSink):
    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        self.calls.append(("fetch", lock))
        return {}


class _ReplaySource(ListSource):
    """Starts after the position it is opened at, as a real source does after a restart."""

    def __init__(self, items: list[Transaction]) -> None:
        super().__init__(items)
        self.all = list(items)

    def open(self, after: str | None) -> None:
        super().open(after)
        start = 0 if after is None else int(after.split("/")[1], 16)
        with self.lock:
            self.items = [t for t in self.all if int(t.position.split("/")[1], 16) > start]


def _run_behind(items: list[Transaction], sink: CallSink, reads: CallSink,
                **settings: Any) -> ListSource:
    source = _ReplaySource(items)
    pipeline = Pipeline("crm_to_erp", lambda: source, lambda: sink, applier(PLAIN),
                        own_origins=frozenset({"mine"}), heartbeat_table=HEARTBEATS,
                        settings=Settings(**settings), reads_factory=lambda: reads)
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: bool(source.confirmed) and source.confirmed[-1] == items[-1].position,
                   timeout=5, message="pipeline did not confirm the last position")
    finally:
        stop.set()
        thread.join(5)
    return source


def _written_keys(sink: CallSink) -> list[Mapping[str, object]]:
    return [k for kind, keys in sink.calls if kind == "write"
            for k in cast(list[Mapping[str, object]], keys)]


def test_batches_of_plain_fields_are_planned_on_the_reads_connection() -> None:
    """The sink's connection only writes and commits; every read goes to the second one,
    without a lock; each commit is confirmed after it, in order."""
    sink, reads = _FetchCountingSink(), _ReadsSink({})
    items = [txn(i, i, i + 100) for i in range(1, 41)]
    source = _run_behind(items, sink, reads, max_rows=4, max_delay=0.0, behind_min_rows=1)
    assert [c for c in sink.calls if c[0] == "fetch"] == []
    assert reads.calls and all(c == ("fetch", False) for c in reads.calls)
    commits = [str(c[1]) for c in sink.calls if c[0] == "commit"]
    assert commits == sorted(commits, key=lambda p: int(p.split("/")[1], 16))
    assert commits[-1] == items[-1].position
    assert set(source.confirmed) <= set(commits)
    written = _written_keys(sink)
    assert len(written) == 80 and {"crm_id": 40} in written


def test_a_small_batch_alone_is_written_at_once_for_latency() -> None:
    sink, reads = _FetchCountingSink(), _ReadsSink({})
    _run_behind([txn(1, 1)], sink, reads, max_delay=0.0)
    assert reads.calls == []
    assert [c[0] for c in sink.calls] == ["begin", "fetch", "write", "commit"]


class _FailOnceSink(_FetchCountingSink):
    """Its first write fails as a lost connection does."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def write(self, writes: Sequence[Write]) -> None:
        if not self.failed:
            self.failed = True
            raise TransientError("connection lost")
        super().write(writes)


def test_a_batch_that_fails_behind_is_never_confirmed_and_is_read_again() -> None:
    sink, reads = _FailOnceSink(), _ReadsSink({})
    items = [txn(i, i) for i in range(1, 11)]
    source = _run_behind(items, sink, reads, max_rows=2, max_delay=0.0, retry_initial=0.01,
                         behind_min_rows=1)
    assert ("rollback", None) in sink.calls
    commits = [c[1] for c in sink.calls if c[0] == "commit"]
    assert source.confirmed and set(source.confirmed) <= set(commits)
    assert {k["crm_id"] for k in _written_keys(sink)} == set(range(1, 11))


def _update(key: int, name: str) -> tuple[RowChange, datetime, str]:
    return RowChange(SRC, Op.UPDATE, new={"id": key, "name": name}), TS, "0/1"


def test_rows_a_batch_still_writes_are_planned_as_it_leaves_them() -> None:
    """The second connection cannot see the rows of the batch behind (not committed yet):
    the next batch takes them as that batch leaves them, so going back to the value it
    read is a change, not a no-op."""
    a = applier(PLAIN)
    reads = _ReadsSink({1: {"name": "old"}, 2: {"name": "old"}})
    first = a.plan_ahead(reads, [_update(1, "new"), _update(2, "new")], None)
    assert first is not None and first.simple
    behind = first.plan.written
    second = a.plan_ahead(reads, [_update(1, "old"), _update(2, "new")], behind)
    assert second is not None
    assert [(w.key, dict(w.values)) for w in second.plan.writes] == [
        ({"crm_id": 1}, {"name": "old"})]
    assert second.counts().skipped["noop"] == 1
    assert a.plan_ahead(reads, [_update(1, "x")], None) is not None


def test_entities_whose_rules_decide_on_the_target_rows_are_not_planned_ahead() -> None:
    both = Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
                 "crm_id", (FieldRoute("name", "name", "name", "both"),),
                 source="crm", target="erp")
    reads = _ReadsSink({1: {"name": "old"}})
    assert applier(both).plan_ahead(reads, [_update(1, "new")], None) is None
    assert reads.calls == []


def test_a_batch_not_planned_ahead_hands_its_push_requests_over_once() -> None:
    """Planning ahead gives up before it takes anything out of the batch: the batch's own
    transaction hands each push request over, once."""
    both = Route("customer", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY,
                 "crm_id", (FieldRoute("name", "name", "name", "both"),),
                 source="crm", target="erp")
    asked: list[Mapping[str, object]] = []
    a = Applier("crm_to_erp", build_route_table("crm_to_erp", [both]), Judge(), Exchange(),
                "cdc_agent", requests=asked.append)
    request = RowChange(TableId("cdc_agent", "push_requests"), Op.INSERT,
                        new={"id": 7, "status": "pending"})
    buffer = [(request, TS, "0/1"), _update(1, "new")]
    assert a.plan_ahead(_ReadsSink({1: {"name": "old"}}), buffer, None) is None
    a.apply(CallSink(), buffer)
    assert [dict(r) for r in asked] == [{"id": 7, "status": "pending"}]
