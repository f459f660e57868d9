"""The agent's record tables on a PostgreSQL system: conflicts, dead letters, generated links.

Created by ``cdc-agent setup`` beside the checkpoints; written by the pipelines inside their
target transactions (as ordinary writes) and read and updated by the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

_TABLES = {
    "conflicts": """
        id            bigserial PRIMARY KEY,
        entity        text NOT NULL,
        record        text NOT NULL,
        field         text NOT NULL,
        direction     text NOT NULL,
        source_value  text,
        target_value  text,
        winner        text NOT NULL,
        rule          text NOT NULL,
        resolution    text NOT NULL,
        status        text NOT NULL DEFAULT 'closed',
        source_commit_ts timestamptz,
        created_at    timestamptz NOT NULL DEFAULT now(),
        resolved_at   timestamptz,
        resolved_by   text""",
    "links": """
        ident         text PRIMARY KEY,
        entity        text NOT NULL,
        source_key    text NOT NULL,
        target_key    text NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now()""",
    "dead_letters": """
        id            bigserial PRIMARY KEY,
        entity        text NOT NULL,
        key           text NOT NULL,
        direction     text NOT NULL,
        position      text,
        error_class   text NOT NULL,
        message       text NOT NULL,
        payload       text,
        status        text NOT NULL DEFAULT 'pending',
        created_at    timestamptz NOT NULL DEFAULT now(),
        resolved_at   timestamptz""",
}


def create_tables(conninfo: str, schema: str) -> None:
    """Create the record tables if they do not exist (idempotent)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name, columns in _TABLES.items():
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                sql.Identifier(schema, name), sql.SQL(columns)))


def select(conninfo: str, schema: str, table: str, where: Mapping[str, object],
           order: str = "id") -> list[dict[str, Any]]:
    """Rows of a record table matching every ``where`` column (equality)."""
    query = sql.SQL("SELECT * FROM {} {} ORDER BY {}").format(
        sql.Identifier(schema, table), _where(where), sql.Identifier(order))
    with psycopg.connect(conninfo) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return list(cur.execute(query, list(where.values())).fetchall())


def update(conninfo: str, schema: str, table: str, where: Mapping[str, object],
           values: Mapping[str, object]) -> int:
    """Set ``values`` on matching rows; how many rows changed."""
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values)
    query = sql.SQL("UPDATE {} SET {} {}").format(sql.Identifier(schema, table), sets,
                                                  _where(where))
    with psycopg.connect(conninfo) as conn:
        cur = conn.execute(query, [*values.values(), *where.values()])
        return cur.rowcount


def _where(where: Mapping[str, object]) -> sql.Composable:
    if not where:
        return sql.SQL("")
    parts: Sequence[sql.Composable] = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in where]
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(parts)
