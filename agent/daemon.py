"""The daemon: one pipeline thread per direction, and one loop that watches them.

Signal handlers only set flags (Patroni's pattern); the main loop acts on them between
ticks. The main loop is the one error boundary: a direction that fails for good stops the
agent with the exit code of its error (69 for a lost position), a SIGHUP re-validates the
configuration and keeps the old one when the new one is bad.

systemd watchdog policy (DESIGN.md section 6). The main loop sends WATCHDOG=1 on behalf of
the apply loops, and only while every direction is healthy:

* *progressing or idle*: the direction's apply loop went round within the stall limit
  (half of ``WatchdogSec=``). An idle loop goes round every 0.2 s, so only a loop stuck in a
  call -- a target that accepts the connection but never answers -- stops the pings.
* *retrying*: a controlled backoff after a transient failure (a database down, a deadlock)
  is **not** a wedge. The agent is doing the right thing and a restart would not help;
  ``/readyz`` and ``cdc_agent_direction_state`` report it. A retry that itself hangs (the
  next report is due within the backoff cap plus connect timeouts) is a wedge after
  :data:`RETRY_GRACE` seconds.
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
from agent.pipeline import Observer, Pipeline
from agent.wiring import build_pipelines, route_table

log = logging.getLogger(__name__)

WATCHDOG_STALL = 20.0
"""Seconds an apply loop may spend in one step before it counts as wedged (no watchdog)."""

RETRY_GRACE = 120.0
"""Seconds a retrying direction may go without a new retry report before it counts as wedged:
the backoff is at most 30 s (45 s with jitter) plus the connect timeouts."""

_TICK = 0.25  # seconds between main-loop rounds

Validator = Callable[[Config], list[str]]
"""Checks a freshly loaded configuration against the servers; returns problems (empty: ok)."""


class StateBoard:
    """Each direction's current state and when it last changed or retried (monotonic clock).

    Written by the pipelines' observer, read by the main loop and the health endpoint.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` must be monotonic."""
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, tuple[str, float]] = {}

    def enter(self, direction: str, state: str) -> None:
        """``direction`` entered ``state`` now."""
        with self._lock:
            self._states[direction] = (state, self._clock())

    def touch(self, direction: str) -> None:
        """Something happened in the current state (e.g. one more retry): restart its clock."""
        with self._lock:
            state = self._states.get(direction, ("starting", 0.0))[0]
            self._states[direction] = (state, self._clock())

    def states(self) -> dict[str, str]:
        """Direction -> state name."""
        with self._lock:
            return {d: s for d, (s, _) in self._states.items()}

    def state(self, direction: str) -> tuple[str, float]:
        """(state, seconds since it was set or touched); ("starting", inf) if never set."""
        with self._lock:
            found = self._states.get(direction)
        if found is None:
            return "starting", float("inf")
        return found[0], self._clock() - found[1]

    def forget(self, keep: frozenset[str]) -> None:
        """Drop directions that no longer run (after a reload)."""
        with self._lock:
            self._states = {d: v for d, v in self._states.items() if d in keep}


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


def running_directions(config: Config) -> list[str]:
    """Names of the directions that get a pipeline (those with at least one flowing field)."""
    return [d.name for d in config.directions() if route_table(config, d).routes]


class Daemon:
    """Runs until SIGTERM/SIGINT; reloads on SIGHUP."""

    def __init__(self, config_path: Path, observer: Observer, board: StateBoard,
                 notifier: Notifier | None = None,
                 on_reload: Callable[[bool], None] | None = None,
                 validate: Validator | None = None,
                 status: Callable[[], str] | None = None) -> None:
        """``board`` is the one ``observer`` writes states into; ``on_reload(ok)`` is told
        how each (re)load ended; ``validate`` checks a new configuration against the servers
        before it replaces the running one; ``status`` gives the STATUS= line."""
        self._path = config_path
        self._observer = observer
        self._board = board
        self._notifier = notifier or Notifier.from_env()
        self._on_reload = on_reload or (lambda ok: None)
        self._validate = validate or (lambda config: [])
        self._status = status or self._default_status
        self._terminate = threading.Event()
        self._hangup = threading.Event()
        self._runners: list[_Runner] = []
        self._ready = False
        self._last_ping = float("-inf")
        self._last_status = ""
        timeout = self._notifier.watchdog_interval()
        self._stall = WATCHDOG_STALL if timeout is None else timeout / 2
        self._ping_every = _TICK if timeout is None else timeout / 4
        self.config: Config | None = None
        self.last_tick = time.monotonic()

    @property
    def directions(self) -> list[str]:
        """The directions that run now."""
        return [r.pipeline.direction for r in self._runners]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        (self._hangup if signum == signal.SIGHUP else self._terminate).set()

    def request_stop(self) -> None:
        """Stop as SIGTERM would (for embedding and tests)."""
        self._terminate.set()

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
        self.config = config
        self._runners = [_Runner(p) for p in build_pipelines(config, self._observer)]
        self._board.forget(frozenset(self.directions))
        for runner in self._runners:
            self._board.enter(runner.pipeline.direction, "starting")
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
            self._terminate.wait(_TICK)
        log.info("stopping: finishing the current batches")
        return 0

    def _exit_code(self, error: BaseException | None) -> int:
        if isinstance(error, AgentError):
            return error.exit_code
        return 1

    def streaming(self) -> bool:
        """True when every direction that runs is streaming (or staging for its schedule)."""
        states = self._board.states()
        return bool(self._runners) and all(
            states.get(d) in ("streaming", "staging") for d in self.directions)

    def healthy(self) -> bool:
        """True while every apply loop progresses, idles, or waits out a retry (no wedge)."""
        now = time.monotonic()
        return all(self._runner_healthy(r, now) for r in self._runners)

    def _runner_healthy(self, runner: _Runner, now: float) -> bool:
        if now - runner.pipeline.last_progress < self._stall:
            return True
        state, age = self._board.state(runner.pipeline.direction)
        return state in ("retrying", "starting") and age < RETRY_GRACE

    def _feed_systemd(self) -> None:
        if not self._ready and self.streaming():
            self._ready = True
            log.info("all directions streaming: ready")
            self._notifier.ready(self._status())
        now = time.monotonic()
        if now - self._last_ping >= self._ping_every and self.healthy():
            self._last_ping = now
            self._notifier.watchdog()
        status = self._status()
        if status != self._last_status:
            self._last_status = status
            self._notifier.status(status)

    def _default_status(self) -> str:
        return ", ".join(f"{d}: {s}" for d, s in sorted(self._board.states().items()))

    def _reload(self) -> None:
        self._notifier.reloading()
        log.info("SIGHUP: reloading the configuration from %s", self._path)
        try:
            config = load_config(self._path)
            problems = self._validate(config)
            if problems:
                raise ConfigError(problems)
        except AgentError as error:
            detail = "\n".join(error.problems) if isinstance(error, ConfigError) else str(error)
            log.error("reload failed, keeping the running configuration: %s", detail)
            self._on_reload(False)
            self._notifier.ready("reload failed; old configuration kept")
            return
        for runner in self._runners:
            runner.halt()
        self._start(config)
        self._on_reload(True)
        log.info("configuration reloaded from %s", self._path)
        self._notifier.ready("reloaded")
