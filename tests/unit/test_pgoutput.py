"""pgoutput v1 decoder: messages built byte by byte from PostgreSQL's protocol documentation."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from agent.events import UNCHANGED
from connectors.postgres import pgoutput as pg
from connectors.postgres.rowcompile import row_decoder

TS = datetime(2024, 3, 31, 1, 30, 0, 123456, tzinfo=UTC)
TS_MICROS = 765_163_800_123_456  # 8856 days + 1:30:00.123456 after 2000-01-01T00:00Z


def s(text: str) -> bytes:
    """A protocol String: UTF-8 bytes and a NUL terminator."""
    return text.encode() + b"\0"


def tuple_data(*cols: bytes | str | None) -> bytes:
    """TupleData: Int16 count then 'n', 'u' or 't' + Int32 length + bytes per column."""
    out = struct.pack(">H", len(cols))
    for col in cols:
        if col is None:
            out += b"n"
        elif col == "u":
            out += b"u"
        else:
            assert isinstance(col, bytes)
            out += b"t" + struct.pack(">I", len(col)) + col
    return out


def test_timestamp_constant_matches_pg_epoch() -> None:
    assert pg.pg_time(TS_MICROS) == TS
    assert pg.pg_micros(TS) == TS_MICROS


def test_begin() -> None:
    buf = b"B" + struct.pack(">QqI", 0x16_B374D848, TS_MICROS, 4_000_000_000)
    assert pg.decode_message(buf) == pg.Begin(0x16_B374D848, TS, 4_000_000_000)


def test_commit() -> None:
    buf = b"C" + struct.pack(">BQQq", 0, 0x100, 0x130, TS_MICROS)
    assert pg.decode_message(buf) == pg.Commit(0, 0x100, 0x130, TS)


def test_origin() -> None:
    buf = b"O" + struct.pack(">Q", 0xABCDEF) + s("cdc_agent_erp")
    assert pg.decode_message(buf) == pg.Origin(0xABCDEF, "cdc_agent_erp")


def test_relation_with_key_flags_typmod_and_utf8_names() -> None:
    buf = (
        b"R"
        + struct.pack(">I", 16384)
        + s("public")
        + s("kundé")
        + b"d"
        + struct.pack(">H", 2)
        + b"\x01"
        + s("id")
        + struct.pack(">Ii", 23, -1)
        + b"\x00"
        + s("näme😀")
        + struct.pack(">Ii", 1043, 24)
    )
    msg = pg.decode_message(buf)
    assert isinstance(msg, pg.Relation)
    assert (msg.relation_id, msg.namespace, msg.name, msg.replica_identity) == (
        16384,
        "public",
        "kundé",
        "d",
    )
    assert msg.columns == (
        pg.RelationColumn(1, "id", 23, -1),
        pg.RelationColumn(0, "näme😀", 1043, 24),
    )
    assert [c.is_key for c in msg.columns] == [True, False]


def test_type() -> None:
    buf = b"Y" + struct.pack(">I", 90001) + s("public") + s("mood")
    assert pg.decode_message(buf) == pg.TypeInfo(90001, "public", "mood")


def test_insert_with_null_unchanged_and_text() -> None:
    buf = b"I" + struct.pack(">I", 7) + b"N" + tuple_data(b"42", None, "u", b"", "é".encode())
    msg = pg.decode_message(buf)
    assert msg == pg.Insert(7, (b"42", None, UNCHANGED, b"", "é".encode()))


def test_update_without_old_tuple() -> None:
    buf = b"U" + struct.pack(">I", 7) + b"N" + tuple_data(b"1", b"x")
    assert pg.decode_message(buf) == pg.Update(7, (b"1", b"x"))


@pytest.mark.parametrize("kind", ["K", "O"])
def test_update_with_old_tuple(kind: str) -> None:
    old = tuple_data(b"1", None)
    buf = b"U" + struct.pack(">I", 7) + kind.encode() + old + b"N" + tuple_data(b"2", b"y")
    assert pg.decode_message(buf) == pg.Update(7, (b"2", b"y"), (b"1", None), kind)


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(kind: str) -> None:
    buf = b"D" + struct.pack(">I", 9) + kind.encode() + tuple_data(b"5", None)
    assert pg.decode_message(buf) == pg.Delete(9, (b"5", None), kind)


def test_truncate() -> None:
    buf = b"T" + struct.pack(">IB", 2, 3) + struct.pack(">II", 100, 200)
    assert pg.decode_message(buf) == pg.Truncate(3, (100, 200))


def test_logical_message() -> None:
    content = b"\x00binary\xff"
    buf = b"M" + struct.pack(">BQ", 1, 0x55) + s("cdc") + struct.pack(">I", len(content)) + content
    assert pg.decode_message(buf) == pg.LogicalMessage(True, 0x55, "cdc", content)


def test_xlogdata_frame() -> None:
    payload = b"B" + struct.pack(">QqI", 1, TS_MICROS, 2)
    buf = b"w" + struct.pack(">QQq", 0x10, 0x20, TS_MICROS) + payload
    frame = pg.decode_copy_data(buf)
    assert frame == pg.XLogData(0x10, 0x20, TS, payload)


@pytest.mark.parametrize("flag", [0, 1])
def test_keepalive_frame(flag: int) -> None:
    buf = b"k" + struct.pack(">QqB", 0x1_0000_0010, TS_MICROS, flag)
    assert pg.decode_copy_data(buf) == pg.Keepalive(0x1_0000_0010, TS, bool(flag))


def test_standby_status_update_layout() -> None:
    buf = pg.encode_standby_status(0x30, 0x20, 0x10, TS, reply=True)
    assert buf == b"r" + struct.pack(">QQQq", 0x30, 0x20, 0x10, TS_MICROS) + b"\x01"


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        b"Z",
        b"B\x00\x01",
        b"I"
        + struct.pack(">I", 1)
        + b"N"
        + struct.pack(">H", 1)
        + b"t"
        + struct.pack(">I", 10)
        + b"abc",
        b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 2) + b"n",
        b"I" + struct.pack(">I", 1) + b"X",
        b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"b",
        b"O" + struct.pack(">Q", 1) + b"no terminator",
        b"D" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 0),
    ],
)
def test_malformed_messages_raise_decode_error(buf: bytes) -> None:
    with pytest.raises(pg.DecodeError):
        pg.decode_message(buf)


@pytest.mark.parametrize("buf", [b"", b"x", b"w\x00", b"k" + b"\x00" * 5])
def test_malformed_frames_raise_decode_error(buf: bytes) -> None:
    with pytest.raises(pg.DecodeError):
        pg.decode_copy_data(buf)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", 0x16_B374D848),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_lsn_round_trip(text: str, value: int) -> None:
    assert pg.parse_lsn(text) == value
    assert pg.format_lsn(value) == text


def test_lsn_parse_accepts_lower_case_and_orders_numerically() -> None:
    assert pg.parse_lsn("a/ff") == 0xA_000000FF
    assert pg.parse_lsn("0/FFFFFFFF") < pg.parse_lsn("1/0")


@pytest.mark.parametrize("text", ["", "0", "/1", "1/", "x/1", "1/2/3", "100000000/0"])
def test_lsn_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        pg.parse_lsn(text)


# --- the compiled row decoder (the reader's hot path) --------------------------------------

ROW_NAMES = ("id", "name", "note", "big", "amount", "toast", "empty")
ROW_CONVERTERS = (int, None, None, int, Decimal, None, None)
ROW_VALUES: tuple[bytes | str | None, ...] = (
    b"7", "Zoë 🦆 'quoted'".encode(), None, b"-9223372036854775808", b"0.30", "u", b"")


def _two_step(buf: bytes, offset: int) -> dict[str, object]:
    """What decode_message + converting each value gives (the reference)."""
    msg = pg.decode_message(buf, offset)
    assert isinstance(msg, pg.Insert | pg.Update)
    return {n: v if v is None or v is UNCHANGED else (c or str)(v.decode())  # type: ignore[union-attr]
            for n, c, v in zip(ROW_NAMES, ROW_CONVERTERS, msg.new, strict=True)}


@pytest.mark.parametrize("kind", [b"I", b"U"])
def test_compiled_row_equals_decode_then_convert(kind: bytes) -> None:
    buf = b"w" + bytes(24) + kind + struct.pack(">I", 16384) + b"N" + tuple_data(*ROW_VALUES)
    found = pg.new_row_of(buf, pg.XLOGDATA_HEADER)
    assert found == (16384, pg.XLOGDATA_HEADER + 6)
    row = row_decoder(ROW_NAMES, ROW_CONVERTERS)(buf, found[1])
    assert row == _two_step(buf, pg.XLOGDATA_HEADER)
    assert row["toast"] is UNCHANGED and row["note"] is None and row["empty"] == ""
    assert row["amount"] == Decimal("0.30") and str(row["amount"]) == "0.30"


@pytest.mark.parametrize("buf", [
    b"U" + struct.pack(">I", 1) + b"K" + tuple_data(b"1") + b"N" + tuple_data(b"1"),
    b"U" + struct.pack(">I", 1) + b"O" + tuple_data(b"1") + b"N" + tuple_data(b"1"),
    b"D" + struct.pack(">I", 1) + b"K" + tuple_data(b"1"),
    b"B" + struct.pack(">QqI", 1, TS_MICROS, 1),
    b"I\0",
])
def test_other_messages_take_the_general_decoder(buf: bytes) -> None:
    assert pg.new_row_of(buf, 0) is None


def test_compiled_row_keeps_any_column_name_as_it_is() -> None:
    names = ("a'b", 'c"d', "e\\n}f", "ü 🦆", "x = 1; import os")
    decode = row_decoder(names, (None, int, None, Decimal, None))
    row = decode(tuple_data(b"1", b"-2", None, b"3.5", "u"), 0)
    assert list(row) == list(names)
    assert list(row.values()) == ["1", -2, None, Decimal("3.5"), UNCHANGED]


@pytest.mark.parametrize("tail", [
    tuple_data(*ROW_VALUES)[:-3],  # a value cut short
    struct.pack(">H", 7) + b"t" + struct.pack(">I", 10),  # the first value (an int) missing
    tuple_data(*ROW_VALUES[:3]),  # fewer columns than the relation has
    struct.pack(">H", 7) + b"x",  # an unknown column kind
])
def test_compiled_row_rejects_malformed_tuples(tail: bytes) -> None:
    buf = b"I" + struct.pack(">I", 1) + b"N" + tail
    with pytest.raises(pg.DecodeError):
        row_decoder(ROW_NAMES, ROW_CONVERTERS)(buf, 6)
