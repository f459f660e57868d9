"""Immutable change events: what readers produce and rules consume.

A reader turns its engine's log into :class:`Transaction` values. A large source transaction
arrives as several chunks that share one position; only the last has ``final=True``, so
memory stays bounded whatever the transaction size. Positions are opaque strings owned by
the connector that produced them (an LSN, a binlog file and offset).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple


class Op(enum.Enum):
    """Kind of row change in the source log."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class _Unchanged:
    """Marker for a value the source did not send because it did not change (PostgreSQL TOAST)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
"""A column value that is not in the change because it did not change (unchanged TOAST)."""

Row = Mapping[str, object]


class TableId(NamedTuple):
    """A table: ``schema`` is the PostgreSQL schema or the MySQL database.

    A named tuple rather than a dataclass: every change is routed by its table, and a
    tuple hashes and compares in C (a dataclass's ``__hash__``/``__eq__`` are Python calls).
    """

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row changed in the source.

    ``new`` is the row after the change (INSERT, UPDATE); ``old`` the row before it (UPDATE,
    DELETE) as far as the source logs it: the full row (MySQL binlog_row_image=FULL,
    PostgreSQL REPLICA IDENTITY FULL), only the key columns, or None.
    """

    table: TableId
    op: Op
    new: Row | None = None
    old: Row | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A committed source transaction, or one chunk of it.

    ``position`` is where reading may resume after this transaction (all chunks of one
    transaction carry the same position). ``origin`` names who wrote it when the source
    knows (a PostgreSQL replication origin; the agent's marker on MySQL); the loop filter
    drops the agent's own transactions. A transaction with no changes still advances the
    position (heartbeats, filtered tables, keepalives).
    """

    position: str
    commit_ts: datetime
    changes: tuple[RowChange, ...] = ()
    origin: str | None = None
    final: bool = True
    heartbeat: bool = False
    extra: Mapping[str, object] = field(default_factory=dict)
