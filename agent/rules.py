"""Rules: source row changes -> target writes. Pure: no I/O.

For a batch of changes the pipeline first asks :func:`lookups` which target rows it must
read, fetches them once, and then :func:`plan` walks the changes in order against a
:class:`TargetView` that each planned write updates. That gives per-record order, the
second loop-prevention layer (a change whose values already equal the target's is not
written) and a place for ownership and conflict rules, without one query per change.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from agent.conflicts import Conflict, RecentChanges, Remedy, newest_wins
from agent.events import UNCHANGED, Op, Row, RowChange, TableId
from agent.ports import Write, WriteKind
from agent.routes import DeleteMode, FieldRoute, LinkKind, Route, RouteTable

LookupKey = tuple[TableId, str, tuple[str, ...]]
Change = RowChange | tuple[RowChange, dt.datetime | None]
"""A target table, the locator column, and the columns to read."""


_Rows = dict[object, dict[str, object] | None]
Written = dict[tuple[TableId, str], _Rows]
"""Target rows by (table, locator) and locator value."""


@dataclass
class Plan:
    """What a batch does: target writes, corrections of the source, recorded conflicts."""

    writes: list[Write] = field(default_factory=list)
    remedies: list[Remedy] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    links: list[tuple[int, Route, Row]] = field(default_factory=list)
    """INSERTs whose generated key must be written back: (index in writes, route, source row)."""
    deferred: list[Change] = field(default_factory=list)
    """Changes of a row whose target key is being generated in this round: plan them next."""
    written: Written = field(default_factory=dict)
    """The target rows the writes change, as they leave them (None: deleted)."""


_PENDING = object()


@dataclass(frozen=True)
class Judge:
    """What decisions need besides the change and the target's rows.

    ``recent``: when each side last changed fields both own (shared by both directions);
    ``links``: target keys generated for source rows whose write-back may not have landed
    yet, so a quick second change of the row updates it instead of creating it twice.
    """

    recent: RecentChanges = field(default_factory=RecentChanges)
    links: OrderedDict[tuple[str, str], object] = field(default_factory=OrderedDict)
    link_capacity: int = 100_000

    def link_of(self, entity: str, source_key: object) -> object:
        return self.links.get((entity, str(source_key)))

    def remember_link(self, entity: str, source_key: object, target_key: object) -> None:
        self.links[(entity, str(source_key))] = target_key
        self.links.move_to_end((entity, str(source_key)))
        while len(self.links) > self.link_capacity:
            self.links.popitem(last=False)

    def forget_link(self, entity: str, source_key: object) -> None:
        self.links.pop((entity, str(source_key)), None)


class TargetView:
    """The target's rows as the batch has left them so far."""

    def __init__(self) -> None:
        self._rows: Written = {}
        self.written: Written = {}
        """The rows the planned writes change, as they leave them (None: deleted)."""
        # Per route object: its rows and its written rows, so a lookup per change hashes no
        # TableId.
        self._by_route: dict[int, tuple[Route, _Rows, _Rows]] = {}

    def _of(self, route: Route) -> tuple[Route, _Rows, _Rows]:
        hit = self._by_route.get(id(route))
        if hit is None or hit[0] is not route:
            where = (route.target_table, route.locator)
            hit = (route, self._rows.setdefault(where, {}), self.written.setdefault(where, {}))
            self._by_route[id(route)] = hit
        return hit

    def load(self, table: TableId, locator: str, rows: Mapping[object, Mapping[str, object]],
             asked: Iterable[object], newer: Written | None = None) -> None:
        """Record fetched rows; keys asked for but not returned are known to be absent.

        ``newer``: rows a batch not yet committed writes (its view's :attr:`written`); they
        are taken as that batch leaves them instead of as read.
        """
        known = self._rows.setdefault((table, locator), {})
        ahead = newer.get((table, locator)) if newer else None
        for key in asked:
            if ahead is not None and key in ahead:
                known.setdefault(key, ahead[key])
                continue
            found = rows.get(key)
            if found is not None and not isinstance(found, dict):
                found = dict(found)  # the view never changes a row in place: no copy needed
            known.setdefault(key, found)

    def get(self, route: Route, key: object) -> dict[str, object] | None:
        return self._of(route)[1].get(key)

    def put(self, route: Route, key: object, values: Mapping[str, object] | None) -> None:
        """The planned write of the row ``key`` of ``route``'s target sets ``values``
        (None: deletes it)."""
        _, rows, changed = self._of(route)
        if values is None:
            rows[key] = changed[key] = None
            return
        current = rows.get(key) or {}
        rows[key] = changed[key] = {**current, **values}


def source_row(change: RowChange) -> Row:
    """The row image that identifies a change's record."""
    if change.op is Op.DELETE:
        return change.old or {}
    return change.new or {}


def lookups(table: RouteTable, changes: Iterable[RowChange],
            judge: Judge | None = None) -> dict[LookupKey, set[object]]:
    """Which target rows (by locator value) the batch needs to see (key-map routes: the
    target keys ``judge`` knows for their source keys)."""
    needed: dict[LookupKey, set[object]] = {}
    keys: dict[int, set[object]] = {}  # per route (by id): computed once per batch, not per row
    for change in changes:
        row = source_row(change)
        for route in table.routes_for(change.table):
            key = _locate(route, row, judge)
            if key is None:
                continue
            found = keys.get(id(route))
            if found is None:
                columns = tuple(f.target_column for f in route.fields)
                if route.delete_flag is not None:
                    columns = (*columns, route.delete_flag[0])
                found = keys[id(route)] = needed.setdefault(
                    (route.target_table, route.locator, columns), set())
            found.add(key)
    return needed


def plan(table: RouteTable, changes: Iterable[Change], view: TargetView,
         judge: Judge | None = None) -> Plan:
    """Turn changes into target writes, in order, updating ``view`` as it goes.

    ``changes`` are row changes, or (row change, source commit time) pairs; the time is
    what ``conflict: newest`` compares.
    """
    result = Plan()
    judge = judge or Judge()
    for item in changes:
        change, ts = item if isinstance(item, tuple) else (item, None)
        routes = table.routes_for(change.table)
        if not routes:
            result.skipped["filter"] += 1
        for route in routes:
            if change.op is Op.DELETE:
                _plan_delete(route, change.old or {}, view, result, judge)
                continue
            row = change.new or {}
            key = route.locate(row)
            if key is None and _wait_for_link(route, row, change, ts, result, judge):
                continue
            _plan_upsert(route, change, row, key, ts, view, result, judge)
    result.written = view.written
    return result


def record_changes(table: RouteTable, change: RowChange, ts: dt.datetime,
                   recent: RecentChanges) -> None:
    """Note when this side changed fields that both sides own (for ``conflict: newest``)."""
    if change.op is Op.DELETE or change.new is None:
        return
    for route in table.routes_for(change.table):
        if not route.shared:
            continue
        record = route.noted(change.new)
        if record is None:
            continue
        for f in route.shared:
            if _changed(f, change) is not False:
                recent.record(route.entity, str(record), f.name, route.source, ts,
                              change.new.get(f.source_column))


def _source_value(f: FieldRoute, row: Row) -> object:
    value = row.get(f.source_column, UNCHANGED)
    return value


def _changed(f: FieldRoute, change: RowChange) -> bool | None:
    """Whether the source change touched the field; None when the source logged no old row."""
    new = (change.new or {}).get(f.source_column, UNCHANGED)
    if new is UNCHANGED:
        return False
    old_row = change.old
    if old_row is None or f.source_column not in old_row:
        return None
    old = old_row[f.source_column]
    return old is not UNCHANGED and not same_value(old, new)


def _wait_for_link(route: Route, row: Row, change: RowChange, ts: dt.datetime | None,
                   result: Plan, judge: Judge) -> bool:
    """Defer a change of a row (that shows no target key) whose target key is being
    generated in this same round."""
    if judge.link_of(route.entity, row.get(route.source_key)) is _PENDING:
        result.deferred.append((change, ts))
        return True
    return False


def _plan_upsert(route: Route, change: RowChange, row: Row, key: object,
                 ts: dt.datetime | None, view: TargetView, result: Plan, judge: Judge) -> None:
    if key is None:
        key = judge.link_of(route.entity, row.get(route.source_key))
    if key is None:
        if _plan_create(route, row, None, result):
            judge.remember_link(route.entity, row.get(route.source_key), _PENDING)
        return
    current = view.get(route, key)
    if current is None:
        if _plan_create(route, row, key, result):
            view.put(route, key, result.writes[-1].values)
        return
    diff: dict[str, object] = {}
    get, held = row.get, current.get
    for source_column, target_column, f in route.columns:
        if f is not None:
            _plan_field(route, f, change, ts, key, current, diff, result, judge)
            continue
        # Inlined _plan_value for a plain source-owned field: the hot path of a catch-up.
        # same_value implies ==, so a value that is not == differs at once.
        value = get(source_column, UNCHANGED)
        if value is UNCHANGED:
            continue
        now = held(target_column, _ABSENT)
        if now == value and ((type(now) is type(value) and type(value) in _PLAIN)
                             or same_value(now, value)):
            continue
        diff[target_column] = value
    if not diff:
        result.skipped["noop"] += 1
        return
    result.writes.append(Write(route.target_table, WriteKind.UPDATE, {route.locator: key}, diff,
                               {}, route.entity, str(row.get(route.source_key))))
    view.put(route, key, diff)


def _plan_create(route: Route, row: Row, key: object, result: Plan) -> bool:
    """Create the target row with every mapped field (the target's own fields start from the
    source's values) plus the defaults; False when the create rule says not yet."""
    if not route.may_create(row):
        result.skipped["filter"] += 1
        return False
    values = {f.target_column: f.convert(v) for f in route.fields
              if (v := _source_value(f, row)) is not UNCHANGED}
    source_key = str(row.get(route.source_key))
    if key is None:
        result.links.append((len(result.writes), route, row))
        result.writes.append(Write(route.target_table, WriteKind.INSERT, {}, values,
                                   dict(route.defaults), route.entity, source_key))
    else:
        result.writes.append(Write(route.target_table, WriteKind.UPSERT, {route.locator: key},
                                   values, dict(route.defaults), route.entity, source_key))
    return True


def _plan_field(route: Route, f: FieldRoute, change: RowChange, ts: dt.datetime | None,
                key: object, current: Mapping[str, object], diff: dict[str, object],
                result: Plan, judge: Judge) -> None:
    if f.owner != "both" or f.conflict != "newest":  # the hot path of a catch-up
        _plan_value(route, f, change, ts, str(key), current, diff, result, judge)
        return
    before = len(result.conflicts) + len(result.remedies)
    _plan_value(route, f, change, ts, str(key), current, diff, result, judge)
    if len(result.conflicts) + len(result.remedies) > before:
        _unsettle(route, f, str(key), key, judge)


def _plan_value(route: Route, f: FieldRoute, change: RowChange, ts: dt.datetime | None,
                record: str, current: Mapping[str, object], diff: dict[str, object],
                result: Plan, judge: Judge) -> None:
    value = _source_value(f, change.new or {})
    if value is UNCHANGED:
        return
    wanted = f.convert(value)
    now = current.get(f.target_column, _ABSENT)
    if same_value(now, wanted):
        return
    if f.owner == route.source:
        diff[f.target_column] = wanted
        return
    changed = _changed(f, change)  # only ownership and conflict rules need it
    if f.owner == route.target:
        # Only a change known to touch the field is a violation. Without the old row (no
        # REPLICA IDENTITY FULL; `check` names it) a stale value is not one: the owner's
        # newer value is on its way, and "reverting" to it early would run ahead of it.
        if changed:
            _foreign_change(route, f, change, ts, record, value, now, result)
    elif changed is False:
        return  # the target's change is on its way here; do not overwrite it with a stale value
    elif changed is None or same_value(now, f.convert((change.old or {})[f.source_column])):
        if f.conflict == "newest" and _outdated(route, f, change, ts, record, value, judge,
                                                result):
            return
        diff[f.target_column] = wanted  # no conflict (or no old row to tell)
        _wrote(judge, route, f, record, route.target, ts, wanted)
        if f.conflict == "newest":
            _restore_source(route, f, change, record, value, ts, result, judge)
    elif _conflict(route, f, change, ts, record, now, result, judge):
        diff[f.target_column] = wanted  # it won
        _wrote(judge, route, f, record, route.target, ts, wanted)
        if f.conflict == "newest":
            _restore_source(route, f, change, record, value, ts, result, judge)


def _foreign_change(route: Route, f: FieldRoute, change: RowChange, ts: dt.datetime | None,
                    record: str, value: object, now: object, result: Plan) -> None:
    """The source changed a field the target owns: record it, and revert unless told to keep."""
    result.skipped["ownership"] += 1
    resolution = f.on_foreign_change
    result.conflicts.append(Conflict(route.entity, record, f.name, route.direction, value, now,
                                     route.target, "owner", resolution, ts))
    if resolution == "revert" and now is not _ABSENT:
        source_key = (change.new or {}).get(route.source_key)
        result.remedies.append(Remedy(route.source_table, (route.source_key, source_key),
                                      {f.source_column: f.back(now)}, {f.source_column: value},
                                      route.entity, "revert"))


def _conflict(route: Route, f: FieldRoute, change: RowChange, ts: dt.datetime | None,
              record: str, now: object, result: Plan, judge: Judge) -> bool:
    """Both sides changed a field both own; True when the source's value wins."""
    value = _source_value(f, change.new or {})
    if f.conflict == "manual":
        winner, resolution = "none", "manual"
    elif f.conflict in (route.source, route.target):
        winner, resolution = f.conflict, f.conflict
    else:
        mine = ts if ts is not None else dt.datetime.max.replace(tzinfo=dt.UTC)
        theirs = _competitor(judge, route, f, record, now)
        wins = newest_wins(mine, theirs, me=route.source, tie=f.tie or route.source)
        winner, resolution = (route.source if wins else route.target), "newest"
        if not wins and theirs is not None:
            _concede(route, f, change, record, value, now, theirs, result, judge)
    result.conflicts.append(Conflict(route.entity, record, f.name, route.direction, value, now,
                                     winner, f.conflict, resolution, ts))
    return winner == route.source


AGENT = ":agent"
"""Suffix of the side under which :class:`RecentChanges` notes what the agent itself wrote
into that side (the time of the change the value came from, and the value)."""


def _wrote(judge: Judge, route: Route, f: FieldRoute, record: str, side: str,
           ts: dt.datetime | None, value: object) -> None:
    """Note that the agent writes ``value`` (from a change at ``ts``) into ``side``."""
    if f.owner == "both" and ts is not None:
        judge.recent.record(route.entity, record, f.name, side + AGENT, ts, value, last=True)


def _competitor(judge: Judge, route: Route, f: FieldRoute, record: str,
                now: object) -> dt.datetime | None:
    """When the change that put the target's current value there happened: a change of the
    target's own side, or one the agent wrote there; None when not known (provisional)."""
    for side in (route.target, route.target + AGENT):
        known = judge.recent.latest(route.entity, record, f.name, side)
        if known is not None and same_value(known[1], now):
            return known[0]
    return None


def _restore_source(route: Route, f: FieldRoute, change: RowChange, record: str,
                    value: object, ts: dt.datetime | None, result: Plan, judge: Judge) -> None:
    """This change's value goes to the target; make sure the source holds it too.

    The other direction may have written an older value into the source after this change
    committed (its provisional win, or a correction decided before it read this change).
    Then put this change's value back, where the source still holds exactly that value.
    """
    mine = ts if ts is not None else dt.datetime.max.replace(tzinfo=dt.UTC)
    written = judge.recent.latest(route.entity, record, f.name, route.source + AGENT)
    # An equal time is this side's own earlier change of the same logged second (a binlog
    # read behind gives its changes the end of their second): this later one wins.
    if written is None or written[0] > mine or same_value(written[1], value):
        return
    _remedy(route, f, change, record, value, written[1], mine, result, judge)


def _unsettle(route: Route, f: FieldRoute, record: str, key: object, judge: Judge) -> None:
    """After conflicts, both pipelines check the field again once it is quiet (see
    :func:`settle_write`): corrections decided on what was read so far can race."""
    if route.link is not LinkKind.MAP:  # the record is both targets' locator value
        judge.recent.unsettle(route.entity, record, f.name, key, (route.source, route.target))


def settle_write(route: Route, f: FieldRoute, key: object, current: Mapping[str, object],
                 judge: Judge) -> Write | None:
    """The write that puts the newest known change of a quiet field into the target, when the
    target holds a value known to be older (else None: equal, or a newer change of the
    target's side not read yet, which its own pipeline settles)."""
    record, recent = str(key), judge.recent
    mine = recent.latest(route.entity, record, f.name, route.source)
    theirs = recent.latest(route.entity, record, f.name, route.target)
    if mine is None and theirs is None:
        return None
    if mine is not None and (theirs is None or newest_wins(
            mine[0], theirs[0], me=route.source, tie=f.tie or route.source)):
        winner, ts = f.convert(mine[1]), mine[0]
    else:
        assert theirs is not None
        winner, ts = theirs[1], theirs[0]
    now = current.get(f.target_column, _ABSENT)
    if now is _ABSENT or same_value(now, winner):
        return None
    # Known to be older: the target side's last read change, what the agent wrote there
    # lately (a correction applied late can be the value there), the source's last change.
    stale = recent.written(route.entity, record, f.name, route.target + AGENT)
    if theirs is not None:
        stale.append(theirs[1])
    if mine is not None:
        stale.append(f.convert(mine[1]))
    if not any(same_value(now, v) for v in stale):
        return None
    _wrote(judge, route, f, record, route.target, ts, winner)
    return Write(route.target_table, WriteKind.UPDATE, {route.locator: key},
                 {f.target_column: winner}, {}, route.entity, record)


def _outdated(route: Route, f: FieldRoute, change: RowChange, ts: dt.datetime | None,
              record: str, value: object, judge: Judge, result: Plan) -> bool:
    """The target holds what the source had before, but the target's side made a newer
    change that the agent wrote over (a correction for it is on its way): this change lost.
    The source gets that newer value back instead."""
    latest = judge.recent.latest(route.entity, record, f.name, route.target)
    if latest is None or same_value(latest[1], f.convert(value)):
        return False
    mine = ts if ts is not None else dt.datetime.max.replace(tzinfo=dt.UTC)
    if newest_wins(mine, latest[0], me=route.source, tie=f.tie or route.source):
        return False
    _concede(route, f, change, record, value, latest[1], latest[0], result, judge)
    return True


def _concede(route: Route, f: FieldRoute, change: RowChange, record: str, value: object,
             now: object, theirs: dt.datetime, result: Plan, judge: Judge) -> None:
    """This change lost against the target's newer value (a late-read change of a
    whole-second binlog can): the source holds the loser, so put the target's value there."""
    _remedy(route, f, change, record, f.back(now), value, theirs, result, judge)


def _remedy(route: Route, f: FieldRoute, change: RowChange, record: str, restore: object,
            expect: object, ts: dt.datetime, result: Plan, judge: Judge) -> None:
    key = (change.new or {}).get(route.source_key)
    result.remedies.append(Remedy(route.source_table, (route.source_key, key),
                                  {f.source_column: restore}, {f.source_column: expect},
                                  route.entity, "conflict"))
    _wrote(judge, route, f, record, route.source, ts, restore)


def _locate(route: Route, row: Row, judge: Judge | None) -> object:
    """The row's locator value; a key-map route asks ``judge`` (loaded from the map)."""
    if route.link is not LinkKind.MAP:
        return route.locate(row)
    key = judge.link_of(route.entity, row.get(route.source_key)) if judge else None
    return None if key is _PENDING else key


def _plan_delete(route: Route, row: Row, view: TargetView, result: Plan,
                 judge: Judge | None = None) -> None:
    key = _locate(route, row, judge)
    if route.delete is DeleteMode.IGNORE or key is None:
        result.skipped["filter"] += 1
        return
    current = view.get(route, key)
    source_key = str(row.get(route.source_key))
    if route.delete is DeleteMode.FLAG and route.delete_flag is not None:
        column, value = route.delete_flag
        if current is None or same_value(current.get(column, _ABSENT), value):
            result.skipped["noop"] += 1
            return
        result.writes.append(Write(route.target_table, WriteKind.UPDATE, {route.locator: key},
                                   {column: value}, {}, route.entity, source_key))
        view.put(route, key, {column: value})
        return
    if current is None:
        result.skipped["noop"] += 1
        return
    result.writes.append(Write(route.target_table, WriteKind.DELETE, {route.locator: key}, {}, {},
                               route.entity, source_key))
    view.put(route, key, None)


_ABSENT = object()


def same_value(current: object, new: object) -> bool:
    """Whether the target already holds ``new`` (across engines' representations)."""
    kind = type(current)
    if kind is type(new) and kind in _PLAIN:  # the common case, decided at once
        return current == new
    if current is _ABSENT:
        return False
    if current is None or new is None:
        return current is None and new is None
    if isinstance(current, dt.datetime) and isinstance(new, dt.datetime):
        if (current.tzinfo is None) != (new.tzinfo is None):
            return False
        return current == new
    if isinstance(current, Decimal | int | float) and isinstance(new, Decimal | int | float):
        if isinstance(current, bool) != isinstance(new, bool) and not _is_01(current, new):
            return False
        return current == new
    if isinstance(current, bytes | bytearray | memoryview) and isinstance(new, bytes | bytearray):
        return bytes(current) == bytes(new)
    return type(current) is type(new) and current == new


_PLAIN = frozenset({str, int, Decimal, float})
"""Types whose values of the same type are the same exactly when equal."""


def _is_01(a: object, b: object) -> bool:
    """MySQL has no boolean type: tinyint 0/1 stands for false/true."""
    return {a, b} <= {0, 1}
