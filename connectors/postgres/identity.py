"""Replica identity of PostgreSQL tables: whether UPDATE/DELETE log the whole old row."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from agent.events import TableId

_QUERY = """
SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def without_full_identity(conninfo: str, tables: Sequence[TableId]) -> list[TableId]:
    """The tables whose changes do not carry the full old row (REPLICA IDENTITY not FULL)."""
    missing = []
    with psycopg.connect(conninfo) as conn:
        for table in tables:
            row = conn.execute(_QUERY, (table.schema, table.name)).fetchone()
            if row is not None and row[0] != "f":
                missing.append(table)
    return missing
