"""The compiled row decoder on hand-built row images (the real-binlog comparison with
mysql-replication is tests/integration/test_fast_rows.py)."""

from __future__ import annotations

import struct
from datetime import UTC
from decimal import Decimal
from types import SimpleNamespace

import pytest

from agent.events import Op, TableId
from connectors.mysql import rowcodec
from connectors.mysql.rowcodec import RowCodec, compile_codec
from connectors.mysql.values import Kind

TABLE = TableId("s", "t")
NAMES = ("id", "name", "price", "seq")


def _codec() -> RowCodec:
    columns = [
        SimpleNamespace(name="id", type=3, unsigned=False),
        SimpleNamespace(name="name", type=15, unsigned=False, max_length=400,
                        character_set_name="utf8mb4"),
        SimpleNamespace(name="price", type=246, unsigned=False, precision=12, decimals=2),
        SimpleNamespace(name="seq", type=8, unsigned=False),
    ]
    kinds = {"id": Kind.INT, "name": Kind.TEXT, "price": Kind.DECIMAL, "seq": Kind.INT}
    codec = compile_codec(columns, kinds, {}, UTC)
    assert codec is not None
    return codec


def _decimal_12_2(text: str) -> bytes:
    """DECIMAL(12,2) as the server stores it: 1-digit head byte, 9-digit group, 2-digit tail."""
    negative = text.startswith("-")
    whole, frac = text.lstrip("-").split(".")
    raw = bytearray([int(whole) // 10**9]) + struct.pack(">I", int(whole) % 10**9)
    raw += bytes([int(frac)])
    raw[0] |= 0x80
    return bytes(b ^ 0xFF for b in raw) if negative else bytes(raw)


def _image(nulls: int, key: int, name: str, price: str, seq: int) -> bytes:
    # The server sets the 4 spare bits of the bitmap byte (MySQL pack_row starts at 0xFF).
    out = bytes([0xF0 | nulls])
    if not nulls & 1:
        out += struct.pack("<i", key)
    if not nulls & 2:
        text = name.encode()
        out += struct.pack("<H", len(text)) + text
    if not nulls & 4:
        out += _decimal_12_2(price)
    if not nulls & 8:
        out += struct.pack("<q", seq)
    return out


@pytest.mark.parametrize("price", ["0.00", "12.34", "-12.34", "9999999999.99", "-0.05",
                                   "-1000000000.00"])
def test_rows_without_nulls_decode_inline_whatever_the_spare_bits(price: str) -> None:
    codec = _codec()
    body = _image(0, -7, "Grüße", price, 2**40) + _image(0, 8, "", "1.00", -1)
    (change,) = codec.changes(body, 0, len(body), TABLE, Op.UPDATE)
    assert change.op is Op.UPDATE and change.old is not None and change.new is not None
    assert dict(change.old) == {"id": -7, "name": "Grüße", "price": Decimal(price),
                                "seq": 2**40}
    assert repr(change.old["price"]) == repr(Decimal(price))
    assert dict(change.new) == {"id": 8, "name": "", "price": Decimal("1.00"), "seq": -1}
    assert not codec._by_nulls  # no row took the NULL path


def test_every_null_pattern_decodes_compiled_or_generic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rowcodec, "_COMPILED_BITMAPS", 4)
    codec = _codec()
    body = b"".join(_image(nulls, 5, "x", "-3.50", 9) for nulls in range(16)) * 2
    changes = codec.changes(body, 0, len(body), TABLE, Op.INSERT)
    assert len(changes) == 32
    full = {"id": 5, "name": "x", "price": Decimal("-3.50"), "seq": 9}
    for index, change in enumerate(changes):
        assert change.new is not None and change.old is None
        expected = {n: None if index % 16 >> i & 1 else full[n] for i, n in enumerate(NAMES)}
        assert dict(change.new) == expected
    assert len(codec._by_nulls) == 4  # 4 bitmaps compiled, the other 11 read generically


def test_deletes_carry_the_old_row_only() -> None:
    codec = _codec()
    body = _image(0, 1, "a", "1.00", 1)
    (change,) = codec.changes(body, 0, len(body), TABLE, Op.DELETE)
    assert change.new is None and change.old is not None and change.old["id"] == 1


def test_a_truncated_image_is_an_error() -> None:
    codec = _codec()
    body = _image(0, 1, "a", "1.00", 1) + b"\xf0\x01"
    with pytest.raises((ValueError, IndexError, struct.error)):
        codec.changes(body, 0, len(body), TABLE, Op.INSERT)


def test_column_names_are_only_ever_string_literals_in_the_compiled_code() -> None:
    name = "a'b\"c\\\n}) or __import__('os')#"
    columns = [SimpleNamespace(name=name, type=1, unsigned=True)]
    codec = compile_codec(columns, {name: Kind.UINT}, {}, UTC)
    assert codec is not None
    body = bytes([0xFE, 200])
    (change,) = codec.changes(body, 0, len(body), TABLE, Op.INSERT)
    assert change.new is not None and dict(change.new) == {name: 200}
