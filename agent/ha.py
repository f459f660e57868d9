"""High availability: only the holder of a database advisory lock replicates.

``agent.ha`` names a system. Every instance tries to take a session-level advisory lock
there (PostgreSQL ``pg_try_advisory_lock``, MySQL ``GET_LOCK``) on a connection of its own;
the winner replicates, the others poll and take over within seconds once the lock frees,
which the server does as soon as the holder's connection dies (process killed, host gone).

Split brain: the holder checks every ``check_interval`` that its session still holds the
lock, and treats its leadership as a lease of ``lease`` seconds from the last good check; a
failed check or an expired lease (the server hangs) means the lock is lost and replication
must stop (:meth:`Leadership.watch` calls back). A new holder waits ``fence_delay`` (longer
than any old holder needs to notice) before it starts, so two instances never apply at once.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from agent.config import Config
from agent.config.models import PostgresSystem
from agent.errors import AgentError, PermanentError
from agent.notify import Notifier

log = logging.getLogger(__name__)


class AdvisoryLock(Protocol):
    """One engine's session lock (see connectors/*/advisory_lock.py)."""

    @property
    def description(self) -> str: ...
    def try_acquire(self) -> bool: ...
    def held(self) -> bool: ...
    def close(self) -> None: ...


def lock_for(config: Config, *, timeout: float = 2.0) -> AdvisoryLock:
    """The advisory lock that elects the active instance of this agent (``agent.ha``)."""
    system_name = config.agent.ha
    if system_name is None:
        raise ValueError("agent.ha is not set")
    system = config.systems[system_name]
    if isinstance(system, PostgresSystem):
        from connectors.postgres.advisory_lock import PgAdvisoryLock

        return PgAdvisoryLock(system.conninfo(), config.agent.name, timeout=timeout)
    from agent.wiring import mysql_params
    from connectors.mysql.advisory_lock import MyAdvisoryLock

    return MyAdvisoryLock(mysql_params(system), config.agent.name, timeout=timeout)


class Leadership:
    """Election and lease of the active instance (thread-safe)."""

    def __init__(self, lock: AdvisoryLock, *, poll_interval: float = 1.0,
                 check_interval: float = 0.5, lease: float = 2.5) -> None:
        if not 0 < check_interval < lease:
            raise ValueError("check_interval must be positive and shorter than lease")
        self._lock = lock
        self._poll = poll_interval
        self._check = check_interval
        self._lease = lease
        self._mutex = threading.Lock()
        self._leader = False
        self._last_ok = 0.0
        self._released = threading.Event()
        self._checking = False
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_config(cls, config: Config) -> Leadership:
        """Leadership over the lock that ``agent.ha`` names."""
        return cls(lock_for(config))

    @property
    def fence_delay(self) -> float:
        """How long a new holder waits before it starts: a previous holder whose session was
        cut has noticed by then (next check fails, or its lease ran out) and stopped."""
        return self._lease + self._check

    def wait_until_leader(self, stop: threading.Event,
                          on_wait: Callable[[], None] | None = None) -> bool:
        """Block until this instance holds the lock (True) or ``stop`` is set (False).

        ``on_wait`` is called about once per poll while waiting (e.g. to feed a watchdog).
        Connection failures are logged and retried with backoff; only configuration-like
        failures (authentication, privileges) propagate.
        """
        log.info("high availability: waiting for the %s", self._lock.description)
        delay = self._poll
        while not stop.is_set():
            if on_wait is not None:
                on_wait()
            try:
                if self._lock.try_acquire():
                    break
                delay = self._poll
            except PermanentError:
                raise
            except AgentError as error:
                log.warning("high availability: %s; retrying", error)
                delay = min(delay * 2, 10 * self._poll)
            stop.wait(delay * (0.8 + 0.4 * random.random()))
        else:
            return False
        return self._fence(stop, on_wait)

    def _fence(self, stop: threading.Event, on_wait: Callable[[], None] | None) -> bool:
        log.info("high availability: lock taken; starting in %.1fs", self.fence_delay)
        with self._mutex:
            self._leader = True
            self._last_ok = time.monotonic()
        self._released.clear()
        self._spawn(self._check_loop, "ha-check")
        deadline = time.monotonic() + self.fence_delay
        while time.monotonic() < deadline:
            if on_wait is not None:
                on_wait()
            if stop.wait(min(self._poll, max(0.0, deadline - time.monotonic()))):
                self.release()
                return False
        if not self.still_leader():
            self.release()
            return False
        log.info("high availability: this instance is active")
        return True

    def still_leader(self) -> bool:
        """True while the lock is held and was confirmed within the lease."""
        with self._mutex:
            return self._leader and time.monotonic() - self._last_ok < self._lease

    @property
    def released(self) -> threading.Event:
        """Set once :meth:`release` was called."""
        return self._released

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call ``on_lost`` once (from another thread) when leadership ends without release()."""
        def loop() -> None:
            while not self._released.wait(self._check / 2):
                if not self.still_leader():
                    log.error("high availability: lost the %s; stopping replication",
                              self._lock.description)
                    on_lost()
                    return

        self._spawn(loop, "ha-watch")

    def release(self) -> None:
        """Give the lock up (closing its session) and stop checking; safe to call twice.

        A check in flight on the lock's connection closes it when it returns (a session
        is not closed under a running query); process exit closes it in any case.
        """
        with self._mutex:
            self._leader = False
            self._released.set()
            if self._checking:
                return
        self._lock.close()

    def _check_loop(self) -> None:
        while not self._released.wait(self._check):
            with self._mutex:
                self._checking = True
            try:
                held = self._lock.held()
            except AgentError as error:
                log.warning("high availability: lock check failed: %s", error)
                held = False
            with self._mutex:
                self._checking = False
                if self._released.is_set():
                    break
                if not held:
                    self._leader = False
                    break
                self._last_ok = time.monotonic()
        self._lock.close()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)


def run_when_leader(config: Config, run: Callable[[], int],
                    notifier: Notifier | None = None) -> int:
    """Wait as a standby until elected, then ``run()`` the replication while the lock holds.

    A standby tells systemd it is ready (a healthy standby) and feeds the watchdog; SIGTERM
    or SIGINT while waiting returns 0. When leadership is lost while running, replication is
    stopped through SIGTERM (the daemon finishes its batch) and the exit code is 1, so the
    service manager restarts the instance as a standby.
    """
    notifier = notifier or Notifier.from_env()
    leadership = Leadership.from_config(config)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    standby = _Standby(notifier)
    try:
        if not leadership.wait_until_leader(stop, standby.tick):
            log.info("high availability: stopped while standby")
            return 0
        lost = threading.Event()
        leadership.watch(lambda: _stop_replication(lost, leadership))
        code = run()
        if lost.is_set():
            log.error("high availability: replication stopped after losing the lock")
            return code or 1
        return code
    finally:
        leadership.release()
        for signum, handler in previous.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


class _Standby:
    """What a waiting instance tells systemd: ready as a standby, alive."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._announced = False

    def tick(self) -> None:
        if not self._announced:
            self._announced = True
            self._notifier.ready("standby: waiting for the HA lock")
        self._notifier.watchdog()


def _stop_replication(lost: threading.Event, leadership: Leadership) -> None:
    # SIGTERM reaches the daemon's own handler (it finishes the batch in hand and exits).
    # Repeat it: a signal landing before the daemon installed its handler would be missed.
    lost.set()
    while True:
        os.kill(os.getpid(), signal.SIGTERM)
        if leadership.released.wait(1.0):
            return
