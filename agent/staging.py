"""Scheduled directions: net changes staged on the target until the direction's cron window.

A direction of an entity with a cron schedule keeps reading the log (so the PostgreSQL slot
and the binlog position keep advancing), but instead of applying a change it merges it into
``<state_schema>.staged_changes`` on the target: one row per record holding the last value
of every column the record's changes carried, plus the column values from *before* the
first staged change (the old image, where the source logged one). The merge is written in
the batch's target transaction, beside the checkpoint, so it is exactly-once like any apply.

At the window (the first cron time after the oldest staged change of the entity) the
pipeline thread turns every staged record back into one synthetic row change (old image ->
last values) and applies them through the :class:`~agent.apply.Applier` under the rules as
they stand then, deleting the staged rows in the same transaction. A window missed while
the agent was down fires as soon as it runs again.

``manual`` directions stage nothing: their changes do not flow at all; records move only
when pushed (``cdc-agent push`` or ``push_requests``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from croniter import croniter

from agent.codec import decode_row, encode_row
from agent.config import Config, Direction, PostgresSystem
from agent.events import UNCHANGED, Op, Row, RowChange, TableId
from agent.ports import Sink, Write, WriteKind
from agent.routes import Route

log = logging.getLogger(__name__)

STAGED = "staged_changes"
CLOCK_ENV = "CDC_AGENT_CLOCK_FILE"
"""Tests only: a file holding an ISO time that the schedule clock reads as "now"."""

_COLUMNS = ("direction", "entity", "record", "op", "new_values", "old_values",
            "source_commit_ts", "staged_at")


def now() -> datetime:
    """The schedule clock: UTC now, or the time in the file named by ``CDC_AGENT_CLOCK_FILE``."""
    path = os.environ.get(CLOCK_ENV)
    if path:
        try:
            text = Path(path).read_text().strip()
            when = datetime.fromisoformat(text)
            return when if when.tzinfo else when.replace(tzinfo=UTC)
        except (OSError, ValueError):
            pass
    return datetime.now(UTC)


def _stamp(when: datetime) -> str:
    """A sortable UTC text timestamp (the staged_at column compares as text)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


@dataclass
class Staged:
    """One record's net change waiting for its window."""

    direction: str
    entity: str
    record: str
    op: str  # "upsert" or "delete"
    new: dict[str, object]
    old: dict[str, object] | None  # values before the first staged change (None: unknown)
    ts: datetime | None
    staged_at: datetime

    @property
    def id(self) -> str:
        return staged_id(self.direction, self.entity, self.record)


def staged_id(direction: str, entity: str, record: str) -> str:
    """The staged row's primary key."""
    return json.dumps([direction, entity, record], ensure_ascii=False)


def _known(row: Row | None, columns: Iterable[str]) -> dict[str, object]:
    if row is None:
        return {}
    return {c: row[c] for c in columns if c in row and row[c] is not UNCHANGED}


def merge(previous: Staged | None, route: Route, change: RowChange, ts: datetime | None,
          when: datetime) -> Staged:
    """The record's net change after ``change`` (pure).

    The last value of each column wins; the old image is the one of the first staged change
    (a later change's old image is the earlier change's result, not the state the target
    last saw).
    """
    columns = list(route.reads)
    image = change.old if change.op is Op.DELETE else change.new
    values = _known(image, columns)
    record = str(values.get(route.source_key))
    if previous is None:
        old = None if change.op is Op.INSERT or change.old is None else _known(change.old, columns)
        return Staged(route.direction, route.entity, record,
                      "delete" if change.op is Op.DELETE else "upsert", values, old or None, ts,
                      when)
    previous.new = {**previous.new, **values}
    previous.op = "delete" if change.op is Op.DELETE else "upsert"
    if previous.ts is None or (ts is not None and ts > previous.ts):
        previous.ts = ts
    return previous


def change_of(staged: Staged, table: TableId) -> RowChange:
    """The synthetic row change that applies a staged record (old image -> last values)."""
    if staged.op == "delete":
        return RowChange(table, Op.DELETE, None, dict(staged.new))
    return RowChange(table, Op.UPDATE, dict(staged.new),
                     None if staged.old is None else dict(staged.old))


def to_write(staged: Staged, table: TableId) -> Write:
    """The staged_changes row (values encoded exactly with agent.codec)."""
    return Write(table, WriteKind.UPSERT, {"id": staged.id}, {
        "direction": staged.direction, "entity": staged.entity, "record": staged.record,
        "op": staged.op, "new_values": encode_row(staged.new) or "{}",
        "old_values": encode_row(staged.old),
        "source_commit_ts": staged.ts.isoformat() if staged.ts else None,
        "staged_at": _stamp(staged.staged_at)}, {}, staged.entity, staged.record)


def from_row(row: Mapping[str, object]) -> Staged:
    """A staged_changes row read back."""
    ts = row.get("source_commit_ts")
    return Staged(str(row["direction"]), str(row["entity"]), str(row["record"]), str(row["op"]),
                  decode_row(str(row["new_values"])) or {},
                  decode_row(None if row.get("old_values") is None else str(row["old_values"])),
                  datetime.fromisoformat(str(ts)) if ts else None,
                  datetime.fromisoformat(str(row["staged_at"])))


@dataclass(frozen=True)
class Window:
    """An entity's schedule in one direction: ``mode`` continuous, manual or cron."""

    mode: str
    cron: str | None = None

    def next_after(self, when: datetime) -> datetime:
        assert self.cron is not None
        fire: datetime = croniter(self.cron, when.astimezone(UTC)).get_next(datetime)
        return fire


Store = Callable[[str], Mapping[str, str]]
"""direction -> {entity: oldest staged_at} (read outside the pipeline's transaction)."""
Lister = Callable[[str, str], Sequence[str]]
"""(direction, entity) -> staged IDs."""


class Scheduler:
    """Staging and window application for one direction (used by the pipeline thread only)."""

    def __init__(self, direction: str, state_schema: str, windows: Mapping[str, Window],
                 summary: Store, ids: Lister, clock: Callable[[], datetime] = now) -> None:
        self.direction = direction
        self.table = TableId(state_schema, STAGED)
        self.windows = dict(windows)
        self._summary = summary
        self._ids = ids
        self._clock = clock
        self._next: dict[str, datetime] | None = None  # entity -> its window (when staged)

    def mode(self, entity: str) -> str:
        window = self.windows.get(entity)
        return "continuous" if window is None else window.mode

    @property
    def stages(self) -> bool:
        """Whether any entity of the direction is scheduled by cron."""
        return any(w.mode == "cron" for w in self.windows.values())

    def reload(self) -> None:
        """Forget the windows in memory; they are read again from the staged rows."""
        self._next = None

    def stage(self, sink: Sink, changes: Sequence[tuple[Route, RowChange, datetime | None]]
              ) -> list[Write]:
        """The staged_changes writes for ``changes`` (read-merge-write, rows locked)."""
        when = self._clock()
        pending: dict[str, Staged] = {}
        ids = [staged_id(self.direction, r.entity, str(_record(r, c))) for r, c, _ in changes]
        stored = sink.fetch(self.table, "id", list(dict.fromkeys(ids)), _COLUMNS)
        for (route, change, ts), ident in zip(changes, ids, strict=True):
            previous = pending.get(ident)
            if previous is None and ident in stored:
                previous = from_row({"id": ident, **stored[ident]})
            pending[ident] = merge(previous, route, change, ts, when)
            self._schedule(route.entity, when)
        return [to_write(s, self.table) for s in pending.values()]

    def _schedule(self, entity: str, when: datetime) -> None:
        if self._next is not None and entity not in self._next:
            self._next[entity] = self.windows[entity].next_after(when)

    def due(self) -> list[str]:
        """Entities whose window has come (a window missed while down counts)."""
        if not self.stages:
            return []
        if self._next is None:
            try:
                oldest = self._summary(self.direction)
            except Exception as error:  # the gauge-like read must not stop the direction
                log.warning("%s: staged changes could not be read: %s", self.direction,
                            type(error).__name__)
                return []
            self._next = {
                entity: self.windows[entity].next_after(datetime.fromisoformat(stamp))
                for entity, stamp in oldest.items()
                if self.mode(entity) == "cron"}
        current = self._clock()
        return [e for e, fire in self._next.items() if fire <= current]

    def take(self, sink: Sink, entity: str) -> tuple[list[Staged], list[Write]]:
        """The entity's staged records (locked) and the writes deleting them."""
        ids = list(self._ids(self.direction, entity))
        rows = sink.fetch(self.table, "id", ids, _COLUMNS) if ids else {}
        staged = [from_row({"id": i, **rows[i]}) for i in ids if i in rows]
        deletes = [Write(self.table, WriteKind.DELETE, {"id": s.id}, {}, {}, s.entity, s.record)
                   for s in staged]
        return staged, deletes

    def applied(self, entity: str) -> None:
        """The entity's staged records were applied (or are about to be, in this commit)."""
        if self._next is not None:
            self._next.pop(entity, None)


def _record(route: Route, change: RowChange) -> object:
    image = change.old if change.op is Op.DELETE else change.new
    return (image or {}).get(route.source_key)


def scheduler_for(config: Config, direction: Direction) -> Scheduler | None:
    """The direction's scheduler, or None when every entity flows continuously."""
    windows = {name: Window(e.schedule[direction.name].mode, e.schedule[direction.name].cron)
               for name, e in config.entities.items() if direction.name in e.schedule}
    if all(w.mode == "continuous" for w in windows.values()):
        return None
    from agent.wiring import mysql_params, names

    spec, schema = config.systems[direction.target], names(config).state_schema
    if isinstance(spec, PostgresSystem):
        from connectors.postgres import state as pg

        conninfo = spec.conninfo()
        return Scheduler(direction.name, schema, windows,
                         lambda d: pg.staged_summary(conninfo, schema, d),
                         lambda d, e: pg.staged_ids(conninfo, schema, d, e))
    from connectors.mysql import state as my

    params = mysql_params(spec)
    return Scheduler(direction.name, schema, windows,
                     lambda d: my.staged_summary(params, schema, d),
                     lambda d, e: my.staged_ids(params, schema, d, e))
