"""The fast row decoder (connectors.mysql.rowcodec) against mysql-replication's output.

Both decoders read the same real binlog events of a table holding every column type the
agent maps, with extreme, negative, NULL, empty and zero-date values; their rows must be
equal value for value (and type for type).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from agent.events import Op, RowChange, TableId
from connectors.mysql import MysqlParams
from connectors.mysql.binlog import BinlogStream, TxCommit, TxRows
from connectors.mysql.rowcodec import RowCodec
from connectors.mysql.rowcompile import Column
from tests.servers import MariaDatabase

COLUMNS = """
    id int PRIMARY KEY,
    ti tinyint, tu tinyint unsigned, si smallint, su smallint unsigned,
    mi mediumint, mu mediumint unsigned, i int, iu int unsigned, bi bigint, bu bigint unsigned,
    fl float, db double,
    d1 decimal(10,2), d2 decimal(30,10), d3 decimal(5,0), d4 decimal(4,4), d5 decimal(65,30),
    dt date, dtm datetime, dt3 datetime(3), dt6 datetime(6), dt1 datetime(1),
    ts timestamp NULL, ts6 timestamp(6) NULL, ts2 timestamp(2) NULL, yr year,
    ch char(10), chl char(10) CHARACTER SET latin1, vc varchar(20), vl varchar(300),
    vlat varchar(50) CHARACTER SET latin1, tx text, mt mediumtext, lt longtext,
    bl blob, bn binary(4), vb varbinary(10), en enum('a','b','c'), st set('x','y','z'),
    b1 bit(1), b12 bit(12), b64 bit(64), js json, uu uuid
"""

ROWS = [
    # id, then the other columns in order; None is NULL.
    "(1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,"
    " -1.5, -2.25, -12345678.99, -12345678901234567890.1234567891, -99999, -0.9999,"
    " -12345678901234567890123456789012345.123456789012345678901234567891,"
    " '1000-01-01', '1000-01-01 00:00:00', '1970-01-01 00:00:00.001',"
    " '2024-02-29 23:59:59.999999', '2024-03-31 02:30:00.5', '1970-01-01 00:00:01',"
    " '2038-01-19 03:14:07.999999', '2001-01-01 00:00:00.01', 1901,"
    " '', 'é', '', 'x', 'Grüße', '', '', '', '', '', '', 'a', '', 0, 0, 0, '[]',"
    " '00000000-0000-0000-0000-000000000000')",
    "(2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,"
    " 9223372036854775807, 18446744073709551615, 0.1, 1.0000000000000002,"
    " 99999999.99, 99999999999999999999.9999999999, 99999, 0.9999,"
    " 0.000000000000000000000000000001,"
    " '9999-12-31', '9999-12-31 23:59:59', '2024-06-01 12:00:00.123',"
    " '2024-06-01 12:00:00.000001', '2024-06-01 12:00:00.1', '2024-06-01 12:00:00',"
    " '2024-06-01 12:00:00.000001', '2024-06-01 12:00:00.99', 2155,"
    " 'abcdefghij', 'ÿ', 'émoji 😀', REPEAT('v', 300), 'Ærø', 'text ☃', REPEAT('m', 70000),"
    " '{\"a\": 1}', x'00ff10', x'01020304', x'ff', 'c', 'x,y,z', 1, 4095,"
    " 18446744073709551615, '{\"k\": [1, 2.5, \"s\"]}', 'a2b4c6d8-1234-5678-9abc-def012345678')",
    "(3, " + ", ".join(["NULL"] * 44) + ")",
    "(4, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0,"
    " '0000-00-00', '0000-00-00 00:00:00', '2024-00-10 00:00:00', '0000-00-00 00:00:00',"
    " '2024-01-01 00:00:00', '0000-00-00 00:00:00', NULL, NULL, 0000,"
    " ' ', ' ', ' ', '', '', '', '', '', x'', x'00000000', x'', 'b', '', 0, 1, 1,"
    " 'null', 'ffffffff-ffff-ffff-ffff-ffffffffffff')",
]


def _params(db: MariaDatabase) -> MysqlParams:
    server = db.server
    return MysqlParams(host=server.host, port=server.port, user=server.user,
                       password=server.password, database=db.name, timezone="Europe/Berlin")


def _end(db: MariaDatabase) -> tuple[str, int]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
    finally:
        conn.close()
    return str(row[0]), int(row[1])


def _run(db: MariaDatabase, statements: list[str]) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = ''")  # zero dates are allowed in the source
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def _read(db: MariaDatabase, start: tuple[str, int], stop: tuple[str, int], *,
          fast: bool) -> tuple[list[RowChange], list[bool]]:
    """Row changes between two positions, and whether each event used the fast codec."""
    table = TableId(db.name, "t")
    stream = BinlogStream(_params(db), server_id=7000 + fast, log_file=start[0],
                          log_pos=start[1], wants=lambda t: t == table, fast_rows=fast)
    changes: list[RowChange] = []
    used: list[bool] = []
    try:
        while True:
            item = stream.next_item()
            if isinstance(item, TxRows):
                changes.extend(item.changes)
                used.append(any(d.codec is not None for d in stream._decoders.values()))
            if isinstance(item, TxCommit) and (item.file, item.pos) >= stop:
                return changes, used
    finally:
        stream.close()


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b and repr(a) == repr(b)


def _check_equal(fast: list[RowChange], slow: list[RowChange]) -> None:
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert (f.table, f.op) == (s.table, s.op)
        for fr, sr in ((f.new, s.new), (f.old, s.old)):
            if sr is None:
                assert fr is None
                continue
            assert fr is not None and list(fr) == list(sr)
            for column in sr:
                assert _same(fr[column], sr[column]), (column, fr[column], sr[column])


def _table_and_changes(db: MariaDatabase, columns: str, rows: list[str],
                       updates: list[str]) -> tuple[tuple[str, int], tuple[str, int]]:
    _run(db, [f"CREATE TABLE t ({columns}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"])
    start = _end(db)
    statements = [f"INSERT INTO t VALUES {row}" for row in rows]
    again = ", ".join(r.replace("(", "(1", 1) for r in rows)  # ids 11.. in one transaction
    statements += ["BEGIN", f"INSERT INTO t VALUES {again}", "COMMIT"]
    statements += [*updates, "DELETE FROM t WHERE id < 10"]
    _run(db, statements)
    return start, _end(db)


def test_every_mapped_type_decodes_as_the_library_does(maria_db: MariaDatabase) -> None:
    updates = ["UPDATE t SET id = id + 100, vc = CONCAT(vc, '!'), d1 = -d1, dt6 = NULL,"
               " st = 'y', en = 'a', b12 = 7, bu = 5, fl = 3.25 WHERE id >= 10"]
    start, stop = _table_and_changes(maria_db, COLUMNS, ROWS, updates)
    fast, used = _read(maria_db, start, stop, fast=True)
    slow, _ = _read(maria_db, start, stop, fast=False)
    assert used and all(used), "the fast codec was not used"
    ops = {c.op for c in fast}
    assert ops == {Op.INSERT, Op.UPDATE, Op.DELETE} and len(fast) >= 16
    _check_equal(fast, slow)
    inserted = {c.new["id"]: c.new for c in fast if c.op is Op.INSERT and c.new is not None}
    # BINARY(n) comes back whole although the binlog drops its trailing zero bytes.
    assert inserted[4]["bn"] == b"\0" * 4
    assert inserted[1]["uu"] == uuid.UUID(int=0)
    assert inserted[2]["d5"] == Decimal("0.000000000000000000000000000001")


@pytest.mark.parametrize("column", ["tm time", "tm6 time(6)"])
def test_layouts_it_does_not_support_fall_back_to_the_library(
        maria_db: MariaDatabase, column: str) -> None:
    start, stop = _table_and_changes(
        maria_db, f"id int PRIMARY KEY, {column}",
        ["(1, '-838:59:59')", "(2, '12:34:56')", "(3, NULL)"],
        ["UPDATE t SET id = id + 100 WHERE id >= 10"])
    fast, used = _read(maria_db, start, stop, fast=True)
    slow, _ = _read(maria_db, start, stop, fast=False)
    assert used and not any(used)
    _check_equal(fast, slow)


def test_minimal_row_images_fall_back_to_the_library(maria_db: MariaDatabase) -> None:
    columns = "id int PRIMARY KEY, a varchar(10), b int"
    _run(maria_db, [f"CREATE TABLE t ({columns}) ENGINE=InnoDB"])
    start = _end(maria_db)
    _run(maria_db, ["SET SESSION binlog_row_image = 'MINIMAL'",
                    "INSERT INTO t VALUES (1, 'x', 2), (2, NULL, 3)",
                    "UPDATE t SET b = b + 1", "DELETE FROM t WHERE id = 1"])
    stop = _end(maria_db)
    fast, _ = _read(maria_db, start, stop, fast=True)
    slow, _ = _read(maria_db, start, stop, fast=False)
    _check_equal(fast, slow)
    assert any(c.op is Op.UPDATE for c in fast)


def test_a_row_image_overrunning_the_event_is_an_error() -> None:
    codec = RowCodec([Column("a", lambda buf, pos: (buf[pos], pos + 1))])
    body: Any = bytes([0, 5, 0])  # null bitmap + value, then a truncated second image
    with pytest.raises((ValueError, IndexError)):
        codec.changes(body, 0, len(body), TableId("s", "t"), Op.INSERT)


def test_every_null_pattern_decodes_as_the_library_does(maria_db: MariaDatabase) -> None:
    # 64 NULL bitmaps: the first ones get a compiled decoder, the rest the per-column readers.
    values = ["7", "'tëxt'", "-1234.5", "2.5", "'2024-01-02 03:04:05.678'", "'b'"]
    rows = []
    for pattern in range(64):
        row = [v if not pattern >> i & 1 else "NULL" for i, v in enumerate(values)]
        rows.append(f"({100 + pattern}, {', '.join(row)})")  # copied as ids 1100..1163
    start, stop = _table_and_changes(
        maria_db, "id int PRIMARY KEY, i int, v varchar(100), d decimal(20,3), f double,"
        " dt datetime(3), e enum('a','b')", rows,
        ["UPDATE t SET id = id + 100000, i = NULL WHERE id >= 10"])
    fast, used = _read(maria_db, start, stop, fast=True)
    slow, _ = _read(maria_db, start, stop, fast=False)
    assert used and all(used)
    assert sum(1 for c in fast if c.new is not None and c.new["v"] is None) >= 64
    _check_equal(fast, slow)
