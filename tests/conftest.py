"""Shared fixtures: real PostgreSQL and MariaDB servers, fresh databases, dedicated servers.

Session servers (``pg_server``, ``maria_server``) are shared: do not stop or reconfigure them;
use ``pg_server_factory`` / ``maria_server_factory`` for a server a test may stop, kill,
restart or pause. ``pg_db`` / ``maria_db`` give each test its own database, dropped after it.
"""

from __future__ import annotations

import re
import secrets
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

import pytest

from tests.servers import MariaDatabase, MariaServer, PgDatabase, PgServer, Setting

PgServerFactory = Callable[..., PgServer]
MariaServerFactory = Callable[..., MariaServer]


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into the same path as Ctrl-C so fixture finalizers (and then
    # atexit) stop every server we started.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Make termination signals run fixture finalizers instead of killing us outright."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _terminate)


def unique_name(request: pytest.FixtureRequest, prefix: str = "t") -> str:
    """A database name unique in this run, readable from the test name (<= 63 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return f"{prefix}_{slug}_{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The shared PostgreSQL 15 server (wal_level=logical); do not stop or reconfigure it."""
    server = PgServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def maria_server() -> Iterator[MariaServer]:
    """The shared MariaDB 10.11 server (row binlog); do not stop or reconfigure it."""
    server = MariaServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def pg_db(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    """A fresh database on ``pg_server``, dropped (with its slots and subscriptions) after."""
    name = unique_name(request)
    origins_before = pg_server.replication_origins()
    yield PgDatabase(pg_server, name, pg_server.create_database(name))
    _best_effort(pg_server.drop_database, name)
    # Origins are cluster-wide: drop those the test created so they cannot pile up.
    _best_effort(lambda _: pg_server.drop_replication_origins(
        pg_server.replication_origins() - origins_before), name)


@pytest.fixture
def maria_db(maria_server: MariaServer, request: pytest.FixtureRequest) -> Iterator[MariaDatabase]:
    """A fresh utf8mb4 database on ``maria_server``, dropped after the test."""
    name = unique_name(request)
    yield MariaDatabase(maria_server, name, maria_server.create_database(name))
    _best_effort(maria_server.drop_database, name)


@pytest.fixture
def pg_server_factory() -> Iterator[PgServerFactory]:
    """Start dedicated PostgreSQL servers: ``factory(max_slot_wal_keep_size=..., settings=...,
    start=True)``. All are stopped and removed after the test."""
    servers: list[PgServer] = []

    def factory(
        *,
        max_slot_wal_keep_size: str = "-1",
        settings: Mapping[str, Setting] | None = None,
        start: bool = True,
    ) -> PgServer:
        server = PgServer(max_slot_wal_keep_size=max_slot_wal_keep_size, settings=settings)
        servers.append(server)
        return server.start() if start else server

    yield factory
    _close_all(servers)


@pytest.fixture
def maria_server_factory() -> Iterator[MariaServerFactory]:
    """Start dedicated MariaDB servers: ``factory(options={...}, start=True)``. All are
    stopped and removed after the test."""
    servers: list[MariaServer] = []

    def factory(
        *, options: Mapping[str, str | int] | None = None, start: bool = True
    ) -> MariaServer:
        server = MariaServer(options=options)
        servers.append(server)
        return server.start() if start else server

    yield factory
    _close_all(servers)


def _close_all(servers: list[PgServer] | list[MariaServer]) -> None:
    errors: list[BaseException] = []
    for server in servers:
        try:
            server.close()
        except Exception as exc:  # close the others before reporting
            errors.append(exc)
    if errors:
        raise errors[0]


def _best_effort(drop: Callable[[str], Any], name: str) -> None:
    # A test that broke its database must not turn into an error here; the server (and
    # everything in it) is removed at the end of the session anyway.
    try:
        drop(name)
    except Exception as exc:
        warnings.warn(f"could not drop test database {name}: {exc}", stacklevel=1)
