"""Pure parts of the MySQL connector: value conversion, error classes, transaction assembly."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pymysql
import pytest

from agent.errors import PermanentError, RowError, TransientError
from agent.events import Op, RowChange, TableId
from connectors.mysql import MysqlParams
from connectors.mysql.binlog import Rotate, RowDecoder, TxBegin, TxCommit, TxRows
from connectors.mysql.errors import classify
from connectors.mysql.reader import RowBudgetBuffer, TransactionAssembler, parse_position
from connectors.mysql.values import (
    ZERO_DATE,
    ColumnDef,
    JsonText,
    Kind,
    binlog_null,
    converter,
    float32,
    to_param,
)

BERLIN = ZoneInfo("Europe/Berlin")


def convert(kind: Kind, value: object, **kwargs: int) -> object:
    fn = converter(kind, BERLIN, **kwargs)
    return value if fn is None else fn(value)


@pytest.mark.parametrize(("kind", "raw", "expected"), [
    (Kind.UINT, -1, 18446744073709551615),  # a library that read BIGINT UNSIGNED as signed
    (Kind.INT, -5, -5),
    (Kind.DECIMAL, Decimal("-1.50"), Decimal("-1.50")),
    (Kind.FLOAT, 0.10000000149011612, 0.1),
    (Kind.DOUBLE, 0.1, 0.1),
    (Kind.DATETIME, datetime(2024, 7, 1, 12), datetime(2024, 7, 1, 12, tzinfo=BERLIN)),
    (Kind.TIMESTAMP, datetime(2024, 7, 1, 10), datetime(2024, 7, 1, 10, tzinfo=UTC)),
    (Kind.TIMESTAMP, datetime(1970, 1, 1), ZERO_DATE),
    (Kind.DATETIME, "0000-00-00 00:00:00", ZERO_DATE),  # PyMySQL returns zero dates as text
    (Kind.DATE, "2024-00-10", ZERO_DATE),
    (Kind.DATE, date(2024, 2, 29), date(2024, 2, 29)),
    (Kind.TIME, timedelta(hours=-1), timedelta(hours=-1)),
    (Kind.YEAR, 1900, 0),
    (Kind.YEAR, 2024, 2024),
    (Kind.TEXT, "Grüße 😀".encode(), "Grüße 😀"),
    (Kind.BINARY, "", b""),  # the library turns an empty binary string into ''
    (Kind.BINARY, b"\x00", b"\x00"),
    (Kind.JSON, '{"a": 1}', JsonText('{"a": 1}')),
    (Kind.JSON, {b"a": [1, b"\xc3\xbc"]}, JsonText('{"a": [1, "ü"]}')),  # MySQL 8 binary JSON
    (Kind.ENUM, "b", "b"),
    (Kind.SET, {"x", "z"}, frozenset({"x", "z"})),
    (Kind.SET, "x,z", frozenset({"x", "z"})),
    (Kind.SET, "", frozenset()),
    (Kind.BIT, "1000000001", 513),
    (Kind.BIT, b"\x02\x01", 513),
    (Kind.UUID, bytes.fromhex("6ccd780cbaba102695645b8c656024db"),
     uuid.UUID("6ccd780c-baba-1026-9564-5b8c656024db")),
])
def test_driver_values_convert_exactly(kind: Kind, raw: object, expected: object) -> None:
    result = convert(kind, raw)
    assert result == expected
    assert type(result) is type(expected)


def test_unsigned_fix_uses_the_column_width() -> None:
    assert convert(Kind.UINT, -6, int_bits=8) == 250


def test_float32_keeps_the_same_single_precision_value() -> None:
    import struct
    for value in (0.1, 1.5, 3.4028234663852886e38, 1e-45, 123456.789):
        single = struct.unpack("<f", struct.pack("<f", value))[0]
        assert struct.pack("<f", float32(single)) == struct.pack("<f", single)
    assert float32(struct.unpack("<f", struct.pack("<f", 123456.789))[0]) == 123456.79


def test_binlog_nulls_tell_zero_dates_and_empty_sets_from_null() -> None:
    assert binlog_null(Kind.DATE, "out of date range") is ZERO_DATE
    assert binlog_null(Kind.DATETIME, "out of datetime2 range") is ZERO_DATE
    assert binlog_null(Kind.SET, "empty set") == frozenset()
    assert binlog_null(Kind.TEXT, "null") is None


def test_column_def_kinds() -> None:
    assert ColumnDef("a", "int", "int(10) unsigned").kind is Kind.UINT
    assert ColumnDef("a", "bigint", "bigint(20)").kind is Kind.INT
    assert ColumnDef("a", "json", "json").kind is Kind.JSON
    assert ColumnDef("a", "geometry", "geometry").kind is Kind.OTHER


def test_params_for_datetime_and_timestamp_columns() -> None:
    instant = datetime(2024, 7, 1, 10, 0, tzinfo=UTC)
    assert to_param(Kind.DATETIME, instant, BERLIN) == datetime(2024, 7, 1, 12, 0)
    assert to_param(Kind.TIMESTAMP, instant.astimezone(BERLIN), BERLIN) == datetime(
        2024, 7, 1, 10, 0)
    other = timezone(timedelta(hours=-5))
    assert to_param(Kind.DATETIME, datetime(2024, 1, 1, tzinfo=other), BERLIN) == datetime(
        2024, 1, 1, 6, 0)


@pytest.mark.parametrize(("kind", "value", "expected"), [
    (Kind.JSON, {"a": [1, "ü"]}, '{"a": [1, "ü"]}'),
    (Kind.JSON, True, "true"),
    (Kind.JSON, JsonText("[1]"), "[1]"),
    (Kind.TEXT, JsonText("[1]"), "[1]"),
    (Kind.UUID, uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    (Kind.SET, frozenset({"b", "a"}), "a,b"),
    (Kind.INT, True, 1),
    (Kind.DECIMAL, Decimal("1.10"), Decimal("1.10")),
    (Kind.BINARY, bytearray(b"\x01"), b"\x01"),
    (Kind.TEXT, None, None),
])
def test_params_for_other_values(kind: Kind, value: object, expected: object) -> None:
    result = to_param(kind, value, BERLIN)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("value", "error_class"), [
    (ZERO_DATE, "zero_date"),
    (float("nan"), "out_of_range"),
    (Decimal("Infinity"), "out_of_range"),
    (object(), "unsupported_type"),
])
def test_values_no_column_can_hold_are_row_errors(value: object, error_class: str) -> None:
    with pytest.raises(RowError) as caught:
        to_param(Kind.OTHER, value, BERLIN, "col")
    assert caught.value.error_class == error_class


@pytest.mark.parametrize(("exc", "expected", "error_class"), [
    (pymysql.err.OperationalError(1213, "Deadlock found"), TransientError, None),
    (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), TransientError, None),
    (pymysql.err.OperationalError(2013, "Lost connection"), TransientError, None),
    (pymysql.err.OperationalError(4031, "inactivity"), TransientError, None),
    (pymysql.err.InterfaceError(0, ""), TransientError, None),
    (pymysql.err.IntegrityError(1048, "Column 'name' cannot be null"), RowError, "not_null"),
    (pymysql.err.DataError(1406, "Data too long for column 'name' at row 1"), RowError,
     "too_long"),
    (pymysql.err.DataError(1366, "Incorrect string value: '\\xF0' for column `d`.`t`.`n`"),
     RowError, "bad_string"),
    (pymysql.err.IntegrityError(1452, "Cannot add or update a child row"), RowError,
     "foreign_key"),
    (pymysql.err.DataError(1264, "Out of range value for column 'n' at row 1"), RowError,
     "out_of_range"),
    (pymysql.err.OperationalError(1045, "Access denied"), PermanentError, None),
])
def test_errors_are_classified_by_errno(exc: Exception, expected: type[Exception],
                                        error_class: str | None) -> None:
    error = classify(exc)
    assert type(error) is expected
    if error_class is not None:
        assert isinstance(error, RowError) and error.error_class == error_class


def test_row_error_messages_drop_values() -> None:
    error = classify(pymysql.err.IntegrityError(1062, "Duplicate entry 'alice@x' for key 'email'"))
    assert isinstance(error, RowError) and error.error_class == "duplicate_key"
    assert "alice" not in str(error) and "'email'" in str(error)
    syntax = classify(pymysql.err.ProgrammingError(1064, "near 'secret value'"))
    assert "secret" not in str(syntax)


def test_positions_parse() -> None:
    assert parse_position("mysql-bin.000012:4567") == ("mysql-bin.000012", 4567)
    with pytest.raises(ValueError):
        parse_position("0/16B6C50")


def test_params_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(MysqlParams("h", 3306, "u", "hunter2", "db"))


T = TableId("app", "t")
CHECKPOINTS = TableId("state", "checkpoints")
TS = datetime(2024, 1, 1, tzinfo=UTC)


def rows(table: TableId, *ids: int, op: Op = Op.INSERT) -> TxRows:
    return TxRows(table, tuple(RowChange(table, op, new={"id": i, "direction": "d"}) for i in ids))


def assemble(chunk_rows: int, *items: object) -> list[tuple[str, int, bool, str | None]]:
    assembler = TransactionAssembler("f.1:4", CHECKPOINTS, chunk_rows)
    out = []
    for item in items:
        out += [(t.position, len(t.changes), t.final, t.origin)
                for t in assembler.feed(item)]  # type: ignore[arg-type]
    return out


def test_assembler_chunks_big_transactions_and_never_ends_with_an_empty_chunk() -> None:
    result = assemble(2, TxBegin(TS), rows(T, 1, 2, 3), rows(T, 4), TxCommit("f.1", 100, TS))
    assert result == [("f.1:4", 2, False, None), ("f.1:100", 2, True, None)]


def test_assembler_marks_agent_transactions_by_the_first_row() -> None:
    marked = assemble(10, TxBegin(TS), rows(CHECKPOINTS, 1, op=Op.UPDATE), rows(T, 1),
                      rows(CHECKPOINTS, 1, op=Op.UPDATE), TxCommit("f.1", 50, TS))
    unmarked = assemble(10, TxBegin(TS), rows(T, 1), rows(CHECKPOINTS, 1),
                        TxCommit("f.1", 60, TS))
    assert marked == [("f.1:50", 1, True, "d")]
    assert unmarked == [("f.1:60", 2, True, None)]


def test_assembler_advances_on_empty_transactions_and_rotation() -> None:
    assert assemble(10, TxBegin(TS), TxCommit("f.1", 70, TS), Rotate("f.2", 4, TS)) == [
        ("f.1:70", 0, True, None), ("f.2:4", 0, True, None)]


def test_buffer_is_bounded_in_rows() -> None:
    buffer = RowBudgetBuffer(3)
    assembler_txn = next(iter(TransactionAssembler("f:4", CHECKPOINTS, 10).feed(
        TxCommit("f", 9, TS))))
    assert buffer.put(assembler_txn) and buffer.put(assembler_txn) and buffer.put(assembler_txn)
    assert buffer.rows == 3
    assert buffer.get(0) is assembler_txn
    assert buffer.get(0) is assembler_txn and buffer.get(0) is assembler_txn
    assert buffer.get(0.01) is None
    buffer.close()
    assert not buffer.put(assembler_txn)


def test_decoder_refuses_a_binlog_without_column_names() -> None:
    nameless = SimpleNamespace(name=None, type=3, unsigned=False)
    with pytest.raises(PermanentError, match="binlog_row_metadata=FULL"):
        RowDecoder(T, [nameless], {}, BERLIN)
