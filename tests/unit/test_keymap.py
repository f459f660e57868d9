"""The agent-managed key map (``link: {map: SIDE}``): locating, planning, recording (no I/O).

Rows are located through the pairs the pipeline loaded into its :class:`rules.Judge` (from
the target's ``key_map``, or the source's); :class:`KeyMap` turns a batch's INSERTs and
propagated DELETEs into map writes and holds the copy for the other system until COMMIT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import rules
from agent.conflicts import RecentChanges
from agent.events import Op, RowChange, TableId
from agent.keymap import REASON, KeyMap
from agent.ports import Write, WriteKind
from agent.routes import FieldRoute, LinkKind, Route, build_route_table

ACCOUNTS = TableId("public", "accounts")
CUSTOMERS = TableId("erp", "customers")
MAP = TableId("cdc", "key_map")
T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def mapped(direction: str = "crm_to_erp", **overrides: object) -> Route:
    """customer: CRM accounts.id <-> ERP customers.no, linked through the key map."""
    crm_to_erp = direction == "crm_to_erp"
    base: dict[str, object] = {
        "entity": "customer", "direction": direction,
        "source_table": ACCOUNTS if crm_to_erp else CUSTOMERS,
        "source_key": "id" if crm_to_erp else "no",
        "target_table": CUSTOMERS if crm_to_erp else ACCOUNTS,
        "target_key": "no" if crm_to_erp else "id",
        "link": LinkKind.MAP, "link_column": "",
        "fields": (FieldRoute("phone", "phone" if crm_to_erp else "tel",
                              "tel" if crm_to_erp else "phone", "both"),),
        "source": "crm" if crm_to_erp else "erp", "target": "erp" if crm_to_erp else "crm",
    }
    base.update(overrides)
    return Route(**base)  # type: ignore[arg-type]


def plan(changes: list[RowChange], judge: rules.Judge, route: Route | None = None,
         current: Mapping[Any, Mapping[str, object]] | None = None) -> rules.Plan:
    table = build_route_table("crm_to_erp", [route or mapped()])
    view = rules.TargetView()
    for (tbl, locator, _cols), keys in rules.lookups(table, changes, judge).items():
        view.load(tbl, locator, current or {}, keys)
    return rules.plan(table, [(c, T0) for c in changes], view, judge)


def account(op: Op = Op.UPDATE, **values: object) -> RowChange:
    row = {"id": 7, **values}
    return RowChange(ACCOUNTS, op, old=row if op is Op.DELETE else None,
                     new=None if op is Op.DELETE else row)


# -- routes and rules -----------------------------------------------------------------------

def test_a_mapped_row_locates_nothing_by_itself() -> None:
    route = mapped()
    assert route.locate({"id": 7}) is None
    assert route.locator == "no"  # the target row is found by its own key
    assert route.noted({"id": 7}) == 7  # changes are noted under the source's key


def test_lookups_ask_for_the_target_keys_the_map_gave() -> None:
    table = build_route_table("crm_to_erp", [mapped()])
    judge = rules.Judge()
    assert rules.lookups(table, [account(phone="1")], judge) == {}
    judge.remember_link("customer", 7, "17")
    assert rules.lookups(table, [account(phone="1")], judge) == {
        (CUSTOMERS, "no", ("tel",)): {"17"}}


def test_an_unmapped_row_is_inserted_and_its_key_awaited() -> None:
    judge = rules.Judge()
    result = plan([account(Op.INSERT, phone="1"), account(phone="2")], judge)
    [insert] = result.writes
    assert insert.kind is WriteKind.INSERT and insert.values == {"tel": "1"}
    assert [(i, r.entity) for i, r, _ in result.links] == [(0, "customer")]
    # the second change waits for the key the INSERT generates: no twin in the same batch
    assert len(result.deferred) == 1


def test_a_mapped_row_is_updated_by_the_target_key() -> None:
    judge = rules.Judge()
    judge.remember_link("customer", 7, "17")
    [write] = plan([account(phone="2")], judge, current={"17": {"tel": "1"}}).writes
    assert write.kind is WriteKind.UPDATE and write.key == {"no": "17"}
    assert write.values == {"tel": "2"}


def test_a_mapped_row_missing_on_the_target_is_written_with_its_mapped_key() -> None:
    judge = rules.Judge()
    judge.remember_link("customer", 7, "17")
    [write] = plan([account(phone="2")], judge).writes
    assert write.kind is WriteKind.UPSERT and write.key == {"no": "17"}


def test_a_propagated_delete_finds_the_target_through_the_map() -> None:
    judge = rules.Judge()
    assert plan([account(Op.DELETE)], judge).skipped["filter"] == 1  # not mapped: nothing
    judge.remember_link("customer", 7, "17")
    [write] = plan([account(Op.DELETE)], judge, current={"17": {"tel": "1"}}).writes
    assert write.kind is WriteKind.DELETE and write.key == {"no": "17"}


def test_newest_compares_the_changes_of_one_record_across_the_map() -> None:
    """The CRM's change is noted under its key (7); the ERP->CRM direction, whose target key
    is 7, finds it and lets the later ERP change win."""
    recent = RecentChanges()
    crm_change = RowChange(ACCOUNTS, Op.UPDATE, new={"id": 7, "phone": "crm"},
                           old={"id": 7, "phone": "old"})
    rules.record_changes(build_route_table("crm_to_erp", [mapped()]), crm_change, T0, recent)
    back = mapped("erp_to_crm")
    judge = rules.Judge(recent)
    judge.remember_link("customer", 17, "7")
    erp_change = RowChange(CUSTOMERS, Op.UPDATE, new={"no": 17, "tel": "erp"},
                           old={"no": 17, "tel": "old"})
    table = build_route_table("erp_to_crm", [back])
    view = rules.TargetView()
    view.load(ACCOUNTS, "id", {"7": {"phone": "crm"}}, ["7"])
    result = rules.plan(table, [(erp_change, T0 + timedelta(seconds=1))], view, judge)
    [conflict] = result.conflicts
    assert conflict.winner == "erp" and conflict.record == "7"
    assert result.writes[0].values == {"phone": "erp"}


# -- KeyMap: recording, copying, removing ---------------------------------------------------

class Recorder:
    """Collects what the key map writes (only ``write`` is used by settle)."""

    def __init__(self) -> None:
        self.written: list[Write] = []

    def write(self, writes: Sequence[Write]) -> None:
        self.written += writes


def keymap(route: Route | None = None) -> tuple[KeyMap, rules.Judge]:
    judge = rules.Judge()
    table = build_route_table("crm_to_erp", [route or mapped()])
    return KeyMap("crm_to_erp", table, judge, "cdc"), judge


def test_a_generated_key_is_mapped_in_the_transaction_and_copied_after_commit() -> None:
    km, judge = keymap()
    result = plan([account(Op.INSERT, phone="1")], judge)
    sink = Recorder()
    km.settle(sink, result, {0: 17})  # type: ignore[arg-type]
    [pair] = sink.written
    assert pair.table == MAP and pair.kind is WriteKind.UPSERT
    assert pair.key == {"ident": "customer:7"}
    assert pair.values == {"local_ident": "customer:17", "entity": "customer",
                           "remote_key": "7", "local_key": "17"}
    assert judge.link_of("customer", 7) == "17"
    assert km.release(Recorder()) == []  # type: ignore[arg-type]  # another session's commit: nothing of it
    km.settle(sink, result, {0: 17})  # type: ignore[arg-type]
    [copy] = km.release(sink)  # type: ignore[arg-type]
    assert copy.reason == REASON and copy.key == ("ident", "customer:17")
    assert copy.values == {"local_ident": "customer:7", "entity": "customer",
                           "remote_key": "17", "local_key": "7"}
    assert km.release(sink) == []  # type: ignore[arg-type]  # released once


def test_a_target_key_given_by_a_mapped_field_is_mapped_too() -> None:
    route = mapped(fields=(FieldRoute("number", "number", "no", "crm"),))
    km, judge = keymap(route)
    result = plan([account(Op.INSERT, number=42)], judge, route)
    sink = Recorder()
    km.settle(sink, result, {})  # type: ignore[arg-type]
    assert [w.values["local_key"] for w in sink.written] == ["42"]
    assert judge.link_of("customer", 7) == "42"


def test_a_propagated_delete_removes_the_pair_on_both_systems() -> None:
    km, judge = keymap()
    judge.remember_link("customer", 7, "17")
    result = plan([account(Op.DELETE)], judge, current={"17": {"tel": "1"}})
    sink = Recorder()
    km.settle(sink, result, {})  # type: ignore[arg-type]
    [removal] = sink.written
    assert removal.kind is WriteKind.DELETE and removal.key == {"ident": "customer:7"}
    assert judge.link_of("customer", 7) is None
    [copy] = km.release(sink)  # type: ignore[arg-type]
    assert copy.key == ("ident", "customer:17") and copy.values == {}


def test_the_other_direction_applies_the_copy_and_learns_the_pair() -> None:
    """ERP->CRM receives the CRM->ERP pair (CRM 7 <-> ERP 17) for the CRM's map."""
    judge = rules.Judge()
    back = KeyMap("erp_to_crm", build_route_table("erp_to_crm", [mapped("erp_to_crm")]),
                  judge, "cdc")
    km, forward_judge = keymap()
    sink = Recorder()
    km.settle(sink, plan([account(Op.INSERT, phone="1")], forward_judge), {0: 17})  # type: ignore[arg-type]
    [copy] = km.release(sink)  # type: ignore[arg-type]
    write = back.copy_write(copy)
    assert write.kind is WriteKind.UPSERT and write.key == {"ident": "customer:17"}
    assert judge.link_of("customer", 17) == "7"
    removal = back.copy_write(type(copy)(copy.table, copy.key, {}, {}, "customer", REASON))
    assert removal.kind is WriteKind.DELETE and judge.link_of("customer", 17) is None


# -- configuration ----------------------------------------------------------------------------

def test_a_map_link_compiles_to_map_routes_both_ways() -> None:
    from agent.config import Direction
    from agent.wiring import route_table
    from tests.unit.data.config_fixtures import edit, load

    config = load(edit("{crm_column: erp_no}", "{map: erp}"))
    for source, target in (("crm", "erp"), ("erp", "crm")):
        [route] = route_table(config, Direction(f"{source}_to_{target}", source,
                                                target)).routes
        assert route.link is LinkKind.MAP and route.locator == route.target_key
