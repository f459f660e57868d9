"""Rows of a locking read as one JSON document (MariaDB), for MySink.fetch (pure, no I/O).

PyMySQL parses a result row by row and value by value in Python; for the thousands of rows a
batch reads back that is a large part of the applying thread's time. MariaDB can send the
whole result as one value instead, ``JSON_ARRAYAGG(JSON_ARRAY(col, ...))``, which
``json.loads`` parses in C. Only for columns whose JSON form gives back exactly the value
PyMySQL would give (checked against the server for every kind used, see the tests):

- integers (signed and unsigned, any width): JSON integers;
- DECIMAL: JSON numbers written with the column's scale, parsed as Decimal (a scale-0 value
  is written as an integer and made a Decimal here);
- CHAR/VARCHAR and ENUM: JSON strings (any character, including NUL and 4-byte UTF-8).

Other types (dates, floats, binary, JSON, long texts...) keep the plain result. The statement
also returns ``COUNT(*)``: a document that does not hold that many rows (truncated by a
server limit) is refused, and the caller reads the plain way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal

from connectors.mysql.values import ColumnDef, Kind

_SAME_IN_JSON = frozenset({Kind.INT, Kind.UINT, Kind.DECIMAL, Kind.ENUM})
_BOUNDED_TEXT = frozenset({"char", "varchar"})


def json_readable(columns: Sequence[ColumnDef | None]) -> bool:
    """True if every column (None: unknown to the catalog) reads exactly through JSON."""
    return all(
        c is not None and (c.kind in _SAME_IN_JSON
                           or (c.kind is Kind.TEXT and c.data_type in _BOUNDED_TEXT))
        for c in columns)


def json_select(names: Sequence[str]) -> str:
    """The select list: the row count, then every row as a JSON array of ``names`` (quoted
    identifiers)."""
    return f"COUNT(*), JSON_ARRAYAGG(JSON_ARRAY({', '.join(names)}))"


def decimal_positions(columns: Sequence[ColumnDef | None]) -> list[int]:
    """Positions of the DECIMAL columns (their integers become Decimal)."""
    return [i for i, c in enumerate(columns) if c is not None and c.kind is Kind.DECIMAL]


def json_rows(count: int, document: object, decimals: Sequence[int]) -> list[list[object]] | None:
    """The rows of a :func:`json_select` result, or None if the document does not hold
    ``count`` rows (the caller then reads the plain way)."""
    if count == 0:
        return []
    if isinstance(document, bytes):
        document = document.decode("utf-8")
    if not isinstance(document, str):
        return None
    try:
        rows = json.loads(document, parse_float=Decimal)
    except ValueError:
        return None
    if not isinstance(rows, list) or len(rows) != count:
        return None
    for i in decimals:
        for row in rows:
            value = row[i]
            if type(value) is int:
                row[i] = Decimal(value)
    return rows
