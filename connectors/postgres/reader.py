"""PostgreSQL change source: streaming logical replication (pgoutput v1) with psycopg 3.

Positions are LSNs in PostgreSQL's ``X/Y`` notation. A transaction's position is the END
LSN of its commit record (the Commit message's ``end_lsn``): resuming there returns the
next transaction and nothing before it.

Large transactions arrive as chunks of ``chunk_rows`` changes. The end LSN is only known
once the Commit message arrives, so non-final chunks carry the LSN of the commit record
(the Begin message's ``final_lsn``), which is always below the final chunk's end LSN; only
the final chunk's position may be checkpointed (the pipeline does exactly that). Memory
stays bounded by one chunk whatever the transaction size.

When everything received has been returned and the server's keepalive reports a WAL end
past the last returned position, :meth:`PgSource.poll` returns an empty final
``Transaction`` at that WAL end (``extra={"keepalive": True}``), at most once per
``status_interval``, so an idle slot can advance once the pipeline checkpoints it.

Threading: ``open``/``poll``/``close`` belong to one thread; :meth:`PgSource.confirm` may be
called from any thread. Standby status updates are sent from ``poll``, so the caller must
keep polling (at least every ``wal_sender_timeout``, 60 s by default) to keep the
connection alive.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from agent.errors import PermanentError, PositionLostError, TransientError
from agent.events import UNCHANGED, Op, RowChange, TableId, Transaction
from connectors.postgres import pgoutput as pg
from connectors.postgres.errors import translate
from connectors.postgres.pgoutput import format_lsn, parse_lsn
from connectors.postgres.rowcompile import RowDecoder, row_decoder
from connectors.postgres.values import Converter, converter_for, converter_or_none

__all__ = ["PgSource", "format_lsn", "parse_lsn"]

log = logging.getLogger(__name__)

# Output formats the value converters rely on; they apply to the walsender that decodes.
SESSION_OPTIONS = (
    "-c DateStyle=ISO -c TimeZone=UTC -c bytea_output=hex -c extra_float_digits=1"
    " -c IntervalStyle=postgres"
)
RECOVERY_HINT = "run `cdc-agent setup`, then `cdc-agent reconcile ENTITY --apply`"
_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_LOST_STATES = frozenset({"42704"})
_ROW_MESSAGES = frozenset({b"I", b"U", b"D"})  # undefined_object: the slot does not exist


@dataclass(frozen=True, slots=True)
class _RelInfo:
    table: TableId
    names: tuple[str, ...]
    converters: tuple[Converter, ...]
    key_indexes: tuple[int, ...]
    decode_new: RowDecoder  # the new row of an INSERT or UPDATE, in one pass (the hot path)


@dataclass(slots=True)
class _OpenTxn:
    begin: pg.Begin
    skip: bool
    origin: str | None = None
    changes: list[RowChange] = field(default_factory=list)
    truncated: list[TableId] = field(default_factory=list)


def _convert(rel: _RelInfo, data: pg.TupleData) -> dict[str, object]:
    row: dict[str, object] = {}
    for name, conv, raw in zip(rel.names, rel.converters, data, strict=True):
        if raw is None or raw is UNCHANGED:
            row[name] = raw
        else:
            row[name] = conv(raw.decode())  # type: ignore[union-attr]
    return row


def _convert_key(rel: _RelInfo, data: pg.TupleData) -> dict[str, object]:
    # A 'K' tuple has every column, but only the replica identity columns are filled in.
    row: dict[str, object] = {}
    for i in rel.key_indexes:
        raw = data[i]
        row[rel.names[i]] = (
            raw
            if raw is None or raw is UNCHANGED
            else rel.converters[i](
                raw.decode()  # type: ignore[union-attr]
            )
        )
    return row


def _rel_info(msg: pg.Relation) -> _RelInfo:
    cols = msg.columns
    names = tuple(c.name for c in cols)
    return _RelInfo(
        table=TableId(msg.namespace or "pg_catalog", msg.name),
        names=names,
        converters=tuple(converter_for(c.type_oid) for c in cols),
        key_indexes=tuple(i for i, c in enumerate(cols) if c.is_key),
        decode_new=row_decoder(names, [converter_or_none(c.type_oid) for c in cols]),
    )


class PgSource:
    """Reads committed transactions from a logical replication slot (implements Source)."""

    def __init__(
        self,
        conninfo: str,
        *,
        slot: str,
        publication: str,
        chunk_rows: int = 1000,
        status_interval: float = 1.0,
        skip_origins: frozenset[str] = frozenset(),
    ) -> None:
        for label, name in (("slot", slot), ("publication", publication)):
            if not _NAME.match(name):
                raise ValueError(f"{label} name must match [a-z0-9_]{{1,63}}: {name!r}")
        if chunk_rows < 1 or status_interval <= 0:
            raise ValueError("chunk_rows must be >= 1 and status_interval > 0")
        self._conninfo = conninfo
        self._slot = slot
        self._publication = publication
        self._chunk_rows = chunk_rows
        # Transactions with these origins (the agent's own writes, which the pipeline drops)
        # arrive without their rows: decoding them would only cost time.
        self._skip_origins = skip_origins
        self._status_interval = status_interval
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()
        self._confirmed = 0
        self._start = 0
        self._last_emitted = 0
        self._last_status = 0.0
        self._last_idle_emit = 0.0
        self._wal_end = 0  # WAL end reported by the last keepalive
        self._relations: dict[int, _RelInfo] = {}
        self._txn: _OpenTxn | None = None

    # --- Source protocol -------------------------------------------------------------

    def open(self, after: str | None) -> None:
        """Connect and stream from the slot; nothing at or below ``after`` is returned."""
        self.close()
        start = parse_lsn(after) if after else 0
        try:
            conn = psycopg.connect(
                self._conninfo,
                replication="database",
                autocommit=True,
                application_name="cdc-agent",
                options=SESSION_OPTIONS,
            )
        except psycopg.Error as exc:
            raise translate(exc, "connecting for replication") from exc
        self._conn = conn
        try:
            self._check_slot(conn, start)
            self._start_replication(conn, start)
        except BaseException:
            self.close()
            raise
        self._start = self._last_emitted = start
        with self._lock:
            self._confirmed = max(self._confirmed, start)
        self._relations.clear()
        self._txn = None
        self._wal_end = start
        self._last_status = self._last_idle_emit = time.monotonic()

    def poll(self, timeout: float) -> Transaction | None:
        """The next transaction or chunk, or None when nothing completed within ``timeout``."""
        if self._conn is None:
            raise TransientError("replication connection is not open")
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = self._read_frame(deadline)
                if frame is None:
                    return self._idle_position()
                result = self._handle_frame(frame)
                if result is not None:
                    return result
        except (psycopg.Error, OSError) as exc:
            self.close()
            raise translate(exc, "replication stream") from exc
        except ValueError as exc:  # DecodeError or a value its type cannot hold
            self.close()
            # The exception text may quote a row value: name only the kind of failure.
            raise PermanentError(
                f"cannot decode the replication stream ({type(exc).__name__})"
            ) from exc

    def confirm(self, position: str) -> None:
        """Record that everything up to ``position`` is applied; sent with the next status."""
        lsn = parse_lsn(position)
        with self._lock:
            if lsn > self._confirmed:
                self._confirmed = lsn

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def confirmed(self) -> str:
        """The position sent (or about to be sent) to the server as flushed."""
        with self._lock:
            return format_lsn(self._confirmed)

    # --- connection setup ------------------------------------------------------------

    def _check_slot(self, conn: psycopg.Connection[tuple[object, ...]], start: int) -> None:
        # The replication protocol only takes simple queries: literals are quoted client-side.
        query = sql.SQL(
            "SELECT confirmed_flush_lsn::text, wal_status, plugin, database = current_database()"
            " FROM pg_replication_slots WHERE slot_name = {}"
        ).format(sql.Literal(self._slot))
        row = conn.execute(query).fetchone()
        if row is None:
            raise PositionLostError(
                f"replication slot {self._slot!r} does not exist; {RECOVERY_HINT}"
            )
        confirmed, wal_status, plugin, same_db = row
        if wal_status == "lost":
            raise PositionLostError(
                f"replication slot {self._slot!r} was invalidated (WAL removed); {RECOVERY_HINT}"
            )
        if plugin != "pgoutput" or not same_db:
            raise PermanentError(
                f"replication slot {self._slot!r} is not a pgoutput slot of this database"
            )
        if start and confirmed and parse_lsn(str(confirmed)) > start:
            raise PositionLostError(
                f"replication slot {self._slot!r} is confirmed up to {confirmed}, past the"
                f" checkpoint {format_lsn(start)}: the changes in between are gone; {RECOVERY_HINT}"
            )

    def _start_replication(self, conn: psycopg.Connection[tuple[object, ...]], start: int) -> None:
        command = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})"
        ).format(
            sql.Identifier(self._slot),
            sql.SQL(format_lsn(start)),
            sql.Literal(sql.Identifier(self._publication).as_string(conn)),
        )
        try:
            conn.execute(command)
        except psycopg.Error as exc:
            if exc.sqlstate in _LOST_STATES or "invalidated" in str(exc):
                raise PositionLostError(
                    f"replication slot {self._slot!r} cannot stream: {exc.diag.message_primary};"
                    f" {RECOVERY_HINT}"
                ) from exc
            raise translate(exc, "START_REPLICATION") from exc

    # --- stream I/O ------------------------------------------------------------------

    def _read_frame(self, deadline: float) -> bytes | None:
        assert self._conn is not None
        pgconn = self._conn.pgconn
        while True:
            self._maybe_send_status()
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                return bytes(data)
            if nbytes < 0:
                self._stream_ended()
            now = time.monotonic()
            if now >= deadline:
                return None
            status_due = self._last_status + self._status_interval - now
            wait = max(0.0, min(deadline - now, status_due))
            ready, _, _ = select.select([pgconn.socket], [], [], wait)
            if ready:
                pgconn.consume_input()

    def _stream_ended(self) -> None:
        assert self._conn is not None
        result = self._conn.pgconn.get_result()
        message = "the server ended the replication stream"
        if result is not None and result.error_message:
            message += ": " + result.error_message.decode(errors="replace").strip()
        self.close()
        raise TransientError(message)

    def _maybe_send_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self._status_interval:
            return
        assert self._conn is not None
        with self._lock:
            lsn = self._confirmed
        pgconn = self._conn.pgconn
        pgconn.put_copy_data(pg.encode_standby_status(lsn, lsn, lsn, datetime.now(UTC)))
        pgconn.flush()
        self._last_status = now

    # --- protocol handling -----------------------------------------------------------

    def _handle_frame(self, frame: bytes) -> Transaction | None:
        if frame[:1] == b"w":  # hot path: decode the payload in place
            txn = self._txn
            if (txn is not None and txn.origin is not None and txn.origin in self._skip_origins
                    and frame[pg.XLOGDATA_HEADER : pg.XLOGDATA_HEADER + 1] in _ROW_MESSAGES):
                return None
            if txn is not None and not txn.skip:
                change = self._fast_change(frame)
                if change is not None:
                    return self._add(txn, change)
            return self._on_message(pg.decode_message(frame, pg.XLOGDATA_HEADER))
        msg = pg.decode_copy_data(frame)
        if isinstance(msg, pg.Keepalive):
            return self._on_keepalive(msg)
        return self._on_message(pg.decode_message(msg.payload))

    def _on_keepalive(self, msg: pg.Keepalive) -> Transaction | None:
        if msg.reply_requested:
            self._maybe_send_status(force=True)
        # Remember the WAL end even when it is not emitted now: a server shutting down sends
        # one keepalive and then waits for the flush to reach it (a fast shutdown hangs
        # until the agent confirms the end of WAL), so it must be emitted later, not dropped.
        self._wal_end = max(self._wal_end, msg.wal_end)
        return self._idle_position(force=msg.reply_requested)

    def _idle_position(self, force: bool = False) -> Transaction | None:
        """An empty transaction at the last keepalive's WAL end, when past what was emitted."""
        now = time.monotonic()
        if (
            self._txn is None
            and self._wal_end > self._last_emitted
            and (force or now - self._last_idle_emit >= self._status_interval)
        ):
            self._last_idle_emit = now
            self._last_emitted = self._wal_end
            return Transaction(
                position=format_lsn(self._wal_end),
                commit_ts=datetime.now(UTC),
                # urgent: the server waits for this position (e.g. to shut down)
                extra={"keepalive": True, "urgent": force},
            )
        return None

    def _on_message(self, msg: pg.Message) -> Transaction | None:
        txn = self._txn
        if isinstance(msg, pg.Insert | pg.Update | pg.Delete):
            if txn is None:
                raise TransientError("row change outside a transaction in the replication stream")
            if txn.skip:
                return None
            return self._add(txn, self._row_change(msg))
        if isinstance(msg, pg.Begin):
            self._txn = _OpenTxn(msg, skip=msg.final_lsn < self._start)
        elif isinstance(msg, pg.Commit):
            return self._on_commit(msg)
        elif isinstance(msg, pg.Origin) and txn is not None:
            txn.origin = msg.name
        elif isinstance(msg, pg.Relation):
            self._relations[msg.relation_id] = _rel_info(msg)
        elif isinstance(msg, pg.Truncate) and txn is not None:
            tables = [self._relations[r].table for r in msg.relation_ids]
            log.warning("TRUNCATE of %s is not replicated", ", ".join(map(str, tables)))
            txn.truncated.extend(tables)
        return None

    def _on_commit(self, msg: pg.Commit) -> Transaction | None:
        txn, self._txn = self._txn, None
        if txn is None or txn.skip:
            return None
        self._last_emitted = msg.end_lsn
        return self._emit(txn, final=True, position=msg.end_lsn)

    def _emit(self, txn: _OpenTxn, *, final: bool, position: int | None = None) -> Transaction:
        extra: dict[str, object] = {"xid": txn.begin.xid}
        if final and txn.truncated:
            extra["truncated"] = tuple(txn.truncated)
        changes, txn.changes = tuple(txn.changes), []
        return Transaction(
            position=format_lsn(txn.begin.final_lsn if position is None else position),
            commit_ts=txn.begin.commit_ts,
            changes=changes,
            origin=txn.origin,
            final=final,
            extra=extra,
        )

    def _add(self, txn: _OpenTxn, change: RowChange) -> Transaction | None:
        # Emit a full chunk only once another change exists, so a final chunk is never empty.
        chunk = self._emit(txn, final=False) if len(txn.changes) >= self._chunk_rows else None
        txn.changes.append(change)
        return chunk

    def _fast_change(self, frame: bytes) -> RowChange | None:
        """An INSERT, or an UPDATE without old row, decoded in one pass (the hot path);
        None for every other message."""
        found = pg.new_row_of(frame, pg.XLOGDATA_HEADER)
        if found is None:
            return None
        rel = self._relations.get(found[0])
        if rel is None:
            return None  # the slow path says what is wrong
        op = Op.INSERT if frame[pg.XLOGDATA_HEADER] == 0x49 else Op.UPDATE
        return RowChange(rel.table, op, new=rel.decode_new(frame, found[1]))

    def _row_change(self, msg: pg.Insert | pg.Update | pg.Delete) -> RowChange:
        rel = self._relations.get(msg.relation_id)
        if rel is None:
            raise TransientError(f"change for unknown relation {msg.relation_id}")
        if isinstance(msg, pg.Insert):
            return RowChange(rel.table, Op.INSERT, new=_convert(rel, msg.new))
        if isinstance(msg, pg.Update):
            return RowChange(
                rel.table,
                Op.UPDATE,
                new=_convert(rel, msg.new),
                old=self._old(rel, msg.old, msg.old_kind),
            )
        return RowChange(rel.table, Op.DELETE, old=self._old(rel, msg.old, msg.old_kind))

    @staticmethod
    def _old(
        rel: _RelInfo, data: pg.TupleData | None, kind: str | None
    ) -> dict[str, object] | None:
        if data is None:
            return None
        return _convert_key(rel, data) if kind == "K" else _convert(rel, data)
