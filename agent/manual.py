"""Writes outside the pipelines (conflict resolution, push, reconcile) into one system.

They carry the "manual" loop marker of the direction that writes into that system, so the
system's reader drops them as the agent's own, and they keep a pseudo-direction checkpoint
row of their own, so no pipeline position ever moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from agent.config import Config, PostgresSystem
from agent.ports import Sink, Write
from agent.wiring import MANUAL, marker, mysql_params, names


def _direction_into(config: Config, system: str) -> str:
    return f"{config.other(system)}_to_{system}"


def manual_sink(config: Config, system: str) -> Sink:
    """An unopened sink writing into ``system`` with the manual marker."""
    spec, schema = config.systems[system], names(config).state_schema
    direction = _direction_into(config, system)
    if isinstance(spec, PostgresSystem):
        from connectors.postgres.writer import PgSink

        return PgSink(spec.conninfo(), state_schema=schema,
                      origin=marker(config, direction, manual=True))
    from connectors.mysql.writer import MySink

    return MySink(mysql_params(spec), state_schema=schema)


def write_now(config: Config, system: str, writes: Sequence[Write]) -> None:
    """Apply ``writes`` to ``system`` in one transaction, tagged as the agent's own."""
    sink = manual_sink(config, system)
    pseudo = _direction_into(config, system) + MANUAL  # the MySQL marker row; a checkpoint name
    try:
        sink.open()
        sink.begin(pseudo)
        sink.write(writes)
        sink.commit(pseudo, "manual", datetime.now(UTC))
    finally:
        sink.close()
