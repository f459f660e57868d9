"""Every Prometheus metric of the agent, in one place (DESIGN.md section 6).

All metrics live on the :class:`Metrics` instance's own ``CollectorRegistry`` (never the
global one, so tests and a reload can build a fresh set) and are named ``cdc_agent_*``.

Labels are bounded by construction: their values are system names, direction names and
entity/field names from the configuration, or the small enums below. A row key, a position,
an error message or a table name from the log never becomes a label value; the typed
helpers have no parameter for one, and label values outside the declared sets are refused.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from agent import __version__

PREFIX = "cdc_agent"

SKIP_REASONS = ("loop", "ownership", "filter", "noop")
"""Why a change was not applied: the agent's own write, a field the source does not own, a row
predicate / unmapped table, or the target already had the values."""

RETRY_KINDS = ("deadlock", "lock_timeout", "serialization", "connection", "other")
"""Transient failure classes that are retried with backoff (see :func:`retry_kind`)."""

DIRECTION_STATES = ("starting", "streaming", "staging", "retrying", "stopped", "failed")
"""``staging``: a scheduled or manual direction reading the log and staging net changes;
``retrying``: waiting out a transient failure with backoff."""

# SQLSTATE (PostgreSQL) and error numbers (MySQL/MariaDB) of the retried failure classes.
_RETRY_CODES: dict[object, str] = {
    "40P01": "deadlock", "55P03": "lock_timeout", "40001": "serialization",
    "57P01": "connection", "57P02": "connection", "57P03": "connection", "08000": "connection",
    "08003": "connection", "08006": "connection", "08001": "connection", "08004": "connection",
    1213: "deadlock", 1205: "lock_timeout", 2002: "connection", 2003: "connection",
    2006: "connection", 2013: "connection", 2055: "connection", 1927: "connection",
}  # fmt: skip

CONFLICT_RESOLUTIONS = ("newest", "manual", "revert", "keep")
"""How a conflict ended; a system name is also allowed (``conflict: crm`` = that side won)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Seconds: 1 ms (same-host commit) to 30 s (a catch-up after a pause)."""

_MAX_OUTSTANDING_HEARTBEATS = 1024  # only the oldest matters; the cap bounds memory when stuck


class Metrics:
    """Typed recording helpers over the agent's metrics.

    ``systems`` and ``directions`` come from the config (e.g. ``("crm", "erp")`` and
    ``("crm_to_erp", "erp_to_crm")``); their series are created at zero up front so that
    ``rate()`` and absence-based alerts work from the first scrape. ``entities`` maps each
    entity to its field names; when given, conflict labels are checked against it.
    Thread-safe (prometheus-client metrics are; the heartbeat bookkeeping takes a lock).
    """

    def __init__(
        self,
        systems: Iterable[str],
        directions: Iterable[str],
        entities: Mapping[str, Iterable[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create every metric on a fresh registry; ``clock`` is the agent's wall clock."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._systems = tuple(systems)
        self._directions = tuple(directions)
        self._entities = (
            None if entities is None else {e: frozenset(f) for e, f in entities.items()}
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._heartbeats: dict[str, _HeartbeatLag] = {}
        self._define()
        self._initialise_series()

    # -- definitions -------------------------------------------------------------------------

    def _define(self) -> None:
        reg = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, namespace=PREFIX, registry=reg)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=PREFIX, registry=reg)

        self.build_info = gauge("build_info", "Agent build; always 1.", ("version", "python"))
        self.connected = gauge("connected", "1 while connected to the system.", ("system",))
        self.lag_seconds = gauge(
            "lag_seconds",
            "Replication lag per direction, measured with heartbeats on the agent's own clock.",
            ("direction",),
        )
        self.latency = Histogram(
            "end_to_end_latency_seconds",
            "Source commit to target commit, per applied transaction.",
            ("direction",),
            namespace=PREFIX,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self.applied_transactions = counter(
            "applied_transactions", "Source transactions applied to the target.", ("direction",)
        )
        self.applied_rows = counter("applied_rows", "Rows written to the target.", ("direction",))
        self.skipped_changes = counter(
            "skipped_changes", "Source row changes not applied, by reason.", ("direction", "reason")
        )
        self.conflicts = counter(
            "conflicts",
            "Field conflicts and sovereignty violations, by resolution.",
            ("entity", "field", "resolution"),
        )
        self.open_conflicts = gauge(
            "open_conflicts", "Conflicts parked for a person (conflict: manual) now.", ("entity",)
        )
        self.quarantined_rows = gauge(
            "quarantined_rows", "Rows waiting in dead_letters now.", ("direction",)
        )
        self.quarantined = counter("quarantined", "Rows quarantined since start.", ("direction",))
        self.retries = counter(
            "retries", "Transient failures retried with backoff.", ("direction", "kind")
        )
        self.slot_retained_wal_bytes = gauge(
            "slot_retained_wal_bytes", "WAL the replication slot holds back.", ("system",)
        )
        self.binlog_bytes_behind = gauge(
            "binlog_bytes_behind", "Binlog bytes written but not yet read.", ("system",)
        )
        self.staged_changes = gauge(
            "staged_changes", "Net changes staged for a scheduled direction.", ("direction",)
        )
        self.config_reload_success = gauge(
            "config_reload_success", "1 if the last configuration (re)load succeeded, else 0."
        )
        self.config_reload_timestamp = gauge(
            "config_reload_timestamp_seconds", "Time of the last successful configuration load."
        )
        self.direction_state = gauge(
            "direction_state",
            "1 for the direction's current state, 0 for the others.",
            ("direction", "state"),
        )
        self.entity_paused = gauge(
            "entity_paused",
            "1 while the entity is paused in the direction: a mapped column is gone (dropped or"
            " renamed); its changes are parked until the fixed configuration is reloaded.",
            ("entity", "direction"),
        )
        self.last_apply_timestamp = gauge(
            "last_apply_timestamp_seconds", "Time of the last target commit.", ("direction",)
        )

    def _initialise_series(self) -> None:
        py = ".".join(str(part) for part in sys.version_info[:3])
        self.build_info.labels(__version__, py).set(1)
        for system in self._systems:
            self.connected.labels(system)
        for entity in self._entities or ():
            self.open_conflicts.labels(entity)
        for direction in self._directions:
            if direction in self._heartbeats:
                continue  # declared before: keep its lag bookkeeping
            self._heartbeats[direction] = _HeartbeatLag()
            self.lag_seconds.labels(direction).set_function(self._lag_reader(direction))
            self.latency.labels(direction)
            self.applied_transactions.labels(direction)
            self.applied_rows.labels(direction)
            self.quarantined_rows.labels(direction)
            self.quarantined.labels(direction)
            self.staged_changes.labels(direction)
            for reason in SKIP_REASONS:
                self.skipped_changes.labels(direction, reason)
            self.set_direction_state(direction, "starting")
            for entity in self._entities or ():
                self.entity_paused.labels(entity, direction)

    # -- recording helpers -------------------------------------------------------------------

    def set_connected(self, system: str, connected: bool) -> None:
        """Record whether the agent holds a working connection to ``system``."""
        self.connected.labels(self._system(system)).set(1 if connected else 0)

    def set_direction_state(self, direction: str, state: str) -> None:
        """Mark ``state`` (one of :data:`DIRECTION_STATES`) as the direction's current state."""
        _check(state, DIRECTION_STATES, "state")
        direction = self._direction(direction)
        for candidate in DIRECTION_STATES:
            self.direction_state.labels(direction, candidate).set(1 if candidate == state else 0)

    def heartbeat_written(self, direction: str, written_at: float) -> None:
        """The agent wrote a heartbeat stamped ``written_at`` (agent clock) into the source."""
        with self._lock:
            self._heartbeats[self._direction(direction)].written(written_at)

    def heartbeat_applied(self, direction: str, written_at: float) -> None:
        """The heartbeat stamped ``written_at`` came through the pipeline and was applied."""
        with self._lock:
            self._heartbeats[self._direction(direction)].applied(written_at, self._clock())

    def record_apply(
        self, direction: str, transactions: int, rows: int, latencies: Iterable[float] = ()
    ) -> None:
        """One target commit: source transactions and rows applied, their end-to-end latencies.

        Latencies below zero (clock skew between a database host and the agent) count as 0.
        """
        direction = self._direction(direction)
        self.applied_transactions.labels(direction).inc(transactions)
        self.applied_rows.labels(direction).inc(rows)
        histogram = self.latency.labels(direction)
        for seconds in latencies:
            histogram.observe(max(0.0, seconds))
        self.last_apply_timestamp.labels(direction).set(self._clock())

    def declare(self, systems: Iterable[str], directions: Iterable[str],
                entities: Mapping[str, Iterable[str]]) -> None:
        """Add the systems, directions, entities and fields a reloaded configuration names.

        Label sets only grow (a removed entity keeps its series until restart), so they stay
        bounded by what the configurations named; new series start at zero.
        """
        with self._lock:
            self._systems = tuple(dict.fromkeys((*self._systems, *systems)))
            self._directions = tuple(dict.fromkeys((*self._directions, *directions)))
            if self._entities is not None:
                merged = dict(self._entities)
                for entity, fields in entities.items():
                    merged[entity] = merged.get(entity, frozenset()) | frozenset(fields)
                self._entities = merged
            self._initialise_series()

    def skipped(self, direction: str, reason: str, count: int = 1) -> None:
        """``count`` changes not applied for ``reason`` (one of :data:`SKIP_REASONS`)."""
        _check(reason, SKIP_REASONS, "reason")
        self.skipped_changes.labels(self._direction(direction), reason).inc(count)

    def conflict(self, entity: str, field: str, resolution: str) -> None:
        """A conflict or sovereignty violation on ``entity.field``, ended by ``resolution``."""
        _check(resolution, CONFLICT_RESOLUTIONS + self._systems, "resolution")
        if self._entities is not None:
            _check(entity, tuple(self._entities), "entity")
            _check(field, tuple(self._entities[entity]), f"field of {entity}")
        self.conflicts.labels(entity, field, resolution).inc()

    def set_open_conflicts(self, entity: str, count: int) -> None:
        """Conflicts of ``entity`` waiting in the conflicts table for manual resolution."""
        if self._entities is not None:
            _check(entity, tuple(self._entities), "entity")
        self.open_conflicts.labels(entity).set(count)

    def quarantine(self, direction: str, count: int = 1) -> None:
        """``count`` rows were moved to dead_letters."""
        self.quarantined.labels(self._direction(direction)).inc(count)

    def set_quarantined_rows(self, direction: str, rows: int) -> None:
        """Rows currently waiting in dead_letters for ``direction``."""
        self.quarantined_rows.labels(self._direction(direction)).set(rows)

    def set_entity_paused(self, entity: str, direction: str, paused: bool) -> None:
        """Whether ``entity`` is paused in ``direction`` by a schema change."""
        if self._entities is not None:
            _check(entity, tuple(self._entities), "entity")
        self.entity_paused.labels(entity, self._direction(direction)).set(1 if paused else 0)

    def retry(self, direction: str, kind: str | BaseException) -> None:
        """A transient failure is being retried; ``kind`` is one of :data:`RETRY_KINDS` or the
        error itself (classified with :func:`retry_kind`). Anything else counts as ``other``."""
        if isinstance(kind, BaseException):
            kind = retry_kind(kind)
        label = kind if kind in RETRY_KINDS else "other"
        self.retries.labels(self._direction(direction), label).inc()

    def set_slot_retained_wal_bytes(self, system: str, size: int) -> None:
        """``pg_current_wal_lsn() - restart_lsn`` of the agent's slot on ``system``."""
        self.slot_retained_wal_bytes.labels(self._system(system)).set(size)

    def set_binlog_bytes_behind(self, system: str, size: int) -> None:
        """Bytes between the server's binlog end and the reader's position on ``system``."""
        self.binlog_bytes_behind.labels(self._system(system)).set(size)

    def set_staged_changes(self, direction: str, count: int) -> None:
        """Net changes staged and waiting for the direction's schedule window."""
        self.staged_changes.labels(self._direction(direction)).set(count)

    def config_loaded(self, success: bool) -> None:
        """The configuration was (re)loaded; a failure keeps the old timestamp."""
        self.config_reload_success.set(1 if success else 0)
        if success:
            self.config_reload_timestamp.set(self._clock())

    # -- exposition --------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- internals ---------------------------------------------------------------------------

    def _lag_reader(self, direction: str) -> Callable[[], float]:
        def read() -> float:
            with self._lock:
                return self._heartbeats[direction].lag(self._clock())

        return read

    def _system(self, system: str) -> str:
        _check(system, self._systems, "system")
        return system

    def _direction(self, direction: str) -> str:
        _check(direction, self._directions, "direction")
        return direction


class _HeartbeatLag:
    """Lag from heartbeats, all stamps on the agent's clock (no clock skew between hosts).

    The last measurement (applied - written) is the lag while nothing is outstanding; once a
    written heartbeat has not come through, the lag is at least how long it has been waiting,
    so a stalled pipeline shows a growing lag rather than a frozen good value.
    """

    def __init__(self) -> None:
        self.measured = 0.0
        self.outstanding: deque[float] = deque()

    def written(self, at: float) -> None:
        if len(self.outstanding) < _MAX_OUTSTANDING_HEARTBEATS:
            self.outstanding.append(at)

    def applied(self, written_at: float, now: float) -> None:
        while self.outstanding and self.outstanding[0] <= written_at:
            self.outstanding.popleft()
        self.measured = max(0.0, now - written_at)

    def lag(self, now: float) -> float:
        if self.outstanding:
            return max(self.measured, now - self.outstanding[0])
        return self.measured


def retry_kind(error: BaseException) -> str:
    """Classify a transient error for the ``kind`` label by the driver error it wraps.

    Looks through ``__cause__``/``__context__`` for a PostgreSQL SQLSTATE (``sqlstate``) or a
    MySQL error number (``args[0]``) without importing any driver; lost connections without
    a code (``ConnectionError``, ``TimeoutError``) count as ``connection``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or (current.args[0] if current.args else None)
        if isinstance(code, str | int) and code in _RETRY_CODES:
            return _RETRY_CODES[code]
        if isinstance(current, ConnectionError | TimeoutError):
            return "connection"
        current = current.__cause__ or current.__context__
    return "other"


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    """Refuse a label value outside its declared set: that is how unbounded labels creep in."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
