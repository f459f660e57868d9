"""Pure decoder of the pgoutput logical replication protocol (version 1) and its framing.

No I/O happens here: the reader hands in the bytes of one CopyData message and gets back
immutable values. Layouts follow PostgreSQL's "Logical Replication Message Formats" and the
streaming replication protocol (XLogData ``w``, primary keepalive ``k``, standby status
update ``r``). Integers are big-endian; strings are NUL-terminated UTF-8; timestamps are
microseconds since 2000-01-01 UTC.

Column values stay raw here (``bytes`` in the server's text output format, ``None`` for
SQL NULL, :data:`agent.events.UNCHANGED` for an unchanged TOASTed value); turning them into
Python values is :mod:`connectors.postgres.values`' job.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.events import UNCHANGED, _Unchanged

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">Qq?")
_STATUS = struct.Struct(">cQQQq?")
XLOGDATA_HEADER = 1 + _XLOGDATA.size  # 'w', start LSN, end LSN, send time

TupleValue = bytes | None | _Unchanged
TupleData = tuple[TupleValue, ...]


class DecodeError(ValueError):
    """The bytes are not a well-formed message of the supported protocol version."""


def pg_time(micros: int) -> datetime:
    """Convert microseconds since the PostgreSQL epoch to an aware UTC datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


def pg_micros(ts: datetime) -> int:
    """Convert an aware datetime to microseconds since the PostgreSQL epoch."""
    delta = ts - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- pgoutput messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a transaction; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a transaction; resuming at ``end_lsn`` skips it."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin the transaction was written under (loop marker)."""

    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One column of a :class:`Relation` (generated columns are never sent)."""

    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        """True when the column is part of the replica identity."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """Describes a table before its first change in a session (and after each ALTER)."""

    relation_id: int
    namespace: str  # empty string means pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """Describes a non built-in data type used by a following Relation."""

    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row."""

    relation_id: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row; ``old`` is the key ('K') or full ('O') old row when the server sends it."""

    relation_id: int
    new: TupleData
    old: TupleData | None = None
    old_kind: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: its key ('K') or full ('O') old row."""

    relation_id: int
    old: TupleData
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """Truncated tables; ``options`` bit 1 = CASCADE, bit 2 = RESTART IDENTITY."""

    options: int
    relation_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with ``pg_logical_emit_message``."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)


# --- replication framing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XLogData:
    """A CopyData 'w' frame carrying one pgoutput message in ``payload``."""

    wal_start: int
    wal_end: int
    send_time: datetime
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A primary keepalive 'k' frame; ``reply_requested`` asks for a status update now."""

    wal_end: int
    send_time: datetime
    reply_requested: bool


def decode_copy_data(buf: bytes) -> XLogData | Keepalive:
    """Decode one CopyData message received after START_REPLICATION."""
    if not buf:
        raise DecodeError("empty CopyData message")
    kind = buf[0]
    try:
        if kind == 0x77:  # 'w'
            start, end, sent = _XLOGDATA.unpack_from(buf, 1)
            return XLogData(start, end, pg_time(sent), bytes(buf[25:]))
        if kind == 0x6B:  # 'k'
            end, sent, reply = _KEEPALIVE.unpack_from(buf, 1)
            return Keepalive(end, pg_time(sent), reply)
    except struct.error as exc:
        raise DecodeError(f"truncated CopyData message {chr(kind)!r}") from exc
    raise DecodeError(f"unknown CopyData message type {chr(kind)!r}")


def encode_standby_status(
    written: int, flushed: int, applied: int, now: datetime, reply: bool = False
) -> bytes:
    """Encode a standby status update ('r') telling the server how far the client got."""
    return _STATUS.pack(b"r", written, flushed, applied, pg_micros(now), reply)


# --- message decoding --------------------------------------------------------------------


class _Cursor:
    """Sequential reader over one message; raises DecodeError on truncation."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 1) -> None:
        self.buf = buf
        self.pos = pos

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        try:
            values = fmt.unpack_from(self.buf, self.pos)
        except struct.error as exc:
            raise DecodeError("message truncated") from exc
        self.pos += fmt.size
        return values

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u16(self) -> int:
        return self.unpack(_U16)[0]

    def i32(self) -> int:
        return self.unpack(_I32)[0]

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def i64(self) -> int:
        return self.unpack(_I64)[0]

    def byte(self) -> str:
        return chr(self.u8())

    def string(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError("unterminated string")
        text = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise DecodeError("message truncated")
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def tuple_data(self) -> TupleData:
        """TupleData: Int16 count, then per column 'n' | 'u' | 't' Int32 length + bytes."""
        buf = self.buf
        count = self.u16()
        pos = self.pos
        values: list[TupleValue] = []
        append = values.append
        try:
            for _ in range(count):
                kind = buf[pos]
                if kind == 0x74:  # 't': the hot path
                    (length,) = _U32.unpack_from(buf, pos + 1)
                    start = pos + 5
                    pos = start + length
                    if pos > len(buf):
                        raise DecodeError("column value truncated")
                    append(buf[start:pos])
                elif kind == 0x6E:  # 'n'
                    pos += 1
                    append(None)
                elif kind == 0x75:  # 'u'
                    pos += 1
                    append(UNCHANGED)
                else:
                    raise DecodeError(f"unsupported tuple column kind {chr(kind)!r}")
        except (IndexError, struct.error) as exc:
            raise DecodeError("tuple data truncated") from exc
        self.pos = pos
        return tuple(values)


def _begin(c: _Cursor) -> Begin:
    final_lsn, ts, xid = c.unpack(_BEGIN)
    return Begin(final_lsn, pg_time(ts), xid)


def _commit(c: _Cursor) -> Commit:
    flags, commit_lsn, end_lsn, ts = c.unpack(_COMMIT)
    return Commit(flags, commit_lsn, end_lsn, pg_time(ts))


def _origin(c: _Cursor) -> Origin:
    lsn = c.u64()
    return Origin(lsn, c.string())


def _relation(c: _Cursor) -> Relation:
    rel_id = c.u32()
    namespace = c.string()
    name = c.string()
    identity = c.byte()
    columns = tuple(RelationColumn(c.u8(), c.string(), c.u32(), c.i32()) for _ in range(c.u16()))
    return Relation(rel_id, namespace, name, identity, columns)


def _type(c: _Cursor) -> TypeInfo:
    oid = c.u32()
    namespace = c.string()
    return TypeInfo(oid, namespace, c.string())


def _insert(c: _Cursor) -> Insert:
    rel_id = c.u32()
    if c.byte() != "N":
        raise DecodeError("insert without new tuple")
    return Insert(rel_id, c.tuple_data())


def _update(c: _Cursor) -> Update:
    rel_id = c.u32()
    marker = c.byte()
    old: TupleData | None = None
    old_kind: str | None = None
    if marker in ("K", "O"):
        old_kind, old = marker, c.tuple_data()
        marker = c.byte()
    if marker != "N":
        raise DecodeError(f"update: unexpected tuple marker {marker!r}")
    return Update(rel_id, c.tuple_data(), old, old_kind)


def _delete(c: _Cursor) -> Delete:
    rel_id = c.u32()
    marker = c.byte()
    if marker not in ("K", "O"):
        raise DecodeError(f"delete: unexpected tuple marker {marker!r}")
    return Delete(rel_id, c.tuple_data(), marker)


def _truncate(c: _Cursor) -> Truncate:
    count = c.u32()
    options = c.u8()
    return Truncate(options, tuple(c.u32() for _ in range(count)))


def _message(c: _Cursor) -> LogicalMessage:
    flags = c.u8()
    lsn = c.u64()
    prefix = c.string()
    content = c.take(c.u32())
    return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(content))


_DECODERS: dict[int, Callable[[_Cursor], Message]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def new_row_of(buf: bytes, offset: int) -> tuple[int, int] | None:
    """(relation id, offset of the new tuple) when ``buf[offset]`` starts an INSERT, or an
    UPDATE that carries no old row; None for any other message (use decode_message)."""
    if len(buf) < offset + 8 or buf[offset + 5] != 0x4E:  # 'N': the new tuple comes next
        return None
    if buf[offset] not in (0x49, 0x55):  # 'I', 'U'
        return None
    return _U32.unpack_from(buf, offset + 1)[0], offset + 6


def decode_message(buf: bytes, offset: int = 0) -> Message:
    """Decode one pgoutput (protocol version 1) message starting at ``buf[offset]``.

    ``offset`` lets the reader decode the payload of an XLogData frame in place
    (:data:`XLOGDATA_HEADER` bytes in) without copying it.
    """
    if len(buf) <= offset:
        raise DecodeError("empty pgoutput message")
    decoder = _DECODERS.get(buf[offset])
    if decoder is None:
        raise DecodeError(f"unknown pgoutput message type {chr(buf[offset])!r}")
    return decoder(_Cursor(buf, offset + 1))


# --- LSNs --------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """Parse PostgreSQL's ``X/Y`` LSN notation (two hex numbers) into an integer."""
    high, sep, low = text.partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not an LSN: {text!r}")
    try:
        value = (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r}") from None
    if int(high, 16) > 0xFFFFFFFF or int(low, 16) > 0xFFFFFFFF:
        raise ValueError(f"not an LSN: {text!r}")
    return value


def format_lsn(lsn: int) -> str:
    """Format an integer LSN as PostgreSQL prints it (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
