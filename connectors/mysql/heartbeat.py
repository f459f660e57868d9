"""Heartbeat writer for a MySQL/MariaDB source: one row in the state database.

The heartbeats table stores DATETIME(6) in the system's configured timezone, as the reader
interprets every DATETIME; the reader turns it back into an instant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pymysql

from connectors.mysql import MysqlParams, connect_kwargs

_IO_TIMEOUT = 10  # seconds


class MyHeartbeat:
    """Keeps one autocommit connection and upserts the heartbeat row."""

    def __init__(self, params: MysqlParams, state_schema: str) -> None:
        self._params = params
        self._zone = ZoneInfo(params.timezone)
        quoted = "`" + state_schema.replace("`", "``") + "`"
        self._statement = (f"INSERT INTO {quoted}.heartbeats (id, ts) VALUES (1, %s) "
                           "ON DUPLICATE KEY UPDATE ts = VALUES(ts)")
        self._conn: Any = None

    def write(self, at: datetime) -> None:
        """Store ``at`` (the agent's clock); reconnects after a failure."""
        if self._conn is None:
            # Timeouts: a frozen server must cost one missed beat, not a stuck thread.
            self._conn = pymysql.connect(**connect_kwargs(self._params), autocommit=True,
                                         read_timeout=_IO_TIMEOUT, write_timeout=_IO_TIMEOUT)
        local = at.astimezone(self._zone).replace(tzinfo=None)
        try:
            with self._conn.cursor() as cur:
                cur.execute(self._statement, (local,))
        except pymysql.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
