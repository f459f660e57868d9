"""sd_notify against a real AF_UNIX datagram socket standing in for the service manager."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.notify import Notifier


@pytest.fixture
def manager() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket, as systemd's notify socket; short path (sun_path is 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        os.rmdir(directory)


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_from_env_reads_and_removes_the_variables(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(env)
    assert env == {}
    assert notifier.enabled
    assert notifier.watchdog_interval() == 30.0
    assert notifier.watchdog_ping_interval() == 15.0
    assert notifier.ready()
    assert _fields(sock) == {"READY": "1"}
    notifier.close()


def test_from_env_defaults_to_os_environ(
    manager: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_env()
    assert "NOTIFY_SOCKET" not in os.environ
    assert notifier.enabled


def test_each_message_kind(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path)
    notifier.ready("streaming\nlag 0.1s")
    assert _fields(sock) == {"READY": "1", "STATUS": "streaming lag 0.1s"}
    notifier.status("crm_to_erp lag 0.020s")
    assert _fields(sock) == {"STATUS": "crm_to_erp lag 0.020s"}
    notifier.watchdog()
    assert _fields(sock) == {"WATCHDOG": "1"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    fields = _fields(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    notifier.stopping()
    assert _fields(sock) == {"STOPPING": "1"}
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"cdc-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert _fields(sock) == {"WATCHDOG": "1"}
        notifier.close()
    finally:
        sock.close()


def test_no_op_outside_systemd() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval() is None
    assert notifier.watchdog_ping_interval() is None


def test_watchdog_meant_for_another_process_is_ignored(
    manager: tuple[str, socket.socket],
) -> None:
    path, _ = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_env(env).watchdog_interval() is None
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}
    assert Notifier.from_env(env).watchdog_interval() is None


def test_missing_listener_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    directory = tempfile.mkdtemp(prefix="sdn")
    try:
        notifier = Notifier(os.path.join(directory, "gone"))
        assert not notifier.status("x")
        assert "sd_notify failed" in caplog.text
    finally:
        os.rmdir(directory)


def test_unsupported_address_disables() -> None:
    assert not Notifier("vsock:2:1234").enabled
