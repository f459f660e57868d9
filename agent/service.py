"""`cdc-agent run`: the daemon with its metrics endpoint, heartbeats, gauges and notifications.

Start-up order: the catalog check (tables and columns exist), the HTTP endpoint, then the
pipelines. A database that cannot be reached at start is not a configuration error: the
agent starts, ``/readyz`` says 503, the pipelines retry with backoff, and READY=1 goes to
systemd only once every direction streams.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent import admin
from agent.config import Config
from agent.daemon import Daemon, StateBoard, running_directions
from agent.errors import AgentError, ConfigError, TransientError
from agent.gauges import GaugePoller
from agent.health import HealthServer, WebConfig, load_web_config
from agent.heartbeat import Heartbeats
from agent.metrics import Metrics
from agent.notify import Notifier

log = logging.getLogger(__name__)

LIVENESS_SILENCE = 10.0
"""Seconds without a main-loop tick before /livez says 503 (independent of the databases)."""


class MetricsObserver:
    """Pipeline reports -> Prometheus metrics and the direction state board."""

    def __init__(self, metrics: Metrics, board: StateBoard | None = None) -> None:
        self.metrics = metrics
        self.board = board or StateBoard()

    @property
    def states(self) -> dict[str, str]:
        """Direction -> current state."""
        return self.board.states()

    def committed(self, direction: str, txns: int, rows: int, source_ts: datetime) -> None:
        latency = (datetime.now(UTC) - source_ts).total_seconds()
        self.metrics.record_apply(direction, txns, rows, [latency])

    def skipped(self, direction: str, reason: str, count: int) -> None:
        self.metrics.skipped(direction, reason, count)

    def heartbeat(self, direction: str, written_at: float) -> None:
        self.metrics.heartbeat_applied(direction, written_at)

    def state(self, direction: str, state: str) -> None:
        self.board.enter(direction, state)
        self.metrics.set_direction_state(direction, state)

    def retried(self, direction: str, error: BaseException) -> None:
        self.board.touch(direction)
        self.metrics.retry(direction, error)

    def conflict(self, entity: str, field: str, resolution: str) -> None:
        try:
            self.metrics.conflict(entity, field, resolution)
        except ValueError as error:
            # Series are declared per configuration (see _validator); should a label still
            # be unknown, a metric must never stop a pipeline.
            log.warning("conflict not counted: %s", error)

    def quarantined(self, direction: str, count: int) -> None:
        self.metrics.quarantine(direction, count)

    def paused(self, direction: str, entity: str, paused: bool) -> None:
        try:
            self.metrics.set_entity_paused(entity, direction, paused)
        except ValueError:  # an entity added by a reload has no series until restart
            log.debug("no paused series for %s until the next restart", entity)


def _labels(config: Config) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """The label values ``config`` names: systems, directions, entities with their fields."""
    entities = {name: list(e.fields) for name, e in config.entities.items()}
    return list(config.systems), [d.name for d in config.directions()], entities


def _metrics_for(config: Config) -> Metrics:
    return Metrics(*_labels(config))


def _validator(metrics: Metrics) -> Callable[[Config], list[str]]:
    """Checks a reloaded configuration; one that passes gets its metric series first (the
    pipelines it starts record conflicts and skips under its entity and direction names)."""
    def validate(config: Config) -> list[str]:
        problems = catalog_problems(config)
        if not problems:
            metrics.declare(*_labels(config))
        return problems
    return validate


def _web_config(config: Config) -> WebConfig | None:
    path = config.agent.web_config_file
    if path is None:
        return None
    if not path.is_absolute():
        path = config.path.parent / path
    return load_web_config(path)


def catalog_problems(config: Config) -> list[str]:
    """Configured tables/columns missing on the servers; an unreachable server is skipped
    with a warning (the pipelines wait for it), so that a database outage is no config error."""
    try:
        return admin.catalog_problems(config)
    except TransientError as error:
        log.warning("cannot check the tables now (%s); starting anyway, the pipelines retry",
                    error)
        return []


class _Threads:
    """Background helpers (heartbeats, gauges) that stop with the daemon."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def spawn(self, target: Callable[[threading.Event], None], name: str) -> None:
        thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(5)


def run_service(config: Config, path: Path) -> int:
    """Check the catalog, serve metrics, write heartbeats and replicate until stopped."""
    missing = catalog_problems(config)
    if missing:
        raise ConfigError(missing)
    web_config = _web_config(config)
    notifier = Notifier.from_env()
    metrics = _metrics_for(config)
    metrics.config_loaded(True)
    observer = MetricsObserver(metrics)
    daemon = Daemon(path, observer, observer.board, notifier=notifier,
                    on_reload=metrics.config_loaded, validate=_validator(metrics),
                    status=lambda: _status_line(daemon, observer))

    def current() -> Config:
        return daemon.config or config

    def directions() -> list[str]:
        return daemon.directions or running_directions(current())

    def readiness() -> str | None:
        if daemon.streaming():
            return None
        states = observer.states
        waiting = [f"{d} {states.get(d, 'starting')}" for d in directions()
                   if states.get(d) not in ("streaming", "staging")]
        return f"not streaming: {', '.join(sorted(waiting)) or 'no direction runs'}"

    server = HealthServer(metrics, lambda: _alive(daemon), readiness, web_config)
    server.start(config.agent.metrics_listen.host, config.agent.metrics_listen.port)
    threads = _Threads()
    threads.spawn(Heartbeats(current, metrics, directions).run, "heartbeats")
    interval = max(1.0, min(15.0, config.agent.heartbeat_interval))
    threads.spawn(GaugePoller(current, directions, metrics, interval).run, "gauges")
    try:
        return _run(config, daemon, notifier)
    finally:
        threads.join()
        server.stop()


GC_THRESHOLDS = (50_000, 20, 20)
"""The cyclic garbage collector's thresholds while replicating (Python's are 700, 10, 10)."""


def _tune_gc() -> None:
    """Collect cycles less often: replicating allocates a few dicts per row, nearly all
    freed by reference counting, so the default thresholds ran a collection every few
    hundred rows (about 17% of the CPU per row in a PG->PG catch-up). What start-up built
    lives as long as the process: frozen, no collection walks it again."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run(config: Config, daemon: Daemon, notifier: Notifier) -> int:
    _tune_gc()
    if config.agent.ha is None:
        return daemon.run(config)
    from agent.ha import run_when_leader

    return run_when_leader(config, lambda: daemon.run(config), notifier)


def _status_line(daemon: Daemon, observer: MetricsObserver) -> str:
    """STATUS= for ``systemctl status``: each direction's state and lag (whole seconds, so
    that the line does not change on every tick)."""
    states = observer.states
    registry = observer.metrics.registry
    parts = []
    for direction in daemon.directions:
        lag = registry.get_sample_value("cdc_agent_lag_seconds", {"direction": direction})
        shown = "?" if lag is None else f"{lag:.0f}s"
        parts.append(f"{direction} {states.get(direction, 'starting')}, lag {shown}")
    return "; ".join(parts) or "starting"


def _alive(daemon: Daemon) -> bool:
    return time.monotonic() - daemon.last_tick < LIVENESS_SILENCE


__all__ = ["AgentError", "MetricsObserver", "TransientError", "catalog_problems", "run_service"]
