"""Reconcile and push helpers that need no server: synthetic changes, counts, filters."""

from __future__ import annotations

from agent import rules
from agent.events import Op, TableId
from agent.ports import WriteKind
from agent.reconcile import Counts
from agent.routes import FieldRoute, LinkKind, Route, build_route_table
from agent.transfer import synthetic

SRC, DST = TableId("public", "items"), TableId("erp", "items")
ROUTE = Route("item", "crm_to_erp", SRC, "id", DST, "no", LinkKind.TARGET_HOLDS_KEY, "crm_id",
              (FieldRoute("name", "name", "name", "crm"),
               FieldRoute("stock", "erp_stock", "stock", "erp"),
               FieldRoute("phone", "phone", "phone", "both")),
              source="crm", target="erp")
ROW = {"id": 1, "name": "new name", "erp_stock": 5, "phone": "+1"}


def plan(shared: bool) -> rules.Plan:
    view = rules.TargetView()
    view.load(DST, "crm_id", {1: {"name": "old", "stock": 9, "phone": "+2"}}, [1])
    change = synthetic(ROUTE, ROW, shared=shared)
    assert change.op is Op.UPDATE
    return rules.plan(build_route_table("crm_to_erp", [ROUTE]), [change], view)


def test_reconcile_repair_writes_only_what_the_source_owns() -> None:
    result = plan(shared=False)
    assert [dict(w.values) for w in result.writes] == [{"name": "new name"}]
    assert not result.conflicts and not result.remedies


def test_push_also_carries_fields_both_sides_own() -> None:
    result = plan(shared=True)
    assert [dict(w.values) for w in result.writes] == [{"name": "new name", "phone": "+1"}]
    assert not result.conflicts and not result.remedies


def test_missing_target_row_is_created_under_the_create_rule() -> None:
    view = rules.TargetView()
    view.load(DST, "crm_id", {}, [1])
    result = rules.plan(build_route_table("crm_to_erp", [ROUTE]),
                        [synthetic(ROUTE, ROW, shared=False)], view)
    [write] = result.writes
    assert write.kind is WriteKind.UPSERT and write.key == {"crm_id": 1}


def test_counts_keep_a_few_samples_and_round_trip() -> None:
    counts = Counts()
    for key in range(10):
        counts.note(counts.only, "crm", key, "only:crm")
    assert counts.only == {"crm": 10} and counts.samples["only:crm"] == ["0", "1", "2", "3", "4"]
    assert Counts.from_json(counts.to_json()) == counts
