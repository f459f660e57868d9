"""One direction: source reader -> loop filter -> rules -> sink writer -> checkpoint -> confirm.

Whole source transactions are grouped into one target transaction (a batch) that ends with
the checkpoint; the source is confirmed only after that COMMIT. A large source transaction
arrives in chunks and gets a target transaction of its own, so a stop in its middle rolls
back cleanly. Transient errors restart the session from the stored checkpoint after a
backoff with jitter; nothing is applied twice because the checkpoint commits with the data.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

from agent import rules
from agent.apply import Applier, Buffered
from agent.errors import TransientError
from agent.events import RowChange, TableId, Transaction
from agent.ports import Sink, Source
from agent.prefetch import Prefetcher
from agent.quarantine import Poison
from agent.schema_pause import SchemaDrift
from agent.writebehind import WriteBehind

log = logging.getLogger(__name__)


class Observer(Protocol):
    """What a pipeline reports (metrics, status)."""

    def committed(self, direction: str, txns: int, rows: int, source_ts: datetime) -> None: ...
    def skipped(self, direction: str, reason: str, count: int) -> None: ...
    def heartbeat(self, direction: str, written_at: float) -> None: ...
    def state(self, direction: str, state: str) -> None: ...
    def retried(self, direction: str, error: BaseException) -> None: ...
    def conflict(self, entity: str, field: str, resolution: str) -> None: ...
    def quarantined(self, direction: str, count: int) -> None: ...
    def paused(self, direction: str, entity: str, paused: bool) -> None: ...


class NullObserver:
    """Reports nowhere."""

    def committed(self, direction: str, txns: int, rows: int, source_ts: datetime) -> None:
        pass

    def skipped(self, direction: str, reason: str, count: int) -> None:
        pass

    def heartbeat(self, direction: str, written_at: float) -> None:
        pass

    def state(self, direction: str, state: str) -> None:
        pass

    def retried(self, direction: str, error: BaseException) -> None:
        pass

    def conflict(self, entity: str, field: str, resolution: str) -> None:
        pass

    def quarantined(self, direction: str, count: int) -> None:
        pass

    def paused(self, direction: str, entity: str, paused: bool) -> None:
        pass


@dataclass(frozen=True)
class Settings:
    """Batching and pacing of one direction."""

    max_rows: int = 5000
    max_delay: float = 0.02
    advance_interval: float = 10.0  # how often a position with no data is stored
    retry_initial: float = 0.5
    retry_max: float = 30.0
    behind_min_rows: int = 100
    """A batch this small is written behind only while another one is (agent.writebehind):
    handing it to the worker costs about a millisecond of latency (p50 at 20 single-row
    transactions/s, PG->PG: 1.4 -> 2.3 ms), more than overlapping its server work saves."""


@dataclass
class _Batch:
    """The open target transaction and what it covers."""

    opened: bool = False
    buffer: list[Buffered] | None = None
    boundary: str | None = None  # position of the last whole source transaction in it
    source_ts: datetime | None = None
    txns: int = 0
    rows: int = 0
    started: float = 0.0
    in_partial: bool = False

    def pending(self) -> bool:
        return self.opened or bool(self.buffer)


class Pipeline:
    """Replicates one direction until told to stop."""

    def __init__(self, direction: str, source_factory: Callable[[], Source],
                 sink_factory: Callable[[], Sink], applier: Applier, *,
                 own_origins: frozenset[str], heartbeat_table: TableId,
                 settings: Settings | None = None, observer: Observer | None = None,
                 coarse_clock: bool = False,
                 reads_factory: Callable[[], Sink] | None = None) -> None:
        self.direction = direction
        self._source_factory = source_factory
        self._sink_factory = sink_factory
        self._reads_factory = reads_factory
        """A second, reads-only sink: batches are planned on it while the one before is
        written (agent.writebehind); None: one batch at a time."""
        self.applier = applier
        self.routes = applier.routes
        self._coarse_clock = coarse_clock
        self._own_origins = own_origins
        self._heartbeat_table = heartbeat_table
        self._settings = settings or Settings()
        self._observer = observer or NullObserver()
        self.last_progress = time.monotonic()
        applier.pauses.report = lambda entity, on: self._observer.paused(direction, entity, on)

    # -- outer loop: sessions and retries ---------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Replicate until ``stop`` is set; transient failures retry, others propagate."""
        delay = self._settings.retry_initial
        while not stop.is_set():
            started = time.monotonic()
            try:
                self._session(stop)
                return
            except Poison as poison:
                # Not a failure of the connection: start over from the checkpoint at once,
                # with the record that failed (or its batch, to be isolated) set aside.
                log.warning("%s: a row could not be applied (%s); quarantining it",
                            self.direction, poison.error.error_class)
                self.applier.quarantine.block(poison)
                continue
            except SchemaDrift as drift:  # a mapped target column is gone: start over with
                self.applier.pauses.pause(drift)  # that entity's changes parked
                continue
            except TransientError as error:
                self._observer.retried(self.direction, error)
                self._observer.state(self.direction, "retrying")
                if time.monotonic() - started > 60:
                    delay = self._settings.retry_initial
                wait = delay * (0.5 + random.random())
                log.warning("%s: %s; retrying in %.1fs", self.direction, error, wait)
                stop.wait(wait)
                delay = min(delay * 2, self._settings.retry_max)

    def _session(self, stop: threading.Event) -> None:
        sink = self._sink_factory()
        reader: Prefetcher | None = None
        behind: WriteBehind | None = None
        try:
            sink.open()
            after = sink.read_checkpoint(self.direction)
            reader = Prefetcher(self._source_factory())
            self.applier.quarantine.reload(force=True)
            self.applier.recover_remedies(force=True)
            if self.applier.scheduler is not None:  # windows are re-read from staged rows
                self.applier.scheduler.reload()
            self.applier.pauses.resume(self.applier, sink, after)  # parked changes first
            behind = self._write_behind(sink)
            reader.start(after)
            self._observer.state(self.direction, "streaming")
            log.info("%s: streaming after position %s", self.direction, after or "(start)")
            _Session(self, sink, reader, after, behind).loop(stop)
        finally:
            if behind is not None:
                behind.close()
            if reader is not None:
                reader.close()
            sink.close()
        self._observer.state(self.direction, "stopped")

    def _write_behind(self, sink: Sink) -> WriteBehind | None:
        """The worker that writes behind, with its reads-only connection open."""
        if self._reads_factory is None:
            return None
        reads = self._reads_factory()
        try:
            reads.open()
        except BaseException:
            reads.close()
            raise
        return WriteBehind(self.direction, sink, reads, self.applier.write)


class _Session:
    """One connected run of a pipeline; state lives here, not in the pipeline."""

    def __init__(self, pipeline: Pipeline, sink: Sink, reader: Prefetcher,
                 committed: str | None, behind: WriteBehind | None = None) -> None:
        self.p = pipeline
        self.sink = sink
        self.behind = behind
        """Writes a batch while the next is planned (None: one batch at a time)."""
        self.reader = reader
        self.committed = committed  # the position stored in the target's checkpoint
        self.batch = _Batch(buffer=[])
        self.advance: str | None = None
        self.advance_foreign = False
        self.advance_urgent = False
        self.advanced_at = time.monotonic()
        self.committed_at = 0.0

    def loop(self, stop: threading.Event) -> None:
        """Apply until ``stop``; then commit the whole transactions in hand.

        A large transaction still arriving in chunks has a target transaction of its own, so
        rolling it back on stop loses nothing: it is read again after the restart.
        """
        try:
            while not stop.is_set():
                self.p.last_progress = time.monotonic()
                self.p.applier.quarantine.reload()
                item = self.reader.get(self._timeout(self.p._settings))
                if self.behind is not None and self.behind.done():
                    self.behind.wait()
                if item is not None:
                    self._take(item)
                self._maybe_commit(item is None)
                self._maybe_advance()
                self._maybe_remedy()
                self._maybe_settle()
                self._maybe_window()
            if not self.batch.in_partial:
                self._commit()
            self._drain()
        except (Poison, SchemaDrift):
            self.p.applier.quarantine.rolled_back()
            raise
        finally:
            if self.behind is not None:
                self.behind.close()  # the sink is this thread's again
            if self.batch.pending():
                self.sink.rollback()
                self.p.applier.pauses.rolled_back()

    def _timeout(self, settings: Settings) -> float:
        if self.behind is not None and self.behind.busy():
            return 0.002  # its COMMIT is confirmed (and reported) when seen
        if self.batch.boundary is None:
            return 0.2
        left = settings.max_delay - (time.monotonic() - self.batch.started)
        return max(0.0, min(left, 0.2))

    def _take(self, item: Transaction) -> None:
        own = item.origin is not None and item.origin in self.p._own_origins
        log.debug("%s: transaction at %s: %d changes, origin %s, final %s", self.p.direction,
                  item.position, len(item.changes), item.origin, item.final)
        changes = self._filter(item, own)
        batch = self.batch
        if changes:
            ts = self._commit_time(item.commit_ts)
            if self.p.routes.shared:
                for change in changes:
                    rules.record_changes(self.p.routes, change, ts,
                                         self.p.applier.judge.recent)
            if not item.final and not batch.in_partial and batch.txns > 0:
                self._commit()  # a large transaction gets a target transaction of its own
            if not batch.pending():
                batch.started = time.monotonic()
            assert batch.buffer is not None
            batch.buffer.extend((change, ts, item.position) for change in changes)
            batch.rows += len(changes)
            # Whole transactions wait for the commit (which may plan them ahead); a large
            # one is written as it arrives.
            if len(batch.buffer) >= self.p._settings.max_rows and not (
                    item.final and self.behind is not None):
                self._flush()
        batch.in_partial = not item.final
        if item.final:
            self._close_transaction(item, own)

    def _commit_time(self, logged: datetime) -> datetime:
        """The commit time that ``conflict: newest`` compares.

        MariaDB logs whole seconds. The logged second is kept, so changes in different seconds
        are always ordered right; within it, the arrival time (clamped to that second) orders
        a live change against the other side's, and a backlog counts as the second's end.
        """
        if not self.p._coarse_clock:
            return logged
        now = datetime.now(UTC)
        return max(logged, min(now, logged + timedelta(microseconds=999_999)))

    def _close_transaction(self, item: Transaction, own: bool) -> None:
        batch = self.batch
        if batch.pending():
            batch.boundary = item.position
            batch.source_ts = item.commit_ts
            batch.txns += 1
            return
        self.advance = item.position
        self.advance_urgent = self.advance_urgent or bool(item.extra.get("urgent"))
        # Only a position past someone else's transaction is worth storing on its own: the
        # store itself is an agent transaction that the other direction reads back as its
        # own, and storing that again would ping-pong between the two forever.
        self.advance_foreign = self.advance_foreign or not own

    def _filter(self, item: Transaction, own: bool) -> list[RowChange]:
        """Drop the agent's own transactions and heartbeat rows; keep the rest."""
        if own:
            if item.changes:
                self.p._observer.skipped(self.p.direction, "loop", len(item.changes))
            return []
        kept = [c for c in item.changes if c.table != self.p._heartbeat_table]
        if len(kept) != len(item.changes):
            self._heartbeat(item)
        return kept

    def _heartbeat(self, item: Transaction) -> None:
        for change in item.changes:
            if change.table == self.p._heartbeat_table and change.new:
                sent = change.new.get("ts")
                if isinstance(sent, datetime):
                    if sent.tzinfo is None:
                        sent = sent.replace(tzinfo=UTC)
                    self.p._observer.heartbeat(self.p.direction, sent.timestamp())

    def _maybe_commit(self, idle: bool) -> None:
        batch = self.batch
        if batch.boundary is None or batch.in_partial:
            return
        settings = self.p._settings
        now = time.monotonic()
        full = batch.rows >= settings.max_rows
        late = now - batch.started >= settings.max_delay
        # Group commit: a quiet stream commits at once (latency); right after a commit the
        # stream is busy, so keep gathering up to max_delay (one fsync for many transactions).
        busy = now - self.committed_at < settings.max_delay
        if full or late or (not busy and (idle or not self.reader.has_more())):
            self._commit()

    def _flush(self) -> None:
        batch = self.batch
        if not batch.buffer:
            return
        self._open()
        self._report(self.p.applier.apply(self.sink, batch.buffer))
        batch.buffer = []

    def _report(self, result: rules.Plan) -> None:
        quarantined = result.skipped.pop("quarantined", 0)
        if quarantined:
            self.p._observer.quarantined(self.p.direction, quarantined)
        for reason, count in result.skipped.items():
            self.p._observer.skipped(self.p.direction, reason, count)
        for c in result.conflicts:
            self.p._observer.conflict(c.entity, c.field, c.resolution)

    def _open(self) -> None:
        if not self.batch.opened:
            self._begin()
            self.batch.opened = True

    def _begin(self) -> None:
        """Start a target transaction, once the batch written behind (if any) is in."""
        self._drain()
        self.sink.begin(self.p.direction)

    def _drain(self) -> None:
        if self.behind is not None:
            self.behind.wait()

    def _remedies(self) -> None:
        """Apply, in the open transaction, corrections the other direction asked for."""
        remedies = self.p.applier.exchange.take(self.p.direction)
        if remedies:
            writes = self.p.applier.remedy_writes(self.sink, remedies)
            if writes:
                self.p.applier.write(self.sink, writes)

    def _commit(self) -> None:
        batch = self.batch
        if batch.boundary is None:
            return
        if self._commit_behind(batch):
            return
        self._flush()
        self._open()
        self._remedies()
        assert batch.source_ts is not None
        self.sink.commit(self.p.direction, batch.boundary, batch.source_ts)
        self.p.applier.settle_remedies()
        self._committed(batch)
        self._next_batch()

    def _committed(self, batch: _Batch) -> None:
        """``batch`` is in: confirm it to the source and report it."""
        assert batch.boundary is not None and batch.source_ts is not None
        self.p.applier.quarantine.committed()
        self.p.applier.pauses.committed()
        self.p.applier.committed(self.sink)
        self.committed = batch.boundary
        self.reader.confirm(batch.boundary)
        self.p._observer.committed(self.p.direction, batch.txns, batch.rows, batch.source_ts)
        self.advanced_at = self.committed_at = time.monotonic()

    def _next_batch(self) -> None:
        """The batch is committed (or on its way behind): positions read from here on are
        past its boundary."""
        self._forget_advance()
        self.batch = _Batch(buffer=[])

    def _forget_advance(self) -> None:
        self.advance = None
        self.advance_foreign = False
        self.advance_urgent = False

    def _commit_behind(self, batch: _Batch) -> bool:
        """Plan ``batch`` on the second connection and leave its write and COMMIT to the
        worker (agent.writebehind); False when it needs the open transaction (a plan that
        needs more than its writes is then carried out in it already)."""
        behind = self.behind
        if (behind is None or batch.opened or not batch.buffer or batch.source_ts is None
                or batch.boundary is None or self.p.applier.exchange.waiting(self.p.direction)):
            return False
        if len(batch.buffer) < self.p._settings.behind_min_rows and not behind.busy():
            return False  # a small batch alone: at once (the hand-over costs ~1 ms)
        ahead = self.p.applier.plan_ahead(behind.reads, batch.buffer, behind.written)
        if ahead is None:
            return False
        if not ahead.simple:
            self._open()
            self._report(self.p.applier.finish(self.sink, ahead))
            batch.buffer = []
            return False
        self._report(ahead.counts())
        behind.wait()  # one batch behind at most
        behind.submit(ahead.plan.writes, batch.boundary, batch.source_ts,
                      ahead.plan.written,
                      partial(self._committed, batch))
        self._next_batch()
        return True

    def _maybe_advance(self) -> None:
        """Store, then confirm, a position that carried nothing to write.

        The source is confirmed only up to a stored checkpoint, never past it: on restart the
        reader refuses a slot that is ahead of the checkpoint (it would skip data silently).
        """
        if self.advance is None or not self.advance_foreign or self.batch.pending():
            return
        if (time.monotonic() - self.advanced_at < self.p._settings.advance_interval
                and not self.advance_urgent):
            return
        self._store_advance()

    def _store_advance(self) -> None:
        assert self.advance is not None
        self._begin()
        self._remedies()
        self.sink.commit(self.p.direction, self.advance, datetime.now(UTC))
        self.p.applier.settle_remedies()
        self.committed = self.advance
        self.reader.confirm(self.advance)
        self._forget_advance()
        self.advanced_at = time.monotonic()

    def _maybe_remedy(self) -> None:
        """Corrections waiting while no batch is open get a target transaction of their own."""
        if self.batch.pending() or self.batch.in_partial:
            return
        self.p.applier.recover_remedies()
        if not self.p.applier.exchange.waiting(self.p.direction):
            return
        if self.advance is not None:
            self._store_advance()
        elif self.committed is not None:
            self._begin()
            self._remedies()
            self.sink.commit(self.p.direction, self.committed, datetime.now(UTC))
            self.p.applier.settle_remedies()

    def _maybe_settle(self) -> None:
        """Conflicting fields that went quiet are checked again in a transaction of their own
        (the stored position does not move): both sides end on the newest change."""
        if self.batch.pending() or self.batch.in_partial or self.committed is None:
            return
        items = self.p.applier.settling()
        if not items:
            return
        self._begin()
        writes = self.p.applier.settle_writes(self.sink, items)
        if writes:
            self.p.applier.write(self.sink, writes)
            log.info("%s: %d conflicting field(s) settled on the newest change",
                     self.p.direction, len(writes))
        self.sink.commit(self.p.direction, self.committed, datetime.now(UTC))

    def _maybe_window(self) -> None:
        """Staged changes whose schedule window has come get a target transaction of their
        own (see agent.staging); the stored position does not move."""
        scheduler = self.p.applier.scheduler
        if scheduler is None or self.batch.pending() or self.batch.in_partial:
            return
        if self.committed is None or not scheduler.due():
            return
        self._begin()
        self.p.applier.apply_window(self.sink)
        self.sink.commit(self.p.direction, self.committed, datetime.now(UTC))
        self.p.applier.committed(self.sink)
