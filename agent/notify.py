"""The systemd notification protocol (sd_notify), written by hand.

A notification is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace). Outside systemd the
variable is absent and every call is a no-op, so the daemon calls these unconditionally.

Why not a library: the protocol is a dozen lines, and the maintained bindings either need
libsystemd headers at install time or pull in more than they give.

How the daemon uses it (DESIGN.md section 6):

* ``ready()`` only once both directions stream; ``status(text)`` with the lag.
* ``watchdog()`` from the apply loop, only when it progresses or is idle and healthy, every
  :meth:`Notifier.watchdog_ping_interval` seconds (half of ``WatchdogSec=``).
* ``reloading()`` when SIGHUP handling starts, then ``ready()`` when it ends (good or bad).
* ``stopping()`` when SIGTERM handling starts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

_SEND_TIMEOUT = 2.0  # seconds: a wedged manager must not wedge the apply loop


def _socket_address(value: str) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into a Python AF_UNIX address, or None if unsupported."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # vsock:CID:PORT (systemd 253+, for VMs) and anything else: not for a daemon on a host.
    return None


def _parse_watchdog(environ: MutableMapping[str, str]) -> float | None:
    """Watchdog timeout in seconds if it is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # set for another process (e.g. a parent that exec'd us via a shell)
    return int(usec) / 1_000_000


class Notifier:
    """Sends state notifications to the service manager; a no-op when not under systemd.

    Thread-safe: the apply loop pings the watchdog while the main thread reports status.
    """

    def __init__(self, address: str | None, watchdog_timeout: float | None = None) -> None:
        """``address`` as in ``$NOTIFY_SOCKET`` (None disables); ``watchdog_timeout`` in seconds."""
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            log.warning("NOTIFY_SOCKET has an unsupported address form; notifications disabled")
        self._watchdog_timeout = watchdog_timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Build from ``$NOTIFY_SOCKET``/``$WATCHDOG_USEC``/``$WATCHDOG_PID``, then remove them.

        Removing them keeps child processes (a pager, a helper tool) from notifying on the
        agent's behalf, as ``sd_notify(unset_environment=1)`` does.
        """
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        watchdog_timeout = _parse_watchdog(env)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        return cls(address, watchdog_timeout)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout (``WatchdogSec=``) in seconds, or None when there is none."""
        return self._watchdog_timeout if self.enabled else None

    def watchdog_ping_interval(self) -> float | None:
        """How often to call :meth:`watchdog`: half the timeout (sd_watchdog_enabled(3) advice)."""
        timeout = self.watchdog_interval()
        return None if timeout is None else timeout / 2

    def notify(self, **fields: str) -> bool:
        """Send one notification of ``KEY=VALUE`` lines; True if it was delivered.

        Failures are logged, never raised: losing a STATUS line must not stop replication
        (a lost WATCHDOG ping is what the watchdog is for).
        """
        if self._address is None or not fields:
            return False
        payload = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            with self._lock:
                self._socket().sendto(payload.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            self._close_socket()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup (or a reload) is complete; optionally with a STATUS line."""
        if status is None:
            return self.notify(READY="1")
        return self.notify(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=: free-form one-line state shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is alive; call it from the loop that must make progress."""
        return self.notify(WATCHDOG="1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload (systemd 253+) expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify(STOPPING="1")

    def close(self) -> None:
        """Release the socket; later calls reopen it."""
        with self._lock:
            self._close_socket_locked()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.settimeout(_SEND_TIMEOUT)
            self._sock = sock
        return self._sock

    def _close_socket(self) -> None:
        with self._lock:
            self._close_socket_locked()

    def _close_socket_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: str) -> str:
    """A field value may not contain a newline: it would start a new field."""
    return value.replace("\r", " ").replace("\n", " ")
