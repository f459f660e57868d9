"""Reconcile: compare an entity on both systems through the link, and repair by ownership.

Two keyset-paginated passes, each reading chunks of one system's rows in key order and
looking their counterparts up on the other system by the link (the locator the rules use):
pass 1 scans the first system (pairs and rows only there), pass 2 the second (rows only
there). Neither pass depends on both servers sorting keys alike.

Report: rows only on each side, and per field the pairs that differ, with sample keys.
``--apply`` repairs with the rules themselves: a synthetic change per record says "the
fields this side owns are as they are here" (see :func:`agent.transfer.synthetic`), so the
owner's value wins, fields both sides own are reported but not touched (nothing tells who
changed them last), and rows missing on a side are created under that side's create rules.

Safe while streaming (lock-and-reread watermark): a chunk's repairs re-read the source rows
*locked* (FOR UPDATE), then lock and write the target rows, commit, and only then release
the source rows. A streamed change of such a row either committed before the re-read (the
repair writes that value or a newer one) or commits after the target commit (it is logged
later, so its direction applies it after the repair): a chunk value never overwrites a newer
streamed value. The compare reads themselves take no locks; they only pick candidates.

The initial load is a reconcile with ``--apply`` against an empty target: every row is
"only on the source" and is created through the same path, while the daemon streams.

Resumable: after each chunk the pass, the last key and the counts so far are stored in
``<state_schema>.reconcile_progress`` on the first system; a run with the same options
continues from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from agent.codec import decode_value, encode_value
from agent.config import Config, PostgresSystem
from agent.errors import UsageError
from agent.events import TableId
from agent.keymap import TABLE as KEY_MAP
from agent.keymap import ident as keymap_ident
from agent.routes import LinkKind, Route
from agent.rules import same_value
from agent.transfer import Rows, direction_of, row_reader, synthetic, transfer
from agent.wiring import compile_route, mysql_params, names

SAMPLES = 5


@dataclass
class Counts:
    """What a reconcile found (and repaired) so far."""

    scanned: dict[str, int] = field(default_factory=dict)
    only: dict[str, int] = field(default_factory=dict)
    differing: dict[str, int] = field(default_factory=dict)
    unresolved: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, bucket: dict[str, int], name: str, key: object, sample: str) -> None:
        bucket[name] = bucket.get(name, 0) + 1
        keys = self.samples.setdefault(sample, [])
        if len(keys) < SAMPLES:
            keys.append(str(key))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Counts:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Options:
    """What to reconcile and how."""

    entity: str
    apply: bool = False
    where: tuple[str, ...] = ()
    chunk: int = 2000

    def key(self) -> str:
        return json.dumps({"apply": self.apply, "where": sorted(self.where)})


@dataclass
class Result:
    counts: Counts
    seconds: float
    resumed: bool

    @property
    def rows_per_second(self) -> float:
        return sum(self.counts.scanned.values()) / self.seconds if self.seconds > 0 else 0.0


def parse_where(config: Config, entity: str, where: Sequence[str]) -> dict[str, dict[str, object]]:
    """``FIELD=VALUE`` (both sides, value maps applied) or ``SYSTEM.COLUMN=VALUE`` (one side),
    as column filters per system (values are bound parameters)."""
    spec = config.entities[entity]
    first = next(iter(config.systems))
    filters: dict[str, dict[str, object]] = {s: {} for s in config.systems}
    for item in where:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--where {item!r}: expected FIELD=VALUE or SYSTEM.COLUMN=VALUE")
        system, dot, column = name.partition(".")
        if dot and system in config.systems:
            filters[system][column] = value
        elif name in spec.fields:
            f = spec.fields[name]
            for side, column in f.columns.items():
                mapped = f.value_map(first, first).get(value, value) if side != first else value
                filters[side][column] = mapped
        else:
            raise UsageError(f"--where {item!r}: {name} is neither a field of {entity} nor"
                             " SYSTEM.COLUMN")
    return filters


class Reconciler:
    """One reconcile run of one entity (see the module docstring)."""

    def __init__(self, config: Config, options: Options,
                 tick: Callable[[int], None] = lambda n: None) -> None:
        if options.entity not in config.entities:
            raise UsageError(f"no entity {options.entity!r}")
        self.config = config
        self.options = options
        self.tick = tick
        spec = config.entities[options.entity]
        self.a, self.b = list(config.systems)
        self.ab, self.ba = direction_of(config, self.a), direction_of(config, self.b)
        self.route_ab = compile_route(config, options.entity, spec, self.ab)
        self.route_ba = compile_route(config, options.entity, spec, self.ba)
        self.filters = parse_where(config, options.entity, options.where)
        self.counts = Counts()
        self.readers: dict[str, Rows] = {}

    # -- the run ------------------------------------------------------------------------

    def totals(self) -> int:
        """Rows to scan on both systems (for the progress bar)."""
        self._open()
        return sum(self.readers[s].count(self._route_from(s).source_table, self.filters[s])
                   for s in (self.a, self.b))

    def run(self, *, restart: bool = False) -> Result:
        """Compare (and repair), resuming a run with the same options unless ``restart``."""
        started = time.monotonic()
        self._open()
        try:
            passes, after, resumed = self._resume(restart)
            for number, side in ((1, self.a), (2, self.b)):
                if number < passes:
                    continue
                self._pass(number, side, after if number == passes else None)
            self._save(3, None, "done")
            return Result(self.counts, time.monotonic() - started, resumed)
        finally:
            for reader in self.readers.values():
                reader.close()
            self.readers = {}

    def _open(self) -> None:
        for system in (self.a, self.b):
            if system not in self.readers:
                reader = row_reader(self.config, system)
                reader.open()
                self.readers[system] = reader

    def _route_from(self, system: str) -> Route:
        return self.route_ab if system == self.a else self.route_ba

    def _columns(self, system: str) -> list[str]:
        """Columns read on ``system``: what its rules read plus the other side's locator."""
        own, other = self._route_from(system), self._route_from(self.config.other(system))
        return list(dict.fromkeys([*own.reads, other.locator,
                                   *(f.target_column for f in other.fields)]))

    def _pass(self, number: int, side: str, after: object) -> None:
        route = self._route_from(side)
        reader = self.readers[side]
        # Pass 2 only looks for rows missing on the first system: key and locator suffice
        # (a repair re-reads the whole row anyway).
        columns = self._columns(side) if number == 1 else _locating(route)
        while True:
            rows = reader.scan(route.source_table, route.source_key, columns, after,
                               self.options.chunk, self.filters[side])
            if not rows:
                return
            if number == 1:
                self._compare(rows)
            else:
                self._only_second(rows)
            after = rows[-1][route.source_key]
            self.counts.scanned[side] = self.counts.scanned.get(side, 0) + len(rows)
            self._save(number, after, "running")
            self.tick(len(rows))

    def _locators(self, route: Route, rows: Sequence[Mapping[str, object]]) -> list[object]:
        """Per row, the value that finds its counterpart (None: it has none yet)."""
        if route.link is not LinkKind.MAP:
            return [route.locate(r) for r in rows]
        mapped = self._mapped(route, [r[route.source_key] for r in rows])
        return [mapped.get(str(r[route.source_key])) for r in rows]

    def _mapped(self, route: Route, keys: Sequence[object]) -> dict[str, object]:
        """Source key (text) -> target key, from the key map on the target, else the copy on
        the source (see agent.keymap: either may lack a pair for a moment, never both)."""
        table = TableId(names(self.config).state_schema, KEY_MAP)
        prefix = len(route.entity) + 1
        idents = [keymap_ident(route.entity, k) for k in keys]
        other = self.config.other(route.source)
        found = {str(r["ident"])[prefix:]: r["local_key"] for r in self.readers[other].lookup(
            table, "ident", idents, ["ident", "local_key"], lock=False)}
        missing = [i for i in idents if i[prefix:] not in found]
        for r in self.readers[route.source].lookup(table, "local_ident", missing,
                                                   ["local_ident", "remote_key"], lock=False):
            found.setdefault(str(r["local_ident"])[prefix:], r["remote_key"])
        return found

    def _counterparts(self, route: Route, locators: Sequence[object],
                      full: bool = True) -> dict[str, dict[str, object]]:
        """The other system's rows at ``locators`` (``full``: every compared column; else
        only the locator), by the locator value as text."""
        other = self.config.other(route.source)
        wanted = [v for v in locators if v is not None]
        columns = self._columns(other) if full else [route.locator]
        found = self.readers[other].lookup(route.target_table, route.locator, wanted, columns,
                                           lock=False)
        return {str(r[route.locator]): r for r in found}

    def _compare(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Pass 1: pairs and rows only on the first system; repairs when applying."""
        route, counts = self.route_ab, self.counts
        locators = self._locators(route, rows)
        found = self._counterparts(route, locators)
        to_b: list[object] = []
        to_a: list[object] = []
        for row, locator in zip(rows, locators, strict=True):
            key = row[route.source_key]
            other = None if locator is None else found.get(str(locator))
            if other is None:
                counts.note(counts.only, self.a, key, f"only:{self.a}")
                to_b.append(key)
                continue
            for f in route.fields:
                if same_value(other.get(f.target_column), f.convert(row.get(f.source_column))):
                    continue
                counts.note(counts.differing, f.name, key, f"differing:{f.name}")
                if f.owner == self.a:
                    to_b.append(key)
                elif f.owner == self.b:
                    to_a.append(other[self.route_ba.source_key])
                else:
                    counts.note(counts.unresolved, f.name, key, f"unresolved:{f.name}")
        if self.options.apply:
            self._repair(self.route_ab, list(dict.fromkeys(to_b)))
            self._repair(self.route_ba, list(dict.fromkeys(to_a)))

    def _only_second(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Pass 2: rows only on the second system."""
        route, counts = self.route_ba, self.counts
        locators = self._locators(route, rows)
        found = self._counterparts(route, locators, full=False)
        missing = []
        for row, locator in zip(rows, locators, strict=True):
            if locator is None or str(locator) not in found:
                counts.note(counts.only, self.b, row[route.source_key], f"only:{self.b}")
                missing.append(row[route.source_key])
        if self.options.apply:
            self._repair(route, missing)

    def _repair(self, route: Route, keys: Sequence[object]) -> None:
        """Re-read the source rows locked, write them through the rules, then release them."""
        if not keys:
            return
        reader = self.readers[route.source]
        try:
            rows = reader.lookup(route.source_table, route.source_key, keys,
                                 self._columns(route.source), lock=True)
            changes = [synthetic(route, r, shared=False) for r in rows]
            done = transfer(self.config, direction_of(self.config, route.source), changes,
                            release=reader.end)
            self.counts.repaired += len(done.plan.writes) + done.remedies
        finally:
            reader.end()

    # -- progress -----------------------------------------------------------------------

    def _resume(self, restart: bool) -> tuple[int, object, bool]:
        row = None if restart else _load_progress(self.config, self.options.entity)
        if row is None or row["status"] != "running" or row["options"] != self.options.key():
            return 1, None, False
        self.counts = Counts.from_json(str(row["counts"]))
        last = row["last_key"]
        return int(str(row["pass"])), None if last is None else decode_value(str(last)), True

    def _save(self, number: int, after: object, status: str) -> None:
        _save_progress(self.config, {
            "entity": self.options.entity, "options": self.options.key(), "pass": number,
            "last_key": None if after is None else encode_value(after),
            "counts": self.counts.to_json(), "status": status,
            "updated_at": datetime.now(UTC) if self._pg() else datetime.now(UTC).replace(
                tzinfo=None)})

    def _pg(self) -> bool:
        return isinstance(self.config.systems[self.a], PostgresSystem)


def _locating(route: Route) -> list[str]:
    """The source columns that find a row's counterpart."""
    if route.link is LinkKind.SOURCE_HOLDS_KEY:
        return [route.source_key, route.link_column]
    return [route.source_key]


def _load_progress(config: Config, entity: str) -> dict[str, object] | None:
    system = next(iter(config.systems))
    spec, schema, where = config.systems[system], names(config).state_schema, {"entity": entity}
    if isinstance(spec, PostgresSystem):
        from connectors.postgres import state as pg

        rows = pg.select(spec.conninfo(), schema, "reconcile_progress", where, order="entity")
    else:
        from connectors.mysql import state as my

        rows = my.select(mysql_params(spec), schema, "reconcile_progress", where, order="entity")
    return rows[0] if rows else None


def _save_progress(config: Config, values: Mapping[str, object]) -> None:
    system = next(iter(config.systems))
    spec, schema = config.systems[system], names(config).state_schema
    if isinstance(spec, PostgresSystem):
        from connectors.postgres import state as pg

        pg.save_row(spec.conninfo(), schema, "reconcile_progress", "entity", values)
        return
    from connectors.mysql import state as my

    my.save_row(mysql_params(spec), schema, "reconcile_progress", "entity", values)


def report(entity: str, result: Result, apply: bool) -> list[str]:
    """The human report."""
    c = result.counts
    scanned = ", ".join(f"{n} {s} rows" for s, n in c.scanned.items()) or "no rows"
    lines = [f"{entity}: compared {scanned} in {result.seconds:.1f} s "
             f"({result.rows_per_second:,.0f} rows/s){' (resumed)' if result.resumed else ''}"]
    for side, n in c.only.items():
        lines.append(f"  only on {side}: {n}{_samples(c, f'only:{side}')}")
    for name, n in c.differing.items():
        lines.append(f"  differing {name}: {n}{_samples(c, f'differing:{name}')}")
    for name, n in c.unresolved.items():
        lines.append(f"  {name} is owned by both sides: {n} left as they are (who changed "
                     f"them last is not known){_samples(c, f'unresolved:{name}')}")
    if not c.only and not c.differing:
        lines.append("  both sides are equal")
    if apply:
        lines.append(f"  repaired: {c.repaired} writes")
    return lines


def _samples(counts: Counts, bucket: str) -> str:
    keys = counts.samples.get(bucket, [])
    return f" (e.g. {', '.join(keys)})" if keys else ""
