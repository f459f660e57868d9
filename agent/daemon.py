"""The daemon: one pipeline thread per direction, and one loop that watches them.

Signal handlers only set flags (Patroni's pattern); the main loop acts on them between
ticks. The main loop is the one error boundary: a direction that fails for good stops the
agent with the exit code of its error (69 for a lost position), a SIGHUP re-validates the
configuration and keeps the old one when the new one is bad.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError
from agent.notify import Notifier
from agent.pipeline import Observer, Pipeline, Settings
from agent.wiring import names, own_origins, route_table, sink_factory, source_factory

log = logging.getLogger(__name__)

WATCHDOG_STALL = 20.0  # seconds without a loop tick before the watchdog stops being fed


@dataclass
class _Runner:
    """A pipeline and the thread that runs it."""

    pipeline: Pipeline
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.pipeline.direction, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.pipeline.run(self.stop)
        except BaseException as error:
            self.error = error
            log.error("%s: stopped: %s", self.pipeline.direction, error)

    def halt(self, timeout: float = 30.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def build_pipelines(config: Config, observer: Observer) -> list[Pipeline]:
    """One pipeline per direction that has at least one route."""
    settings = Settings(max_rows=config.agent.batch.max_rows,
                        max_delay=config.agent.batch.max_delay,
                        advance_interval=max(config.agent.heartbeat_interval, 1.0))
    pipelines = []
    for direction in config.directions():
        routes = route_table(config, direction)
        if not routes.routes:
            continue
        pipelines.append(Pipeline(
            direction.name, source_factory(config, direction), sink_factory(config, direction),
            routes, own_origins=own_origins(config, direction),
            heartbeat_table=names(config).heartbeats, settings=settings, observer=observer))
    return pipelines


class Daemon:
    """Runs until SIGTERM/SIGINT; reloads on SIGHUP."""

    def __init__(self, config_path: Path, observer: Observer,
                 states: Callable[[], dict[str, str]] | None = None,
                 notifier: Notifier | None = None,
                 on_reload: Callable[[bool], None] | None = None) -> None:
        self._path = config_path
        self._observer = observer
        self._states = states or (lambda: {})
        self._notifier = notifier or Notifier.from_env()
        self._on_reload = on_reload or (lambda ok: None)
        self._terminate = threading.Event()
        self._hangup = threading.Event()
        self._runners: list[_Runner] = []
        self._ready = False
        self.last_tick = time.monotonic()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        (self._hangup if signum == signal.SIGHUP else self._terminate).set()

    def run(self, config: Config) -> int:
        """Replicate with ``config`` until told to stop; return the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._start(config)
        try:
            return self._watch()
        finally:
            self._notifier.stopping()
            for runner in self._runners:
                runner.halt()

    def _start(self, config: Config) -> None:
        self._runners = [_Runner(p) for p in build_pipelines(config, self._observer)]
        for runner in self._runners:
            runner.start()

    def _watch(self) -> int:
        while not self._terminate.is_set():
            self.last_tick = time.monotonic()
            if self._hangup.is_set():
                self._hangup.clear()
                self._reload()
            failed = [r for r in self._runners if not r.alive]
            if failed:
                return self._exit_code(failed[0].error)
            self._feed_systemd()
            self._terminate.wait(0.25)
        log.info("stopping: finishing the current batches")
        return 0

    def _exit_code(self, error: BaseException | None) -> int:
        if isinstance(error, AgentError):
            return error.exit_code
        return 1

    def _feed_systemd(self) -> None:
        states = self._states()
        streaming = all(states.get(r.pipeline.direction) == "streaming" for r in self._runners)
        if streaming and not self._ready:
            self._ready = True
            self._notifier.ready("streaming")
        now = time.monotonic()
        if all(now - r.pipeline.last_progress < WATCHDOG_STALL for r in self._runners):
            self._notifier.watchdog()
        self._notifier.status(", ".join(f"{d}: {s}" for d, s in sorted(states.items())))

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            config = load_config(self._path)
        except ConfigError as error:
            log.error("reload failed, keeping the running configuration:\n%s", error)
            self._on_reload(False)
            self._notifier.ready("reload failed; old configuration kept")
            return
        for runner in self._runners:
            runner.halt()
        self._start(config)
        self._on_reload(True)
        log.info("configuration reloaded from %s", self._path)
        self._notifier.ready("reloaded")
