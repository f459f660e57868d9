"""Administrative operations on the servers: setup, teardown and the live preflight check."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from agent import records
from agent.config import Config
from agent.config.catalog_check import check_catalog
from agent.config.models import PostgresSystem
from agent.events import TableId
from agent.wiring import mapped_tables, marker, mysql_params, names, route_table


def _origins_into(config: Config, system: str) -> list[str]:
    """Replication origins that tag the agent's writes into ``system`` (pipeline and manual)."""
    return [marker(config, d.name, manual=manual) for d in config.directions()
            if d.target == system for manual in (False, True)]


def setup(config: Config) -> list[str]:
    """Create the state schema, publication, slot and origins on every system (idempotent)."""
    done = []
    n = names(config)
    for name, system in config.systems.items():
        tables = mapped_tables(config, name)
        if isinstance(system, PostgresSystem):
            from connectors.postgres import catalog as pg

            pg.setup(system.conninfo(), state_schema=n.state_schema,
                     publication=n.publication(name), slot=n.slot(name), tables=tables,
                     origins=_origins_into(config, name))
            from connectors.postgres import state as pg_state

            pg_state.create_tables(system.conninfo(), n.state_schema)
            # Applications' push requests reach the daemon through the log (issue 6).
            pg_state.publish_requests(system.conninfo(), n.state_schema, n.publication(name))
            done.append(f"{name}: schema {n.state_schema}, publication and slot {n.slot(name)}")
        else:
            from connectors.mysql import catalog as my

            my.setup(mysql_params(system), state_schema=n.state_schema)
            from connectors.mysql import state as my_state

            my_state.create_tables(mysql_params(system), n.state_schema)
            done.append(f"{name}: database {n.state_schema}")
    done += _first_positions(config)
    return done


def _first_positions(config: Config) -> list[str]:
    """Store where each MySQL-source direction starts, if it has no checkpoint yet.

    A PostgreSQL slot keeps every change from the moment setup created it; a binlog reader
    without a checkpoint would start at the binlog's end whenever it (re)starts and skip what
    happened meanwhile. So setup pins the start, as the slot does.
    """
    from agent.wiring import sink_factory

    done = []
    for direction in config.directions():
        system = config.systems[direction.source]
        if isinstance(system, PostgresSystem):
            continue
        from connectors.mysql.reader import current_position

        if records.select(config, direction.target, "checkpoints",
                          {"direction": direction.name}, order="direction"):
            continue  # (and a running agent keeps its sink's session to itself)
        sink = sink_factory(config, direction)()
        try:
            sink.open()
            position = current_position(mysql_params(system))
            sink.begin(direction.name)
            sink.commit(direction.name, position, datetime.now(UTC))
            done.append(f"{direction.name}: starts at {position}")
        finally:
            sink.close()
    return done


def teardown(config: Config) -> list[str]:
    """Drop what setup created, the slot included (idempotent)."""
    done = []
    n = names(config)
    for name, system in config.systems.items():
        if isinstance(system, PostgresSystem):
            from connectors.postgres import catalog as pg

            pg.teardown(system.conninfo(), state_schema=n.state_schema,
                        publication=n.publication(name), slot=n.slot(name),
                        origins=_origins_into(config, name))
        else:
            from connectors.mysql import catalog as my

            my.teardown(mysql_params(system), state_schema=n.state_schema)
        done.append(f"{name}: removed")
    return done


def describe(config: Config, system: str) -> Mapping[TableId, Mapping[str, str]]:
    """Columns and types of the tables ``system`` maps."""
    spec = config.systems[system]
    tables = mapped_tables(config, system)
    if isinstance(spec, PostgresSystem):
        from connectors.postgres import catalog as pg

        return pg.describe(spec.conninfo(), tables)
    from connectors.mysql import catalog as my

    return my.describe(mysql_params(spec), tables)


def catalog_problems(config: Config) -> list[str]:
    """Configured tables and columns that do not exist, as 'file:line: path: message'."""
    problems: list[str] = []
    for system in config.systems:
        problems += check_catalog(config, system, describe(config, system))
    return problems


def server_problems(config: Config) -> list[str]:
    """Server settings and privileges that stop replication (wal_level, binlog format...)."""
    problems: list[str] = []
    n = names(config)
    targets = {d.target for d in config.directions() if route_table(config, d).routes}
    for name, system in config.systems.items():
        tables = mapped_tables(config, name)
        writes = tables if name in targets else []
        if isinstance(system, PostgresSystem):
            from connectors.postgres import catalog as pg

            found = pg.check(system.conninfo(), tables=tables, slot=n.slot(name),
                             publication=n.publication(name), write_tables=writes,
                             state_schema=n.state_schema)
        else:
            from connectors.mysql import catalog as my

            found = my.check(mysql_params(system), tables=tables, write_tables=writes,
                             state_schema=n.state_schema)
        problems += [f"{name}: {p}" for p in found]
        problems += [f"{name}: {p}" for p in _state_problems(config, name)]
    problems += identity_problems(config)
    problems += key_map_problems(config)
    return problems


def key_map_problems(config: Config) -> list[str]:
    """Systems without the key map table that ``link: {map: SIDE}`` entities need."""
    mapped = [name for name, e in config.entities.items() if e.link.kind == "map"]
    if not mapped:
        return []
    problems = []
    table = f"{names(config).state_schema}.key_map"
    for system in config.systems:
        try:
            records.select(config, system, "key_map", {"ident": ""}, order="ident")
        except Exception as error:  # missing table or no privilege: setup says which
            problems.append(f"{system}: the key map {table} of {', '.join(mapped)} cannot be "
                            f"read ({type(error).__name__}); run `cdc-agent setup`")
    return problems


def _state_problems(config: Config, name: str) -> list[str]:
    """State tables a newer version added and `setup` has not created yet."""
    system, schema = config.systems[name], names(config).state_schema
    if isinstance(system, PostgresSystem):
        from connectors.postgres import state as pg_state

        missing = pg_state.missing_tables(system.conninfo(), schema)
    else:
        from connectors.mysql import state as my_state

        missing = my_state.missing_tables(mysql_params(system), schema)
    if not missing:
        return []
    return [f"state tables missing in {schema}: {', '.join(missing)}; run `cdc-agent setup` "
            "(idempotent) to create them"]


def identity_problems(config: Config) -> list[str]:
    """PostgreSQL tables whose conflicts and foreign changes the agent cannot see.

    Conflict detection (owner both) and telling a real sovereignty violation from the
    owner's change on its way need the old row of an UPDATE: REPLICA IDENTITY FULL.
    """
    problems = []
    for name, system in config.systems.items():
        if not isinstance(system, PostgresSystem):
            continue
        needs = [e.table(name) for e in config.entities.values()
                 if any(f.owner != name for f in e.fields.values())]
        from connectors.postgres.identity import without_full_identity

        for table in without_full_identity(system.conninfo(), needs):
            problems.append(f"{name}: table {table} has fields owned by both sides or by the "
                            f"other system; conflicts need the old row: ALTER TABLE {table} "
                            "REPLICA IDENTITY FULL")
    return problems
