"""MySink's multi-row statements (values written as literals) store exactly what one
statement per row (PyMySQL parameters) stores, for every column type and awkward value."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agent.events import TableId
from agent.ports import Write, WriteKind
from connectors.mysql.values import JsonText
from connectors.mysql.writer import MySink
from tests.integration.mysinks import open_sink
from tests.servers import MariaDatabase

DDL = """CREATE TABLE {name} (
    id int PRIMARY KEY, label varchar(40), note text, fixed char(4), amount decimal(12,2),
    big bigint unsigned, ratio double, small float, day date, local_ts datetime(6),
    utc_ts timestamp(6) NULL, span time(6), doc json, tags set('a','b'), mood enum('ok','bad'),
    raw varbinary(16), blob_col blob, flag tinyint(1), bits bit(12), yr year, ident uuid)
    DEFAULT CHARSET=utf8mb4"""
COLUMNS = ("label", "note", "fixed", "amount", "big", "ratio", "small", "day", "local_ts",
           "utc_ts", "span", "doc", "tags", "mood", "raw", "blob_col", "flag", "bits", "yr",
           "ident")
TEXTS = ["it's", 'say "hi"', "back\\slash\\", "nul\x00byte", "line\nbreak\r\n", "ctrl\x1a",
         "Grüße 😀 𝄞", "'; DROP TABLE t; --", "\\'", "%s %(x)s %%", ""]


def _row(i: int) -> dict[str, object]:
    text = TEXTS[i % len(TEXTS)]
    return {
        "label": text, "note": text * 3, "fixed": text[:4], "amount": Decimal(f"-{i}.05"),
        "big": 2**64 - 1 - i, "ratio": 0.1 * i, "small": 1.5, "day": date(2024, 2, 29),
        "local_ts": datetime(2024, 3, 31, 1, 59, 59, 999999, tzinfo=UTC),
        "utc_ts": datetime(2024, 5, 1, 12, 0, 0, i, tzinfo=UTC),
        "span": timedelta(hours=-838, minutes=-59) if i % 2 else time(13, 5, 1, 7),
        "doc": JsonText('{"a": "b\'c\\\\d"}') if i % 2 else {"k": [text, i]},
        "tags": frozenset({"a", "b"}) if i % 2 else frozenset(), "mood": "bad",
        "raw": b"\x00\x27\x5c\x22\xff" + bytes([i]), "blob_col": bytes(range(256)),
        "flag": bool(i % 2), "bits": 0xABC, "yr": 2024,
        "ident": f"00000000-0000-0000-0000-{i:012d}",
    }


def _nulls() -> dict[str, object]:
    return dict.fromkeys(COLUMNS)


@pytest.fixture
def sink(maria_db: MariaDatabase) -> Iterator[MySink]:
    with open_sink(maria_db, [DDL.format(name=name) for name in ("batched", "single")]) as s:
        yield s


def _rows(db: MariaDatabase, table: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, {', '.join(COLUMNS)} FROM {table} ORDER BY id")
        return list(cur.fetchall())


def _writes(t: TableId, kind: WriteKind, rows: int) -> list[Write]:
    values = [_nulls() if i == 3 else _row(i) for i in range(1, rows + 1)]
    return [Write(t, kind, {"id": i}, v) for i, v in enumerate(values, start=1)]


def test_multi_row_upserts_and_updates_store_what_single_rows_store(
        maria_db: MariaDatabase, sink: MySink) -> None:
    batched, single = TableId(maria_db.name, "batched"), TableId(maria_db.name, "single")
    n = 2 * len(TEXTS)
    sink.begin("a_to_b")
    sink.write(_writes(batched, WriteKind.UPSERT, n))
    for write in _writes(single, WriteKind.UPSERT, n):
        sink.write([write])
    sink.commit("a_to_b", "mysql-bin.000001:4", datetime.now(UTC))
    got, want = _rows(maria_db, "batched"), _rows(maria_db, "single")
    assert got == want
    assert [r[1] for r in got[:len(TEXTS)]] == [None if i == 2 else TEXTS[(i + 1) % len(TEXTS)]
                                                for i in range(len(TEXTS))]
    assert got[0][15] == b"\x00\x27\x5c\x22\xff\x01"

    # Updates the other way round (every row gets the next row's values), then fetch.
    shifted = [Write(w.table, WriteKind.UPDATE, w.key, _row(int(str(w.key["id"])) + 1))
               for w in _writes(batched, WriteKind.UPDATE, n)]
    sink.begin("a_to_b")
    sink.write(shifted)
    for write in shifted:
        sink.write([Write(single, WriteKind.UPDATE, write.key, write.values)])
    fetched = sink.fetch(batched, "id", list(range(1, n + 1)), list(COLUMNS))
    sink.commit("a_to_b", "mysql-bin.000001:5", datetime.now(UTC))
    assert _rows(maria_db, "batched") == _rows(maria_db, "single")
    assert fetched[2]["label"] == TEXTS[3 % len(TEXTS)]
    assert fetched[2]["raw"] == b"\x00\x27\x5c\x22\xff\x03"

    # A statement whose first row is all NULL: the other rows' literals decide the types.
    nulls_first = [Write(batched, WriteKind.UPDATE, {"id": i}, _nulls() if i == 1 else _row(i + 2))
                   for i in range(1, n + 1)]
    sink.begin("a_to_b")
    sink.write(nulls_first)
    for write in nulls_first:
        sink.write([Write(single, WriteKind.UPDATE, write.key, write.values)])
    sink.commit("a_to_b", "mysql-bin.000001:6", datetime.now(UTC))
    assert _rows(maria_db, "batched") == _rows(maria_db, "single")
    assert _rows(maria_db, "batched")[0][1:] == (None,) * len(COLUMNS)


JSON_DDL = """CREATE TABLE readable (
    id int PRIMARY KEY, code varchar(300) UNIQUE, fixed char(4), amount decimal(12,2),
    whole decimal(10,0), huge decimal(65,30), big bigint unsigned, neg bigint, tiny tinyint(1),
    mid mediumint unsigned, mood enum('ok','bad'), latin varchar(10) CHARACTER SET latin1)
    DEFAULT CHARSET=utf8mb4"""
ALL_CHARS = "".join(chr(c) for c in range(128)) + "é😀\u2028\u2029\ufeff𝄞"


def test_fetch_reads_exact_values_of_every_json_readable_type(
        maria_db: MariaDatabase, sink: MySink) -> None:
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute(JSON_DDL)
    t = TableId(maria_db.name, "readable")
    rows: dict[int, dict[str, object]] = {
        1: {"code": ALL_CHARS, "fixed": "ab", "amount": Decimal("-0.05"), "whole": Decimal(7),
            "huge": Decimal("-12345678901234567890.123456789012345678901234567890"),
            "big": 2**64 - 1, "neg": -(2**63), "tiny": 1, "mid": 2**24 - 1, "mood": "bad",
            "latin": "Ä'\\"},
        2: {"code": "", "fixed": "", "amount": Decimal("0.00"), "whole": Decimal(0),
            "huge": Decimal("0E-30"), "big": 0, "neg": 0, "tiny": 0, "mid": 0, "mood": "ok",
            "latin": ""},
        3: dict.fromkeys(("code", "fixed", "amount", "whole", "huge", "big", "neg", "tiny",
                          "mid", "mood", "latin")),
    }
    sink.begin("a_to_b")
    sink.write([Write(t, WriteKind.UPSERT, {"id": k}, v) for k, v in rows.items()])
    by_id = sink.fetch(t, "id", [1, 2, 3, 4], list(rows[1]))
    by_code = sink.fetch(t, "code", [ALL_CHARS, ""], ["id", "huge"])
    assert sink.fetch(t, "id", [1, 2, 3, 4], list(rows[1]), lock=False) == rows
    sink.commit("a_to_b", "mysql-bin.000001:6", datetime.now(UTC))
    assert by_id == rows  # row 4 does not exist
    for k, values in rows.items():  # same types and digits too, not only equal
        assert [repr(v) for v in by_id[k].values()] == [repr(v) for v in values.values()]
    assert by_code == {ALL_CHARS: {"id": 1, "huge": rows[1]["huge"]},
                       "": {"id": 2, "huge": rows[2]["huge"]}}
