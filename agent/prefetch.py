"""Read ahead: a source polled in its own thread, feeding a bounded queue.

Reading (network, decoding) overlaps applying, and the bound gives back-pressure. A reader
exception is re-raised in the consumer, as the next item.
"""

from __future__ import annotations

import queue
import threading

from agent.events import Transaction
from agent.ports import Source


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Owns a source: only its thread calls ``poll``; ``confirm`` may be called from anywhere."""

    def __init__(self, source: Source, depth: int = 64, poll_timeout: float = 0.2) -> None:
        self._source = source
        self._queue: queue.Queue[Transaction | _Failure] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._poll_timeout = poll_timeout
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def start(self, after: str | None) -> None:
        """Open the source after ``after`` and begin reading ahead."""
        self._source.open(after)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._source.poll(self._poll_timeout)
                if item is not None:
                    self._put(item)
        except BaseException as error:  # handed to the consumer, which decides
            self._put(_Failure(error))

    def _put(self, item: Transaction | _Failure) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> Transaction | None:
        """The next transaction, None after ``timeout``; raises what the reader raised."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, _Failure):
            raise item.error
        return item

    def has_more(self) -> bool:
        """Whether a transaction is already waiting."""
        return not self._queue.empty()

    def confirm(self, position: str) -> None:
        self._source.confirm(position)

    def close(self) -> None:
        """Stop reading and close the source."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._source.close()
