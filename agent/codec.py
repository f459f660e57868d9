"""Exact, engine-neutral text encoding of row values, for the agent's state tables.

Conflicts, dead letters and staged changes store values as JSON; plain JSON would lose the
difference between 1.10 and 1.1, a date and a string, bytes and text. Scalars JSON can hold
exactly (str, bool, int, None) stay as they are; everything else is a one-key object naming
its type.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from agent.events import UNCHANGED

_ENCODERS: list[tuple[Any, str, Callable[[Any], Any]]] = [
    (Decimal, "decimal", str),
    (float, "float", repr),
    (dt.datetime, "datetime", lambda v: v.isoformat()),
    (dt.date, "date", lambda v: v.isoformat()),
    (dt.time, "time", lambda v: v.isoformat()),
    (dt.timedelta, "timedelta", lambda v: [v.days, v.seconds, v.microseconds]),
    (bytes | bytearray | memoryview, "bytes", lambda v: base64.b64encode(bytes(v)).decode()),
    (uuid.UUID, "uuid", str),
    (frozenset | set, "set", lambda v: sorted(str(x) for x in v)),
]

_DECODERS: dict[str, Callable[[Any], object]] = {
    "decimal": Decimal,
    "float": float,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "bytes": base64.b64decode,
    "uuid": uuid.UUID,
    "set": frozenset,
    "unchanged": lambda v: UNCHANGED,
}


def _encode(value: object) -> object:
    if value is None or type(value) in (bool, int, str):
        return value
    if value is UNCHANGED:
        return {"unchanged": True}
    if isinstance(value, str):  # str subclasses (JSON text) keep their text
        return {"text": str(value)}
    if isinstance(value, bool | int):  # int subclasses (enums) as plain numbers
        return bool(value) if isinstance(value, bool) else int(value)
    for kind, name, encode in _ENCODERS:
        if isinstance(value, kind):
            return {name: encode(value)}
    if isinstance(value, dict):
        return {"json": value}
    if isinstance(value, list):
        return {"json": value}
    return {"text": str(value)}


def encode_value(value: object) -> str:
    """One value as exact JSON text."""
    return json.dumps(_encode(value), ensure_ascii=False, default=str)


def encode_row(row: Mapping[str, object] | None) -> str | None:
    """A row (column -> value) as exact JSON text."""
    if row is None:
        return None
    return json.dumps({k: _encode(v) for k, v in row.items()}, ensure_ascii=False, default=str)


def _decode(data: object) -> object:
    if isinstance(data, dict) and len(data) == 1:
        [(name, payload)] = data.items()
        if name in _DECODERS:
            return _DECODERS[name](payload)
        if name in ("text", "json"):
            return payload
    return data


def decode_value(text: str) -> object:
    """The value :func:`encode_value` encoded."""
    return _decode(json.loads(text))


def decode_row(text: str | None) -> dict[str, object] | None:
    """The row :func:`encode_row` encoded."""
    if text is None:
        return None
    return {k: _decode(v) for k, v in json.loads(text).items()}
