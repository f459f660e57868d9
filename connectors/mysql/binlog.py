"""Typed adapter around mysql-replication: the only module that imports it.

:class:`BinlogStream` turns the library's events into four small immutable values:
:class:`TxBegin`, :class:`TxRows` (decoded and converted row changes of one wanted table),
:class:`TxCommit` (end of a transaction or of a standalone statement such as DDL, with the
binlog file and the offset after it) and :class:`Rotate` (a real switch to a new binlog file).
No library object leaves this module.

Resuming: file/offset with ``resume_stream=True`` and ``is_mariadb=False``, also on MariaDB
(with ``is_mariadb=True`` the library ignores ``log_file``/``log_pos``). MariaDB then sends its
GTID events (the library sets ``@mariadb_slave_capability=4``), which open transactions.

Connection handling: the library itself reconnects, without backoff, when a read fails with
2006/2013 (e.g. the heartbeat-based read timeout) and resumes at the exact event offset it
reached. A failing connect (server down) or any other error surfaces from :meth:`next_item`
as TransientError / PositionLostError / PermanentError.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from agent.errors import AgentError, PermanentError, PositionLostError
from agent.events import Op, RowChange, TableId
from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.catalog import load_columns
from connectors.mysql.errors import classify, errno_of
from connectors.mysql.rowcodec import RowCodec, compile_codec
from connectors.mysql.values import ColumnDef, Converter, Kind, binlog_null, converter

RECOVERY_HINT = "re-snapshot with `cdc-agent reconcile ENTITY --apply`"
_ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
_MARIADB_FL_STANDALONE = 1
_PARTIAL_UPDATE_ROWS_EVENT = 39  # MySQL 8 partial JSON updates: the library decodes them
_EVENT_HEADER = 20  # the OK byte, then the 19-byte binlog event header


@dataclass(frozen=True, slots=True)
class TxBegin:
    """A transaction starts (GTID event or ``BEGIN``)."""

    ts: datetime


@dataclass(frozen=True, slots=True)
class TxRows:
    """Row changes of one rows event on a wanted table."""

    table: TableId
    changes: tuple[RowChange, ...]


@dataclass(frozen=True, slots=True)
class TxCommit:
    """A transaction (or standalone statement) ended; reading may resume at ``file:pos``."""

    file: str
    pos: int
    ts: datetime


@dataclass(frozen=True, slots=True)
class Rotate:
    """The server switched to a new binlog file; ``file:pos`` is its first event."""

    file: str
    pos: int
    ts: datetime


BinlogItem = TxBegin | TxRows | TxCommit | Rotate

_INT_BITS = {
    FIELD_TYPE.TINY: 8,
    FIELD_TYPE.SHORT: 16,
    FIELD_TYPE.INT24: 24,
    FIELD_TYPE.LONG: 32,
    FIELD_TYPE.LONGLONG: 64,
}
_KIND_BY_TYPE = {
    FIELD_TYPE.DECIMAL: Kind.DECIMAL,
    FIELD_TYPE.NEWDECIMAL: Kind.DECIMAL,
    FIELD_TYPE.FLOAT: Kind.FLOAT,
    FIELD_TYPE.DOUBLE: Kind.DOUBLE,
    FIELD_TYPE.DATE: Kind.DATE,
    FIELD_TYPE.NEWDATE: Kind.DATE,
    FIELD_TYPE.DATETIME: Kind.DATETIME,
    FIELD_TYPE.DATETIME2: Kind.DATETIME,
    FIELD_TYPE.TIMESTAMP: Kind.TIMESTAMP,
    FIELD_TYPE.TIMESTAMP2: Kind.TIMESTAMP,
    FIELD_TYPE.TIME: Kind.TIME,
    FIELD_TYPE.TIME2: Kind.TIME,
    FIELD_TYPE.YEAR: Kind.YEAR,
    FIELD_TYPE.ENUM: Kind.ENUM,
    FIELD_TYPE.SET: Kind.SET,
    FIELD_TYPE.BIT: Kind.BIT,
    FIELD_TYPE.JSON: Kind.JSON,
}
_STRING_TYPES = {
    FIELD_TYPE.VARCHAR,
    FIELD_TYPE.STRING,
    FIELD_TYPE.VAR_STRING,
    FIELD_TYPE.BLOB,
}


def binlog_kind(column: Any, catalog: ColumnDef | None) -> Kind:
    """Conversion kind of a table-map column: its binlog type, refined by the catalog.

    The binlog cannot tell MariaDB JSON (LONGTEXT) or UUID (BINARY(16)) from their storage
    types; the catalog can.
    """
    if column.type in _INT_BITS:
        return Kind.UINT if column.unsigned else Kind.INT
    if column.type in _STRING_TYPES:
        if catalog is not None and catalog.kind in (Kind.JSON, Kind.UUID):
            return catalog.kind
        return Kind.BINARY if getattr(column, "collation_name", None) == "binary" else Kind.TEXT
    return _KIND_BY_TYPE.get(column.type, Kind.OTHER)


def _column_converter(column: Any, kind: Kind, zone: tzinfo) -> Converter | None:
    convert = converter(kind, zone, int_bits=_INT_BITS.get(column.type, 64))
    if column.type == FIELD_TYPE.STRING and kind in (Kind.BINARY, Kind.UUID):
        return _fixed_binary(int(column.max_length), convert if kind is Kind.UUID else None, zone)
    return convert


def _fixed_binary(length: int, then: Converter | None, zone: tzinfo) -> Converter:
    """BINARY(n) (and MariaDB UUID): the binlog drops trailing zero bytes; put them back."""
    binary = converter(Kind.BINARY, zone)
    assert binary is not None

    def convert(value: object) -> object:
        raw = binary(value)
        if isinstance(raw, bytes) and len(raw) < length:
            raw = raw.ljust(length, b"\0")
        return raw if then is None else then(raw)

    return convert


class RowDecoder:
    """Converts the library's row dicts of one table layout into read-only rows."""

    def __init__(self, table: TableId, columns: list[Any], catalog: dict[str, ColumnDef],
                 zone: tzinfo, *, fast: bool = True) -> None:
        missing = [i for i, c in enumerate(columns) if not c.name]
        if missing:
            raise PermanentError(
                f"binlog table map of {table} has no column names: set"
                " binlog_row_metadata=FULL on the server"
            )
        self.kinds = {c.name: binlog_kind(c, catalog.get(c.name)) for c in columns}
        pairs = [(c.name, _column_converter(c, self.kinds[c.name], zone)) for c in columns]
        self.converters: list[tuple[str, Converter]] = [(n, f) for n, f in pairs if f]
        self.codec: RowCodec | None = (
            compile_codec(columns, self.kinds, dict(self.converters), zone) if fast else None
        )

    def row(self, values: dict[str, object], none_sources: dict[str, str]) -> MappingProxyType[
        str, object
    ]:
        """A converted row (the library's dict is reused)."""
        for name, convert in self.converters:
            value = values[name]
            if value is not None:
                values[name] = convert(value)
        for name, source in none_sources.items():
            if source != "null":
                values[name] = binlog_null(self.kinds[name], source)
        return MappingProxyType(values)


class BinlogStream:
    """Blocking iterator of :data:`BinlogItem` from ``log_file:log_pos`` on.

    ``wants`` selects the tables whose rows are decoded (others cost no decoding).
    :meth:`interrupt` may be called from another thread to stop a blocked read.
    """

    def __init__(self, params: MysqlParams, *, server_id: int, log_file: str, log_pos: int,
                 wants: Callable[[TableId], bool], heartbeat: float = 5.0,
                 fast_rows: bool = True) -> None:
        self._params = params
        self._fast_rows = fast_rows
        self.skip_rows = False
        """Set by the reader: rows events are returned without their rows (not decoded)."""
        self._zone = ZoneInfo(params.timezone)
        self._wants = wants
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[pymysql.connections.Connection[Any]] = []
        self._catalog_conn: pymysql.connections.Connection[Any] | None = None
        self._decoders: dict[tuple[object, ...], RowDecoder] = {}
        # The decoder of the last rows event and the table-map column list it was found for
        # (the library keeps one list per table map, shared by the events that follow it).
        self._last_decoder: tuple[list[Any], RowDecoder] | None = None
        settings = connect_kwargs(params)
        # A dead connection is noticed after missing about three heartbeats.
        settings["read_timeout"] = int(heartbeat * 3) + 1
        self._reader = BinLogStreamReader(
            connection_settings=settings,
            server_id=server_id,
            blocking=True,
            resume_stream=True,
            log_file=log_file,
            log_pos=log_pos,
            is_mariadb=False,
            slave_heartbeat=heartbeat,
            only_events=[MariadbGtidEvent, GtidEvent, QueryEvent, XidEvent, RotateEvent,
                         HeartbeatLogEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
            enable_logging=False,
            pymysql_wrapper=self._connect,
        )

    def _connect(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        # The library calls this for its stream and control connections, also when it
        # reconnects on its own; refusing here is how interrupt() ends a reconnect loop.
        if self._stopping.is_set():
            raise _Stopped
        if "db" in kwargs:  # the library still uses PyMySQL's deprecated spelling
            kwargs["database"] = kwargs.pop("db")
        conn = pymysql.connect(**kwargs)
        with self._lock:
            self._connections = [c for c in self._connections if c.open] + [conn]
        return conn

    def interrupt(self) -> None:
        """Make a blocked :meth:`next_item` return None soon (thread-safe)."""
        self._stopping.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            sock = getattr(conn, "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close all connections (call from the thread that reads, or after it ended)."""
        self._stopping.set()
        # Closing a broken connection must not mask why it broke.
        with contextlib.suppress(Exception):
            self._reader.close()
        if self._catalog_conn is not None:
            self._catalog_conn.close()
            self._catalog_conn = None

    def next_item(self) -> BinlogItem | None:
        """The next item (blocking), or None once interrupted."""
        while not self._stopping.is_set():
            try:
                event = self._reader.fetchone()
            except _Stopped:
                return None
            except Exception as exc:
                if self._stopping.is_set():
                    return None
                raise _translate(exc) from exc
            if event is None:
                return None
            item = self._item(event)
            if item is not None:
                return item
        return None

    def _position(self) -> tuple[str, int]:
        return str(self._reader.log_file), int(self._reader.log_pos)

    def _item(self, event: Any) -> BinlogItem | None:
        ts = datetime.fromtimestamp(event.timestamp, UTC)
        if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            return self._rows(event)
        if isinstance(event, XidEvent):
            return TxCommit(*self._position(), ts)
        if isinstance(event, MariadbGtidEvent):
            return None if event.flags & _MARIADB_FL_STANDALONE else TxBegin(ts)
        if isinstance(event, GtidEvent):
            return TxBegin(ts)
        if isinstance(event, QueryEvent):
            return self._query(event, ts)
        if isinstance(event, RotateEvent) and event.timestamp != 0:
            # Timestamp 0 marks the artificial rotate sent when a connection starts.
            return Rotate(str(event.next_binlog), int(event.position), ts)
        return None  # heartbeats only keep the connection alive

    def _query(self, event: Any, ts: datetime) -> BinlogItem:
        query = event.query.strip().upper() if isinstance(event.query, str) else ""
        if query == "BEGIN":
            return TxBegin(ts)
        if query != "COMMIT":
            # DDL (or another standalone statement): table layouts may have changed.
            self._decoders.clear()
            self._last_decoder = None
        return TxCommit(*self._position(), ts)

    def _rows(self, event: Any) -> TxRows | None:
        table = TableId(str(event.schema), str(event.table))
        if not self._wants(table):
            return None
        if self.skip_rows:
            return TxRows(table, ())
        decoder = self._decoder(table, event.columns)
        if decoder.codec is not None:
            changes = _fast_changes(decoder.codec, table, event)
            if changes is not None:
                return TxRows(table, changes)
        if isinstance(event, UpdateRowsEvent):
            changes = tuple(
                RowChange(table, Op.UPDATE,
                          new=decoder.row(r["after_values"], r["after_none_sources"]),
                          old=decoder.row(r["before_values"], r["before_none_sources"]))
                for r in event.rows
            )
        elif isinstance(event, WriteRowsEvent):
            changes = tuple(
                RowChange(table, Op.INSERT, new=decoder.row(r["values"], r["none_sources"]))
                for r in event.rows
            )
        else:
            changes = tuple(
                RowChange(table, Op.DELETE, old=decoder.row(r["values"], r["none_sources"]))
                for r in event.rows
            )
        return TxRows(table, changes)

    def _decoder(self, table: TableId, columns: list[Any]) -> RowDecoder:
        last = self._last_decoder
        if last is not None and last[0] is columns:
            return last[1]
        # Everything a decoder depends on: a layout change without DDL in between (e.g. a
        # table id reused after a server restart) still gets a decoder of its own.
        key = (table, tuple(map(_layout, columns)))
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = RowDecoder(table, columns, self._catalog(table), self._zone,
                                 fast=self._fast_rows)
            self._decoders[key] = decoder
        self._last_decoder = (columns, decoder)
        return decoder

    def _catalog(self, table: TableId) -> dict[str, ColumnDef]:
        # Read when a table layout is first seen (and after DDL): it only refines what the
        # binlog cannot say (MariaDB JSON and UUID columns).
        try:
            if self._catalog_conn is None:
                self._catalog_conn = pymysql.connect(**connect_kwargs(self._params),
                                                     autocommit=True)
            with self._catalog_conn.cursor() as cur:
                return load_columns(cur, table)
        except pymysql.err.MySQLError as exc:
            self._catalog_conn = None
            raise classify(exc, context=f"catalog of {table}") from exc


_LAYOUT_ATTRS = ("max_length", "length_size", "precision", "decimals", "fsp", "size", "bytes",
                 "character_set_name", "collation_name")


def _layout(column: Any) -> tuple[object, ...]:
    extra = tuple(getattr(column, a, None) for a in _LAYOUT_ATTRS)
    values = tuple(column.enum_values or ()), tuple(column.set_values or ())
    return (column.name, column.type, column.unsigned, *extra, *values)


def _fast_changes(codec: RowCodec, table: TableId, event: Any) -> tuple[RowChange, ...] | None:
    """The event's rows through ``codec``, or None when the library must decode them.

    Reads the event body right after the library parsed its header (the rows are still
    unread: the library decodes them lazily, on first access to ``event.rows``).
    """
    update = isinstance(event, UpdateRowsEvent)
    columns = len(event.columns)
    full = (1 << columns) - 1
    bitmaps = [event.columns_present_bitmap] + ([event.columns_present_bitmap2] if update else [])
    if (event.event_type == _PARTIAL_UPDATE_ROWS_EVENT or event.number_of_columns != columns
            or any(int.from_bytes(b, "little") & full != full for b in bitmaps)):
        return None  # not a FULL row image: some columns are missing
    wrapper = event.packet
    if getattr(wrapper, "_BinLogPacketWrapper__data_buffer", b""):
        return None  # the library holds bytes it pushed back: positions would not match
    raw = wrapper.packet
    op = Op.UPDATE if update else Op.INSERT if isinstance(event, WriteRowsEvent) else Op.DELETE
    return tuple(codec.changes(raw._data, raw._position, _EVENT_HEADER + event.event_size,
                               table, op))


class _Stopped(Exception):
    """Raised from the connection factory once the stream is interrupted."""


# Error 1236 also reports other fatal stream errors (a replica with the same server_id, a
# corrupt event); only these messages mean the position is gone.
_LOST_MARKERS = ("could not find first log", "impossible position", "purged")


def _translate(exc: BaseException) -> AgentError:
    if errno_of(exc) == _ER_MASTER_FATAL_ERROR_READING_BINLOG:
        message = str(exc.args[1]) if len(exc.args) > 1 else ""
        if any(marker in message.lower() for marker in _LOST_MARKERS):
            return PositionLostError(f"binlog position lost ({message}); {RECOVERY_HINT}")
        return PermanentError(f"binlog stream stopped by the server: {message}")
    return classify(exc, context="binlog stream")
