"""SQL literal text for values written by the MySQL/MariaDB sink (pure, no I/O).

A multi-row statement of 500 rows has thousands of values; PyMySQL's ``cursor.execute(sql,
args)`` escapes each through a generic type dispatch and then formats the statement with
``%``. The sink instead asks once per (table, column) for a :data:`Literal`: a function that
writes one value as SQL text, choosing by the value's exact type among the common ones (text,
integers, decimals, bytes, dates, NULL). Every other value, and every value of a JSON column,
goes the generic way: :func:`connectors.mysql.values.to_param`, then the connection's own
``escape``. The text is the same as PyMySQL would have sent (tests compare every type).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from pymysql.converters import escape_date, escape_datetime

from connectors.mysql.values import Kind, to_param

Literal = Callable[[object], str]
"""One value as SQL literal text (``NULL``, ``123``, ``'text'``, ``X'00ff'`` ...)."""

# The characters PyMySQL escapes with a backslash (pymysql.converters.escape_string), as a
# table indexed by code point (str.translate is much faster with a list than with a dict).
_ESCAPED = {"\0": "\\0", "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\032": "\\Z", '"': '\\"',
            "'": "\\'"}
_BACKSLASH_ESCAPES = [_ESCAPED.get(chr(c), chr(c)) for c in range(128)]
# Most text has none of them: one regex scan is cheaper than translating.
_NEEDS_ESCAPE = re.compile("[" + re.escape("".join(_ESCAPED)) + "]").search


def _quote_backslash(value: str) -> str:
    if _NEEDS_ESCAPE(value) is None:
        return "'" + value + "'"
    return "'" + value.translate(_BACKSLASH_ESCAPES) + "'"


def _quote_no_backslash(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_text(no_backslash_escapes: bool) -> Callable[[str], str]:
    """Quoted string literal for a session with or without ``NO_BACKSLASH_ESCAPES`` in its
    sql_mode (where a backslash is an ordinary character and only quotes are doubled)."""
    return _quote_no_backslash if no_backslash_escapes else _quote_backslash


def _null(_: object) -> str:
    return "NULL"


def _hex(value: bytes) -> str:
    return f"X'{value.hex()}'"


def literal(kind: Kind, zone: tzinfo, column: str, quote: Callable[[str], str],
            escape: Callable[[object], str]) -> Literal:
    """The literal writer for a column of ``kind``.

    ``quote`` is :func:`quote_text` for the session; ``escape`` is the connection's
    ``escape`` (PyMySQL), used for the values without a fast path after
    :func:`~connectors.mysql.values.to_param` (which raises RowError for values no column can
    hold, e.g. a zero date or a non-finite number).
    """

    def slow(value: object) -> str:
        return escape(to_param(kind, value, zone, column))

    fast: dict[type, Callable[[Any], str]] = {type(None): _null, str: quote, bytes: _hex}
    if kind is not Kind.JSON:  # a JSON column takes any other value as its JSON text
        fast[int] = int.__repr__  # exactly int: a bool is written as 0/1 by to_param

        def decimal(value: Decimal) -> str:
            return format(value, "f") if value.is_finite() else slow(value)

        fast[Decimal] = decimal
        fast[date] = escape_date
        column_zone = UTC if kind is Kind.TIMESTAMP else zone

        def wall_clock(value: datetime) -> str:
            if value.tzinfo is not None:
                value = value.astimezone(column_zone).replace(tzinfo=None)
            return str(escape_datetime(value))

        fast[datetime] = wall_clock
    lookup = fast.get

    def write(value: object) -> str:
        known = lookup(type(value))
        return slow(value) if known is None else known(value)

    # The usual value of the usual column without a second call (a 500-row statement has
    # thousands): text with nothing to escape, and integers.
    if kind in _TEXT_KINDS and quote is _quote_backslash:

        def write_text(value: object) -> str:
            if type(value) is str and _NEEDS_ESCAPE(value) is None:
                return "'" + value + "'"
            return write(value)

        return write_text
    if kind in _INT_KINDS:

        def write_int(value: object) -> str:
            return int.__repr__(value) if type(value) is int else write(value)

        return write_int
    return write


_TEXT_KINDS = frozenset({Kind.TEXT, Kind.ENUM})
_INT_KINDS = frozenset({Kind.INT, Kind.UINT})
