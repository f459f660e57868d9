"""The seams between the core and the engine connectors.

Connectors implement these protocols structurally (no inheritance). Driver objects never
cross this boundary: only events (:mod:`agent.events`) and :class:`Write` values do.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple, Protocol

from agent.events import TableId, Transaction


class WriteKind(enum.Enum):
    """What a target write does."""

    UPSERT = "upsert"  # insert, or update the row that has the same key
    INSERT = "insert"  # insert only; the target assigns its own key (see Write.returning)
    UPDATE = "update"  # update an existing row; a missing row is not created
    DELETE = "delete"


class Write(NamedTuple):
    """One row operation on the target, in target table and column names.

    ``key`` locates the row (column -> value; for UPSERT the columns of a unique key);
    ``values`` are the columns to set; ``defaults`` are set only when the row is inserted (an
    UPSERT that finds the row leaves them alone). ``entity`` and ``source_key`` say where it
    came from, for quarantine and conflict records. A named tuple: one is made per row
    changed, and a tuple is made in half the time of a frozen dataclass.
    """

    table: TableId
    kind: WriteKind
    key: Mapping[str, object]
    values: Mapping[str, object]
    defaults: Mapping[str, object] = MappingProxyType({})
    entity: str = ""
    source_key: str = ""


class Source(Protocol):
    """Reads one system's change log as transactions."""

    def open(self, after: str | None) -> None:
        """Connect and start reading after ``after`` (None: from the current end / slot position).

        Transactions at or below ``after`` are never returned.
        """

    def poll(self, timeout: float) -> Transaction | None:
        """The next transaction (or chunk), or None if none arrived within ``timeout`` seconds."""

    def confirm(self, position: str) -> None:
        """Everything at or below ``position`` is durably applied on the target (thread-safe)."""

    def close(self) -> None:
        """Disconnect; safe to call twice."""


class Sink(Protocol):
    """Applies writes to one system, one target transaction per batch."""

    def open(self) -> None:
        """Connect (and prepare the session, e.g. the loop-prevention origin)."""

    def read_checkpoint(self, direction: str) -> str | None:
        """The last source position committed for ``direction``, or None."""

    def begin(self, direction: str) -> None:
        """Start a target transaction; the loop marker is its first write."""

    def write(self, writes: Sequence[Write]) -> None:
        """Apply writes in order inside the open transaction."""

    def generated_keys(self) -> Mapping[int, object]:
        """Keys the target generated for the INSERT writes of the last ``write`` call, by the
        write's index in that call."""

    def commit(self, direction: str, position: str, source_commit_ts: datetime) -> None:
        """Store the checkpoint in the open transaction, then COMMIT."""

    def rollback(self) -> None:
        """Abandon the open transaction, if any."""

    def fetch(
        self, table: TableId, key_column: str, keys: Sequence[object], columns: Sequence[str],
        *, lock: bool = True,
    ) -> Mapping[object, Mapping[str, object]]:
        """Current values of ``columns`` for the rows whose ``key_column`` is in ``keys``.

        ``lock``: a locking read (the latest committed rows, locked until the transaction
        ends) -- what decisions on the target's values need; False: a plain read.
        """

    def close(self) -> None:
        """Disconnect; safe to call twice."""
