"""Cutting a run of writes where a key repeats (shared by both writers' multi-row paths).

A multi-row statement applies its rows as a set: two writes of one key in one statement
would lose their order. Each part holds a key at most once, and parts keep the run's order.
"""

from __future__ import annotations

from collections.abc import Iterator

from agent.ports import Write

Indexed = tuple[int, Write]
"""A write and its position in the batch passed to the sink."""


def unique_key_parts(run: list[Indexed], limit: int | None = None) -> Iterator[list[Indexed]]:
    """Consecutive parts of ``run`` (of at most ``limit`` writes) in which no key repeats."""
    part: list[Indexed] = []
    seen: set[tuple[object, ...]] = set()
    for item in run:
        key = tuple(item[1].key.values())
        if key in seen or (limit is not None and len(part) >= limit):
            yield part
            part, seen = [], set()
        seen.add(key)
        part.append(item)
    if part:
        yield part
