"""Compiles the row-image decoder of one table layout into a Python function (pure, no I/O).

Calling a reader per column costs a Python call, a tuple and an unpack per value; for the
column types that dominate real tables (integers, floats, DECIMAL, text) the compiled
function reads the value inline instead, and reads runs of fixed-width columns with one
``struct`` call. Other types call their reader (:data:`Reader`) from the generated code.

The generated source only contains integers, local names and column names as ``repr()``
string literals; every object it uses (readers, structs, converters) is passed in its
namespace.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from types import MappingProxyType

from agent.events import Op, RowChange, TableId
from connectors.mysql.values import Converter, float32

Reader = Callable[[bytes, int], tuple[object, int]]
Row = MappingProxyType[str, object]
ImageFn = Callable[[bytes, int], tuple[Row, int]]
NullsImageFn = Callable[[int, bytes, int], tuple[Row, int]]
ChangesFn = Callable[[bytes, int, int, TableId, Op], list[RowChange]]

WIDE = Context(prec=100)
"""Decimal.scaleb never rounds a DECIMAL (at most 65 digits) in this context."""


@dataclass(frozen=True, slots=True)
class Fixed:
    """A fixed-width value ``struct`` reads (little-endian), by its format character."""

    code: str
    float32: bool = False


@dataclass(frozen=True, slots=True)
class Text:
    """Length-prefixed bytes, decoded with ``encoding`` (None: bytes), then ``finish``."""

    prefix: int
    encoding: str | None
    finish: Converter | None


@dataclass(frozen=True, slots=True)
class Dec:
    """DECIMAL: ``size`` bytes; ``parts`` as :func:`connectors.mysql.rowcodec.decimal_plan`."""

    size: int
    scale: int
    parts: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its reader, and how to inline it (None: the generated code calls ``read``)."""

    name: str
    read: Reader
    inline: Fixed | Text | Dec | None = None


class _Source:
    """Lines of generated Python and the namespace they run in."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.env: dict[str, object] = {"MP": MappingProxyType, "RC": RowChange, "D": Decimal,
                                       "WIDE": WIDE, "F32": float32, "UPDATE": Op.UPDATE,
                                       "INSERT": Op.INSERT,
                                       "FROM_BYTES": int.from_bytes}

    def ref(self, obj: object) -> str:
        name = f"K{len(self.env)}"
        self.env[name] = obj
        return name

    def add(self, indent: int, *lines: str) -> None:
        self.lines.extend("    " * indent + line for line in lines)

    def function(self, name: str) -> object:
        # Every name of the namespace becomes a keyword-only default: a local, faster to
        # load than a global.
        header, body = self.lines[0], self.lines[1:]
        names = ", ".join(f"{n}={n}" for n in self.env)
        header = header.replace("):", f", *, {names}):")
        code = compile("\n".join([header, *body]) + "\n", f"<rowcodec {name}>", "exec")
        exec(code, self.env)  # the source is built from integers and literals only
        return self.env[name]


def _values(src: _Source, columns: Sequence[Column], nulls: int, indent: int) -> str:
    """Code reading the non-NULL columns into v0, v1...; returns the row's dict display."""
    run: list[int] = []  # consecutive fixed-width columns, read by one struct call
    for index, column in enumerate(columns):
        if nulls >> index & 1:
            continue
        if isinstance(column.inline, Fixed):
            run.append(index)
            continue
        _fixed_run(src, columns, run, indent)
        run = []
        _value(src, index, column, indent)
    _fixed_run(src, columns, run, indent)
    items = []
    for index, column in enumerate(columns):
        # repr() of a str is a string literal whatever the name holds.
        items.append(f"{str(column.name)!r}: {'None' if nulls >> index & 1 else f'v{index}'}")
    return "{" + ", ".join(items) + "}"


def _fixed_run(src: _Source, columns: Sequence[Column], run: list[int], indent: int) -> None:
    if not run:
        return
    specs = [columns[i].inline for i in run]
    fmt = struct.Struct("<" + "".join(s.code for s in specs if isinstance(s, Fixed)))
    targets = "".join(f"v{i}, " for i in run)
    src.add(indent, f"{targets}= {src.ref(fmt.unpack_from)}(b, p)", f"p += {fmt.size}")
    for index, spec in zip(run, specs, strict=True):
        if isinstance(spec, Fixed) and spec.float32:
            src.add(indent, f"v{index} = F32(v{index})")


def _value(src: _Source, index: int, column: Column, indent: int) -> None:
    spec, target = column.inline, f"v{index}"
    if isinstance(spec, Text):
        _text(src, target, spec, indent)
    elif isinstance(spec, Dec):
        _decimal(src, target, spec, indent)
    else:
        src.add(indent, f"{target}, p = {src.ref(column.read)}(b, p)")


def _text(src: _Source, target: str, spec: Text, indent: int) -> None:
    size = spec.prefix
    if size == 1:
        length = "b[p]"
    elif size == 2:
        length = "(b[p] | b[p + 1] << 8)"
    else:
        length = f"FROM_BYTES(b[p:p + {size}], 'little')"
    if spec.encoding is None:
        decode = ""
    elif spec.encoding == "utf8":
        decode = ".decode()"
    else:
        decode = f".decode({src.ref(spec.encoding)})"
    src.add(indent, f"e = p + {size} + {length}", f"{target} = b[p + {size}:e]{decode}", "p = e")
    if spec.finish is not None:
        src.add(indent, f"{target} = {src.ref(spec.finish)}({target})")


def _decimal(src: _Source, target: str, spec: Dec, indent: int) -> None:
    top = 1 << (spec.size * 8 - 1)
    terms = []
    for shift, mask, weight in spec.parts:
        term = f"((x >> {shift}) & {mask})" if shift else f"(x & {mask})"
        terms.append(term if weight == 1 else f"{term} * {weight}")
    value = f"D({' + '.join(terms)})" + (f".scaleb({-spec.scale}, WIDE)" if spec.scale else "")
    # The sign bit is stored inverted; negative numbers have every other bit inverted too.
    src.add(indent, f"x = FROM_BYTES(b[p:p + {spec.size}], 'big')", f"p += {spec.size}",
            f"if x & {top}:", f"    x ^= {top}", f"    {target} = {value}",
            "else:", f"    x ^= {((top << 1) - 1) ^ top}", f"    {target} = {value}.copy_negate()")


def _bitmap(columns: int) -> str:
    """The NULL bitmap at b[p] as an integer.

    The server sets the spare bits of the last byte (MySQL ``pack_row`` starts every byte
    at 0xFF), so they are masked off: a row without NULLs is then 0.
    """
    size = (columns + 7) // 8
    if size > 3:
        value = f"FROM_BYTES(b[p:p + {size}], 'little')"
    else:
        value = " | ".join(f"b[p + {i}] << {8 * i}" if i else "b[p]" for i in range(size))
    return f"({value}) & {(1 << columns) - 1}" if columns % 8 else value


def compile_image(columns: Sequence[Column], nulls: int) -> ImageFn:
    """``image(buf, pos) -> (row, pos)`` for the values after a NULL bitmap equal to ``nulls``."""
    src = _Source()
    src.add(0, "def image(b, p):")
    row = _values(src, columns, nulls, 1)
    src.add(1, f"return MP({row}), p")
    image: ImageFn = src.function("image")  # type: ignore[assignment]
    return image


def compile_changes(columns: Sequence[Column], nulls_image: NullsImageFn) -> ChangesFn:
    """``changes(buf, pos, end, table, op)``: the row changes of a rows event body.

    Images without NULLs are decoded inline; the others by ``nulls_image(bitmap, buf, pos)``.
    """
    src = _Source()
    null_bytes = (len(columns) + 7) // 8
    nulls_ref = src.ref(nulls_image)
    src.add(0, "def changes(b, p, end, table, op):",
            "    out = []", "    add = out.append", "    two = op is UPDATE",
            "    new = op is INSERT", "    while p < end:")
    for image in ("r1", "r2"):
        indent = 2 if image == "r1" else 3
        if image == "r2":
            src.add(2, "if two:")
        src.add(indent, f"n = {_bitmap(len(columns))}", f"p += {null_bytes}", "if n:",
                f"    {image}, p = {nulls_ref}(n, b, p)", "else:")
        row = _values(src, columns, 0, indent + 1)
        src.add(indent + 1, f"{image} = MP({row})")
    src.add(3, "add(RC(table, op, r2, r1))")
    src.add(2, "elif new:", "    add(RC(table, op, r1))",
            "else:", "    add(RC(table, op, None, r1))")
    src.add(1, "if p != end:", "    raise ValueError('row images overrun the rows event')",
            "return out")
    changes: ChangesFn = src.function("changes")  # type: ignore[assignment]
    return changes
