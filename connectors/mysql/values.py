"""Exact conversion of MySQL/MariaDB column values to and from Python (pure, no I/O).

Python representation of each column type, the same whichever way a value was read (binlog
through mysql-replication, or a SELECT through PyMySQL):

==========================  =============================================================
TINYINT..BIGINT [UNSIGNED]  int (unsigned values are never negative)
DECIMAL                     decimal.Decimal (exact digits and scale)
FLOAT                       float: the shortest decimal that round-trips the stored float32
                            (``0.1`` rather than ``0.10000000149011612``, as MySQL shows it)
DOUBLE                      float
DATETIME                    aware datetime in ``MysqlParams.timezone`` (zoneinfo); a local
                            time that does not exist or is ambiguous (DST) gets ``fold=0``
TIMESTAMP                   aware datetime in UTC
DATE                        datetime.date
TIME                        datetime.timedelta (TIME is a signed duration up to 838:59:59)
YEAR                        int (``0`` for YEAR 0000)
CHAR/VARCHAR/TEXT           str (decoded from the column's character set)
JSON                        :class:`JsonText` (a str subclass holding the JSON text); MariaDB
                            JSON is LONGTEXT with a ``json_valid`` check, recognised from the
                            catalog
BINARY/VARBINARY/BLOB       bytes
ENUM                        str (``''`` for the invalid-value index 0)
SET                         frozenset[str] (empty set: ``frozenset()``, distinct from NULL)
BIT(n)                      int
UUID (MariaDB)              uuid.UUID
GEOMETRY, INET6 ...         bytes (the storage format), not converted further
zero dates                  :data:`ZERO_DATE` marker; writing it anywhere raises RowError
==========================  =============================================================
"""

from __future__ import annotations

import enum
import json
import math
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal

from agent.errors import RowError


class JsonText(str):
    """A JSON document as text. Written to a JSON column as is; ``json.loads`` to inspect."""

    __slots__ = ()


class ZeroDate:
    """Marker for MySQL zero dates (``0000-00-00``, ``2024-00-10``...): no Python type holds them.

    The reader passes it through; a writer refuses it with ``RowError('zero_date')`` so the row
    is quarantined with a clear reason instead of being silently turned into NULL.
    """

    _instance: ZeroDate | None = None

    def __new__(cls) -> ZeroDate:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ZERO_DATE"

    def __reduce__(self) -> str:
        return "ZERO_DATE"


ZERO_DATE = ZeroDate()
"""A zero or partly zero DATE/DATETIME/TIMESTAMP value read from the source."""


class Kind(enum.Enum):
    """How a column's values are converted."""

    INT = "int"
    UINT = "uint"
    DECIMAL = "decimal"
    FLOAT = "float"
    DOUBLE = "double"
    DATE = "date"
    DATETIME = "datetime"
    TIMESTAMP = "timestamp"
    TIME = "time"
    YEAR = "year"
    TEXT = "text"
    BINARY = "binary"
    JSON = "json"
    ENUM = "enum"
    SET = "set"
    BIT = "bit"
    UUID = "uuid"
    OTHER = "other"


_KIND_BY_DATA_TYPE: dict[str, Kind] = {
    **dict.fromkeys(("tinyint", "smallint", "mediumint", "int", "integer", "bigint"), Kind.INT),
    **dict.fromkeys(("decimal", "numeric"), Kind.DECIMAL),
    "float": Kind.FLOAT,
    **dict.fromkeys(("double", "real", "double precision"), Kind.DOUBLE),
    "date": Kind.DATE,
    "datetime": Kind.DATETIME,
    "timestamp": Kind.TIMESTAMP,
    "time": Kind.TIME,
    "year": Kind.YEAR,
    **dict.fromkeys(
        ("char", "varchar", "tinytext", "text", "mediumtext", "longtext"), Kind.TEXT
    ),
    **dict.fromkeys(
        ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"), Kind.BINARY
    ),
    "json": Kind.JSON,
    "enum": Kind.ENUM,
    "set": Kind.SET,
    "bit": Kind.BIT,
    "uuid": Kind.UUID,
}


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """One column as the catalog describes it.

    ``data_type`` is information_schema DATA_TYPE in lower case, except that a MariaDB
    LONGTEXT column with a ``json_valid`` check is reported as ``json``; ``column_type`` is
    the full COLUMN_TYPE (e.g. ``int(10) unsigned``), with the same JSON substitution.
    """

    name: str
    data_type: str
    column_type: str

    @property
    def unsigned(self) -> bool:
        """True for UNSIGNED numeric columns."""
        return "unsigned" in self.column_type

    @property
    def kind(self) -> Kind:
        """How values of this column are converted."""
        kind = _KIND_BY_DATA_TYPE.get(self.data_type, Kind.OTHER)
        return Kind.UINT if kind is Kind.INT and self.unsigned else kind


Converter = Callable[[object], object]

_EPOCH = datetime(1970, 1, 1)  # a zero TIMESTAMP is stored as 0 seconds; 0 is not a valid value


def float32(value: float) -> float:
    """The shortest decimal float that is the same float32 as ``value``."""
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def unsigned_fix(bits: int) -> Converter:
    """Converter that reads a negative integer as the unsigned integer of ``bits`` bits."""

    def convert(value: object) -> object:
        if isinstance(value, int) and value < 0:
            return value + (1 << bits)
        return value

    return convert


def _naive_in(zone: tzinfo) -> Converter:
    def convert(value: object) -> object:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=zone)
        return _zero_if_text(value)

    return convert


def _timestamp(value: object) -> object:
    if isinstance(value, datetime) and value.tzinfo is None:
        return ZERO_DATE if value == _EPOCH else value.replace(tzinfo=UTC)
    return _zero_if_text(value)


def _zero_if_text(value: object) -> object:
    # PyMySQL returns a date it cannot parse (a zero date) as the raw text.
    return ZERO_DATE if isinstance(value, str | bytes) else value


def _date(value: object) -> object:
    return value if isinstance(value, date) else _zero_if_text(value)


def _year(value: object) -> object:
    # mysql-replication adds 1900 to the stored byte, and YEAR 0000 is stored as 0.
    return 0 if value == 1900 else value


def _text(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _binary(value: object) -> object:
    if isinstance(value, str):
        # mysql-replication "decodes" an empty binary string to ''; any other str would be a
        # library change we must not paper over.
        if value:
            raise ValueError("binary column value arrived as text")
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _debytes(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {_debytes(k): _debytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_debytes(v) for v in value]
    return value


def to_json_text(value: object) -> JsonText:
    """JSON text for a decoded document, or the text itself when it is already text."""
    if isinstance(value, JsonText):
        return value
    if isinstance(value, str):
        return JsonText(value)
    if isinstance(value, bytes):
        return JsonText(value.decode("utf-8"))
    return JsonText(json.dumps(_debytes(value), ensure_ascii=False))


def _json(value: object) -> object:
    return to_json_text(value)


def _set(value: object) -> object:
    if isinstance(value, str):
        return frozenset(value.split(",")) if value else frozenset()
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return value


def _bit(value: object) -> object:
    if isinstance(value, str):
        return int(value, 2)  # mysql-replication renders BIT as a string of 0s and 1s
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")  # PyMySQL returns the raw big-endian bytes
    return value


def _uuid(value: object) -> object:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    if isinstance(value, str) and value:
        return uuid.UUID(value)
    return value


def _float(value: object) -> object:
    return float32(value) if isinstance(value, float) else value


def converter(kind: Kind, zone: tzinfo, *, int_bits: int = 64) -> Converter | None:
    """Converter from a driver value (binlog or SELECT) to the Python representation.

    None means the driver's value is already right (no call per value). ``zone`` is where
    DATETIME values are interpreted; ``int_bits`` is the width of an unsigned integer column.
    """
    table: dict[Kind, Converter] = {
        Kind.UINT: unsigned_fix(int_bits),
        Kind.FLOAT: _float,
        Kind.DATETIME: _naive_in(zone),
        Kind.TIMESTAMP: _timestamp,
        Kind.DATE: _date,
        Kind.YEAR: _year,
        Kind.TEXT: _text,
        Kind.ENUM: _text,
        Kind.BINARY: _binary,
        Kind.JSON: _json,
        Kind.SET: _set,
        Kind.BIT: _bit,
        Kind.UUID: _uuid,
    }
    return table.get(kind)


ZERO_DATE_SOURCES = frozenset(
    {"out of date range", "out of datetime range", "out of datetime2 range"}
)


def binlog_null(kind: Kind, none_source: str | None) -> object:
    """The value of a column that mysql-replication decoded as None.

    The library also returns None for zero dates and for an empty SET; its ``none_sources``
    tell them apart from SQL NULL.
    """
    if none_source in ZERO_DATE_SOURCES:
        return ZERO_DATE
    if none_source == "empty set" and kind is Kind.SET:
        return frozenset()
    return None


def to_param(kind: Kind, value: object, zone: tzinfo, column: str = "") -> object:
    """A Python value as a PyMySQL parameter for a column of ``kind``.

    The session time zone is UTC, so TIMESTAMP values are sent as naive UTC; DATETIME values
    as naive wall-clock time in ``zone`` (a naive datetime is taken as already local). JSON
    columns take :class:`JsonText`/str as is and any other value as its JSON text. Raises
    RowError for values no column can hold.
    """
    if value is None:
        return None
    if isinstance(value, ZeroDate):
        raise RowError("zero_date", f"zero date in column '{column}'")
    if kind is Kind.JSON and not isinstance(value, str | bytes):
        return str(to_json_text(value))
    if isinstance(value, datetime):
        zone_of_column = UTC if kind is Kind.TIMESTAMP else zone
        return value if value.tzinfo is None else value.astimezone(zone_of_column).replace(
            tzinfo=None
        )
    return _plain_param(value, column)


def _plain_param(value: object, column: str) -> object:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return str(value)  # JsonText and other subclasses: PyMySQL escapes plain str only
    if isinstance(value, int | bytes | date | timedelta):
        return value
    if isinstance(value, float | Decimal):
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        if not finite:
            raise RowError("out_of_range", f"non-finite number for column '{column}'")
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        return ",".join(sorted(str(v) for v in value))
    if isinstance(value, dict | list | tuple):
        return json.dumps(_debytes(value), ensure_ascii=False)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, time):  # a time of day from PostgreSQL, for a TIME column
        return timedelta(hours=value.hour, minutes=value.minute, seconds=value.second,
                         microseconds=value.microsecond)
    raise RowError("unsupported_type", f"{type(value).__name__} for column '{column}'")
