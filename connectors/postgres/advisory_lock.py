"""A session-level PostgreSQL advisory lock on a dedicated connection (HA election).

The lock lives as long as the session: when the holder's process dies, its socket closes
and the server frees the lock at once. The connection uses TCP keepalives and a statement
timeout so that a holder cut off from the server notices within seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from connectors.postgres.errors import translate

# First half of the two-int lock key: "CDCA", so our locks are easy to spot in pg_locks.
_CLASS_ID = 0x43444341
_OPTIONS = "-c statement_timeout=2000 -c idle_in_transaction_session_timeout=0"
_HELD_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND classid = %s AND objid = %s AND objsubid = 2)
"""


def lock_key(name: str) -> tuple[int, int]:
    """The two-int advisory lock key for ``name`` (stable across hosts and versions)."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return _CLASS_ID, int.from_bytes(digest, "big") & 0x7FFFFFFF


class PgAdvisoryLock:
    """``pg_try_advisory_lock`` held by one session; raises agent errors only."""

    def __init__(self, conninfo: str, name: str, *, timeout: float = 5.0) -> None:
        self._conninfo = conninfo
        self._key = lock_key(name)
        self._timeout = timeout
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    @property
    def description(self) -> str:
        """What the lock is, for logs (no secrets)."""
        return f"PostgreSQL advisory lock ({self._key[0]}, {self._key[1]})"

    def try_acquire(self) -> bool:
        """Take the lock if it is free (connecting first); False when another session has it."""
        with self._guard("taking the HA lock"):
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self._key).fetchone()
        return bool(row and row[0])

    def held(self) -> bool:
        """True when this session still holds the lock; raises when the connection is lost."""
        if self._conn is None:
            return False
        with self._guard("checking the HA lock"):
            row = self._conn.execute(_HELD_SQL, self._key).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        """Disconnect, which frees the lock; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                application_name="cdc-agent ha",
                options=_OPTIONS,
                connect_timeout=max(1, round(self._timeout)),
                keepalives=1,
                keepalives_idle=2,
                keepalives_interval=1,
                keepalives_count=2,
                tcp_user_timeout=int(self._timeout * 1000),
            )
        return self._conn

    @contextmanager
    def _guard(self, context: str) -> Iterator[None]:
        """Turn driver errors into agent errors; a failed session is dropped (lock freed)."""
        try:
            yield
        except (psycopg.Error, OSError) as exc:
            self.close()
            raise translate(exc, context) from exc
