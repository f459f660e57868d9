"""`cdc-agent run`: the daemon with its metrics endpoint, heartbeats and systemd notifications."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from agent import admin
from agent.config import Config
from agent.daemon import Daemon
from agent.errors import ConfigError, TransientError
from agent.health import HealthServer
from agent.heartbeat import Heartbeats
from agent.metrics import Metrics
from agent.notify import Notifier

log = logging.getLogger(__name__)


class MetricsObserver:
    """Pipeline reports -> Prometheus metrics, plus each direction's current state."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.states: dict[str, str] = {}

    def committed(self, direction: str, txns: int, rows: int, source_ts: datetime) -> None:
        latency = (datetime.now(UTC) - source_ts).total_seconds()
        self.metrics.record_apply(direction, txns, rows, [latency])

    def skipped(self, direction: str, reason: str, count: int) -> None:
        self.metrics.skipped(direction, reason, count)

    def heartbeat(self, direction: str, written_at: float) -> None:
        self.metrics.heartbeat_applied(direction, written_at)

    def state(self, direction: str, state: str) -> None:
        self.states[direction] = state
        self.metrics.set_direction_state(direction, state)

    def retried(self, direction: str, error: BaseException) -> None:
        self.metrics.retry(direction, error)


def _metrics_for(config: Config) -> Metrics:
    entities = {name: list(e.fields) for name, e in config.entities.items()}
    return Metrics(list(config.systems), [d.name for d in config.directions()], entities)


def run_service(config: Config, path: Path) -> int:
    """Check the catalog, serve metrics, write heartbeats and replicate until stopped."""
    missing = admin.catalog_problems(config)
    if missing:
        raise ConfigError(missing)
    notifier = Notifier.from_env()
    metrics = _metrics_for(config)
    metrics.config_loaded(True)
    observer = MetricsObserver(metrics)
    daemon = Daemon(path, observer, states=lambda: dict(observer.states), notifier=notifier,
                    on_reload=metrics.config_loaded)

    def readiness() -> str | None:
        waiting = [d for d, s in observer.states.items() if s not in ("streaming", "staging")]
        return f"not streaming: {', '.join(sorted(waiting))}" if waiting else None

    server = HealthServer(metrics, lambda: _alive(daemon), readiness)
    server.start(config.agent.metrics_listen.host, config.agent.metrics_listen.port)
    heartbeats = Heartbeats(config, metrics)
    stop = threading.Event()
    beat = threading.Thread(target=heartbeats.run, args=(stop,), name="heartbeats", daemon=True)
    beat.start()
    try:
        return daemon.run(config)
    finally:
        stop.set()
        beat.join(5)
        server.stop()


def _alive(daemon: Daemon) -> bool:
    import time

    return time.monotonic() - daemon.last_tick < 10


__all__ = ["MetricsObserver", "TransientError", "run_service"]
