"""Retrying dead letters: their changes go through the rules again, as the data stands now."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from agent import records
from agent.apply import Applier, Exchange
from agent.config import Config
from agent.events import TableId
from agent.manual import manual_sink
from agent.ports import Write, WriteKind
from agent.quarantine import Poison, letter_change
from agent.rules import Judge
from agent.wiring import MANUAL, names, route_table


def retry_letters(config: Config, selection: list[tuple[str, int]]) -> Iterator[str]:
    """Apply the selected pending letters ((system, id); id 0 = all of that system's)."""
    for system, number in selection:
        where: dict[str, object] = {"status": "pending"}
        if number:
            where["id"] = number
        letters = records.select(config, system, "dead_letters", where)
        for direction in config.directions():
            mine = [row for row in letters if row["direction"] == direction.name]
            if mine:
                yield from _retry(config, system, direction.name, mine)


def _retry(config: Config, system: str, direction: str,
           letters: list[dict[str, Any]]) -> Iterator[str]:
    d = next(x for x in config.directions() if x.name == direction)
    applier = Applier(direction, route_table(config, d), Judge(), Exchange(),
                      names(config).state_schema)
    table = TableId(names(config).state_schema, "dead_letters")
    sink = manual_sink(config, system)
    sink.open()
    try:
        sink.begin(direction + MANUAL)
        applier.apply(sink, [letter_change(row) for row in letters])
        sink.write([Write(table, WriteKind.UPDATE, {"id": row["id"]},
                          {"status": "retried",
                           "resolved_at": datetime.now(UTC).replace(tzinfo=None)})
                    for row in letters])
        sink.commit(direction + MANUAL, "manual", datetime.now(UTC))
    except Poison as poison:
        sink.rollback()
        yield (f"{system}: {len(letters)} letter(s) of {direction} still fail: "
               f"{poison.error.error_class}")
        raise poison.error from None
    finally:
        sink.close()
    yield f"{system}: {len(letters)} letter(s) of {direction} applied"
