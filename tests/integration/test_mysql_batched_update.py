"""MySink's multi-row UPDATE (UPDATE ... JOIN derived rows) against one UPDATE per row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from agent.events import TableId
from agent.ports import Write, WriteKind
from connectors.mysql.errors import WriteRowError
from connectors.mysql.values import JsonText
from connectors.mysql.writer import MySink
from tests.integration.mysinks import open_sink
from tests.servers import MariaDatabase

DDL = """CREATE TABLE {name} (
    id int PRIMARY KEY, code varchar(10) UNIQUE, name varchar(20) NOT NULL,
    amount decimal(12,2), ratio double, local_ts datetime(6), utc_ts timestamp(6) NULL,
    doc json, tags set('a','b'), raw varbinary(8), flag tinyint(1))"""
COLUMNS = "id, code, name, amount, ratio, local_ts, utc_ts, doc, tags, raw, flag"


@pytest.fixture
def sink(maria_db: MariaDatabase) -> Iterator[MySink]:
    tables = [statement for name in ("batched", "single") for statement in (
        DDL.format(name=name),
        f"INSERT INTO {name} (id, code, name) SELECT seq, CONCAT('c', seq), 'n' FROM seq_1_to_20")]
    with open_sink(maria_db, tables) as s:
        yield s


def _rows(db: MariaDatabase, table: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM {table} ORDER BY id")
        return list(cur.fetchall())


def _updates(t: TableId) -> list[Write]:
    values: list[dict[str, object]] = [
        {"name": "Grüße 😀", "amount": Decimal("-12.50"), "ratio": 0.1,
         "local_ts": datetime(2024, 3, 31, 2, 30, tzinfo=UTC),
         "utc_ts": datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC),
         "doc": JsonText('{"a": [1, 2]}'), "tags": frozenset({"a", "b"}), "raw": b"\x00\xff",
         "flag": True},
        {"name": "", "amount": None, "ratio": None, "local_ts": None, "utc_ts": None,
         "doc": None, "tags": frozenset(), "raw": b"", "flag": False},
    ]
    writes = [Write(t, WriteKind.UPDATE, {"id": i}, values[i % 2]) for i in range(1, 15)]
    # The same row twice (applied in order), a missing row, and a second key shape.
    writes.append(Write(t, WriteKind.UPDATE, {"id": 3}, {**values[0], "name": "again"}))
    writes.append(Write(t, WriteKind.UPDATE, {"id": 999}, values[0]))
    writes += [Write(t, WriteKind.UPDATE, {"code": f"c{i}"}, {"name": f"by code {i}"})
               for i in (15, 16, 3)]
    return writes


def test_multi_row_update_matches_one_update_per_row(maria_db: MariaDatabase,
                                                     sink: MySink) -> None:
    batched, single = TableId(maria_db.name, "batched"), TableId(maria_db.name, "single")
    sink.begin("a_to_b")
    sink.write(_updates(batched))
    for write in _updates(single):
        sink.write([write])  # a run of one: the row-by-row statement
    sink.commit("a_to_b", "mysql-bin.000001:4", datetime.now(UTC))
    got, want = _rows(maria_db, "batched"), _rows(maria_db, "single")
    assert got == want
    assert got[2][2] == "by code 3" and got[1][3] == Decimal("-12.50")
    assert len(got) == 20  # the missing row was not created


def test_a_bad_row_is_named_after_the_batch_is_retried_row_by_row(
        maria_db: MariaDatabase, sink: MySink) -> None:
    t = TableId(maria_db.name, "batched")
    writes = [Write(t, WriteKind.UPDATE, {"id": i}, {"name": f"ok {i}"}) for i in range(1, 6)]
    writes[3] = Write(t, WriteKind.UPDATE, {"id": 4}, {"name": "x" * 50})  # too long
    sink.begin("a_to_b")
    with pytest.raises(WriteRowError) as caught:
        sink.write(writes)
    assert caught.value.index == 3
    sink.rollback()
    assert [r[2] for r in _rows(maria_db, "batched")][:5] == ["n"] * 5
