"""Writing one batch while the next is planned.

In a catch-up the applying thread spends about half its time waiting for the target server:
the read of the rows the rules need, the write, the COMMIT. A batch whose entities send every
field from the source as it is needs no locking read (see ``Applier._locks``), so its plan
needs nothing of the open transaction: a worker thread writes and commits batch N on the
sink's connection while the applying thread reads batch N+1's rows on a second connection
and plans it. N has not committed yet, so the second connection cannot see the rows N
writes: the planner takes those as N leaves them (``written``). One batch at most is behind;
anything else that uses the sink waits for it first (:meth:`WriteBehind.wait`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from agent.ports import Sink, Write
from agent.rules import Written

log = logging.getLogger(__name__)


class WriteBehind:
    """The worker that writes and commits the batch behind, and that batch's rows."""

    def __init__(self, direction: str, sink: Sink, reads: Sink,
                 write: Callable[[Sink, Sequence[Write]], None]) -> None:
        self.reads = reads
        """The second connection: plain reads only, each its own transaction."""
        self.written: Written | None = None
        """The rows the batch in flight writes, as it leaves them (None: none in flight)."""
        self._direction = direction
        self._sink = sink
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{direction}-writer")
        self._job: Future[None] | None = None
        self._on_commit: Callable[[], None] | None = None

    def submit(self, writes: Sequence[Write], position: str, source_ts: datetime,
               written: Written, on_commit: Callable[[], None]) -> None:
        """Write ``writes`` and commit with the checkpoint ``position`` in the worker;
        ``on_commit`` runs in the caller's thread once :meth:`wait` sees the COMMIT."""
        if self._job is not None:
            raise RuntimeError("a batch is still being written")
        self.written, self._on_commit = written, on_commit
        self._job = self._pool.submit(self._run, list(writes), position, source_ts)

    def busy(self) -> bool:
        return self._job is not None

    def done(self) -> bool:
        return self._job is not None and self._job.done()

    def wait(self) -> None:
        """Wait for the batch in flight; raises its failure (the transaction is rolled
        back then), else runs its ``on_commit``."""
        job, on_commit = self._job, self._on_commit
        if job is None:
            return
        self._job = self._on_commit = None
        self.written = None
        job.result()
        if on_commit is not None:
            on_commit()

    def close(self) -> None:
        """Wait for the batch in flight, whatever its outcome (a committed one is found in
        the checkpoint by the next session), stop the worker and close the reads
        connection; safe to call twice."""
        job, self._job, self._on_commit, self.written = self._job, None, None, None
        if job is not None:
            error = job.exception()
            if error is not None:
                log.debug("%s: the batch written behind failed: %s", self._direction,
                          type(error).__name__)
        self._pool.shutdown()
        self.reads.close()

    def _run(self, writes: list[Write], position: str, source_ts: datetime) -> None:
        try:
            self._sink.begin(self._direction)
            if writes:
                self._write(self._sink, writes)
            self._sink.commit(self._direction, position, source_ts)
        except BaseException:
            self._sink.rollback()
            raise
