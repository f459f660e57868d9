"""Rules: source changes -> target writes, against the target's current rows."""

from __future__ import annotations

from decimal import Decimal

from agent import rules
from agent.events import UNCHANGED, Op, RowChange, TableId
from agent.ports import WriteKind
from agent.routes import (
    CreateMode,
    DeleteMode,
    FieldRoute,
    LinkKind,
    Predicate,
    Route,
    RouteTable,
    build_route_table,
)

ACCOUNTS = TableId("public", "accounts")
CUSTOMERS = TableId("erp", "customers")


def route(**overrides: object) -> Route:
    base: dict[str, object] = {
        "entity": "customer",
        "direction": "crm_to_erp",
        "source_table": ACCOUNTS,
        "source_key": "id",
        "target_table": CUSTOMERS,
        "target_key": "customer_no",
        "link": LinkKind.TARGET_HOLDS_KEY,
        "link_column": "crm_id",
        "fields": (
            FieldRoute("name", "name", "name", owner="crm", flows=True),
            FieldRoute("phone", "phone", "phone_main", owner="both", flows=True),
            FieldRoute("street", "billing_street", "street", owner="erp", flows=False),
            FieldRoute("segment", "stage", "customer_type", owner="crm", flows=True,
                       value_map={"customer": "C", "partner": "P"}),
        ),
    }
    base.update(overrides)
    return Route(**base)  # type: ignore[arg-type]


def table(r: Route | None = None) -> RouteTable:
    return build_route_table("crm_to_erp", [r or route()])


def run(changes: list[RowChange], current: dict[object, dict[str, object]] | None = None,
        r: Route | None = None) -> rules.Plan:
    t = table(r)
    view = rules.TargetView()
    for (tbl, locator, _cols), keys in rules.lookups(t, changes).items():
        view.load(tbl, locator, current or {}, keys)
    return rules.plan(t, changes, view)


ROW = {"id": 7, "name": "Acme", "phone": "+49 1", "billing_street": "Main 1", "stage": "customer"}


def test_insert_of_unknown_row_upserts_flowing_fields_with_value_map() -> None:
    plan = run([RowChange(ACCOUNTS, Op.INSERT, new=ROW)])
    [write] = plan.writes
    assert write.kind is WriteKind.UPSERT
    assert write.key == {"crm_id": 7}
    assert write.values == {"name": "Acme", "phone_main": "+49 1", "customer_type": "C"}
    assert "street" not in write.values  # owned by the ERP: never flows from the CRM


def test_defaults_are_insert_only() -> None:
    plan = run([RowChange(ACCOUNTS, Op.INSERT, new=ROW)], r=route(defaults={"currency": "EUR"}))
    assert plan.writes[0].defaults == {"currency": "EUR"}


def test_update_writes_only_differing_columns() -> None:
    current = {7: {"name": "Acme", "phone_main": "+49 0", "customer_type": "C"}}
    plan = run([RowChange(ACCOUNTS, Op.UPDATE, new=ROW)], current)
    [write] = plan.writes
    assert write.kind is WriteKind.UPDATE
    assert write.values == {"phone_main": "+49 1"}


def test_change_equal_to_target_is_a_noop() -> None:
    current = {7: {"name": "Acme", "phone_main": "+49 1", "customer_type": "C"}}
    plan = run([RowChange(ACCOUNTS, Op.UPDATE, new=ROW)], current)
    assert plan.writes == []
    assert plan.skipped["noop"] == 1


def test_batch_view_tracks_earlier_writes_of_the_same_key() -> None:
    second = {**ROW, "phone": "+49 2"}
    back = {**ROW, "phone": "+49 1"}
    changes = [RowChange(ACCOUNTS, Op.INSERT, new=ROW), RowChange(ACCOUNTS, Op.UPDATE, new=second),
               RowChange(ACCOUNTS, Op.UPDATE, new=back)]
    plan = run(changes)
    assert [w.kind for w in plan.writes] == [WriteKind.UPSERT, WriteKind.UPDATE, WriteKind.UPDATE]
    assert [w.values.get("phone_main") for w in plan.writes] == ["+49 1", "+49 2", "+49 1"]


def test_unchanged_toast_value_is_not_written() -> None:
    current = {7: {"name": "Old", "phone_main": "+49 1", "customer_type": "C"}}
    plan = run([RowChange(ACCOUNTS, Op.UPDATE, new={**ROW, "name": UNCHANGED})], current)
    assert plan.writes == [] and plan.skipped["noop"] == 1


def test_create_predicate_keeps_prospects_back() -> None:
    r = route(create=CreateMode.WHEN, create_when=(Predicate("stage", frozenset({"customer"})),))
    prospect = {**ROW, "stage": "prospect"}
    assert run([RowChange(ACCOUNTS, Op.INSERT, new=prospect)], r=r).writes == []
    [write] = run([RowChange(ACCOUNTS, Op.UPDATE, new=ROW)], r=r).writes
    assert write.kind is WriteKind.UPSERT


def test_create_never_updates_existing_rows_only() -> None:
    r = route(create=CreateMode.NEVER)
    assert run([RowChange(ACCOUNTS, Op.INSERT, new=ROW)], r=r).writes == []
    current = {7: {"name": "Old"}}
    [write] = run([RowChange(ACCOUNTS, Op.UPDATE, new=ROW)], current, r=r).writes
    assert write.kind is WriteKind.UPDATE


def test_delete_propagates_by_locator() -> None:
    plan = run([RowChange(ACCOUNTS, Op.DELETE, old={"id": 7})], {7: {"name": "Acme"}})
    [write] = plan.writes
    assert write.kind is WriteKind.DELETE and write.key == {"crm_id": 7}


def test_delete_ignore_and_flag() -> None:
    assert run([RowChange(ACCOUNTS, Op.DELETE, old={"id": 7})], {7: {"name": "A"}},
               r=route(delete=DeleteMode.IGNORE)).writes == []
    r = route(delete=DeleteMode.FLAG, delete_flag=("is_active", False))
    [write] = run([RowChange(ACCOUNTS, Op.DELETE, old={"id": 7})], {7: {"is_active": True}},
                  r=r).writes
    assert write.kind is WriteKind.UPDATE and write.values == {"is_active": False}


def test_source_holds_key_link_locates_by_target_key_and_inserts_unlinked() -> None:
    r = route(link=LinkKind.SOURCE_HOLDS_KEY, link_column="erp_customer_no")
    unlinked = {**ROW, "erp_customer_no": None}
    [write] = run([RowChange(ACCOUNTS, Op.INSERT, new=unlinked)], r=r).writes
    assert write.kind is WriteKind.INSERT and write.key == {}
    linked = {**ROW, "erp_customer_no": 1001}
    [write] = run([RowChange(ACCOUNTS, Op.UPDATE, new=linked)], {1001: {"name": "x"}}, r=r).writes
    assert write.key == {"customer_no": 1001}


def test_rows_of_unmapped_tables_are_filtered() -> None:
    plan = run([RowChange(TableId("public", "other"), Op.INSERT, new={"id": 1})])
    assert plan.writes == [] and plan.skipped["filter"] == 1


def test_same_value_across_engines() -> None:
    assert rules.same_value(Decimal("1.10"), Decimal("1.1"))
    assert rules.same_value(1, True) and rules.same_value(0, False)
    assert not rules.same_value(None, "")
    assert rules.same_value(memoryview(b"ab"), b"ab")
    assert not rules.same_value("1", 1)
