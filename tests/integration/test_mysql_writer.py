"""MySink against a real MariaDB 10.11."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.errors import RowError, SchemaError, TransientError
from agent.events import TableId
from agent.ports import Write, WriteKind
from connectors.mysql import MysqlParams, catalog
from connectors.mysql.errors import WriteRowError
from connectors.mysql.values import ZERO_DATE, JsonText
from connectors.mysql.writer import MySink
from tests.servers import MariaDatabase

ZONE = "Europe/Berlin"


@pytest.fixture
def sink(maria_db: MariaDatabase) -> Iterator[MySink]:
    server = maria_db.server
    params = MysqlParams(host=server.host, port=server.port, user=server.user,
                         password=server.password, database=maria_db.name, timezone=ZONE)
    state = f"{maria_db.name}_st"
    catalog.setup(params, state_schema=state)
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("""CREATE TABLE customers (
            id int AUTO_INCREMENT PRIMARY KEY, code varchar(10) NOT NULL UNIQUE,
            name varchar(20) NOT NULL, amount decimal(12,2), local_ts datetime(6),
            utc_ts timestamp(6) NULL, doc json, tags set('a','b'))""")
    s = MySink(params, state_schema=state)
    s.open()
    yield s
    s.close()
    catalog.teardown(params, state_schema=state)


def table(sink_db: MariaDatabase) -> TableId:
    return TableId(sink_db.name, "customers")


def rows(db: MariaDatabase, sql: str = "SELECT code, name FROM customers ORDER BY code",
         ) -> list[tuple[Any, ...]]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def upsert(t: TableId, code: str, name: str) -> Write:
    return Write(t, WriteKind.UPSERT, {"code": code}, {"name": name})


def test_upsert_update_delete_and_checkpoint_commit_together(maria_db: MariaDatabase,
                                                             sink: MySink) -> None:
    t = table(maria_db)
    commit_ts = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    sink.begin("crm_to_erp")
    sink.write([upsert(t, "A", "a"), upsert(t, "B", "b"), upsert(t, "C", "c")])
    sink.write([upsert(t, "A", "a2"), upsert(t, "D", "d"),
                Write(t, WriteKind.UPDATE, {"code": "B"}, {"name": "b2"}),
                Write(t, WriteKind.UPDATE, {"code": "missing"}, {"name": "x"}),
                Write(t, WriteKind.DELETE, {"code": "C"}, {})])
    assert rows(maria_db) == []  # nothing visible before COMMIT
    sink.commit("crm_to_erp", "mysql-bin.000001:1234", commit_ts)
    assert rows(maria_db) == [("A", "a2"), ("B", "b2"), ("D", "d")]
    assert sink.read_checkpoint("crm_to_erp") == "mysql-bin.000001:1234"
    assert sink.read_checkpoint("erp_to_crm") is None
    state = f"{maria_db.name}_st"
    assert rows(maria_db, f"SELECT direction, seq, source_commit_ts FROM `{state}`.checkpoints"
                ) == [("crm_to_erp", 1, datetime(2024, 5, 1, 12, 0, 0, 250000))]
    sink.begin("crm_to_erp")  # the marker row really changes in every transaction
    sink.commit("crm_to_erp", "mysql-bin.000001:2000", commit_ts)
    assert rows(maria_db, f"SELECT seq FROM `{state}`.checkpoints") == [(2,)]


def test_rollback_discards_rows_and_checkpoint(maria_db: MariaDatabase, sink: MySink) -> None:
    t = table(maria_db)
    sink.begin("crm_to_erp")
    sink.write([upsert(t, "A", "a")])
    sink.commit("crm_to_erp", "f:1", datetime.now(UTC))
    sink.begin("crm_to_erp")
    sink.write([upsert(t, "B", "b"), Write(t, WriteKind.DELETE, {"code": "A"}, {})])
    sink.rollback()
    sink.rollback()  # nothing open: a no-op
    assert rows(maria_db) == [("A", "a")]
    assert sink.read_checkpoint("crm_to_erp") == "f:1"


def test_insert_reports_the_generated_key(maria_db: MariaDatabase, sink: MySink) -> None:
    t = table(maria_db)
    sink.begin("erp_to_crm")
    sink.write([upsert(t, "A", "a"),
                Write(t, WriteKind.INSERT, {}, {"code": "N1", "name": "n1"}),
                Write(t, WriteKind.INSERT, {}, {"code": "N2", "name": "n2"})])
    ids = dict(sink.last_insert_ids)
    sink.commit("erp_to_crm", "f:1", datetime.now(UTC))
    assert ids == {1: 2, 2: 3}
    assert rows(maria_db, "SELECT id, code FROM customers ORDER BY id") == [
        (1, "A"), (2, "N1"), (3, "N2")]


def test_values_are_converted_for_the_column_types(maria_db: MariaDatabase,
                                                   sink: MySink) -> None:
    t = table(maria_db)
    instant = datetime(2024, 7, 1, 10, 0, 0, 123456, tzinfo=UTC)
    sink.begin("crm_to_erp")
    sink.write([Write(t, WriteKind.UPSERT, {"code": "A"}, {
        "name": "a", "amount": Decimal("12.34"), "local_ts": instant, "utc_ts": instant,
        "doc": {"k": ["ü", 1]}, "tags": frozenset({"b", "a"})})])
    sink.commit("crm_to_erp", "f:1", datetime.now(UTC))
    assert rows(maria_db, "SELECT CAST(local_ts AS char), CAST(doc AS char), tags"
                " FROM customers") == [("2024-07-01 12:00:00.123456", '{"k": ["ü", 1]}', "a,b")]
    fetched = sink.fetch(t, "code", ["A", "nope"], ["amount", "local_ts", "utc_ts", "doc",
                                                     "tags"])
    assert fetched == {"A": {"amount": Decimal("12.34"),
                             "local_ts": instant.astimezone(ZoneInfo(ZONE)), "utc_ts": instant,
                             "doc": '{"k": ["ü", 1]}', "tags": frozenset({"a", "b"})}}
    assert isinstance(fetched["A"]["doc"], JsonText)
    utc_ts = fetched["A"]["utc_ts"]
    assert isinstance(utc_ts, datetime) and utc_ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize(("values", "error_class"), [
    ({"name": None}, "not_null"),
    ({"name": "x" * 21}, "too_long"),
    ({"name": "a", "local_ts": ZERO_DATE}, "zero_date"),
    ({"name": "a", "amount": Decimal("1e20")}, "out_of_range"),
])
def test_row_errors_are_classified_without_values(maria_db: MariaDatabase, sink: MySink,
                                                  values: dict[str, object],
                                                  error_class: str) -> None:
    t = table(maria_db)
    sink.begin("crm_to_erp")
    with pytest.raises(WriteRowError) as caught:
        sink.write([upsert(t, "A", "a"), upsert(t, "B", "b"),
                    Write(t, WriteKind.UPSERT, {"code": "C"}, values)])
    sink.rollback()
    assert caught.value.error_class == error_class
    assert caught.value.index == 2
    assert "xxxxx" not in str(caught.value)
    assert rows(maria_db) == []


def test_duplicate_key_is_a_row_error_naming_the_key_not_the_value(
        maria_db: MariaDatabase, sink: MySink) -> None:
    t = table(maria_db)
    sink.begin("crm_to_erp")
    sink.write([Write(t, WriteKind.INSERT, {}, {"code": "SECRET1", "name": "a"})])
    with pytest.raises(RowError) as caught:
        sink.write([Write(t, WriteKind.INSERT, {}, {"code": "SECRET1", "name": "b"})])
    sink.rollback()
    assert caught.value.error_class == "duplicate_key"
    assert "SECRET1" not in str(caught.value) and "'code'" in str(caught.value)


def test_a_dropped_column_is_a_schema_error_naming_it(maria_db: MariaDatabase,
                                                      sink: MySink) -> None:
    t = table(maria_db)
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE customers DROP COLUMN amount")
    sink.begin("crm_to_erp")
    with pytest.raises(SchemaError) as caught:
        sink.write([Write(t, WriteKind.UPSERT, {"code": "A"}, {"name": "a", "amount": 1})])
    sink.rollback()
    assert caught.value.column == "amount" and "1054" in str(caught.value)
    with pytest.raises(SchemaError):
        sink.fetch(t, "code", ["A"], ["name", "amount"])


def test_lost_connection_is_transient_and_begin_reconnects(maria_db: MariaDatabase,
                                                           sink: MySink) -> None:
    t = table(maria_db)
    sink.begin("crm_to_erp")
    sink.write([upsert(t, "A", "a")])
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.PROCESSLIST WHERE DB = %s"
                    " AND ID <> CONNECTION_ID()", (maria_db.name,))
        for (connection_id,) in cur.fetchall():
            cur.execute("KILL CONNECTION %s", (connection_id,))
    with pytest.raises(TransientError):
        sink.write([upsert(t, "B", "b")])
    sink.rollback()
    sink.begin("crm_to_erp")
    sink.write([upsert(t, "B", "b")])
    sink.commit("crm_to_erp", "f:2", datetime.now(UTC))
    assert rows(maria_db) == [("B", "b")]
