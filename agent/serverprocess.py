"""Lifecycle of a throwaway database server process (the demo's and the tests').

A :class:`ServerProcess` owns a temporary directory, a TCP port on 127.0.0.1 and one server
process started in its own session (so its process group holds the server and everything it
forks). It is stopped by the PID we hold, never by name. Three layers make sure nothing
lingers: the owner's own clean-up (fixture finalizers, the demo's ``finally``), an
``atexit`` hook, and a watchdog process that kills what is still registered when our
process dies without running either (SIGKILL, crash).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, ClassVar, Self

from agent.polling import WaitTimeout, free_port, wait_until

HOST = "127.0.0.1"


def is_root() -> bool:
    """True when we run as root (servers then run as their own OS user)."""
    return os.geteuid() == 0


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in process group ``pgid``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces): state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


def chown_tree(path: Path, user: str) -> None:
    """Give ``path`` (recursively) to ``user`` when we are root; no-op otherwise."""
    if is_root():
        for root, dirs, files in os.walk(path):
            for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                shutil.chown(name, user, user)


def make_temp_dir(kind: str, owner: str, prefix: str = "cdc-server-") -> Path:
    """Create a private temporary directory owned by the server's OS user."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{kind}-"))
    chown_tree(path, owner)
    return path


_WATCHDOG_SOURCE = r"""
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups, dirs = set(), set()
for line in sys.stdin:
    op, _, arg = line.rstrip("\n").partition(" ")
    if op == "+g": groups.add(int(arg))
    elif op == "-g": groups.discard(int(arg))
    elif op == "+d": dirs.add(arg)
    elif op == "-d": dirs.discard(arg)
for pgid in groups:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try: os.killpg(pgid, sig)
        except OSError: pass
if groups: time.sleep(0.5)
for path in dirs: shutil.rmtree(path, ignore_errors=True)
"""


class _Watchdog:
    """A separate process that cleans up after us if our process dies abruptly.

    It reads registrations on a pipe; when the pipe closes (our process ended, however it
    ended) it SIGKILLs the process groups and removes the directories still registered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def send(self, line: str) -> None:
        with self._lock:
            if self._proc is None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", _WATCHDOG_SOURCE],
                    stdin=subprocess.PIPE,
                    text=True,
                    start_new_session=True,  # survives a kill of our process group
                )
            stdin = self._proc.stdin
            assert stdin is not None
            stdin.write(line + "\n")
            stdin.flush()


WATCHDOG = _Watchdog()
# Strong references: a server nobody holds any more still gets stopped at exit.
_LIVE: set[ServerProcess] = set()


@atexit.register
def _close_all_servers() -> None:
    for server in list(_LIVE):
        server.close()


class ServerProcess(abc.ABC):
    """One database server on 127.0.0.1 in its own temporary directory.

    Subclasses say how to make a pristine data directory, how to start and probe the server.
    Construction prepares the directory; :meth:`start` runs the server.
    """

    kind: ClassVar[str]
    os_user: ClassVar[str]  # the OS user the server runs as when we run as root
    temp_prefix: ClassVar[str] = "cdc-server-"  # names its temporary directories
    shutdown_signal: ClassVar[signal.Signals] = signal.SIGTERM
    # A harder shutdown to try before SIGKILL, one the server still cleans up after.
    immediate_signal: ClassVar[signal.Signals | None] = None
    _templates: ClassVar[dict[str, Path]] = {}
    _template_lock: ClassVar[threading.Lock] = threading.Lock()

    host: str = HOST

    def __init__(self) -> None:
        self.port = free_port()
        self.root = make_temp_dir(self.kind, self.os_user, self.temp_prefix)
        WATCHDOG.send(f"+d {self.root}")
        _LIVE.add(self)
        self.datadir = self.root / "data"
        self.log_path = self.root / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False
        self._paused = False
        self._closed = False
        self._copy_template()
        self.write_config()

    # --- subclass hooks -------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def build_template(cls, datadir: Path) -> None:
        """Create a pristine, initialised data directory at ``datadir`` (its parent exists)."""

    @abc.abstractmethod
    def write_config(self) -> None:
        """(Re)write per-instance configuration files (port, sockets, settings)."""

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abc.abstractmethod
    def probe(self) -> None:
        """Connect once and return, or raise if the server does not accept connections yet."""

    def popen_user(self) -> str | None:
        """The OS user to switch to before exec (None: stay who we are)."""
        return self.os_user if is_root() else None

    # --- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the server process while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process we started has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (stdout and stderr), for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Self:
        """Start the server and wait until it accepts connections; no-op if it runs."""
        if self._closed:
            raise RuntimeError(f"{self.kind} server in {self.root} was closed")
        if self.running:
            return self
        for attempt in range(4):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            try:
                self._wait_ready(timeout)
                break
            except RuntimeError:
                # Another process may have taken the port between free_port() and bind;
                # move to a new port, but only before clients could have learnt this one.
                log = self.log_path.read_bytes()[offset:]
                if self._started_once or attempt == 3 or b"already in use" not in log:
                    raise
                self.port = free_port()
                self.write_config()
        self._started_once = True
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the server down cleanly (escalating to SIGKILL after ``timeout``)."""
        if self._proc is None:
            return
        if self.running:
            self.resume()
            self._signal_main(self.shutdown_signal)
            try:
                self._proc.wait(timeout / 3 if self.immediate_signal else timeout)
            except subprocess.TimeoutExpired:
                self._escalate(timeout)
        self._reap()

    def _escalate(self, timeout: float) -> None:
        """The clean shutdown hangs: an immediate one, then SIGKILL of the whole group."""
        assert self._proc is not None
        if self.immediate_signal is not None:
            self._signal_main(self.immediate_signal)
            try:
                self._proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)

    def kill(self) -> None:
        """Crash the server: SIGKILL its whole process group (no shutdown, no flush)."""
        if self._proc is None:
            return
        if self.running:
            self._signal_group(signal.SIGKILL)
        self._reap()

    def restart(self, timeout: float = 120.0) -> Self:
        """Clean stop, then start on the same port and data directory."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to its process group): connections hang, nothing fails."""
        if not self.running:
            raise RuntimeError(f"{self.kind} server is not running")
        self._signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT); no-op when not paused."""
        if self._paused and self.running:
            self._signal_group(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the server and remove its temporary directory; idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.root, ignore_errors=True)
            WATCHDOG.send(f"-d {self.root}")
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} {self.root}>"

    # --- internals ------------------------------------------------------------------------

    def _copy_template(self) -> None:
        cls = type(self)
        with cls._template_lock:
            template = cls._templates.get(cls.kind)
            if template is None or not template.exists():
                holder = make_temp_dir(f"{cls.kind}-template", cls.os_user, cls.temp_prefix)
                WATCHDOG.send(f"+d {holder}")
                atexit.register(shutil.rmtree, holder, True)
                template = holder / "data"
                cls.build_template(template)
                cls._templates[cls.kind] = template
        # cp -a keeps modes and (as root) owners: the server's user owns the copy.
        subprocess.run(["cp", "-a", str(template), str(self.datadir)], check=True)

    def _spawn(self) -> None:
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 -- kept open across restarts
        user = self.popen_user()
        self._proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,  # own process group: we signal the group, never by name
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        WATCHDOG.send(f"+g {self._proc.pid}")

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if not self.running:
                raise RuntimeError(
                    f"{self.kind} server exited during start-up; log:\n{self.log_tail()}"
                )
            try:
                self.probe()
            except Exception:
                return False
            return True

        try:
            wait_until(ready, timeout, interval=0.05, message=f"{self.kind} server ready")
        except WaitTimeout as exc:
            self.kill()
            raise RuntimeError(f"{exc}; log:\n{self.log_tail()}") from exc
        except RuntimeError:
            self._reap()
            raise

    def _signal_main(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, sig)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        """Wait for the server and every process of its group, then forget the PID."""
        assert self._proc is not None
        pgid = self._proc.pid
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self._proc.wait(30)
        # Children (e.g. PostgreSQL backends) may outlive the postmaster for a moment; a
        # restart must not find them still attached to the old shared memory.
        deadline = time.monotonic() + 30
        while group_alive(pgid) and time.monotonic() < deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        WATCHDOG.send(f"-g {pgid}")
        self._paused = False
