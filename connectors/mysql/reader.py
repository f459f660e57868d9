"""MySQL/MariaDB binlog source: whole transactions as :class:`agent.events.Transaction`.

A dedicated thread reads the binlog (mysql-replication blocks) and assembles transactions
into a buffer bounded in rows; :meth:`MySource.poll` waits on that buffer, so it returns
None within ``timeout`` when the server is idle. Memory is bounded by about
``3 * chunk_rows`` rows whatever the transaction size.

Positions are ``"<binlog file>:<offset after the commit event>"``. A transaction larger than
``chunk_rows`` arrives as chunks; the end offset is only known at the commit, so non-final
chunks carry the position *before* the transaction (a safe resume point) and the start time
of the transaction; the final chunk carries the position after it and the commit time.

Loop marker: the agent's writer makes a ``<state_schema>.checkpoints`` row its first change
in every transaction it commits. A transaction whose first row change is on that table gets
``origin`` = the row's ``direction`` and its checkpoint rows are dropped.

Errors: a read failing with 2006/2013 is reconnected by mysql-replication at the exact
offset. Anything else ends the reader thread and is raised by the next :meth:`poll`:
TransientError (server down: the caller retries with backoff by closing the source and
opening it again at its checkpoint), PositionLostError (purged binlog), PermanentError.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime

import pymysql

from agent.errors import PermanentError, PositionLostError
from agent.events import Op, RowChange, TableId, Transaction
from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.binlog import (
    RECOVERY_HINT,
    BinlogItem,
    BinlogStream,
    Rotate,
    TxBegin,
    TxCommit,
    TxRows,
)
from connectors.mysql.catalog import REQUIRED_SETTINGS
from connectors.mysql.errors import classify

CHECKPOINTS_TABLE = "checkpoints"


def parse_position(position: str) -> tuple[str, int]:
    """``"binlog.000001:1234"`` -> ``("binlog.000001", 1234)``."""
    file, sep, offset = position.rpartition(":")
    if not sep or not file or not offset.isdigit():
        raise ValueError(f"not a binlog position: {position!r}")
    return file, int(offset)


class TransactionAssembler:
    """Groups binlog items into transactions and chunks (pure; no I/O)."""

    def __init__(self, start: str, checkpoints: TableId, chunk_rows: int,
                 skip_origins: frozenset[str] = frozenset()) -> None:
        self.position = start  # resume point after the last complete transaction
        self._checkpoints = checkpoints
        self._skip_origins = skip_origins
        self._chunk_rows = chunk_rows
        self._changes: list[RowChange] = []
        self._begin_ts: datetime | None = None
        self._first_row_seen = False
        self._origin: str | None = None

    def feed(self, item: BinlogItem) -> Iterator[Transaction]:
        """The transactions (or chunks) that ``item`` completes."""
        if isinstance(item, TxBegin):
            if not self._first_row_seen:
                self._begin_ts = self._begin_ts or item.ts  # MySQL: GTID, then BEGIN
        elif isinstance(item, TxRows):
            yield from self._rows(item)
        elif isinstance(item, TxCommit | Rotate):
            # A rotate comes between transactions: it lets an idle reader move its position
            # to the new file, so the old one may be purged.
            yield self._finish(f"{item.file}:{item.pos}", item.ts)

    def _rows(self, item: TxRows) -> Iterator[Transaction]:
        changes = item.changes
        if not self._first_row_seen:
            self._first_row_seen = True
            self._origin = self._marker(item)
        if self._origin is not None and item.table == self._checkpoints:
            return
        if self.skipping:
            return
        done = 0
        while done < len(changes):
            # Flush before adding, so the final chunk of a transaction with rows is never empty.
            if len(self._changes) >= self._chunk_rows:
                yield self._chunk()
            room = self._chunk_rows - len(self._changes)
            self._changes.extend(changes[done : done + room])
            done += room

    @property
    def skipping(self) -> bool:
        """True inside a transaction whose origin is to be skipped: its rows are not needed."""
        return self._origin is not None and self._origin in self._skip_origins

    def _marker(self, item: TxRows) -> str | None:
        if item.table != self._checkpoints or not item.changes:
            return None
        first = item.changes[0]
        if first.op is Op.DELETE or first.new is None:
            return None
        direction = first.new.get("direction")
        return str(direction) if direction is not None else None

    def _chunk(self) -> Transaction:
        chunk = Transaction(
            position=self.position,
            commit_ts=self._begin_ts or datetime.now(UTC),
            changes=tuple(self._changes),
            origin=self._origin,
            final=False,
        )
        self._changes.clear()
        return chunk

    def _finish(self, position: str, ts: datetime) -> Transaction:
        txn = Transaction(position=position, commit_ts=ts, changes=tuple(self._changes),
                          origin=self._origin)
        self.position = position
        self._changes.clear()
        self._begin_ts = None
        self._first_row_seen = False
        self._origin = None
        return txn


class RowBudgetBuffer:
    """A FIFO bounded by the total number of rows it holds (thread-safe).

    An item costs its number of changes plus one; a producer waits while the budget is used
    up (a single item larger than the budget is still admitted into an empty buffer).
    """

    def __init__(self, capacity_rows: int) -> None:
        self._capacity = capacity_rows
        self._items: deque[Transaction | BaseException] = deque()
        self._used = 0
        self.peak_rows = 0  # high-water mark of the rows held, for tests and metrics
        self.producer_waiting = False  # the producer waits for room (back-pressure)
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Transaction | BaseException) -> bool:
        """Append ``item``, waiting for room; False if the buffer was closed meanwhile."""
        cost = _cost(item)
        with self._cond:
            while self._items and self._used + cost > self._capacity and not self._closed:
                self.producer_waiting = True
                self._cond.wait()
            self.producer_waiting = False
            if self._closed:
                return False
            self._items.append(item)
            self._used += cost
            self.peak_rows = max(self.peak_rows, self._used)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Transaction | BaseException | None:
        """The oldest item, or None if none arrives within ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout=max(timeout, 0.0)):
                return None
            item = self._items.popleft()
            self._used -= _cost(item)
            self._cond.notify_all()
            return item

    @property
    def rows(self) -> int:
        """Rows (plus one per item) held right now."""
        with self._cond:
            return self._used

    def close(self) -> None:
        """Wake every waiting producer; later puts are refused."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


def _cost(item: Transaction | BaseException) -> int:
    return len(item.changes) + 1 if isinstance(item, Transaction) else 1


class MySource:
    """agent.ports.Source over a MySQL/MariaDB binlog (see the module docstring)."""

    def __init__(self, params: MysqlParams, *, server_id: int, state_schema: str,
                 tables: set[TableId], chunk_rows: int = 1000, heartbeat: float = 5.0,
                 skip_origins: frozenset[str] = frozenset()) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        self._params = params
        self._server_id = server_id
        self._state_schema = state_schema
        self._tables = frozenset(tables)
        self._chunk_rows = chunk_rows
        self._heartbeat = heartbeat
        # Transactions with these origins (the agent's own writes, which the pipeline drops)
        # arrive without their rows: decoding them would only cost time.
        self._skip_origins = skip_origins
        self._buffer = RowBudgetBuffer(2 * chunk_rows)
        self._stream: BinlogStream | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def open(self, after: str | None) -> None:
        """Check the server settings and start reading strictly after ``after``.

        None starts at the current end of the binlog. Raises PositionLostError if the
        server no longer has ``after``'s binlog file, PermanentError for wrong settings.
        """
        if self._thread is not None:
            raise RuntimeError("MySource is already open")
        log_file, log_pos = self._start_position(after)
        start = f"{log_file}:{log_pos}"
        self._buffer = RowBudgetBuffer(2 * self._chunk_rows)
        self._failure = None
        self._stream = BinlogStream(self._params, server_id=self._server_id,
                                    log_file=log_file, log_pos=log_pos, wants=self._wants,
                                    heartbeat=self._heartbeat)
        assembler = TransactionAssembler(
            start, TableId(self._state_schema, CHECKPOINTS_TABLE), self._chunk_rows,
            self._skip_origins,
        )
        self._thread = threading.Thread(target=self._run, args=(self._stream, assembler),
                                        name="mysql-binlog-reader", daemon=True)
        self._thread.start()

    def poll(self, timeout: float) -> Transaction | None:
        """The next transaction or chunk, or None if none arrived within ``timeout`` seconds."""
        if self._failure is not None:
            raise self._failure
        item = self._buffer.get(timeout)
        if isinstance(item, BaseException):
            self._failure = item
            raise item
        return item

    @property
    def buffered_rows(self) -> int:
        """Rows decoded and waiting for :meth:`poll` (plus one per transaction)."""
        return self._buffer.rows

    @property
    def peak_buffered_rows(self) -> int:
        """The most rows ever waiting for :meth:`poll` since :meth:`open`."""
        return self._buffer.peak_rows

    @property
    def reader_waiting(self) -> bool:
        """True while the reader thread waits for :meth:`poll` to make room (back-pressure)."""
        return self._buffer.producer_waiting

    def confirm(self, position: str) -> None:
        """No-op: MySQL keeps no replica state; positions are checkpointed in the target."""

    def close(self) -> None:
        """Stop the reader thread and disconnect; safe to call twice."""
        stream, thread = self._stream, self._thread
        self._stream, self._thread = None, None
        self._buffer.close()
        if stream is not None:
            stream.interrupt()
        if thread is not None:
            thread.join(timeout=10)
        if stream is not None:
            stream.close()

    def _wants(self, table: TableId) -> bool:
        return table in self._tables or table.schema == self._state_schema

    def _run(self, stream: BinlogStream, assembler: TransactionAssembler) -> None:
        try:
            while (item := stream.next_item()) is not None:
                for txn in assembler.feed(item):
                    if not self._buffer.put(txn):
                        return
                stream.skip_rows = assembler.skipping
        except BaseException as exc:  # handed to the consumer thread, which raises it
            self._buffer.put(exc)

    def _start_position(self, after: str | None) -> tuple[str, int]:
        try:
            conn = pymysql.connect(**connect_kwargs(self._params), autocommit=True)
        except pymysql.err.MySQLError as exc:
            raise classify(exc, context="binlog reader connect") from exc
        try:
            with conn.cursor() as cur:
                _check_settings(cur)
                if after is None:
                    return _current_end(cur)
                log_file, log_pos = parse_position(after)
                cur.execute("SHOW BINARY LOGS")
                files = {str(row[0]): int(row[1]) for row in cur.fetchall()}
        except pymysql.err.MySQLError as exc:
            raise classify(exc, context="binlog reader") from exc
        finally:
            conn.close()
        if log_file not in files or log_pos > files[log_file]:
            raise PositionLostError(
                f"binlog position {after} is no longer on the server (purged binlog);"
                f" {RECOVERY_HINT}"
            )
        return log_file, log_pos


def _check_settings(cur: pymysql.cursors.Cursor) -> None:
    problems = []
    for name, wanted in REQUIRED_SETTINGS.items():
        cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
        row = cur.fetchone()
        value = None if row is None else str(row[1]).upper()
        if value != wanted:
            problems.append(f"{name} is {value or 'unsupported'}, must be {wanted}")
    if problems:
        raise PermanentError("binlog cannot be read: " + "; ".join(problems))


def current_position(params: MysqlParams) -> str:
    """The binlog's end now, as a position string (where a new direction starts reading)."""
    conn = pymysql.connect(**connect_kwargs(params))
    try:
        with conn.cursor() as cur:
            file, offset = _current_end(cur)
    finally:
        conn.close()
    return f"{file}:{offset}"


def _current_end(cur: pymysql.cursors.Cursor) -> tuple[str, int]:
    try:
        cur.execute("SHOW BINARY LOG STATUS")  # MySQL 8.2+ (MySQL 8.4 dropped the old name)
    except pymysql.err.ProgrammingError:
        cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row is None:
        raise PermanentError("the binary log is disabled (log_bin=OFF)")
    return str(row[0]), int(row[1])
