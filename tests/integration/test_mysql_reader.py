"""MySource against a real MariaDB 10.11 binlog."""

from __future__ import annotations

import itertools
import json
import os
import resource
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.errors import PositionLostError, TransientError
from agent.events import Op, TableId, Transaction
from agent.ports import Write, WriteKind
from connectors.mysql import MysqlParams, catalog
from connectors.mysql.reader import MySource, parse_position
from connectors.mysql.values import ZERO_DATE, JsonText
from connectors.mysql.writer import MySink
from tests.polling import wait_until
from tests.servers import MariaDatabase

STATE = "cdc_state_reader"
ZONE = "Europe/Berlin"
_server_ids = itertools.count(1000 + os.getpid() % 10000 * 10)


def params_of(db: MariaDatabase, timezone: str = ZONE) -> MysqlParams:
    server = db.server
    return MysqlParams(host=server.host, port=server.port, user=server.user,
                       password=server.password, database=db.name, timezone=timezone)


@pytest.fixture
def params(maria_db: MariaDatabase) -> Iterator[MysqlParams]:
    p = params_of(maria_db)
    state = f"{maria_db.name}_st"
    catalog.setup(p, state_schema=state)
    yield p
    catalog.teardown(p, state_schema=state)


def state_of(p: MysqlParams) -> str:
    return f"{p.database}_st"


def execute(db: MariaDatabase, *statements: str, args: Any = None) -> None:
    """Run ``statements`` in one transaction."""
    with db.connect(autocommit=False) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql, args)
        conn.commit()


def source(p: MysqlParams, *names: str, chunk_rows: int = 1000) -> MySource:
    tables = {TableId(p.database, n) for n in names}
    return MySource(p, server_id=next(_server_ids), state_schema=state_of(p), tables=tables,
                    chunk_rows=chunk_rows)


def next_with_changes(src: MySource, timeout: float = 20) -> Transaction:
    """The next transaction (or chunk) that has changes, skipping empty ones."""
    def poll() -> Transaction | None:
        txn = src.poll(0.2)
        return txn if txn is not None and txn.changes else None
    txn = wait_until(poll, timeout, interval=0, message="no transaction with changes")
    assert txn is not None
    return txn


def next_any(src: MySource, timeout: float = 20) -> Transaction:
    """The next transaction, empty or not."""
    txn = wait_until(lambda: src.poll(0.2), timeout, interval=0, message="no transaction")
    assert txn is not None
    return txn


def new_row(txn: Transaction) -> dict[str, object]:
    """The new image of the transaction's first change."""
    new = txn.changes[0].new
    assert new is not None
    return dict(new)


@pytest.fixture
def reader_table(maria_db: MariaDatabase, params: MysqlParams) -> str:
    execute(maria_db, "CREATE TABLE t (id int PRIMARY KEY, v varchar(100), n int)",
            "CREATE TABLE other (id int PRIMARY KEY)")
    return "t"


def test_rows_are_grouped_into_whole_transactions(maria_db: MariaDatabase, params: MysqlParams,
                                                  reader_table: str) -> None:
    src = source(params, "t")
    src.open(None)
    try:
        execute(maria_db, "INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2)",
                "INSERT INTO t VALUES (3, 'c', 3)")
        execute(maria_db, "UPDATE t SET v = 'bb' WHERE id = 2", "DELETE FROM t WHERE id = 3")
        first, second = next_with_changes(src), next_with_changes(src)
    finally:
        src.close()
    assert [(c.op, c.new) for c in first.changes] == [
        (Op.INSERT, {"id": 1, "v": "a", "n": 1}), (Op.INSERT, {"id": 2, "v": "b", "n": 2}),
        (Op.INSERT, {"id": 3, "v": "c", "n": 3})]
    assert [(c.op, c.old, c.new) for c in second.changes] == [
        (Op.UPDATE, {"id": 2, "v": "b", "n": 2}, {"id": 2, "v": "bb", "n": 2}),
        (Op.DELETE, {"id": 3, "v": "c", "n": 3}, None)]
    assert first.final and second.final and first.origin is None
    assert first.commit_ts.tzinfo is UTC
    assert abs(first.commit_ts - datetime.now(UTC)) < timedelta(minutes=1)
    file1, pos1 = parse_position(first.position)
    file2, pos2 = parse_position(second.position)
    assert (file1, pos1) < (file2, pos2)


def test_other_tables_are_dropped_but_advance_the_position(
        maria_db: MariaDatabase, params: MysqlParams, reader_table: str) -> None:
    src = source(params, "t")
    src.open(None)
    try:
        execute(maria_db, "INSERT INTO other VALUES (1)")
        empty = next_any(src)
        execute(maria_db, "INSERT INTO t VALUES (1, 'a', 1)")
        after = next_with_changes(src)
    finally:
        src.close()
    assert empty.changes == () and empty.final
    assert parse_position(empty.position) < parse_position(after.position)


def test_resume_strictly_after_a_position(maria_db: MariaDatabase, params: MysqlParams,
                                          reader_table: str) -> None:
    src = source(params, "t")
    src.open(None)
    try:
        execute(maria_db, "INSERT INTO t VALUES (1, 'a', 1)")
        execute(maria_db, "INSERT INTO t VALUES (2, 'b', 2)")
        first = next_with_changes(src)
    finally:
        src.close()
    src = source(params, "t")
    src.open(first.position)
    try:
        resumed = next_with_changes(src)
    finally:
        src.close()
    assert [c.new for c in resumed.changes] == [{"id": 2, "v": "b", "n": 2}]


def test_purged_position_raises_position_lost(params: MysqlParams) -> None:
    src = source(params, "t")
    with pytest.raises(PositionLostError, match="cdc-agent reconcile ENTITY --apply"):
        src.open("mysql-bin.999999:4")
    src.close()


def test_idle_poll_returns_none_within_timeout(params: MysqlParams) -> None:
    src = source(params, "t")
    src.open(None)
    try:
        started = time.monotonic()
        assert src.poll(0.3) is None
        elapsed = time.monotonic() - started
    finally:
        closing = time.monotonic()
        src.close()
        close_took = time.monotonic() - closing
    assert 0.25 <= elapsed < 1.0
    assert close_took < 3.0
    src.close()  # twice is fine


def test_agent_transactions_are_marked_by_their_first_row(
        maria_db: MariaDatabase, params: MysqlParams, reader_table: str) -> None:
    state = state_of(params)
    src = source(params, "t")
    src.open(None)
    sink = MySink(params, state_schema=state)
    sink.open()
    try:
        sink.begin("crm_to_erp")
        sink.write([Write(TableId(params.database, "t"), WriteKind.UPSERT, {"id": 1},
                          {"v": "agent", "n": 1})])
        sink.commit("crm_to_erp", "x:1", datetime.now(UTC))
        # A user transaction that touches the checkpoint table only after its first row.
        execute(maria_db, "INSERT INTO t VALUES (2, 'user', 2)",
                f"INSERT INTO `{state}`.checkpoints (direction, seq) VALUES ('other', 1)")
        marked, unmarked = next_with_changes(src), next_with_changes(src)
    finally:
        sink.close()
        src.close()
    assert marked.origin == "crm_to_erp"
    assert [(c.table.name, c.new) for c in marked.changes] == [
        ("t", {"id": 1, "v": "agent", "n": 1})]
    assert unmarked.origin is None
    assert [c.table.name for c in unmarked.changes] == ["t", "checkpoints"]


def test_heartbeat_rows_pass_through(maria_db: MariaDatabase, params: MysqlParams) -> None:
    state = state_of(params)
    src = source(params, "t")
    src.open(None)
    try:
        execute(maria_db, f"INSERT INTO `{state}`.heartbeats VALUES (1, '2024-05-01 10:00:00')")
        txn = next_with_changes(src)
    finally:
        src.close()
    assert [(c.table, c.op) for c in txn.changes] == [(TableId(state, "heartbeats"), Op.INSERT)]
    assert new_row(txn) == {"id": 1, "ts": datetime(2024, 5, 1, 10, tzinfo=ZoneInfo(ZONE))}


@pytest.mark.slow
def test_big_transaction_arrives_in_bounded_chunks(maria_db: MariaDatabase,
                                                   params: MysqlParams) -> None:
    rows, chunk = 200_000, 1000
    execute(maria_db, "CREATE TABLE big (id int PRIMARY KEY, pad varchar(600))")
    src = source(params, "big", chunk_rows=chunk)
    src.open(None)
    try:
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        execute(maria_db, "INSERT INTO big SELECT seq, repeat('x', 500) FROM seq_1_to_200000")
        # Let the reader run ahead of a consumer that does not poll: it must stop at its bound.
        wait_until(lambda: src.reader_waiting, 60, message="reader did not stop at its bound")
        assert chunk <= src.buffered_rows <= 2 * chunk + 2
        seen, chunks = 0, list[tuple[str, bool]]()
        while True:
            txn = next_with_changes(src, timeout=60)
            assert len(txn.changes) <= chunk
            seen += len(txn.changes)
            chunks.append((txn.position, txn.final))  # not the rows: memory is measured
            if txn.final:
                break
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    finally:
        src.close()
    assert seen == rows
    assert src.peak_buffered_rows <= 2 * chunk + 2
    assert [final for _, final in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len(chunks) == rows // chunk
    assert len({position for position, _ in chunks[:-1]}) == 1  # the resume point before
    assert parse_position(chunks[-1][0]) > parse_position(chunks[0][0])
    # Unbounded buffering of 200,000 rows of 500 characters would take well over 100 MiB.
    assert grown_mib < 60, f"peak RSS grew by {grown_mib:.0f} MiB"


TYPES_DDL = """CREATE TABLE ty (
  id int PRIMARY KEY,
  c_tinyint tinyint, c_tinyint_unsigned tinyint unsigned, c_smallint_unsigned smallint unsigned,
  c_mediumint_unsigned mediumint unsigned, c_int_unsigned int unsigned,
  c_bigint_unsigned bigint unsigned, c_bigint bigint,
  c_decimal decimal(30,10), c_float float, c_double double,
  c_datetime datetime(6), c_datetime0 datetime, c_timestamp timestamp(6) NULL,
  c_date date, c_time time(6), c_time_negative time, c_year year,
  c_varchar varchar(50), c_char char(5), c_text text, c_latin1 varchar(10) CHARACTER SET latin1,
  c_json json, c_blob blob, c_binary binary(4), c_varbinary varbinary(10),
  c_enum enum('a','b','c'), c_set set('x','y','z'), c_bit bit(10), c_uuid uuid)"""


def test_every_type_is_converted_exactly(maria_db: MariaDatabase, params: MysqlParams) -> None:
    execute(maria_db, TYPES_DDL)
    src = source(params, "ty")
    src.open(None)
    try:
        execute(maria_db, "SET time_zone = '+00:00'", """INSERT INTO ty VALUES (1,
          -5, 250, 65000, 16000000, 4000000000, 18446744073709551615, -9223372036854775808,
          '-12345678901234567890.0123456789', 0.1, 3.141592653589793,
          '2024-10-27 02:30:00.123456', '9999-12-31 23:59:59', '2024-01-01 12:00:00.5',
          '2024-02-29', '838:59:59.000001', '-01:02:03', 2024,
          'Grüße 😀', 'ab', 'text €', 'café',
          '{"a": [1, 2.5, "ü"], "b": null}', x'00ff10', x'01020304', x'',
          'b', 'x,z', b'1000000001', '6ccd780c-baba-1026-9564-5b8c656024db')""")
        execute(maria_db, "INSERT INTO ty (id, c_set, c_year) VALUES (2, '', 0)")
        execute(maria_db, "SET sql_mode = ''",
                "INSERT INTO ty (id, c_datetime, c_date, c_timestamp) VALUES"
                " (3, '0000-00-00 00:00:00', '2024-00-10', '0000-00-00 00:00:00')")
        full, empty, zero = (new_row(next_with_changes(src)) for _ in range(3))
    finally:
        src.close()
    berlin = ZoneInfo(ZONE)
    expected = {
        "id": 1, "c_tinyint": -5, "c_tinyint_unsigned": 250, "c_smallint_unsigned": 65000,
        "c_mediumint_unsigned": 16000000, "c_int_unsigned": 4000000000,
        "c_bigint_unsigned": 18446744073709551615, "c_bigint": -9223372036854775808,
        "c_decimal": Decimal("-12345678901234567890.0123456789"), "c_float": 0.1,
        "c_double": 3.141592653589793,
        "c_datetime": datetime(2024, 10, 27, 2, 30, 0, 123456, tzinfo=berlin),
        "c_datetime0": datetime(9999, 12, 31, 23, 59, 59, tzinfo=berlin),
        "c_timestamp": datetime(2024, 1, 1, 12, 0, 0, 500000, tzinfo=UTC),
        "c_date": date(2024, 2, 29), "c_time": timedelta(hours=838, minutes=59, seconds=59,
                                                          microseconds=1),
        "c_time_negative": -timedelta(hours=1, minutes=2, seconds=3), "c_year": 2024,
        "c_varchar": "Grüße 😀", "c_char": "ab", "c_text": "text €", "c_latin1": "café",
        "c_json": JsonText('{"a": [1, 2.5, "ü"], "b": null}'), "c_blob": b"\x00\xff\x10",
        "c_binary": b"\x01\x02\x03\x04", "c_varbinary": b"", "c_enum": "b",
        "c_set": frozenset({"x", "z"}), "c_bit": 0b1000000001,
        "c_uuid": uuid.UUID("6ccd780c-baba-1026-9564-5b8c656024db"),
    }
    assert full == expected
    for name, value in expected.items():
        assert type(full[name]) is type(value), name
    assert isinstance(full["c_json"], JsonText) and json.loads(full["c_json"])["a"][2] == "ü"
    # 02:30 happens twice that night; fold=0 is the first (CEST, +02:00).
    local = full["c_datetime"]
    assert isinstance(local, datetime) and local.fold == 0
    assert local.astimezone(UTC) == datetime(2024, 10, 27, 0, 30, 0, 123456, tzinfo=UTC)
    assert empty["c_set"] == frozenset() and empty["c_year"] == 0 and empty["c_text"] is None
    assert (zero["c_datetime"], zero["c_date"], zero["c_timestamp"]) == (ZERO_DATE,) * 3


def test_server_loss_surfaces_as_transient_error(maria_server_factory: Any) -> None:
    server = maria_server_factory()
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE app")
    p = MysqlParams(host=server.host, port=server.port, user=server.user,
                    password=server.password, database="app", timezone=ZONE,
                    connect_timeout=2)
    src = MySource(p, server_id=next(_server_ids), state_schema="app_st",
                   tables={TableId("app", "t")}, heartbeat=1.0)
    src.open(None)
    try:
        server.stop()

        def failed() -> bool:
            try:
                src.poll(0.2)
            except TransientError:
                return True
            return False

        wait_until(failed, 30, interval=0, message="server loss not reported")
    finally:
        src.close()
