"""Staging of scheduled directions: net merge, the synthetic change, windows (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from agent import rules
from agent.events import UNCHANGED, Op, RowChange, TableId
from agent.ports import Write, WriteKind
from agent.routes import FieldRoute, LinkKind, Route, build_route_table
from agent.staging import Scheduler, Window, change_of, from_row, merge, staged_id, to_write

SRC, DST = TableId("public", "deals"), TableId("erp", "orders")
TS = datetime(2030, 1, 1, 1, 0, tzinfo=UTC)
ROUTE = Route("order", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY, "crm_id",
              (FieldRoute("title", "title", "title", "crm"),
               FieldRoute("amount", "amount", "amount", "crm"),
               FieldRoute("status", "erp_status", "status", "erp"),
               FieldRoute("phone", "phone", "phone", "both")),
              source="crm", target="erp")


def upd(new: dict[str, object], old: dict[str, object] | None) -> RowChange:
    return RowChange(SRC, Op.UPDATE, new, old)


def test_merge_keeps_the_last_value_per_field_and_the_first_old_image() -> None:
    first = upd({"id": 1, "title": "B", "amount": Decimal("1"), "erp_status": "new",
                 "phone": "1"},
                {"id": 1, "title": "A", "amount": Decimal("1"), "erp_status": "new",
                 "phone": "1"})
    second = upd({"id": 1, "title": "C", "amount": Decimal("2.50"), "erp_status": "new",
                  "phone": UNCHANGED},
                 {"id": 1, "title": "B", "amount": Decimal("1"), "erp_status": "new"})
    staged = merge(None, ROUTE, first, TS, TS)
    staged = merge(staged, ROUTE, second, TS.replace(minute=5), TS.replace(minute=5))
    assert staged.new == {"id": 1, "title": "C", "amount": Decimal("2.50"),
                          "erp_status": "new", "phone": "1"}
    assert staged.old is not None and staged.old["title"] == "A"
    assert staged.staged_at == TS and staged.ts == TS.replace(minute=5)
    assert staged.id == staged_id("crm_to_erp", "order", "1")


def test_stored_row_round_trips_exactly() -> None:
    staged = merge(None, ROUTE, upd({"id": 7, "title": "x", "amount": Decimal("1.10")}, None),
                   TS, TS)
    write = to_write(staged, TableId("st", "staged_changes"))
    assert write.kind is WriteKind.UPSERT and write.key == {"id": staged.id}
    back = from_row({"id": staged.id, **write.values})
    assert back.new == {"id": 7, "title": "x", "amount": Decimal("1.10")}
    assert str(back.new["amount"]) == "1.10" and back.old is None
    assert back.staged_at == TS


def test_insert_then_delete_nets_to_a_delete_and_back() -> None:
    staged = merge(None, ROUTE, RowChange(SRC, Op.INSERT, {"id": 3, "title": "t"}), TS, TS)
    staged = merge(staged, ROUTE, RowChange(SRC, Op.DELETE, None, {"id": 3}), TS, TS)
    assert staged.op == "delete"
    assert change_of(staged, SRC).op is Op.DELETE
    staged = merge(staged, ROUTE, RowChange(SRC, Op.INSERT, {"id": 3, "title": "u"}), TS, TS)
    assert staged.op == "upsert" and change_of(staged, SRC).new == {"id": 3, "title": "u"}


def test_applied_net_change_does_not_revert_a_target_field_it_did_not_change() -> None:
    staged = merge(None, ROUTE, upd({"id": 1, "title": "B", "erp_status": "new", "phone": "1"},
                                    {"id": 1, "title": "A", "erp_status": "new", "phone": "1"}),
                   TS, TS)
    view = rules.TargetView()
    view.load(DST, "crm_id", {1: {"title": "A", "amount": None, "status": "shipped",
                                  "phone": "2"}}, [1])
    plan = rules.plan(build_route_table("crm_to_erp", [ROUTE]), [change_of(staged, SRC)], view)
    assert [(w.kind, dict(w.values)) for w in plan.writes] == [(WriteKind.UPDATE,
                                                                {"title": "B"})]
    assert not plan.conflicts


class FakeSink:
    def __init__(self, stored: Mapping[object, Mapping[str, object]]) -> None:
        self.stored = stored

    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        return {k: self.stored[k] for k in keys if k in self.stored}


def test_windows_come_from_the_oldest_staged_change_and_a_missed_one_fires() -> None:
    now = [datetime(2030, 1, 1, 3, 0, tzinfo=UTC)]
    oldest = {"order": "2030-01-01T01:00:00.000000+00:00"}
    scheduler = Scheduler("crm_to_erp", "st", {"order": Window("cron", "0 2 * * *")},
                          lambda d: oldest, lambda d, e: [], clock=lambda: now[0])
    assert scheduler.due() == ["order"]  # 02:00 passed while the agent was down
    scheduler.applied("order")
    assert scheduler.due() == []
    sink = FakeSink({})
    writes: list[Write] = scheduler.stage(
        sink, [(ROUTE, upd({"id": 1, "title": "x"}, None), now[0])])  # type: ignore[arg-type]
    assert len(writes) == 1
    assert scheduler.due() == []  # next window: tomorrow 02:00
    now[0] = datetime(2030, 1, 2, 2, 0, tzinfo=UTC)
    assert scheduler.due() == ["order"]
    assert scheduler.mode("order") == "cron" and scheduler.mode("other") == "continuous"


def test_restaging_a_record_merges_with_the_stored_row() -> None:
    scheduler = Scheduler("crm_to_erp", "st", {"order": Window("cron", "0 2 * * *")},
                          lambda d: {}, lambda d, e: [], clock=lambda: TS)
    first = merge(None, ROUTE, upd({"id": 1, "title": "B"}, {"id": 1, "title": "A"}), TS, TS)
    stored = {first.id: dict(to_write(first, TableId("st", "staged_changes")).values)}
    [write] = scheduler.stage(FakeSink(stored), [  # type: ignore[arg-type]
        (ROUTE, upd({"id": 1, "title": "C"}, {"id": 1, "title": "B"}), TS)])
    back = from_row({"id": first.id, **write.values})
    assert back.new["title"] == "C" and back.old == {"id": 1, "title": "A"}
