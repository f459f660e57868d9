"""connectors.mysql.literals writes the same SQL text as PyMySQL's escape of to_param."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pymysql.connections import Connection
from pymysql.constants import SERVER_STATUS
from pymysql.cursors import Cursor

from agent.errors import RowError
from connectors.mysql.literals import literal, quote_text
from connectors.mysql.values import ZERO_DATE, JsonText, Kind, to_param

BERLIN = ZoneInfo("Europe/Berlin")
TEXTS = ["", "plain", "it's", 'say "hi"', "back\\slash", "nul\x00byte", "line\nbreak\r",
         "ctrl\x1a", "Grüße 😀 𝄞", "'; DROP TABLE t; --", "\\'", "%s %(x)s", "tab\tbell\x07"]
VALUES: list[object] = [
    None, 0, -1, 2**64 - 1, -(2**63), True, False, *TEXTS, JsonText('{"a": "b\'c"}'),
    b"", b"\x00\x27\x5c\xff", bytearray(b"\x00'"), memoryview(b"ab"),
    Decimal("12.50"), Decimal("-0.01"), Decimal("1E+3"), Decimal("1.000E-5"), Decimal(0),
    1.5, 0.1, -2.5e-300, 1e300,
    date(2024, 2, 29), date(1, 1, 1),
    datetime(2024, 3, 31, 2, 30), datetime(2024, 7, 1, 12, 0, 0, 250000),
    datetime(2024, 7, 1, 10, 0, tzinfo=UTC), datetime(2024, 1, 1, 23, 59, 59, 1, tzinfo=BERLIN),
    datetime(2024, 10, 27, 2, 30, tzinfo=timezone(timedelta(hours=-5))),
    timedelta(hours=-838, minutes=-59), timedelta(microseconds=5), time(13, 5, 1, 7),
    uuid.UUID(int=7), frozenset({"b", "a"}), frozenset(), {"k": [1, "x"]}, [1, 2],
]


def _connection(no_backslash_escapes: bool) -> Connection[Cursor]:
    conn = Connection(defer_connect=True, charset="utf8mb4")
    flag = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
    # No I/O: the status a session would report (not in the type stubs).
    setattr(conn, "server_status", flag if no_backslash_escapes else 0)  # noqa: B010
    return conn


@pytest.mark.parametrize("no_backslash", [False, True])
@pytest.mark.parametrize("kind", list(Kind))
def test_literals_match_pymysql_for_every_kind_and_value(kind: Kind, no_backslash: bool) -> None:
    conn = _connection(no_backslash)
    write = literal(kind, BERLIN, "col", quote_text(no_backslash), conn.escape)

    def pymysql_text(value: object) -> str:
        return conn.escape(to_param(kind, value, BERLIN, "col"))

    for value in VALUES:
        assert _outcome(write, value) == _outcome(pymysql_text, value), value


def _outcome(action: Callable[[object], str], value: object) -> tuple[str, str]:
    """The text, or the exception type a value no column of the kind can hold raises."""
    try:
        return "text", action(value)
    except Exception as exc:
        return "error", type(exc).__name__


def test_quoting_follows_the_session_mode() -> None:
    assert quote_text(False)("a'b\\c\x00") == "'a\\'b\\\\c\\0'"
    assert quote_text(True)("a'b\\c\x00") == "'a''b\\c\x00'"


@pytest.mark.parametrize("value", [ZERO_DATE, Decimal("NaN"), Decimal("-Infinity"),
                                   float("inf"), object()])
def test_values_no_column_can_hold_are_row_errors(value: object) -> None:
    conn = _connection(False)
    write = literal(Kind.OTHER, BERLIN, "col", quote_text(False), conn.escape)
    with pytest.raises(RowError):
        write(value)
