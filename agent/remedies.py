"""The remedies outbox: reverts, corrections and key write-backs that survive a crash.

A direction that decides a remedy (see :class:`agent.conflicts.Remedy`) can only write into
its own target, so the reverse pipeline applies it. The remedy travels in memory for speed,
and reverts, key write-backs and key-map copies are also written into
``<state_schema>.remedies`` on the deciding direction's target, in the same transaction as the
decision (its conflict row, the INSERT that generated a key).
That table is on the reverse pipeline's *source* system: the reverse pipeline reads the
pending rows when it starts and every :data:`SWEEP_INTERVAL`, applies them, and marks them
done after its own commit. A crash between the two commits therefore loses nothing, and a
remedy applied twice is harmless: it is written only while the row still holds ``expect``.

Conflict corrections (``conflict: newest``) are not stored: they are decided from what both
pipelines have read so far and the next change of the field decides again; a crash loses at
most the correction of a field's last conflict (the conflict row records it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.codec import decode_row, decode_value, encode_row, encode_value
from agent.conflicts import Remedy
from agent.events import TableId
from agent.ports import Write, WriteKind

log = logging.getLogger(__name__)

TABLE = "remedies"
SWEEP_INTERVAL = 30.0
"""Seconds between two reads of the outbox (remedies written by `push` in another process
arrive this way; the pipeline's own arrive in memory at once)."""

Select = Callable[..., list[dict[str, Any]]]
"""``select(table, where)`` on the system holding the outbox (agent.records.select, bound)."""
Update = Callable[..., int]
"""``update(table, where, values)`` on that system (agent.records.update, bound)."""


def outbox_write(schema: str, applying_direction: str, remedy: Remedy) -> Write:
    """The outbox row for ``remedy``: written by the deciding direction into its target."""
    return Write(TableId(schema, TABLE), WriteKind.INSERT, {}, {
        "id": remedy.ident, "direction": applying_direction, "entity": remedy.entity,
        "reason": remedy.reason,
        "target_table": json.dumps([remedy.table.schema, remedy.table.name]),
        "key_column": remedy.key[0], "key_value": encode_value(remedy.key[1]),
        "new_values": encode_row(remedy.values), "expect": encode_row(remedy.expect),
        "status": "pending"}, {}, remedy.entity, str(remedy.key[1]))


def remedy_of(row: Mapping[str, Any]) -> Remedy:
    """The remedy an outbox row holds."""
    schema, name = json.loads(row["target_table"])
    return Remedy(TableId(schema, name), (row["key_column"], decode_value(row["key_value"])),
                  decode_row(row["new_values"]) or {}, decode_row(row["expect"]) or {},
                  row["entity"], row["reason"], ident=row["id"])


class RemedyStore:
    """One direction's view of the outbox on its source system.

    ``select``/``update`` reach the state schema of that system (bound by the wiring).
    """

    def __init__(self, direction: str, select: Select, update: Update,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.direction = direction
        self._select = select
        self._update = update
        self._clock = clock
        self._swept = float("-inf")

    def due(self) -> bool:
        """True when the outbox should be read again."""
        return self._clock() - self._swept >= SWEEP_INTERVAL

    def pending(self) -> list[Remedy]:
        """The remedies waiting for this direction, oldest first."""
        self._swept = self._clock()
        rows = self._select(TABLE, {"direction": self.direction, "status": "pending"},
                            "created_at")
        return [remedy_of(row) for row in rows]

    def settle(self, idents: Sequence[str]) -> None:
        """Mark remedies done once the transaction that handled them committed."""
        if idents:
            self._update(TABLE, {"id": list(idents)}, {"status": "done"})
