"""What the agent's state looks like on the servers: positions, retained log, state-table counts.

One :func:`snapshot` serves both the periodic gauges of the running daemon
(:class:`GaugePoller`: ``connected``, ``slot_retained_wal_bytes``, ``binlog_bytes_behind``,
``staged_changes``, ``quarantined_rows``) and ``cdc-agent status``. Everything here is
read-only and uses connections of its own: never the pipelines'.

State tables that a feature creates only when it is used (``dead_letters``, ``conflicts``,
staged changes) count as 0 while they do not exist. A row belongs to a direction through
its ``direction`` column; the tables live in the state schema of either system, so both are
counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agent.config import Config
from agent.config.models import PostgresSystem
from agent.errors import AgentError
from agent.metrics import Metrics
from agent.wiring import mysql_params, names

log = logging.getLogger(__name__)

COUNTED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "staged": (("staged_changes", "staged"), None),
    "quarantined": (("dead_letters",), "pending"),
    "conflicts": (("conflicts",), None),
    "conflicts_open": (("conflicts",), "open"),
}
"""Per count: the state tables that may hold its rows (the first with rows counts) and the
``status`` they must have (None: any). ``conflicts`` are all recorded ones; ``conflicts_open``
those parked for a person."""


@dataclass
class DirectionStatus:
    """One direction as the servers see it."""

    direction: str
    source: str
    target: str
    position: str | None = None
    source_commit_ts: datetime | None = None
    applied_at: datetime | None = None
    retained_wal_bytes: int | None = None
    binlog_bytes_behind: int | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Every direction's status, and which systems could be reached (with the reason if not)."""

    directions: list[DirectionStatus]
    connected: dict[str, bool]
    errors: dict[str, str]


class _Inspector(Protocol):
    def checkpoint(
        self, state_schema: str, direction: str
    ) -> tuple[str, datetime | None, datetime | None] | None: ...
    def count_rows(
        self, state_schema: str, table: str, direction: str, status: str | None = None
    ) -> int: ...
    def close(self) -> None: ...


def _open(config: Config, system: str) -> _Inspector:
    spec = config.systems[system]
    if isinstance(spec, PostgresSystem):
        from connectors.postgres.catalog import PgInspector

        return PgInspector(spec.conninfo())
    from connectors.mysql.catalog import MyInspector

    return MyInspector(mysql_params(spec))


def snapshot(config: Config, directions: list[str] | None = None) -> Snapshot:
    """Read positions, retained log and state-table counts from both systems.

    ``directions``: the names to report (default: both). A system that cannot be reached is
    marked disconnected and its figures are left empty; this never raises for that.
    """
    inspectors: dict[str, _Inspector] = {}
    try:
        return _snapshot(config, directions, inspectors)
    finally:
        _close(inspectors)


def _snapshot(config: Config, directions: list[str] | None,
              inspectors: dict[str, _Inspector]) -> Snapshot:
    """:func:`snapshot` with ``inspectors`` kept open by the caller (missing ones are opened
    and added)."""
    wanted = [d for d in config.directions() if directions is None or d.name in directions]
    errors: dict[str, str] = {}
    for system in config.systems:
        if system in inspectors:
            continue
        try:
            inspectors[system] = _open(config, system)
        except AgentError as error:
            errors[system] = str(error)
    report = [_direction(config, d.name, d.source, d.target, inspectors) for d in wanted]
    connected = {system: system in inspectors for system in config.systems}
    return Snapshot(report, connected, errors)


def _close(inspectors: dict[str, _Inspector]) -> None:
    for inspector in inspectors.values():
        try:
            inspector.close()
        except Exception:  # closing a broken connection must not hide the first error
            log.debug("closing a gauge connection failed", exc_info=True)
    inspectors.clear()


def _direction(config: Config, name: str, source: str, target: str,
               inspectors: dict[str, _Inspector]) -> DirectionStatus:
    schema = names(config).state_schema
    status = DirectionStatus(name, source, target)
    sink = inspectors.get(target)
    found = sink.checkpoint(schema, name) if sink is not None else None
    if found is not None:
        status.position, status.source_commit_ts, status.applied_at = found
    origin = inspectors.get(source)
    if origin is not None:
        _retained(config, status, origin)
    for count, (tables, wanted) in COUNTED.items():
        status.counts[count] = sum(_first_count(inspector, schema, tables, name, wanted)
                                   for inspector in inspectors.values())
    return status


def _retained(config: Config, status: DirectionStatus, origin: _Inspector) -> None:
    from connectors.mysql.catalog import MyInspector
    from connectors.postgres.catalog import PgInspector

    if isinstance(origin, PgInspector):
        slot = names(config).slot(status.source)
        status.retained_wal_bytes = origin.slot_retained_wal_bytes(slot)
    elif isinstance(origin, MyInspector):
        status.binlog_bytes_behind = origin.binlog_bytes_behind(status.position)


def _first_count(inspector: _Inspector, schema: str, tables: tuple[str, ...],
                 direction: str, status: str | None) -> int:
    for table in tables:
        rows = inspector.count_rows(schema, table, direction, status)
        if rows:
            return rows
    return 0


class GaugePoller:
    """Refreshes the server-side gauges every ``interval`` seconds on a thread of its own.

    The connections stay open between polls (opening a MySQL connection with TLS set-up costs
    more CPU than the whole poll); they are remade after an error and on a reload.
    """

    def __init__(self, config: Callable[[], Config], directions: Callable[[], list[str]],
                 metrics: Metrics, interval: float) -> None:
        """``config`` and ``directions`` give the running configuration and directions
        (they change on reload)."""
        self._config = config
        self._directions = directions
        self._metrics = metrics
        self._interval = interval
        self._inspectors: dict[str, _Inspector] = {}
        self._opened_for: Config | None = None

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; a failing poll is logged and retried next round."""
        try:
            while True:
                try:
                    self.poll()
                except Exception as error:  # a gauge must never stop the agent
                    log.warning("refreshing the state gauges failed: %s", type(error).__name__)
                if stop.wait(self._interval):
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Close the kept connections (the next poll opens new ones)."""
        _close(self._inspectors)

    def poll(self) -> Snapshot:
        """One refresh; returns what it read."""
        config = self._config()
        if config is not self._opened_for:
            self.close()
            self._opened_for = config
        try:
            found = _snapshot(config, self._directions(), self._inspectors)
        except Exception:
            # A kept connection may have died since the last poll: retry once on fresh
            # ones, so a server that is down shows as disconnected in this round.
            self.close()
            found = _snapshot(config, self._directions(), self._inspectors)
        for system, up in found.connected.items():
            self._metrics.set_connected(system, up)
        for status in found.directions:
            if status.retained_wal_bytes is not None:
                self._metrics.set_slot_retained_wal_bytes(status.source,
                                                          status.retained_wal_bytes)
            if status.binlog_bytes_behind is not None:
                self._metrics.set_binlog_bytes_behind(status.source, status.binlog_bytes_behind)
            if found.connected.get(status.target) and found.connected.get(status.source):
                self._metrics.set_staged_changes(status.direction, status.counts["staged"])
                self._metrics.set_quarantined_rows(status.direction,
                                                   status.counts["quarantined"])
        return found
