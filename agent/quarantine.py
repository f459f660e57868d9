"""Quarantine: a row that cannot be applied goes to dead_letters; its key's later changes wait.

When a write fails for a row reason (constraint, type, encoding), the batch is rolled back
and the session restarts from the checkpoint with the failing record's key blocked: its
changes are written to ``<state_schema>.dead_letters`` (in the same target transaction as
everything else, so exactly once) while every other key flows. The key stays blocked until
``cdc-agent dead-letters retry`` or ``discard`` settles its letters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent.codec import decode_row, encode_row
from agent.errors import RowError
from agent.events import Op, RowChange, TableId
from agent.ports import Write, WriteKind

RecordKey = tuple[str, str]  # (entity, source key)


def dead_letter(table: TableId, direction: str, entity: str, key: str, change: RowChange,
                ts: datetime | None, position: str | None, error_class: str,
                message: str) -> Write:
    """The dead_letters row holding one change (values encoded exactly, never logged)."""
    payload = json.dumps({"op": change.op.value, "table": str(change.table),
                          "new": encode_row(change.new), "old": encode_row(change.old),
                          "ts": ts.isoformat() if ts else None})
    return Write(table, WriteKind.INSERT, {}, {
        "entity": entity, "key": key, "direction": direction, "position": position,
        "error_class": error_class, "message": message, "payload": payload,
        "status": "pending"}, {}, entity, key)


def letter_change(row: Mapping[str, Any]) -> tuple[RowChange, datetime, str]:
    """A dead_letters row read back: its change, source commit time and position."""
    payload = json.loads(row["payload"])
    schema, _, table = payload["table"].partition(".")
    change = RowChange(TableId(schema, table), Op(payload["op"]), decode_row(payload["new"]),
                       decode_row(payload["old"]))
    ts = datetime.fromisoformat(payload["ts"]) if payload["ts"] else datetime.now(UTC)
    return change, ts, str(row["position"] or "")


class Poison(Exception):
    """A write failed for a row reason; ``record`` is its (entity, key) when known."""

    def __init__(self, record: RecordKey | None, error: RowError) -> None:
        self.record = record
        self.error = error
        super().__init__(str(error))


class Quarantine:
    """The blocked keys of one direction and how their changes become dead letters."""

    def __init__(self, direction: str, state_schema: str,
                 load: Callable[[], Iterable[RecordKey]] = lambda: (), refresh: float = 2.0
                 ) -> None:
        self.direction = direction
        self.table = TableId(state_schema, "dead_letters")
        self.isolating = False  # apply writes one at a time to find the failing one
        self._errors: dict[RecordKey, tuple[str, str]] = {}  # first error, until committed
        self._lettered: set[RecordKey] = set()
        self._blocked: set[RecordKey] = set()
        self._load = load
        self._refresh = refresh
        self._loaded_at = 0.0

    def reload(self, force: bool = False) -> None:
        """Take the blocked keys from the dead_letters table (retry/discard unblock them)."""
        if not force and (not self._blocked or
                          time.monotonic() - self._loaded_at < self._refresh):
            return
        self._blocked = set(self._load()) | set(self._errors)
        self._loaded_at = time.monotonic()

    def block(self, poison: Poison) -> None:
        """Remember the culprit of a failed batch; unknown culprit: isolate writes next time."""
        if poison.record is None:
            self.isolating = True
            return
        self._errors.setdefault(poison.record, (poison.error.error_class, str(poison.error)))
        self._blocked.add(poison.record)

    @property
    def active(self) -> bool:
        return bool(self._blocked)

    def blocks(self, entity: str, key: str) -> bool:
        record = (entity, key)
        if record in self._blocked and record not in self._errors and record not in self._lettered:
            # A retry or discard may have settled it since the last load: look again before
            # making this change wait behind letters that are gone.
            self.reload(force=True)
        return record in self._blocked

    def letter(self, entity: str, key: str, change: RowChange, ts: datetime | None,
               position: str | None) -> Write:
        """The dead_letters row for one change of a blocked key."""
        first = (entity, key) not in self._lettered
        self._lettered.add((entity, key))
        error_class, message = self._errors.get((entity, key), ("", "")) if first else ("", "")
        if not error_class:
            error_class, message = "waiting", "waits behind an earlier change of this key"
        return dead_letter(self.table, self.direction, entity, key, change, ts, position,
                           error_class, message)

    def committed(self) -> None:
        """A batch committed: its letters are stored, isolation found what it looked for."""
        for record in self._lettered:
            self._errors.pop(record, None)
        self._lettered.clear()
        self.isolating = False

    def rolled_back(self) -> None:
        """A batch was abandoned: its letters were not stored."""
        self._lettered.clear()
