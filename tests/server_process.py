"""Lifecycle of a database server process started by the tests.

The code lives in :mod:`agent.serverprocess` (the demo runs the same servers); this module
re-exports it and names the tests' temporary directories ``cdc-test-*``.
"""

from __future__ import annotations

from pathlib import Path

from agent import serverprocess
from agent.serverprocess import (
    HOST,
    WATCHDOG,
    ServerProcess,
    chown_tree,
    group_alive,
    is_root,
    pid_alive,
)

__all__ = [
    "HOST",
    "WATCHDOG",
    "ServerProcess",
    "chown_tree",
    "group_alive",
    "is_root",
    "make_temp_dir",
    "pid_alive",
]

TEMP_PREFIX = "cdc-test-"


def make_temp_dir(kind: str, owner: str) -> Path:
    """Create a private temporary directory (cdc-test-KIND-*) owned by the server's OS user."""
    return serverprocess.make_temp_dir(kind, owner, TEMP_PREFIX)
