"""Polling helpers: wait on a condition with a deadline instead of sleeping.

Used by the local throwaway servers (:mod:`agent.localservers`), the demo and the tests.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A polled condition did not become true in time.

    An AssertionError, so pytest reports a failure rather than an error (the tests use it).
    """


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Exceptions of the types in ``ignore`` count as "not yet" (the last one is reported on
    timeout); any other exception propagates at once. Raises :class:`WaitTimeout` after
    ``timeout`` seconds. The predicate is always called at least once, and once more at the
    deadline, so a slow predicate cannot make the wait give up without a last look.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        past_deadline = time.monotonic() >= deadline
        try:
            value = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
        if past_deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise WaitTimeout(f"{message} (waited {timeout:g}s){detail}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the kernel picks it).

    Another process may take it before it is used; servers retry with a new port when their
    first start finds the port taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
