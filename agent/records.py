"""The agent's record tables (conflicts, dead letters) on either engine, for the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.config import Config, PostgresSystem
from agent.wiring import mysql_params, names


def select(config: Config, system: str, table: str,
           where: Mapping[str, object] | None = None, order: str = "id") -> list[dict[str, Any]]:
    """Rows of ``table`` (conflicts, dead_letters...) on ``system``, by ``order``."""
    spec, schema = config.systems[system], names(config).state_schema
    if isinstance(spec, PostgresSystem):
        from connectors.postgres import state as pg

        return pg.select(spec.conninfo(), schema, table, where or {}, order)
    from connectors.mysql import state as my

    return my.select(mysql_params(spec), schema, table, where or {}, order)


def update(config: Config, system: str, table: str, where: Mapping[str, object],
           values: Mapping[str, object]) -> int:
    """Update matching rows of ``table`` on ``system``; how many changed."""
    spec, schema = config.systems[system], names(config).state_schema
    if isinstance(spec, PostgresSystem):
        from connectors.postgres import state as pg

        return pg.update(spec.conninfo(), schema, table, where, values)
    from connectors.mysql import state as my

    return my.update(mysql_params(spec), schema, table, where, values)
