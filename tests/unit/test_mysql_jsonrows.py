"""connectors.mysql.jsonrows: which columns read through JSON, and refusing a cut document."""

from __future__ import annotations

from decimal import Decimal

from connectors.mysql.jsonrows import decimal_positions, json_readable, json_rows, json_select
from connectors.mysql.values import ColumnDef


def _col(data_type: str, column_type: str = "") -> ColumnDef:
    return ColumnDef("c", data_type, column_type or data_type)


def test_only_types_whose_json_form_is_exact_are_readable() -> None:
    readable = [_col("int"), _col("bigint", "bigint(20) unsigned"), _col("decimal"),
                _col("varchar"), _col("char"), _col("enum", "enum('a')"), _col("tinyint")]
    assert json_readable(readable)
    for other in ("text", "longtext", "json", "datetime", "timestamp", "date", "time",
                  "double", "float", "varbinary", "blob", "set", "bit", "year", "uuid",
                  "geometry"):
        assert not json_readable([*readable, _col(other)]), other
    assert not json_readable([_col("int"), None])  # unknown to the catalog


def test_rows_with_exact_decimals() -> None:
    document = '[[1, "a\\u0000\'", 5, 1.50, null], [2, "", -0.05, 0, 3]]'
    rows = json_rows(2, document, decimal_positions([_col("int"), _col("varchar"),
                                                     _col("decimal"), _col("decimal"),
                                                     _col("int")]))
    assert rows == [[1, "a\x00'", Decimal(5), Decimal("1.50"), None],
                    [2, "", Decimal("-0.05"), Decimal(0), 3]]
    assert rows is not None and repr(rows[0][3]) == "Decimal('1.50')"
    assert type(rows[1][4]) is int


def test_a_document_cut_short_or_unreadable_is_refused() -> None:
    assert json_rows(0, None, []) == []
    assert json_rows(3, "[[1], [2]]", []) is None  # fewer rows than COUNT(*)
    assert json_rows(2, "[[1], [2", []) is None
    assert json_rows(1, None, []) is None
    assert json_rows(1, b"[[1]]", []) == [[1]]


def test_select_list() -> None:
    assert json_select(["`a`", "`b`"]) == "COUNT(*), JSON_ARRAYAGG(JSON_ARRAY(`a`, `b`))"
