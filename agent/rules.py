"""Rules: source row changes -> target writes. Pure: no I/O.

For a batch of changes the pipeline first asks :func:`lookups` which target rows it must
read, fetches them once, and then :func:`plan` walks the changes in order against a
:class:`TargetView` that each planned write updates. That gives per-record order, the
second loop-prevention layer (a change whose values already equal the target's is not
written) and a place for ownership and conflict rules, without one query per change.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from agent.events import UNCHANGED, Op, Row, RowChange, TableId
from agent.ports import Write, WriteKind
from agent.routes import DeleteMode, LinkKind, Route, RouteTable

LookupKey = tuple[TableId, str, tuple[str, ...]]
"""A target table, the locator column, and the columns to read."""


@dataclass
class Plan:
    """The writes for a batch, and how many changes were skipped for which reason."""

    writes: list[Write] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


class TargetView:
    """The target's rows as the batch has left them so far."""

    def __init__(self) -> None:
        self._rows: dict[tuple[TableId, str], dict[object, dict[str, object] | None]] = {}

    def load(self, table: TableId, locator: str, rows: Mapping[object, Mapping[str, object]],
             asked: Iterable[object]) -> None:
        """Record fetched rows; keys asked for but not returned are known to be absent."""
        known = self._rows.setdefault((table, locator), {})
        for key in asked:
            found = rows.get(key)
            known.setdefault(key, dict(found) if found is not None else None)

    def get(self, route: Route, key: object) -> dict[str, object] | None:
        return self._rows.get((route.target_table, route.locator), {}).get(key)

    def put(self, route: Route, key: object, values: Mapping[str, object] | None) -> None:
        rows = self._rows.setdefault((route.target_table, route.locator), {})
        if values is None:
            rows[key] = None
            return
        current = rows.get(key) or {}
        rows[key] = {**current, **values}


def source_row(change: RowChange) -> Row:
    """The row image that identifies a change's record."""
    if change.op is Op.DELETE:
        return change.old or {}
    return change.new or {}


def lookups(table: RouteTable, changes: Iterable[RowChange]) -> dict[LookupKey, set[object]]:
    """Which target rows (by locator value) the batch needs to see."""
    needed: dict[LookupKey, set[object]] = {}
    for change in changes:
        for route in table.routes_for(change.table):
            key = route.locate(source_row(change))
            if key is None:
                continue
            columns = tuple(f.target_column for f in route.flowing)
            if route.delete_flag is not None:
                columns = (*columns, route.delete_flag[0])
            needed.setdefault((route.target_table, route.locator, columns), set()).add(key)
    return needed


def plan(table: RouteTable, changes: Iterable[RowChange], view: TargetView) -> Plan:
    """Turn changes into target writes, in order, updating ``view`` as it goes."""
    result = Plan()
    for change in changes:
        routes = table.routes_for(change.table)
        if not routes:
            result.skipped["filter"] += 1
        for route in routes:
            _plan_one(route, change, view, result)
    return result


def _plan_one(route: Route, change: RowChange, view: TargetView, result: Plan) -> None:
    if change.op is Op.DELETE:
        _plan_delete(route, change.old or {}, view, result)
    else:
        _plan_upsert(route, change.new or {}, view, result)


def _mapped_values(route: Route, row: Row) -> dict[str, object]:
    values: dict[str, object] = {}
    for f in route.flowing:
        if f.source_column not in row:
            continue
        value = row[f.source_column]
        if value is UNCHANGED:
            continue
        values[f.target_column] = f.convert(value)
    return values


def _plan_upsert(route: Route, row: Row, view: TargetView, result: Plan) -> None:
    key = route.locate(row)
    values = _mapped_values(route, row)
    source_key = str(row.get(route.source_key))
    if key is None:
        if not route.may_create(row):
            result.skipped["filter"] += 1
            return
        result.writes.append(Write(route.target_table, WriteKind.INSERT, {}, values,
                                   dict(route.defaults), route.entity, source_key))
        return
    current = view.get(route, key)
    if current is None:
        if not route.may_create(row):
            result.skipped["filter"] += 1
            return
        result.writes.append(Write(route.target_table, WriteKind.UPSERT, {route.locator: key},
                                   values, dict(route.defaults), route.entity, source_key))
        view.put(route, key, values)
        return
    diff = {c: v for c, v in values.items() if not same_value(current.get(c, _ABSENT), v)}
    if not diff:
        result.skipped["noop"] += 1
        return
    result.writes.append(Write(route.target_table, WriteKind.UPDATE, {route.locator: key}, diff,
                               {}, route.entity, source_key))
    view.put(route, key, diff)


def _plan_delete(route: Route, row: Row, view: TargetView, result: Plan) -> None:
    key = route.locate(row)
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


def _is_01(a: object, b: object) -> bool:
    """MySQL has no boolean type: tinyint 0/1 stands for false/true."""
    return {a, b} <= {0, 1}


def is_linked(route: Route, row: Row) -> bool:
    """Whether a source row already knows its target row."""
    return route.link is not LinkKind.SOURCE_HOLDS_KEY or row.get(route.link_column) is not None
