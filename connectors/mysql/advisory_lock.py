"""A MySQL/MariaDB named lock (``GET_LOCK``) on a dedicated connection (HA election).

The lock belongs to the session: when the holder's process dies its socket closes and the
server frees the lock. Reads time out, so a holder cut off from the server notices within
seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pymysql

from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.errors import classify

_MAX_NAME = 64  # MySQL's limit on lock names


def lock_name(name: str) -> str:
    """The server-wide lock name for agent ``name``."""
    return f"cdc_agent.{name}"[:_MAX_NAME]


class MyAdvisoryLock:
    """``GET_LOCK(name, 0)`` held by one session; raises agent errors only."""

    def __init__(self, params: MysqlParams, name: str, *, timeout: float = 5.0) -> None:
        self._params = params
        self._name = lock_name(name)
        self._timeout = timeout
        self._conn: Any = None

    @property
    def description(self) -> str:
        """What the lock is, for logs (no secrets)."""
        return f"MySQL named lock {self._name!r}"

    def try_acquire(self) -> bool:
        """Take the lock if it is free (connecting first); False when another session has it."""
        with self._guard("taking the HA lock"):
            row = self._query("SELECT GET_LOCK(%s, 0)")
        return bool(row and row[0] == 1)

    def held(self) -> bool:
        """True when this session still holds the lock; raises when the connection is lost."""
        if self._conn is None:
            return False
        with self._guard("checking the HA lock"):
            row = self._query("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()")
        return bool(row and row[0] == 1)

    def close(self) -> None:
        """Disconnect, which frees the lock; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # Already broken: the server frees the lock when it sees the socket close.
            with suppress(pymysql.Error):
                conn.close()

    def _query(self, statement: str) -> tuple[object, ...] | None:
        if self._conn is None:
            timeout = max(1, round(self._timeout))
            self._conn = pymysql.connect(**{**connect_kwargs(self._params),
                                            "connect_timeout": timeout},
                                         autocommit=True, read_timeout=timeout,
                                         write_timeout=timeout)
        with self._conn.cursor() as cur:
            cur.execute(statement, (self._name,))
            row: tuple[object, ...] | None = cur.fetchone()
            return row

    @contextmanager
    def _guard(self, context: str) -> Iterator[None]:
        """Turn driver errors into agent errors; a failed session is dropped (lock freed)."""
        try:
            yield
        except (pymysql.Error, OSError) as exc:
            self.close()
            raise classify(exc, context=context) from exc
