"""Routes: an entity's mapping compiled for one direction.

The configuration speaks of entities, sides and fields; the hot path wants, for a source
table, where each row goes and which columns flow. :func:`compile_routes` does that
translation once, so the rules never read the configuration models.
"""

from __future__ import annotations

import enum
from collections.abc import KeysView, Mapping
from dataclasses import dataclass, field

from agent.events import Row, TableId


class LinkKind(enum.Enum):
    """How a source row finds its target row."""

    TARGET_HOLDS_KEY = "target_column"  # target[link_column] == source key (unique on the target)
    SOURCE_HOLDS_KEY = "source_column"  # target key == source[link_column]
    MAP = "map"  # target key == the agent's key map entry for the source key (agent.keymap)


class CreateMode(enum.Enum):
    ALWAYS = "always"
    NEVER = "never"
    WHEN = "when"


class DeleteMode(enum.Enum):
    PROPAGATE = "propagate"
    IGNORE = "ignore"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Predicate:
    """``column`` in ``values`` (when ``values`` is given), or ``column`` is not NULL."""

    column: str
    values: frozenset[object] | None = None

    def holds(self, row: Row) -> bool:
        value = row.get(self.column)
        if self.values is None:
            return value is not None
        return value in self.values


@dataclass(frozen=True, slots=True)
class FieldRoute:
    """One mapped field in this direction.

    ``conflict`` (owner both): "newest", "manual" or the system that wins; ``tie`` the
    system that wins an exact tie of commit times. ``on_foreign_change`` (owned by the target):
    "revert" or "keep".
    """

    name: str
    source_column: str
    target_column: str
    owner: str  # a system name or "both"
    value_map: Mapping[object, object] | None = None
    conflict: str = "newest"
    tie: str | None = None
    on_foreign_change: str = "revert"

    def convert(self, value: object) -> object:
        """The target's value for a source value (value maps translate; others pass)."""
        if self.value_map is None or value is None:
            return value
        return self.value_map.get(value, value)

    def back(self, value: object) -> object:
        """The source's value for a target value (the value map read backwards)."""
        if self.value_map is None or value is None:
            return value
        for source_value, target_value in self.value_map.items():
            if target_value == value:
                return source_value
        return value


@dataclass(frozen=True, slots=True)
class Route:
    """Everything the rules need to move one entity's rows from source to target."""

    entity: str
    direction: str
    source_table: TableId
    source_key: str
    target_table: TableId
    target_key: str
    link: LinkKind
    link_column: str
    fields: tuple[FieldRoute, ...]
    create: CreateMode = CreateMode.ALWAYS
    create_when: tuple[Predicate, ...] = ()
    delete: DeleteMode = DeleteMode.PROPAGATE
    delete_flag: tuple[str, object] | None = None
    defaults: Mapping[str, object] = field(default_factory=dict)
    source: str = "source"  # system names
    target: str = "target"
    on_error: str = "quarantine"  # or "stop"
    # Derived once from the fields above (the catch-up hot path reads them per change).
    locator: str = field(init=False, repr=False, compare=False)
    """The target column that identifies the row."""
    locate_by: str | None = field(init=False, repr=False, compare=False)
    """The source column that holds the locator's value (None: the key map knows it)."""
    columns: tuple[tuple[str, str, FieldRoute | None], ...] = field(
        init=False, repr=False, compare=False)
    """Per field: (source column, target column, and None for a plain field -- owned by the
    source, no value map: planning it is a comparison -- else the field)."""
    shared: tuple[FieldRoute, ...] = field(init=False, repr=False, compare=False)
    """The fields both sides own (their changes are noted for ``conflict: newest``)."""
    reads: KeysView[str] = field(init=False, repr=False, compare=False)
    """The source columns the rules read (key, link, fields, create predicates), in that
    order; a set view, so a row's keys are compared with it in C."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "locator", self.link_column
                           if self.link is LinkKind.TARGET_HOLDS_KEY else self.target_key)
        object.__setattr__(self, "locate_by", None if self.link is LinkKind.MAP else
                           self.link_column if self.link is LinkKind.SOURCE_HOLDS_KEY
                           else self.source_key)
        object.__setattr__(self, "columns", tuple(
            (f.source_column, f.target_column,
             None if f.owner == self.source and f.value_map is None else f)
            for f in self.fields))
        object.__setattr__(self, "shared", tuple(f for f in self.fields if f.owner == "both"))
        link = [self.link_column] if self.link is LinkKind.SOURCE_HOLDS_KEY else []
        object.__setattr__(self, "reads", dict.fromkeys(
            [self.source_key, *link, *(f.source_column for f in self.fields),
             *(p.column for p in self.create_when)]).keys())

    @property
    def plain(self) -> bool:
        """Every field is plain: the source's value goes as it is."""
        return all(f is None for _, _, f in self.columns)

    def locate(self, row: Row) -> object:
        """The locator value for a source row (None: the row has no target counterpart yet,
        or, with a key map, none the row itself can tell: the map is consulted)."""
        by = self.locate_by
        return None if by is None else row.get(by)

    def noted(self, row: Row) -> object:
        """The key under which this side's changes of a row are noted for ``newest``: the
        locator, which the other direction compares; with a key map, the source's own key
        (the other direction looks it up by its target key, which is this one)."""
        if self.link is LinkKind.MAP:
            return row.get(self.source_key)
        return self.locate(row)

    def may_create(self, row: Row) -> bool:
        """Whether the target row may be created from this source row."""
        if self.create is CreateMode.NEVER:
            return False
        return all(p.holds(row) for p in self.create_when)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routes of one direction, looked up by source table."""

    direction: str
    by_table: Mapping[TableId, tuple[Route, ...]]

    shared: bool = field(init=False, repr=False, compare=False)
    """Whether some field is owned by both sides (then changes are noted for ``newest``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shared", any(
            r.shared for rs in self.by_table.values() for r in rs))

    def routes_for(self, table: TableId) -> tuple[Route, ...]:
        return self.by_table.get(table, ())

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(r for rs in self.by_table.values() for r in rs)


def build_route_table(direction: str, routes: list[Route]) -> RouteTable:
    """Index routes by their source table."""
    by_table: dict[TableId, tuple[Route, ...]] = {}
    for route in routes:
        by_table[route.source_table] = (*by_table.get(route.source_table, ()), route)
    return RouteTable(direction, by_table)
