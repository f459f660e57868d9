"""Conflict resolution for fields both sides own, and the record of every rejected value.

``newest`` compares commit times. Each direction only sees its own side's commit time, so
both pipelines of one agent share a :class:`RecentChanges` registry: a direction that meets
a conflict looks up when the other side last changed the field. Both directions apply the
same comparison and so pick the same winner; if the other side's change has not been read
yet, the change at hand wins provisionally, and the other direction, reading the later
change, corrects both sides if that one is newer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime

from agent.events import TableId


@dataclass(frozen=True, slots=True)
class Conflict:
    """A value that did not win: a sovereignty violation or a conflict between both owners."""

    entity: str
    record: str  # the record's canonical key (see Route.locate)
    field: str
    direction: str
    source_value: object
    target_value: object
    winner: str  # a system name, or "none" (parked for a person)
    rule: str  # "owner" or the field's conflict policy
    resolution: str  # "revert", "keep", "newest", "manual" or the winning system
    source_ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class Remedy:
    """A write into the direction's *source* system, done by the reverse pipeline.

    Used to revert a sovereignty violation, to correct a provisional conflict decision and
    to write a key created on the target back into the source row. Applied only while the
    row still holds ``expect`` (a newer change must never be overwritten by a correction).
    """

    table: TableId
    key: tuple[str, object]
    values: dict[str, object]
    expect: dict[str, object]
    entity: str
    reason: str  # "revert", "conflict" or "link"
    ident: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Names the remedy's row in the outbox (agent.remedies)."""

    @property
    def stored(self) -> bool:
        """Whether it goes through the outbox: reverts, key write-backs and key-map copies.
        Conflict corrections are decided again by the field's next change and its settle
        check (agent.rules), so they travel in memory only."""
        return self.reason != "conflict"


class RecentChanges:
    """When each side last changed a (entity, record, field), and to what: shared by both
    directions.

    Bounded: the oldest entries are forgotten first (a conflict needs the other side's
    change from the last moments, not from last week).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str, str, str], tuple[datetime, object]] = (
            OrderedDict())
        self._lock = threading.Lock()
        self._unsettled: dict[str, OrderedDict[tuple[str, str, str], tuple[float, object]]] = {}
        self._written: OrderedDict[tuple[str, str, str, str],
                                   deque[tuple[datetime, object]]] = OrderedDict()

    def record(self, entity: str, record: str, field: str, side: str, ts: datetime,
               value: object = None, *, last: bool = False) -> None:
        """Note a change of that side at ``ts``; the newest change is kept, or with ``last``
        the one noted last (what the agent wrote most recently, whatever its change time)."""
        key = (entity, record, field, side)
        with self._lock:
            if last:  # the latest is the end of the recent writes
                history = self._written.pop(key, None) or deque(maxlen=HISTORY)
                history.append((ts, value))
                self._written[key] = history
                while len(self._written) > self._capacity:
                    self._written.popitem(last=False)
                return
            previous = self._entries.pop(key, None)
            newer = previous is None or ts >= previous[0]
            self._entries[key] = (ts, value) if newer else previous  # type: ignore[assignment]
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def latest(self, entity: str, record: str, field: str, side: str
               ) -> tuple[datetime, object] | None:
        """The time and value of that side's last change of the field, if known (for a
        side noted with ``last``: the last one noted)."""
        key = (entity, record, field, side)
        with self._lock:
            written = self._written.get(key)
            return written[-1] if written else self._entries.get(key)

    def written(self, entity: str, record: str, field: str, side: str) -> list[object]:
        """The last values noted with ``last`` (what the agent wrote there lately)."""
        with self._lock:
            return [value for _, value in self._written.get((entity, record, field, side), ())]

    # -- fields to check again once they are quiet -----------------------------------------

    def unsettle(self, entity: str, record: str, field: str, key: object,
                 sides: tuple[str, str]) -> None:
        """A conflict touched the field: each side's pipeline checks it again once nothing
        has touched it for :data:`SETTLE_DELAY` (see :meth:`settled`)."""
        due = time.monotonic() + SETTLE_DELAY
        with self._lock:
            for side in sides:
                queue = self._unsettled.setdefault(side, OrderedDict())
                queue.pop((entity, record, field), None)
                queue[(entity, record, field)] = (due, key)
                while len(queue) > self._capacity:
                    queue.popitem(last=False)

    def settled(self, side: str, limit: int = 1000) -> list[tuple[str, str, str, object]]:
        """Fields whose quiet time has come, for the pipeline writing into ``side``:
        (entity, record, field, key), oldest first."""
        now, taken = time.monotonic(), list[tuple[str, str, str, object]]()
        with self._lock:
            queue = self._unsettled.get(side)
            while queue and len(taken) < limit:
                (entity, record, field), (due, key) = next(iter(queue.items()))
                if due > now:
                    break
                queue.popitem(last=False)
                taken.append((entity, record, field, key))
        return taken


HISTORY = 16
"""How many of the agent's last writes per field and side are remembered."""

SETTLE_DELAY = 1.0
"""Seconds a field touched by a conflict must stay quiet before it is checked again."""


def newest_wins(mine: datetime, theirs: datetime | None, *, me: str, tie: str) -> bool:
    """Whether the change at hand (from ``me``) beats the other side's latest change.

    An exact tie goes to ``tie``; both directions decide the same way.
    """
    if theirs is None:
        return True  # provisional: the other direction corrects it if its change is newer
    if mine != theirs:
        return mine > theirs
    return tie == me
