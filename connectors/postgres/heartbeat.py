"""Heartbeat writer for a PostgreSQL source: one row in the state schema, on a plain connection.

Deliberately not the sink's connection: that session carries the agent's replication origin,
and a heartbeat must not look like the agent's own write (the loop filter would drop it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql


class PgHeartbeat:
    """Keeps one autocommit connection and upserts the heartbeat row."""

    def __init__(self, conninfo: str, state_schema: str) -> None:
        self._conninfo = conninfo
        self._statement = sql.SQL(
            "INSERT INTO {}.heartbeats (id, ts) VALUES (1, %s) "
            "ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts"
        ).format(sql.Identifier(state_schema))
        self._conn: psycopg.Connection[Any] | None = None

    def write(self, at: datetime) -> None:
        """Store ``at`` (the agent's clock); reconnects after a failure."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, application_name="cdc-agent heartbeat",
                connect_timeout=10,
            )
        try:
            self._conn.execute(self._statement, (at,))
        except psycopg.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
