"""The remedies outbox rows: what one pipeline stores is what the other reads back."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from agent.conflicts import Remedy
from agent.events import TableId
from agent.ports import WriteKind
from agent.remedies import SWEEP_INTERVAL, RemedyStore, outbox_write, remedy_of


def _remedy() -> Remedy:
    return Remedy(TableId("we.ird", "tab\"le"), ("id", 7),
                  {"street": "Main 1", "n": Decimal("1.10")},
                  {"street": "Fake 9", "d": date(2026, 3, 29)}, "customer", "revert")


def test_the_stored_row_reads_back_as_the_same_remedy() -> None:
    remedy = _remedy()
    write = outbox_write("st", "erp_to_crm", remedy)
    assert write.table == TableId("st", "remedies") and write.kind is WriteKind.INSERT
    assert write.values["direction"] == "erp_to_crm" and write.values["status"] == "pending"
    assert "Main 1" not in write.source_key  # the record key only, for quarantine messages
    assert remedy_of(dict(write.values)) == remedy


def test_each_remedy_has_its_own_ident() -> None:
    assert _remedy().ident != _remedy().ident


class _Outbox:
    """The two calls the store makes, recorded (the SQL is tested against real servers)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.updates = rows, list[tuple[Any, ...]]()

    def select(self, table: str, where: dict[str, object], order: str) -> list[dict[str, Any]]:
        assert (table, order) == ("remedies", "created_at")
        return [r for r in self.rows if all(r[c] == v for c, v in where.items())]

    def update(self, table: str, where: dict[str, object], values: dict[str, object]) -> int:
        self.updates.append((table, where, values))
        return 1


def test_the_store_reads_its_direction_now_and_then_and_marks_handled_ones_done() -> None:
    mine = dict(outbox_write("st", "erp_to_crm", _remedy()).values)
    other = dict(outbox_write("st", "crm_to_erp", _remedy()).values)
    outbox, now = _Outbox([mine, other]), [100.0]
    store = RemedyStore("erp_to_crm", outbox.select, outbox.update, clock=lambda: now[0])
    assert store.due()
    assert [r.ident for r in store.pending()] == [mine["id"]]
    assert not store.due()
    now[0] += SWEEP_INTERVAL
    assert store.due()
    store.settle([])
    assert outbox.updates == []
    store.settle([str(mine["id"])])
    assert outbox.updates == [("remedies", {"id": [mine["id"]]}, {"status": "done"})]
