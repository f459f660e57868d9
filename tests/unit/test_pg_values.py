"""PostgreSQL text values <-> Python values, exactly, by type OID (no I/O)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from connectors.postgres import values as v


def conv(oid: int, text: str) -> object:
    return v.from_text(oid, text)


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (v.INT2, "-32768", -32768),
        (v.INT4, "2147483647", 2147483647),
        (v.INT8, "-9223372036854775808", -(2**63)),
        (v.INT8, "9223372036854775807", 2**63 - 1),
        (v.OID, "4294967295", 2**32 - 1),
        (v.BOOL, "t", True),
        (v.BOOL, "f", False),
        (v.BOOL, "true", True),
        (v.TEXT, "😀 ü", "😀 ü"),
        (v.VARCHAR, "", ""),
        (v.BPCHAR, "ab   ", "ab   "),
        (v.NAME, "relname", "relname"),
        (
            v.UUID,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        (v.BYTEA, "\\x00ff10", b"\x00\xff\x10"),
        (v.BYTEA, "\\x", b""),
        (v.BYTEA, "a\\\\b\\000", b"a\\b\x00"),
        (v.INTERVAL, "1 year 2 mons 3 days 04:05:06", "1 year 2 mons 3 days 04:05:06"),
        (1007, "{1,2,NULL}", "{1,2,NULL}"),  # int4[] stays text
        (99999, "custom", "custom"),  # unknown OID (citext, enums...) stays text
    ],
)
def test_scalar_conversions(oid: int, text: str, expected: object) -> None:
    value = conv(oid, text)
    assert value == expected
    assert type(value) is type(expected)


def test_null_is_none_for_every_type() -> None:
    assert v.from_text(v.INT4, None) is None
    assert v.from_text(v.JSONB, None) is None


def test_numeric_is_exact() -> None:
    total = conv(v.NUMERIC, "0.1")
    assert isinstance(total, Decimal)
    assert total + Decimal("0.2") == Decimal("0.3")
    big = "123456789012345678901234567890.000000000000000000001"
    assert str(conv(v.NUMERIC, big)) == big
    assert str(conv(v.NUMERIC, "-0.00")) == "-0.00"  # scale is kept


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_numeric_specials(text: str) -> None:
    value = conv(v.NUMERIC, text)
    assert isinstance(value, Decimal)
    assert str(value) == text


@pytest.mark.parametrize(
    "text", ["0.1", "1.7976931348623157e+308", "5e-324", "-0", "3.4028235e+38"]
)
def test_float_round_trips_through_repr(text: str) -> None:
    value = conv(v.FLOAT8, text)
    assert isinstance(value, float)
    assert float(v.to_param(value) or "") == value
    assert math.copysign(1, value) == math.copysign(1, float(text))


def test_float_specials() -> None:
    assert math.isnan(conv(v.FLOAT8, "NaN"))  # type: ignore[arg-type]
    assert conv(v.FLOAT4, "Infinity") == math.inf
    assert conv(v.FLOAT8, "-Infinity") == -math.inf
    assert v.to_param(math.nan) == "NaN"
    assert v.to_param(-math.inf) == "-Infinity"


def test_dates_and_times() -> None:
    assert conv(v.DATE, "2024-02-29") == date(2024, 2, 29)
    assert conv(v.TIME, "23:59:59.999999") == time(23, 59, 59, 999999)
    assert conv(v.TIMETZ, "12:00:00+05:30") == time(
        12, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    assert conv(v.TIMETZ, "12:00:00-03") == time(12, tzinfo=timezone(timedelta(hours=-3)))
    naive = conv(v.TIMESTAMP, "2024-03-31 02:30:00.5")
    assert naive == datetime(2024, 3, 31, 2, 30, 0, 500000)
    assert isinstance(naive, datetime) and naive.tzinfo is None


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        # Around the Europe/Berlin DST switches: the offset decides the instant.
        ("2024-03-31 01:59:59+01", datetime(2024, 3, 31, 0, 59, 59, tzinfo=UTC)),
        ("2024-03-31 03:00:00+02", datetime(2024, 3, 31, 1, 0, 0, tzinfo=UTC)),
        ("2024-10-27 02:30:00+02", datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),
        ("2024-10-27 02:30:00+01", datetime(2024, 10, 27, 1, 30, tzinfo=UTC)),
        ("2024-01-01 00:00:00.000001+00", datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
        ("1900-01-01 00:00:00+00:53:28", datetime(1899, 12, 31, 23, 6, 32, tzinfo=UTC)),
    ],
)
def test_timestamptz_is_aware_utc(text: str, utc: datetime) -> None:
    value = conv(v.TIMESTAMPTZ, text)
    assert value == utc
    assert isinstance(value, datetime) and value.tzinfo is UTC


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (v.DATE, "infinity"),
        (v.DATE, "-infinity"),
        (v.DATE, "0044-03-15 BC"),
        (v.DATE, "10000-01-01"),
        (v.TIMESTAMP, "infinity"),
        (v.TIMESTAMPTZ, "-infinity"),
        (v.TIMESTAMPTZ, "2000-01-01 00:00:00+00 BC"),
        (v.TIME, "24:00:00"),
    ],
)
def test_values_python_cannot_hold_stay_text(oid: int, text: str) -> None:
    assert conv(oid, text) == text


def test_json_keeps_text_exactly() -> None:
    text = '{"b": 1, "a": 1.10, "a": 2, "big": 12345678901234567890.5}'
    value = conv(v.JSON, text)
    assert isinstance(value, v.JsonText) and value == text
    assert isinstance(conv(v.JSONB, "[]"), v.JsonText)
    assert v.JsonText('{"x": 0.1}').parse() == {"x": Decimal("0.1")}
    assert v.to_param(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("a'b\\c😀", "a'b\\c😀"),
        (True, "t"),
        (False, "f"),
        (2**63 - 1, "9223372036854775807"),
        (Decimal("0.30"), "0.30"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Infinity"),
        (0.1, "0.1"),
        (b"\x00\xff", "\\x00ff"),
        (date(2024, 2, 29), "2024-02-29"),
        (time(1, 2, 3, 4), "01:02:03.000004"),
        (datetime(2024, 1, 1, 12), "2024-01-01T12:00:00"),
        (
            datetime(2024, 7, 1, 12, tzinfo=timezone(timedelta(hours=2))),
            "2024-07-01T12:00:00+02:00",  # keeps its offset: timestamp columns get the wall clock
        ),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({"b": [1, Decimal("1.10")], "a": None}, '{"b": [1, 1.10], "a": null}'),
        (["ü", True], '["ü", true]'),
    ],
)
def test_to_param(value: object, text: str | None) -> None:
    assert v.to_param(value) == text


def test_to_param_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        v.to_param(object())
    with pytest.raises(ValueError):
        v.to_param({"x": Decimal("NaN")})


def test_converters_are_looked_up_once_per_oid() -> None:
    assert v.converter_for(v.INT4) is v.converter_for(v.INT4)
    assert v.converter_for(123456)("x") == "x"
