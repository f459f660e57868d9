"""Schema changes while streaming: an entity whose table lost a mapped column pauses.

A mapped column can disappear under a running agent (``ALTER TABLE ... DROP/RENAME COLUMN``):

* on the **source**, the change's row no longer carries a column the entity's route reads (the
  PostgreSQL Relation message and the MySQL table map name the columns; both readers build
  rows by name). Left alone the field would silently stop flowing, so a change that lacks one
  is a schema problem of its entity;
* on the **target**, a read or write fails with undefined column (PostgreSQL 42703, MySQL
  1054), raised by the connectors as :class:`~agent.errors.SchemaError`.

Neither is a poison row nor a crash: the entity *pauses*. From the first change that shows
the problem on, every change of the entity is written to ``<state_schema>.dead_letters`` with
error class ``schema`` -- in the batch's target transaction, beside the checkpoint, so the
source position keeps advancing and nothing is lost or doubled -- while other entities flow.
One ERROR names the entity, the system, the table, the missing column(s) and the remedy, and
the gauge ``cdc_agent_entity_paused`` says 1.

A source-side pause found inside a batch is tentative until that batch commits (a rollback
replays the changes, which find it again at the same change), so the changes before the
ALTER still apply under the old mapping. A target-side pause is found by a failing
statement: the batch rolls back and the session restarts from the checkpoint with the entity
paused.

Resume: a paused entity stays paused for the life of its pipeline. After the configuration
is fixed and reloaded (SIGHUP; a reload is refused while a configured column is missing) or
the agent restarts, each new session first applies the parked ``schema`` letters, in order,
in one target transaction that also marks them ``retried`` (exactly once), and only then
reads new changes. Letters of a key that waits behind an earlier (row-error) dead letter
become ``waiting`` letters of that key instead. If a parked change still lacks a mapped
column under the new configuration, the entity stays paused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.errors import RowError, SchemaError
from agent.events import Op, RowChange, TableId
from agent.ports import Sink, Write, WriteKind
from agent.quarantine import Poison, dead_letter, letter_change
from agent.routes import Route, RouteTable

if TYPE_CHECKING:
    from agent.apply import Applier, Buffered

log = logging.getLogger(__name__)

SCHEMA = "schema"
"""The dead letters' ``error_class`` of the changes parked by a paused entity."""

RESUME_CHUNK = 1000
"""Parked changes applied per target transaction when an entity resumes."""

Report = Callable[[str, bool], None]
"""(entity, paused) -> None: how a pause and a resume are reported (the metric)."""


class SchemaDrift(Exception):
    """An entity's table on ``system`` lacks mapped ``columns``: pause the entity."""

    def __init__(self, entity: str, system: str, table: TableId | str,
                 columns: Sequence[str], side: str) -> None:
        self.entity = entity
        self.system = system
        self.table = str(table)
        self.columns = tuple(columns)
        self.side = side  # "source" or "target"
        super().__init__(f"{entity}: {system} table {self.table} has no column "
                         f"{', '.join(self.columns) or '(unknown)'}")


def missing_columns(route: Route, change: RowChange) -> list[str]:
    """Source columns ``route`` reads that ``change``'s row does not carry (pure).

    An INSERT/UPDATE row holds every column of the table (an unchanged TOAST value is there
    as UNCHANGED); a DELETE may carry only the key, so only the key is required of it. A
    change without any row image says nothing.
    """
    if change.op is Op.DELETE:
        row, needed = change.old, [route.source_key]
    else:
        row, needed = change.new, list(route.reads)
    if not row:
        return []
    return [c for c in needed if c not in row]


def source_drift(route: Route, change: RowChange) -> SchemaDrift | None:
    """The drift ``change`` shows for ``route``, if any."""
    missing = missing_columns(route, change)
    if not missing:
        return None
    return SchemaDrift(route.entity, route.source, route.source_table, missing, "source")


def target_drift(routes: RouteTable, writes: Sequence[Write], culprit: Write | None,
                 error: SchemaError) -> SchemaDrift | Poison | None:
    """What a failed target write means: the drift of the culprit's entity (or of the batch's,
    when all its writes belong to one), else a :class:`Poison` without culprit so that the
    session retries one write at a time; None for a write of no entity (the agent's own
    tables): that stays an error."""
    if culprit is None:
        entities = {w.entity for w in writes}
        culprit = writes[0] if len(entities) == 1 and writes else None
    if culprit is None:
        return Poison(None, RowError(SCHEMA, str(error)))
    return fetch_drift(routes, culprit.table, error, culprit.entity)


def fetch_drift(routes: RouteTable, table: TableId, error: SchemaError,
                entity: str | None = None) -> SchemaDrift | None:
    """The drift of the entity writing into target ``table`` (``entity`` when known)."""
    for route in routes.routes:
        if route.target_table == table and entity in (None, route.entity):
            return SchemaDrift(route.entity, route.target, table,
                               [error.column] if error.column else [], "target")
    return None


class Pauses:
    """The paused entities of one direction and their parked changes.

    ``load`` reads the direction's pending ``schema`` letters (oldest first) outside the
    pipeline's transaction; ``report`` is told of each pause and resume.
    """

    def __init__(self, direction: str, state_schema: str, target: str = "target",
                 load: Callable[[], Iterable[Mapping[str, Any]]] = lambda: ()) -> None:
        self.direction = direction
        self.state_schema = state_schema
        self.target = target
        self.table = TableId(state_schema, "dead_letters")
        self.report: Report = lambda entity, paused: None
        self._load = load
        self._paused: dict[str, str] = {}  # entity -> message, since a committed batch
        self._tentative: dict[str, str] = {}  # found in the open batch
        self._announced: set[str] = set()

    # -- state ------------------------------------------------------------------------------

    def paused(self, entity: str) -> bool:
        return entity in self._paused or entity in self._tentative

    @property
    def entities(self) -> list[str]:
        """Entities paused now (committed or in the open batch)."""
        return sorted({*self._paused, *self._tentative})

    def pause(self, drift: SchemaDrift, *, tentative: bool = False) -> None:
        """Pause ``drift.entity``; the first pause of an entity logs one ERROR."""
        message = self.describe(drift)
        (self._tentative if tentative else self._paused).setdefault(drift.entity, message)
        if drift.entity not in self._announced:
            self._announced.add(drift.entity)
            log.error("%s", message)
            self.report(drift.entity, True)

    def describe(self, drift: SchemaDrift) -> str:
        """The ERROR: what is missing where, what happens now and what to do."""
        columns = ", ".join(drift.columns) or "(a column the server did not name)"
        return (f"{self.direction}: entity {drift.entity} paused: {drift.system} table "
                f"{drift.table} has no column {columns} that entities.{drift.entity} maps "
                f"(dropped or renamed?). Its changes are parked in order in "
                f"{self.state_schema}.dead_letters on {self.target} (error_class {SCHEMA}); "
                f"other entities keep flowing. Fix entities.{drift.entity} (fields, key, link)"
                f" in the configuration, then reload (SIGHUP / systemctl reload): the parked "
                f"changes are applied first, in order, exactly once.")

    def committed(self) -> None:
        """The open batch committed: its pauses are real (its letters are stored)."""
        self._paused.update(self._tentative)
        self._tentative.clear()

    def rolled_back(self) -> None:
        """The open batch was abandoned: its changes are read again and found again."""
        self._tentative.clear()

    # -- the hot path -----------------------------------------------------------------------

    def affects(self, routes: RouteTable, buffer: Iterable[Buffered]) -> bool:
        """Whether some change of ``buffer`` must be parked (no side effects).

        Runs for every batch: the same test as :func:`missing_columns`, with the route's
        columns compared with a row's keys in C.
        """
        paused = bool(self._paused or self._tentative)
        for change, _, _ in buffer:
            for route in routes.routes_for(change.table):
                if paused and self.paused(route.entity):
                    return True
                if change.op is Op.DELETE:
                    if change.old and route.source_key not in change.old:
                        return True
                elif change.new and not change.new.keys() >= route.reads:
                    return True
        return False

    def parks(self, routes: RouteTable, change: RowChange) -> bool:
        """Whether ``change`` is parked: its entity is paused, or it shows that the entity's
        source table lost a mapped column (then the entity pauses, tentatively)."""
        for route in routes.routes_for(change.table):
            if self.paused(route.entity):
                return True
            drift = source_drift(route, change)
            if drift is not None:
                self.pause(drift, tentative=True)
                return True
        return False

    def letter(self, entity: str, key: str, change: RowChange, ts: datetime | None,
               position: str | None) -> Write:
        """The dead_letters row that parks one change of a paused entity."""
        message = self._paused.get(entity) or self._tentative.get(entity, "")
        return dead_letter(self.table, self.direction, entity, key, change, ts, position,
                           SCHEMA, message)

    # -- resume -----------------------------------------------------------------------------

    def resume(self, applier: Applier, sink: Sink, position: str | None) -> int:
        """Apply the parked changes of every entity that is not paused, oldest first, in
        target transactions of :data:`RESUME_CHUNK` with the checkpoint ``position`` (which
        does not move); returns
        how many were applied. Raises what applying raises (the caller restarts)."""
        letters = [r for r in self._load() if not self.paused(str(r["entity"]))]
        if not letters or position is None:
            self._report_flowing(applier.routes, {str(r["entity"]) for r in letters})
            return 0
        letters = self._still_matching(applier.routes, letters)
        waiting = [r for r in letters if applier.quarantine.blocks(str(r["entity"]),
                                                                   str(r["key"]))]
        held = {id(r) for r in waiting}
        ready = [r for r in letters if id(r) not in held]
        now = datetime.now(UTC).replace(tzinfo=None)
        waits = [Write(self.table, WriteKind.UPDATE, {"id": r["id"]},
                       {"error_class": "waiting",
                        "message": "waits behind an earlier change of this key"},
                       {}, str(r["entity"]), str(r["key"])) for r in waiting]
        # A long pause parks many changes: a target transaction per chunk, each marking its
        # letters retried, so a crash midway resumes after the last chunk committed.
        chunks = [ready[i:i + RESUME_CHUNK] for i in range(0, len(ready), RESUME_CHUNK)]
        for n, chunk in enumerate(chunks or [[]]):
            marks = (waits if n == 0 else []) + [
                Write(self.table, WriteKind.UPDATE, {"id": r["id"]},
                      {"status": "retried", "resolved_at": now},
                      {}, str(r["entity"]), str(r["key"])) for r in chunk]
            if not marks:
                continue
            sink.begin(self.direction)
            try:
                if chunk:
                    applier.apply(sink, [letter_change(r) for r in chunk])
                applier.write(sink, marks)
                sink.commit(self.direction, position, datetime.now(UTC))
            except BaseException:
                sink.rollback()
                raise
            applier.quarantine.committed()
        for entity in sorted({str(r["entity"]) for r in letters}):
            count = sum(1 for r in ready if r["entity"] == entity)
            log.info("%s: entity %s resumed: %d parked change(s) applied in order%s",
                     self.direction, entity, count,
                     "" if count == sum(1 for r in letters if r["entity"] == entity)
                     else " (the others wait behind a dead letter of their key)")
        self._report_flowing(applier.routes, set())
        return len(ready)

    def _still_matching(self, routes: RouteTable,
                        letters: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Letters whose changes the routes can read; an entity with one that still lacks a
        mapped column stays paused (all its letters stay parked)."""
        for row in letters:
            entity = str(row["entity"])
            if self.paused(entity):
                continue
            change = letter_change(row)[0]
            for route in routes.routes_for(change.table):
                drift = source_drift(route, change) if route.entity == entity else None
                if drift is not None:
                    self.pause(drift)
                    break
        return [r for r in letters if not self.paused(str(r["entity"]))]

    def _report_flowing(self, routes: RouteTable, parked: set[str]) -> None:
        for entity in sorted({r.entity for r in routes.routes}):
            if not self.paused(entity) and entity not in parked:
                self._announced.discard(entity)
                self.report(entity, False)
