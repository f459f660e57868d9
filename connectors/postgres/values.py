"""Exact conversion between PostgreSQL text values and Python values.

Reading (pgoutput and :meth:`PgSink.fetch`): every column value arrives in the server's text
output format; :func:`converter_for` picks a converter by type OID once per relation column,
so the per-field hot path is one call. The reader's session pins the output formats
(``DateStyle=ISO``, ``TimeZone=UTC``, ``bytea_output=hex``, ``extra_float_digits=1``).

Representations (chosen so a value survives a round trip exactly):

- int2/int4/int8/oid -> ``int``; numeric -> ``Decimal`` (``NaN``, ``Infinity`` included);
  float4/float8 -> ``float`` (``nan``/``inf`` included; the server prints the shortest
  exact form); bool -> ``bool``; uuid -> ``uuid.UUID``; bytea -> ``bytes``.
- date -> ``date``; time -> ``time``; timetz -> aware ``time``; timestamp -> naive
  ``datetime``; timestamptz -> aware ``datetime`` in UTC. Values Python cannot hold
  (``infinity``, BC dates, years past 9999, ``24:00:00``) stay the server's text as
  ``str``: the row then fails on the target and is quarantined instead of stopping the
  stream.
- json/jsonb -> :class:`JsonText`, the JSON text unchanged (parsing would lose key order
  and duplicate keys, and round floats).
- interval, arrays, money, network, geometric, range, enum and any unknown type -> ``str``
  as the server prints it (intervals: months do not fit ``timedelta``).

Writing (:func:`to_param`): a Python value becomes the text the column type's input
function parses, sent as an untyped parameter, so the server converts it for whatever the
target column is (no silent float or timezone rounding in between).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

Converter = Callable[[str], object]


class JsonText(str):
    """JSON document text exactly as the database holds it (json keeps it verbatim)."""

    __slots__ = ()

    def parse(self) -> Any:
        """The parsed document; numbers with a fraction become ``Decimal`` (no rounding)."""
        return json.loads(self, parse_float=Decimal)


# Built-in type OIDs (pg_type.dat; stable across versions).
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, MONEY = 114, 142, 700, 701, 790
BPCHAR, VARCHAR, DATE, TIME = 1042, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL = 1114, 1184, 1186
TIMETZ, NUMERIC, UUID, JSONB = 1266, 1700, 2950, 3802


def _bool(text: str) -> bool:
    return text in ("t", "true")


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    return _bytea_escape(text)


def _bytea_escape(text: str) -> bytes:
    """Decode the legacy 'escape' bytea output (backslash-octal, doubled backslash)."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("latin-1")
            i += 1
        elif text[i + 1] == "\\":
            out.append(0x5C)
            i += 2
        else:
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
    return bytes(out)


def _date(text: str) -> date | str:
    try:
        return date.fromisoformat(text)
    except ValueError:  # infinity, BC, year > 9999
        return text


def _time(text: str) -> time | str:
    try:
        return time.fromisoformat(text)
    except ValueError:  # 24:00:00
        return text


def _timestamp(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def _timestamptz(text: str) -> datetime | str:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return text
    if value.tzinfo is None:  # not expected: the server always prints an offset
        return text
    return value.astimezone(UTC)


def _json(text: str) -> JsonText:
    return JsonText(text)


def _str(text: str) -> str:
    return text


_CONVERTERS: dict[int, Converter] = {
    BOOL: _bool,
    BYTEA: _bytea,
    INT8: int,
    INT2: int,
    INT4: int,
    OID: int,
    NUMERIC: Decimal,
    FLOAT4: float,
    FLOAT8: float,
    DATE: _date,
    TIME: _time,
    TIMETZ: _time,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    JSON: _json,
    JSONB: _json,
    UUID: uuid.UUID,
}


def converter_for(type_oid: int) -> Converter:
    """The converter for a column of type ``type_oid`` (unknown types stay ``str``)."""
    return _CONVERTERS.get(type_oid, _str)


def converter_or_none(type_oid: int) -> Converter | None:
    """:func:`converter_for`, but None where the text itself is the value (the hot paths
    then make no call per value)."""
    return _CONVERTERS.get(type_oid)


def from_text(type_oid: int, text: str | None) -> object:
    """Convert one text value of type ``type_oid`` (``None`` is SQL NULL)."""
    return None if text is None else converter_for(type_oid)(text)


# --- Python -> PostgreSQL ----------------------------------------------------------------


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _datetime_text(value: datetime) -> str:
    # An aware value keeps its own offset: a timestamptz column gets the instant, and a
    # timestamp column (whose input ignores the offset) the wall-clock time of the zone the
    # value came from -- a MySQL DATETIME read in the ERP's zone lands unchanged.
    return value.isoformat()


def _duration_text(value: timedelta) -> str:
    """[-]H:MM:SS.ffffff: what MySQL's TIME holds; PostgreSQL reads it as a time or an interval."""
    micros = value // timedelta(microseconds=1)
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    seconds, fraction = divmod(micros, 1_000_000)
    text = f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{text}.{fraction:06d}" if fraction else text


def json_dumps(value: object) -> str:
    """Serialise a dict/list JSON value; ``Decimal`` numbers keep every digit."""
    if isinstance(value, dict):
        items = (f"{json_dumps(str(k))}: {json_dumps(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json_dumps(v) for v in value) + "]"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("JSON cannot hold NaN or Infinity")
        return str(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def to_param(value: object) -> str | None:
    """The text a PostgreSQL input function parses back into ``value`` exactly."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]  # (mypy does not narrow on type(...) is)
    if kind is int or kind is Decimal:
        return str(value)
    if value is None or isinstance(value, str):  # includes JsonText
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, datetime):
        return _datetime_text(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration_text(value)
    if isinstance(value, dict | list):
        return json_dumps(value)
    raise TypeError(f"cannot convert {type(value).__name__} for PostgreSQL")
