"""Real PostgreSQL 15 and MariaDB 10.11 servers for the tests, configured as a DBA would.

The servers are :mod:`agent.localservers` (the demo runs the same ones); this module keeps
the tests' names and puts their temporary directories under ``cdc-test-*``. Each server
listens on 127.0.0.1 on a free port, keeps everything in its own temporary directory and
requires a password over TCP. See :mod:`agent.serverprocess` for the lifecycle (start, stop,
kill, restart, pause, resume, close).
"""

from __future__ import annotations

from agent import localservers
from agent.localservers import (
    MARIADB_INSTALL_DB,
    MARIADBD,
    PG_BIN,
    MariaDatabase,
    PgDatabase,
    Setting,
    quote_maria,
)
from tests.polling import WaitTimeout, free_port, wait_until
from tests.server_process import HOST, TEMP_PREFIX

__all__ = [
    "HOST",
    "MARIADBD",
    "MARIADB_INSTALL_DB",
    "PG_BIN",
    "MariaDatabase",
    "MariaServer",
    "PgDatabase",
    "PgServer",
    "Setting",
    "WaitTimeout",
    "free_port",
    "quote_maria",
    "wait_until",
]


class PgServer(localservers.PgServer):
    """A PostgreSQL 15 server with logical decoding enabled (see the base class)."""

    temp_prefix = TEMP_PREFIX


class MariaServer(localservers.MariaServer):
    """A MariaDB 10.11 server with a full-image, full-metadata row binlog (see the base class)."""

    temp_prefix = TEMP_PREFIX
