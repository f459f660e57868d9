"""A fast decoder for the row images of binlog rows events (pure, no I/O).

mysql-replication decodes row values through several Python calls per field (a packet
wrapper read, bitmap helpers, a type dispatch chain) and the adapter then converts each
value again. For the column types the agent maps, :class:`RowCodec` reads the event body
once, with a function compiled per table layout (:mod:`connectors.mysql.rowcompile`) that
inlines the common types, and produces the final representation of
:mod:`connectors.mysql.values` directly (about 6x faster than the library).

Equivalence with the library (then the converters) is tested on real binlog events for every
supported type (tests/integration/test_fast_rows.py). Layouts it does not support return
None from :func:`compile_codec` and the caller keeps the library's decoding: TIME, JSON
(MySQL's binary JSON), GEOMETRY, the pre-5.6 temporal types, character sets Python does
not know, and images that do not carry every column (binlog_row_image other than FULL).

Binary formats follow the MySQL source (``log_event.cc``, ``my_time.cc``, ``decimal.c``):
integers little-endian; DATETIME2/TIMESTAMP2/DECIMAL big-endian with a sign bit.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from agent.events import Op, RowChange, TableId
from connectors.mysql.rowcompile import (
    WIDE,
    ChangesFn,
    Column,
    Dec,
    Fixed,
    ImageFn,
    Reader,
    Row,
    Text,
    compile_changes,
    compile_image,
)
from connectors.mysql.values import ZERO_DATE, Converter, Kind, float32

_COMPILED_BITMAPS = 16  # NULL bitmaps of a layout with a compiled decoder (then: readers)


# mysql-replication's FIELD_TYPE codes (the protocol's column type bytes).
_TINY, _SHORT, _LONG, _FLOAT, _DOUBLE = 1, 2, 3, 4, 5
_LONGLONG, _INT24, _YEAR = 8, 9, 13
_VARCHAR, _BIT, _TIMESTAMP2, _DATETIME2 = 15, 16, 17, 18
_NEWDECIMAL, _ENUM, _SET, _BLOB, _STRING, _DATE = 246, 247, 248, 252, 254, 10

_INTS: dict[tuple[int, bool], struct.Struct] = {
    (_TINY, False): struct.Struct("<b"), (_TINY, True): struct.Struct("<B"),
    (_SHORT, False): struct.Struct("<h"), (_SHORT, True): struct.Struct("<H"),
    (_LONG, False): struct.Struct("<i"), (_LONG, True): struct.Struct("<I"),
    (_LONGLONG, False): struct.Struct("<q"), (_LONGLONG, True): struct.Struct("<Q"),
}
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


class Unsupported(Exception):
    """A column type the fast decoder does not handle (the library decodes it)."""


def _fixed_int(fmt: struct.Struct) -> Reader:
    size, unpack = fmt.size, fmt.unpack_from

    def read(buf: bytes, pos: int) -> tuple[object, int]:
        return unpack(buf, pos)[0], pos + size

    return read


def _int24(unsigned: bool) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[object, int]:
        return int.from_bytes(buf[pos : pos + 3], "little", signed=not unsigned), pos + 3

    return read


def _float(buf: bytes, pos: int) -> tuple[object, int]:
    return float32(_F32.unpack_from(buf, pos)[0]), pos + 4


def _double(buf: bytes, pos: int) -> tuple[object, int]:
    return _F64.unpack_from(buf, pos)[0], pos + 8


def _year(buf: bytes, pos: int) -> tuple[object, int]:
    value = buf[pos]
    return (value + 1900 if value else 0), pos + 1


def _date(buf: bytes, pos: int) -> tuple[object, int]:
    value = int.from_bytes(buf[pos : pos + 3], "little")
    day, month, year = value & 31, (value >> 5) & 15, value >> 9
    if not (day and month and year):
        return ZERO_DATE, pos + 3
    return date(year, month, day), pos + 3


def _fraction(fsp: int) -> tuple[int, int]:
    """(bytes, multiplier) of the fractional seconds of a temporal column of precision fsp."""
    return (fsp + 1) // 2, 10 ** (6 - fsp) if fsp else 0


def _micros(buf: bytes, pos: int, size: int, fsp: int, scale: int) -> int:
    value = int.from_bytes(buf[pos : pos + size], "big")
    # An odd precision stores one digit more than it keeps (e.g. fsp 1 uses 0..99).
    return (value // 10 if fsp % 2 else value) * scale


def _datetime2(fsp: int, zone: tzinfo) -> Reader:
    size, scale = _fraction(fsp)

    def read(buf: bytes, pos: int) -> tuple[object, int]:
        packed = int.from_bytes(buf[pos : pos + 5], "big")
        micros = _micros(buf, pos + 5, size, fsp, scale) if size else 0
        ym = (packed >> 22) & 0x1FFFF
        try:
            value: object = datetime(ym // 13, ym % 13, (packed >> 17) & 31,
                                     (packed >> 12) & 31, (packed >> 6) & 63, packed & 63,
                                     micros, tzinfo=zone)
        except ValueError:  # zero dates (year, month or day 0)
            value = ZERO_DATE
        return value, pos + 5 + size

    return read


def _timestamp2(fsp: int) -> Reader:
    size, scale = _fraction(fsp)

    def read(buf: bytes, pos: int) -> tuple[object, int]:
        seconds = int.from_bytes(buf[pos : pos + 4], "big")
        micros = _micros(buf, pos + 4, size, fsp, scale) if size else 0
        if not seconds and not micros:
            return ZERO_DATE, pos + 4 + size
        return _EPOCH_UTC + timedelta(seconds=seconds, microseconds=micros), pos + 4 + size

    return read


def decimal_plan(precision: int, scale: int) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """(size, parts) of a DECIMAL(precision, scale) image.

    The image is big-endian groups of up to 9 decimal digits: a short head, whole 4-byte
    groups, then the fraction's 4-byte groups and a short tail. Each part is (shift, mask,
    weight): the coefficient (all digits as one integer) is the sum of
    ``((x >> shift) & mask) * weight`` over the parts, x being the image as one integer.
    """
    int_full, int_rest = divmod(precision - scale, 9)
    frac_full, frac_rest = divmod(scale, 9)
    head, tail = _DIG2BYTES[int_rest], _DIG2BYTES[frac_rest]
    # (bytes, decimal digits) of every part, most significant first.
    layout = ([(head, int_rest)] if head else []) + [(4, 9)] * (int_full + frac_full)
    layout += [(tail, frac_rest)] if tail else []
    size = sum(n for n, _ in layout)
    parts: list[tuple[int, int, int]] = []
    shift, digits = size * 8, 0
    for nbytes, ndigits in layout:
        shift -= nbytes * 8
        parts.append((shift, (1 << nbytes * 8) - 1, ndigits))
    for index in range(len(parts) - 1, -1, -1):  # weights: digits of the less significant parts
        shift, mask, ndigits = parts[index]
        parts[index] = (shift, mask, 10**digits)
        digits += ndigits
    return size, tuple(parts)


def _newdecimal(precision: int, scale: int) -> Reader:
    size, parts = decimal_plan(precision, scale)
    top = 1 << (size * 8 - 1)
    flip_negative = ((top << 1) - 1) ^ top

    def read(buf: bytes, pos: int) -> tuple[object, int]:
        x = int.from_bytes(buf[pos : pos + size], "big")
        # The sign bit is stored inverted; negative numbers have every other bit inverted too.
        negative = not x & top
        x ^= flip_negative if negative else top
        coefficient = sum(((x >> shift) & mask) * weight for shift, mask, weight in parts)
        return _decimal(coefficient, scale, negative), pos + size

    return read


def _decimal(coefficient: int, scale: int, negative: bool) -> Decimal:
    """The Decimal the library builds from "[-]<whole>.<fraction digits>"."""
    value = Decimal(coefficient).scaleb(-scale, WIDE) if scale else Decimal(coefficient)
    return value.copy_negate() if negative else value


def _lengths(prefix: int) -> Callable[[bytes, int], tuple[int, int]]:
    if prefix == 1:
        return lambda buf, pos: (buf[pos], pos + 1)
    return lambda buf, pos: (int.from_bytes(buf[pos : pos + prefix], "little"), pos + prefix)


def _string(prefix: int, encoding: str | None, finish: Converter | None) -> Reader:
    if prefix == 1 and encoding == "utf8" and finish is None:
        def read_utf8(buf: bytes, pos: int) -> tuple[object, int]:  # the hot path
            end = pos + 1 + buf[pos]
            return buf[pos + 1 : end].decode("utf-8"), end

        return read_utf8
    length_of = _lengths(prefix)

    def read(buf: bytes, pos: int) -> tuple[object, int]:
        length, start = length_of(buf, pos)
        end = start + length
        value: object = buf[start:end] if encoding is None else buf[start:end].decode(encoding)
        return (value if finish is None else finish(value)), end

    return read


def _enum(size: int, names: Sequence[str] | None) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[object, int]:
        index = int.from_bytes(buf[pos : pos + size], "little")
        return (names[index] if names else None), pos + size

    return read


def _set(size: int, names: Sequence[str] | None) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[object, int]:
        mask = int.from_bytes(buf[pos : pos + size], "little")
        members = frozenset(n for i, n in enumerate(names or ()) if mask >> i & 1)
        return members, pos + size

    return read


def _bit(size: int) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[object, int]:
        return int.from_bytes(buf[pos : pos + size], "big"), pos + size

    return read


def _encoding(column: Any, kind: Kind) -> str | None:
    """Python codec of a text column (None: keep bytes); Unsupported if Python lacks it."""
    if kind in (Kind.BINARY, Kind.UUID):
        return None
    name = getattr(column, "character_set_name", None)
    if name is None:
        return "utf8"
    from pymysql.charset import charset_by_name

    charset = charset_by_name(name)
    encoding = charset.encoding if charset else name
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise Unsupported(f"character set {name}") from None
    return "utf8" if codecs.lookup(encoding).name == "utf-8" else encoding


def _column(column: Any, kind: Kind, zone: tzinfo, finish: Converter | None) -> Column:
    """How to decode one table-map column: a reader, and code for the hot types."""
    ctype, unsigned = column.type, bool(column.unsigned)
    if (ctype, unsigned) in _INTS:
        fmt = _INTS[ctype, unsigned]
        return Column(column.name, _fixed_int(fmt), Fixed(fmt.format[-1]))
    if ctype == _DOUBLE:
        return Column(column.name, _double, Fixed("d"))
    if ctype == _FLOAT:
        return Column(column.name, _float, Fixed("f", float32=True))
    if ctype == _NEWDECIMAL:
        size, parts = decimal_plan(column.precision, column.decimals)
        return Column(column.name, _newdecimal(column.precision, column.decimals),
                      Dec(size, column.decimals, parts))
    text = _text(column, kind, finish)
    if text is not None:
        return Column(column.name, _string(text.prefix, text.encoding, text.finish), text)
    return Column(column.name, _reader(column, zone))


def _text(column: Any, kind: Kind, finish: Converter | None) -> Text | None:
    ctype = column.type
    if ctype in (_VARCHAR, _STRING):
        prefix = 2 if column.max_length > 255 else 1
        fixed_binary = ctype == _STRING and kind in (Kind.BINARY, Kind.UUID)
        return Text(prefix, _encoding(column, kind),
                    finish if fixed_binary else _finisher(kind, finish))
    if ctype == _BLOB:
        return Text(column.length_size, _encoding(column, kind), _finisher(kind, finish))
    return None


def _reader(column: Any, zone: tzinfo) -> Reader:
    ctype, unsigned = column.type, bool(column.unsigned)
    simple: dict[int, Reader] = {_YEAR: _year, _DATE: _date}
    if ctype in simple:
        return simple[ctype]
    if ctype == _INT24:
        return _int24(unsigned)
    if ctype == _DATETIME2:
        return _datetime2(column.fsp, zone)
    if ctype == _TIMESTAMP2:
        return _timestamp2(column.fsp)
    if ctype == _ENUM:
        return _enum(column.size, column.enum_values)
    if ctype == _SET:
        return _set(column.size, column.set_values)
    if ctype == _BIT:
        return _bit(column.bytes)
    raise Unsupported(f"column type {ctype}")


def _finisher(kind: Kind, finish: Converter | None) -> Converter | None:
    # Text needs nothing more; MariaDB JSON (text) and UUID (binary) keep their converters.
    return finish if kind in (Kind.JSON, Kind.UUID) else None


class RowCodec:
    """Decodes the row images of one table layout (all columns present in every image).

    Per layout it compiles (once) a Python function that decodes a whole rows event in one
    loop, with the code of the common column types inlined; a row with NULLs goes through a
    function compiled for its NULL bitmap (the first few bitmaps seen) or the per-column
    readers.
    """

    def __init__(self, columns: Sequence[Column]) -> None:
        self._columns = tuple(columns)
        self._null_bytes = (len(self._columns) + 7) // 8
        self._by_nulls: dict[int, ImageFn] = {}
        self._changes: ChangesFn = compile_changes(self._columns, self._nulls_image)

    def changes(self, buf: bytes, pos: int, end: int, table: TableId,
                op: Op) -> list[RowChange]:
        """The row changes of an event body (``op`` UPDATE: before and after images)."""
        return self._changes(buf, pos, end, table, op)

    def _nulls_image(self, nulls: int, buf: bytes, pos: int) -> tuple[Row, int]:
        image = self._by_nulls.get(nulls)
        if image is None:
            if len(self._by_nulls) >= _COMPILED_BITMAPS:
                return self._generic(nulls, buf, pos)
            image = compile_image(self._columns, nulls)
            self._by_nulls[nulls] = image
        return image(buf, pos)

    def _generic(self, nulls: int, buf: bytes, pos: int) -> tuple[Row, int]:
        row: dict[str, object] = {}
        for index, column in enumerate(self._columns):
            if nulls >> index & 1:
                row[column.name] = None
            else:
                row[column.name], pos = column.read(buf, pos)
        return MappingProxyType(row), pos


def compile_codec(columns: Sequence[Any], kinds: dict[str, Kind],
                  finishers: dict[str, Converter], zone: tzinfo) -> RowCodec | None:
    """A codec for a table-map column list, or None if some column needs the library."""
    try:
        plan = [_column(c, kinds[c.name], zone, finishers.get(c.name)) for c in columns]
    except Unsupported:
        return None
    return RowCodec(plan)
