"""Wiring: configuration -> routes, sources, sinks and state-object names.

The only module that knows both the configuration models and the connectors' constructors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from agent.apply import Applier, Exchange
from agent.config import (
    Config,
    Direction,
    EntityConfig,
    MysqlSystem,
    PostgresSystem,
    SystemConfig,
)
from agent.conflicts import RecentChanges
from agent.events import TableId
from agent.keymap import PeerMap
from agent.pipeline import Observer, Pipeline, Settings
from agent.ports import Sink, Source
from agent.quarantine import Quarantine, RecordKey
from agent.remedies import RemedyStore
from agent.routes import (
    CreateMode,
    DeleteMode,
    FieldRoute,
    LinkKind,
    Predicate,
    Route,
    RouteTable,
    build_route_table,
)
from agent.rules import Judge
from agent.schema_pause import SCHEMA, Pauses

if TYPE_CHECKING:
    from connectors.mysql import MysqlParams


@dataclass(frozen=True)
class Names:
    """Names of the objects the agent owns on the servers (derived from agent.name)."""

    agent: str
    state_schema: str

    def slot(self, system: str) -> str:
        """The replication slot reading ``system``: slots are cluster-wide, so two systems
        in one PostgreSQL cluster (PG<->PG) need a slot each."""
        return bounded(f"cdc_agent_{self.agent}_{system}")

    def publication(self, system: str) -> str:
        """The publication of ``system``'s mapped tables (one per system, like the slot)."""
        return bounded(f"cdc_agent_{self.agent}_{system}")

    def origin(self, direction: str, suffix: str = "") -> str:
        """The PostgreSQL replication origin that tags what ``direction`` writes."""
        return bounded(f"cdc_agent_{self.agent}_{direction}{suffix}")

    @property
    def heartbeats(self) -> TableId:
        return TableId(self.state_schema, "heartbeats")


def bounded(name: str, limit: int = 63) -> str:
    """``name`` cut to PostgreSQL's identifier limit (63 bytes; names here are ASCII).

    A long name keeps a readable prefix and ends in a hash of the whole name, so it stays
    unique and is the same on every start (the loop filter compares origin names).
    """
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[:limit - len(digest) - 1]}_{digest}"


def names(config: Config) -> Names:
    return Names(config.agent.name, config.agent.state_schema)


def table_of(config: Config, system: str, entity: EntityConfig) -> TableId:
    """The entity's table on ``system`` as a TableId (schema = PostgreSQL schema or MySQL db)."""
    return entity.table(system)


def mapped_tables(config: Config, system: str) -> list[TableId]:
    """Every table of ``system`` that some entity maps, in config order, without repeats."""
    tables: list[TableId] = []
    for entity in config.entities.values():
        if system in entity.sides:
            table = table_of(config, system, entity)
            if table not in tables:
                tables.append(table)
    return tables


def _link(entity: EntityConfig, target: str) -> tuple[LinkKind, str]:
    link = entity.link
    if link.kind == "map" or link.column is None:
        return LinkKind.MAP, ""  # <state_schema>.key_map on both systems (agent.keymap)
    if link.side == target:
        return LinkKind.TARGET_HOLDS_KEY, link.column
    return LinkKind.SOURCE_HOLDS_KEY, link.column


def _create(entity: EntityConfig, target: str) -> tuple[CreateMode, tuple[Predicate, ...]]:
    rule = entity.create.get(target)
    if rule is None or rule.mode == "always":
        return CreateMode.ALWAYS, ()
    if rule.mode == "never":
        return CreateMode.NEVER, ()
    predicates = tuple(
        Predicate(column, None if c.kind == "not_null" else frozenset(c.any_of))
        for column, c in rule.when.items()
    )
    return CreateMode.WHEN, predicates


def _delete(entity: EntityConfig, direction: str) -> tuple[DeleteMode, tuple[str, object] | None]:
    rule = entity.delete.get(direction)
    if rule is None or rule.mode == "propagate":
        return DeleteMode.PROPAGATE, None
    if rule.mode == "ignore":
        return DeleteMode.IGNORE, None
    assert rule.flag is not None
    return DeleteMode.FLAG, (rule.flag.column, rule.flag.value)


def _fields(config: Config, entity: EntityConfig, source: str,
            target: str) -> tuple[FieldRoute, ...]:
    first = next(iter(config.systems))
    routes = []
    for name, f in entity.fields.items():
        if source not in f.columns or target not in f.columns:
            continue
        value_map: dict[object, object] | None = {
            k: v for k, v in f.value_map(source, first).items()} or None
        routes.append(FieldRoute(name, f.columns[source], f.columns[target], f.owner,
                                 value_map, conflict=f.conflict,
                                 tie=f.tie or first, on_foreign_change=f.on_foreign_change))
    return tuple(routes)


def compile_route(config: Config, name: str, entity: EntityConfig, direction: Direction) -> Route:
    """One entity's mapping for one direction."""
    source, target = direction.source, direction.target
    link, link_column = _link(entity, target)
    create, when = _create(entity, target)
    delete, flag = _delete(entity, direction.name)
    return Route(
        entity=name,
        direction=direction.name,
        source_table=table_of(config, source, entity),
        source_key=entity.key(source),
        target_table=table_of(config, target, entity),
        target_key=entity.key(target),
        link=link,
        link_column=link_column,
        fields=_fields(config, entity, source, target),
        create=create,
        create_when=when,
        delete=delete,
        delete_flag=flag,
        defaults=dict(entity.defaults.get(target, {})),
        source=source,
        target=target,
        on_error=entity.on_error,
    )


def route_table(config: Config, direction: Direction) -> RouteTable:
    """All entities' routes for one direction."""
    routes = [
        compile_route(config, name, entity, direction)
        for name, entity in config.entities.items()
        if direction.source in entity.sides and direction.target in entity.sides
    ]
    return build_route_table(direction.name, routes)


def reverse(direction: Direction) -> str:
    return f"{direction.target}_to_{direction.source}"


MANUAL = "_manual"
"""Suffix of the marker/origin of writes outside the pipelines (push, reconcile, reverts).

They run in their own sessions (a PostgreSQL origin can be active in one session only) and
keep their own pseudo-direction checkpoint row, so they never move a pipeline's position.
"""


def marker(config: Config, direction: str, *, manual: bool = False) -> str:
    """What tags writes made for ``direction``: its origin (PostgreSQL target) or marker
    (MySQL target); ``manual`` for writes outside the pipeline."""
    suffix = MANUAL if manual else ""
    target = config.systems[direction.split("_to_", 1)[1]]
    if isinstance(target, PostgresSystem):
        return names(config).origin(direction, suffix)
    return direction + suffix


def own_origins(config: Config, direction: Direction) -> frozenset[str]:
    """How the source marks transactions the agent itself wrote into it."""
    back = reverse(direction)
    return frozenset({marker(config, back), marker(config, back, manual=True)})


def mysql_params(system: MysqlSystem) -> MysqlParams:
    from connectors.mysql import MysqlParams

    return MysqlParams(
        host=system.host,
        port=system.port,
        user=system.user,
        password=system.password.get_secret_value() if system.password else "",
        database=system.database,
        timezone=system.timezone,
        tls_ca=str(system.tls.ca) if system.tls and system.tls.ca else None,
        tls_verify_identity=bool(system.tls and system.tls.verify_identity),
        connect_timeout=system.connect_timeout,
        tls_cert=str(system.tls.cert) if system.tls and system.tls.cert else None,
        tls_key=str(system.tls.key) if system.tls and system.tls.key else None,
    )


def source_factory(config: Config, direction: Direction) -> Callable[[], Source]:
    """A function that makes a fresh, unopened source for ``direction``."""
    system: SystemConfig = config.systems[direction.source]
    n = names(config)
    tables = set(mapped_tables(config, direction.source)) | {n.heartbeats}
    # The pipeline drops the agent's own transactions: the reader need not decode their rows.
    skip = own_origins(config, direction)
    if isinstance(system, PostgresSystem):
        from connectors.postgres.reader import PgSource

        conninfo = system.conninfo()
        return lambda: PgSource(conninfo, slot=n.slot(direction.source),
                                publication=n.publication(direction.source),
                                skip_origins=skip)
    from connectors.mysql.reader import MySource

    params = mysql_params(system)
    return lambda: MySource(params, server_id=system.server_id, state_schema=n.state_schema,
                            tables=tables, skip_origins=skip)


def sink_factory(config: Config, direction: Direction, *,
                 reads_only: bool = False) -> Callable[[], Sink]:
    """A function that makes a fresh, unopened sink for ``direction`` (``reads_only``: one
    used only to read the target, on a connection of its own; see agent.writebehind)."""
    system = config.systems[direction.target]
    n = names(config)
    if isinstance(system, PostgresSystem):
        from connectors.postgres.writer import PgSink

        conninfo = system.conninfo()
        origin = n.origin(direction.name)
        return lambda: PgSink(conninfo, state_schema=n.state_schema, origin=origin,
                              reads_only=reads_only)
    from connectors.mysql.writer import MySink

    params = mysql_params(system)
    return lambda: MySink(params, state_schema=n.state_schema)


def remedy_store(config: Config, direction: str) -> RemedyStore:
    """The outbox of remedies ``direction`` applies: on its source system (agent.remedies)."""
    from agent import records

    source = direction.split("_to_", 1)[0]
    return RemedyStore(direction, partial(records.select, config, source),
                       partial(records.update, config, source))


def build_pipelines(config: Config, observer: Observer) -> list[Pipeline]:
    """One pipeline per direction that has a route; both share the conflict registry and the
    exchange of corrections (a revert of one side is written by the pipeline into that side)."""
    settings = Settings(max_rows=config.agent.batch.max_rows,
                        max_delay=config.agent.batch.max_delay,
                        advance_interval=max(config.agent.heartbeat_interval, 1.0))
    # Conflict timing is shared by both directions; remembered links are per direction (a
    # source key of one direction is a target key of the other).
    recent, exchange, n = RecentChanges(), Exchange(), names(config)
    pipelines = []
    for direction in config.directions():
        routes = route_table(config, direction)
        if not routes.routes:
            continue
        quarantine = Quarantine(direction.name, n.state_schema,
                                load=partial(pending_letters, config, direction))
        pauses = Pauses(direction.name, n.state_schema, direction.target,
                        load=partial(parked_letters, config, direction))
        applier = Applier(direction.name, routes, Judge(recent=recent), exchange, n.state_schema,
                          quarantine, peer=peer_map(config, direction, routes),
                          outbox=remedy_store(config, direction.name), pauses=pauses,
                          **_transfer_hooks(config, direction))
        pipelines.append(Pipeline(
            direction.name, source_factory(config, direction), sink_factory(config, direction),
            applier, own_origins=own_origins(config, direction), heartbeat_table=n.heartbeats,
            settings=settings, observer=observer,
            coarse_clock=isinstance(config.systems[direction.source], MysqlSystem),
            reads_factory=sink_factory(config, direction, reads_only=True)))
    return pipelines


def peer_map(config: Config, direction: Direction, routes: RouteTable) -> PeerMap | None:
    """A reader of the source's key map, for directions with key-map entities."""
    if not any(r.link is LinkKind.MAP for r in routes.routes):
        return None
    from agent.transfer import row_reader

    return PeerMap(partial(row_reader, config, direction.source), names(config).state_schema)


def _transfer_hooks(config: Config, direction: Direction) -> dict[str, Any]:
    """Issue 6: the direction's schedule (staging) and the worker for the push requests its
    source receives (started here: it first sweeps the requests still pending)."""
    from agent.staging import scheduler_for
    from agent.transfer import PushWorker

    worker = PushWorker(config, direction.source)
    worker.start()
    return {"scheduler": scheduler_for(config, direction), "requests": worker.submit}


def pending_letters(config: Config, direction: Direction) -> set[RecordKey]:
    """Keys with dead letters still pending for ``direction`` (they block later changes)."""
    from agent import records

    rows = records.select(config, direction.target, "dead_letters",
                          {"direction": direction.name, "status": "pending"})
    # Changes parked by a paused entity wait for a reload, not behind their key's letters.
    return {(str(r["entity"]), str(r["key"])) for r in rows if r["error_class"] != SCHEMA}


def parked_letters(config: Config, direction: Direction) -> list[dict[str, Any]]:
    """Changes parked by entities paused for a schema change, oldest first."""
    from agent import records

    return records.select(config, direction.target, "dead_letters",
                          {"direction": direction.name, "status": "pending",
                           "error_class": SCHEMA})
