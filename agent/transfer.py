"""On-demand transfer of single records: ``cdc-agent push`` and ``push_requests``.

A push reads the records' *current* rows on the source system, locked (FOR UPDATE), turns
each into a synthetic row change and applies it to the other system through the
:class:`~agent.apply.Applier` (rules, conflict records, key write-back) in one target
transaction tagged with the "manual" loop marker, so the target's reader drops it as the
agent's own. The source locks are held until the target commits: a concurrent edit of the
record commits after the push and is logged later, so a continuous direction applies it on
top (never under) the pushed value. Pushes work whatever the entity's schedule.

The synthetic change says "every field the source may set changed": fields owned by the
source or by both sides are transferred; fields the target owns are presented as unchanged,
so a push never reverts the target's own data nor records a sovereignty violation.

``<state_schema>.push_requests`` (id, entity, key, status, reason, created_at, done_at) lets
an application ask for a push by inserting a row on the system that holds the record. The
daemon sees the INSERT through the log (PostgreSQL: the table is in the publication; MySQL:
the binlog reader passes the state database's rows), hands it to a :class:`PushWorker`
and marks the request done, or failed with the reason. Requests still pending when the
daemon starts (the log moved past them before a crash) are swept up at start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from agent.apply import Applier, Buffered, Exchange
from agent.config import Config, Direction, PostgresSystem
from agent.conflicts import Remedy
from agent.errors import AgentError, TransientError, UsageError
from agent.events import Op, RowChange, TableId
from agent.manual import manual_sink
from agent.ports import Sink
from agent.quarantine import Poison
from agent.routes import Route
from agent.rules import Judge, Plan
from agent.wiring import (
    MANUAL,
    compile_route,
    mysql_params,
    names,
    peer_map,
    remedy_store,
    route_table,
)

log = logging.getLogger(__name__)

OPEN_RETRY_SECONDS = 30.0
"""How long a manual session waits for the system's manual origin (PostgreSQL allows one
session per origin: push, reconcile and conflict resolution take turns)."""


class Rows(Protocol):
    """Reads of a system's tables in the reader's representation (see connectors/*/state)."""

    def open(self) -> None: ...
    def columns(self, table: TableId) -> list[str]: ...
    def count(self, table: TableId, where: Mapping[str, object]) -> int: ...
    def scan(self, table: TableId, key: str, columns: Sequence[str], after: object, limit: int,
             where: Mapping[str, object]) -> list[dict[str, object]]: ...
    def lookup(self, table: TableId, column: str, keys: Sequence[object],
               columns: Sequence[str], *, lock: bool) -> list[dict[str, object]]: ...
    def end(self) -> None: ...
    def close(self) -> None: ...


def row_reader(config: Config, system: str) -> Rows:
    """An unopened reader of ``system``'s rows."""
    spec = config.systems[system]
    if isinstance(spec, PostgresSystem):
        from connectors.postgres.state import PgRows

        return PgRows(spec.conninfo())
    from connectors.mysql.state import MyRows

    return MyRows(mysql_params(spec))


def direction_of(config: Config, source: str) -> Direction:
    target = config.other(source)
    return Direction(f"{source}_to_{target}", source, target)


def synthetic(route: Route, row: Mapping[str, object], *, shared: bool) -> RowChange:
    """A change that sets the target from ``row`` under the ownership rules.

    Fields the target owns look unchanged (never written, never a violation); fields both
    sides own are transferred when ``shared`` (push), left alone otherwise (reconcile: who
    changed them last is not known).
    """
    keep = {f.source_column for f in route.fields
            if f.owner == route.target or (f.owner == "both" and not shared)}
    old = {c: row[c] for c in keep if c in row}
    return RowChange(route.source_table, Op.UPDATE, dict(row), old)


def open_sink(config: Config, system: str) -> Sink:
    """A manual sink into ``system``, opened (waits while another session holds the origin)."""
    deadline = time.monotonic() + OPEN_RETRY_SECONDS
    while True:
        sink = manual_sink(config, system)
        try:
            sink.open()
            return sink
        except TransientError:
            sink.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # a pause before trying for the origin again, not a synchronisation


@dataclass
class Transfer:
    """What one transfer wrote."""

    plan: Plan = field(default_factory=Plan)
    remedies: int = 0


def transfer(config: Config, direction: Direction, changes: Sequence[RowChange],
             release: Callable[[], None] = lambda: None) -> Transfer:
    """Apply synthetic ``changes`` to ``direction``'s target in one manual transaction.

    ``release`` is called after the target COMMIT (it ends the source transaction that
    holds the rows' locks); key write-backs into the source follow after it.
    """
    schema = names(config).state_schema
    exchange = Exchange()
    routes = route_table(config, direction)
    applier = Applier(direction.name, routes, Judge(), exchange, schema,
                      peer=peer_map(config, direction, routes))
    pseudo = direction.name + MANUAL
    now = datetime.now(UTC)
    result = Transfer()
    sink = open_sink(config, direction.target)
    try:
        sink.begin(pseudo)
        buffer: list[Buffered] = [(c, now, "manual") for c in changes]
        result.plan = applier.apply(sink, buffer)
        sink.commit(pseudo, "manual", now)
        applier.committed(sink)  # key-map pairs now go to the source's map too
    except BaseException:
        sink.rollback()
        raise
    finally:
        sink.close()
        release()
    back = f"{direction.target}_to_{direction.source}"
    remedies = exchange.take(back, limit=1_000_000)
    if remedies:
        result.remedies = _write_back(config, direction.source, back, applier, remedies)
        # Stored in the outbox with the target's commit: a crash before this point leaves
        # them to the daemon's reverse pipeline; done now, they are marked so.
        remedy_store(config, back).settle([r.ident for r in remedies])
    return result


def _write_back(config: Config, system: str, pseudo_direction: str, applier: Applier,
                remedies: Sequence[Remedy]) -> int:
    """Key write-backs (and corrections) into the source, tagged as the agent's own."""
    sink = open_sink(config, system)
    pseudo = pseudo_direction + MANUAL
    try:
        sink.begin(pseudo)
        writes = applier.remedy_writes(sink, remedies)
        if writes:
            sink.write(writes)
        sink.commit(pseudo, "manual", datetime.now(UTC))
        return len(writes)
    except BaseException:
        sink.rollback()
        raise
    finally:
        sink.close()


def push(config: Config, entity: str, keys: Sequence[str], source: str | None = None
         ) -> dict[str, str | None]:
    """Transfer the records' current state from ``source`` (default: the entity's first
    system) to the other system now; per key None (done) or why it failed."""
    if entity not in config.entities:
        raise UsageError(f"no entity {entity!r} (entities: {', '.join(config.entities)})")
    source = source or next(iter(config.systems))
    if source not in config.systems:
        raise UsageError(f"no system {source!r} (systems: {', '.join(config.systems)})")
    direction = direction_of(config, source)
    route = compile_route(config, entity, config.entities[entity], direction)
    outcome: dict[str, str | None] = {k: f"no {entity} with key {k} on {source}" for k in keys}
    reader = row_reader(config, source)
    reader.open()
    try:
        rows = reader.lookup(route.source_table, route.source_key, list(keys),
                             list(route.reads), lock=True)
        found = {str(r[route.source_key]): r for r in rows}
        changes = [synthetic(route, found[k], shared=True) for k in keys if k in found]
        if not changes:
            return outcome
        try:
            done = transfer(config, direction, changes, release=reader.end)
        except Poison as poison:
            reason = f"{poison.error.error_class}: {poison.error}"
            return {k: outcome[k] if k not in found else reason for k in keys}
        refused = done.plan.skipped.get("filter", 0)
        for k in found:
            outcome[k] = None
        if refused:
            log.info("push %s: %d record(s) not created on %s (create rule)", entity, refused,
                     direction.target)
            for k, row in found.items():
                if not route.may_create(row):
                    outcome[k] = f"not created on {direction.target}: the create rule does not hold"
        return outcome
    finally:
        reader.end()
        reader.close()


class PushWorker:
    """Carries out one system's push requests, one at a time, in a thread of its own.

    The thread starts with a sweep of the pending requests and ends after ``idle`` seconds
    without work; :meth:`submit` starts it again.
    """

    def __init__(self, config: Config, system: str, idle: float = 10.0) -> None:
        self.config = config
        self.system = system
        self._idle = idle
        self._queue: queue.SimpleQueue[Mapping[str, object]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sweep = True

    def start(self) -> None:
        """Sweep the pending requests (in the background)."""
        self._ensure_thread()

    def submit(self, request: Mapping[str, object]) -> None:
        """A pending request read from the log."""
        self._queue.put(dict(request))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"push-{self.system}")
                self._thread.start()

    def _run(self) -> None:
        if self._sweep:
            self._sweep = False
            try:
                for pending in self._pending():
                    self._queue.put(pending)
            except Exception as error:  # e.g. setup not re-run yet: retried at the next submit
                log.warning("push requests on %s could not be read: %s", self.system,
                            type(error).__name__)
                self._sweep = True
        while True:
            try:
                request = self._queue.get(timeout=self._idle)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self._handle(request)

    def _pending(self) -> list[dict[str, object]]:
        from agent import records

        return records.select(self.config, self.system, "push_requests", {"status": "pending"})

    def _handle(self, request: Mapping[str, object]) -> None:
        ident, entity, key = request.get("id"), str(request.get("entity")), str(request.get("key"))
        try:
            outcome = push(self.config, entity, [key], self.system)
            reason = outcome.get(key)
        except AgentError as error:
            reason = f"{type(error).__name__}: {error}"
        except Exception as error:  # a request must never stop the agent
            log.exception("push request %s failed", ident)
            reason = f"{type(error).__name__}"
        try:
            self._mark(ident, reason)
        except Exception as error:
            log.warning("push request %s could not be marked: %s", ident, type(error).__name__)
        log.info("push request %s (%s) %s", ident, entity, "done" if reason is None else "failed")

    def _mark(self, ident: object, reason: str | None) -> None:
        from agent import records

        now = datetime.now(UTC)
        spec = self.config.systems[self.system]
        done_at = now if isinstance(spec, PostgresSystem) else now.replace(tzinfo=None)
        records.update(self.config, self.system, "push_requests",
                       {"id": ident, "status": "pending"},
                       {"status": "done" if reason is None else "failed", "reason": reason,
                        "done_at": done_at})


def workers(config: Config, systems: Iterable[str]) -> dict[str, PushWorker]:
    """One push worker per system whose push_requests a pipeline reads."""
    return {s: PushWorker(config, s) for s in systems}
