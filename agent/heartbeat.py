"""Heartbeats: a row the agent writes into each source on its own clock.

The row travels through the log like any change; when a direction reads it back, the
difference to the agent's clock is that direction's lag (no clock skew between hosts). It
also keeps an idle PostgreSQL slot advancing: without writes in the captured tables a
slot's confirmed position could only move on keepalives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from agent.config import Config
from agent.config.models import PostgresSystem
from agent.metrics import Metrics
from agent.wiring import mysql_params, names

log = logging.getLogger(__name__)


class Heartbeats:
    """Writes one heartbeat per running direction's source every ``agent.heartbeat_interval``.

    Only directions that run get heartbeats: a heartbeat nobody reads back would count as
    outstanding for ever and show as a growing lag. ``config`` and ``directions`` are read
    each round, so a reload takes effect at the next beat (connections are remade when the
    configuration object changes).
    """

    def __init__(self, config: Config | Callable[[], Config], metrics: Metrics,
                 directions: Callable[[], list[str]] | None = None) -> None:
        """``config`` is the configuration or a function giving the running one;
        ``directions`` the names of the running directions (default: all of them)."""
        self._current = config if callable(config) else (lambda: config)
        self._config = self._current()
        self._metrics = metrics
        self._directions = directions
        self._writers: dict[str, _Writer] = {}

    def run(self, stop: threading.Event) -> None:
        """Beat until ``stop`` is set, then close the connections."""
        try:
            while not stop.wait(self._config.agent.heartbeat_interval):
                self.beat()
        finally:
            self.close()

    def beat(self) -> None:
        """Write one heartbeat into the source of every running direction."""
        config = self._current()
        if config is not self._config:
            self.close()
            self._config = config
        running = None if self._directions is None else set(self._directions())
        for direction in config.directions():
            if running is None or direction.name in running:
                self._beat(direction.source, direction.name)

    def _beat(self, system: str, direction: str) -> None:
        now = time.time()
        try:
            self._write(system, datetime.fromtimestamp(now, UTC))
        except Exception as error:  # a heartbeat must never stop the agent
            log.warning("heartbeat into %s failed: %s", system, type(error).__name__)
            writer = self._writers.pop(system, None)
            if writer is not None:
                writer.close()
            return
        self._metrics.heartbeat_written(direction, now)

    def _write(self, system: str, at: datetime) -> None:
        writer = self._writers.get(system)
        if writer is None:
            writer = self._writers[system] = self._writer(system)
        writer.write(at)

    def _writer(self, system: str) -> _Writer:
        spec = self._config.systems[system]
        schema = names(self._config).state_schema
        if isinstance(spec, PostgresSystem):
            from connectors.postgres.heartbeat import PgHeartbeat

            return PgHeartbeat(spec.conninfo(), schema)
        from connectors.mysql.heartbeat import MyHeartbeat

        return MyHeartbeat(mysql_params(spec), schema)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class _Writer(Protocol):
    def write(self, at: datetime) -> None: ...
    def close(self) -> None: ...
