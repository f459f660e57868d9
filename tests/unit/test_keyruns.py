"""Runs of writes are cut where a key repeats (and at a size limit), in order."""

from __future__ import annotations

from agent.events import TableId
from agent.ports import Write, WriteKind
from connectors.keyruns import unique_key_parts

T = TableId("s", "t")


def _run(*keys: int) -> list[tuple[int, Write]]:
    return [(i, Write(T, WriteKind.UPDATE, {"id": k}, {"v": i})) for i, k in enumerate(keys)]


def _keys(parts: list[list[tuple[int, Write]]]) -> list[list[object]]:
    return [[w.key["id"] for _, w in part] for part in parts]


def test_a_repeated_key_starts_a_new_part() -> None:
    assert _keys(list(unique_key_parts(_run(1, 2, 1, 3, 3)))) == [[1, 2], [1, 3], [3]]


def test_parts_are_at_most_limit_long() -> None:
    assert _keys(list(unique_key_parts(_run(1, 2, 3, 4, 5), limit=2))) == [[1, 2], [3, 4], [5]]
    assert list(unique_key_parts([])) == []
