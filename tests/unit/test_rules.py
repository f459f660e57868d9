"""Rules: source changes -> target writes, against the target's current rows (no I/O).

The matrix of issue 4 lives here: ownership (source, target, both) x which side changed
(source only, both, neither) x conflict policy x lifecycle state (prospect, customer,
linked or not). Every case runs in the crm_to_erp direction; the rules are symmetric in the
direction, which ``test_directions_are_symmetric`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agent import rules
from agent.conflicts import RecentChanges
from agent.events import UNCHANGED, Op, RowChange, TableId
from agent.ports import WriteKind
from agent.routes import (
    CreateMode,
    DeleteMode,
    FieldRoute,
    LinkKind,
    Predicate,
    Route,
    build_route_table,
)

ACCOUNTS = TableId("public", "accounts")
CUSTOMERS = TableId("erp", "customers")
T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def field(name: str, owner: str, **kw: object) -> FieldRoute:
    return FieldRoute(name, f"c_{name}", f"e_{name}", owner=owner,
                      **kw)  # type: ignore[arg-type]


def route(*fields: FieldRoute, **overrides: object) -> Route:
    base: dict[str, object] = {
        "entity": "customer", "direction": "crm_to_erp", "source_table": ACCOUNTS,
        "source_key": "id", "target_table": CUSTOMERS, "target_key": "no",
        "link": LinkKind.TARGET_HOLDS_KEY, "link_column": "crm_id",
        "fields": fields or (field("name", "crm"),), "source": "crm", "target": "erp",
    }
    base.update(overrides)
    return Route(**base)  # type: ignore[arg-type]


def run(changes: list[RowChange], current: Mapping[Any, Mapping[str, object]] | None = None,
        r: Route | None = None, ts: datetime | None = T0,
        recent: RecentChanges | None = None) -> rules.Plan:
    table = build_route_table("crm_to_erp", [r or route()])
    view = rules.TargetView()
    for (tbl, locator, _cols), keys in rules.lookups(table, changes).items():
        view.load(tbl, locator, current or {}, keys)
    judge = rules.Judge(recent or RecentChanges())
    return rules.plan(table, [(c, ts) for c in changes], view, judge)


def update(new: Mapping[str, object], old: Mapping[str, object] | None = None) -> RowChange:
    return RowChange(ACCOUNTS, Op.UPDATE, new={"id": 7, **new},
                     old=None if old is None else {"id": 7, **old})


# -- creation and lifecycle -----------------------------------------------------------------

def test_insert_creates_the_target_row_with_all_mapped_fields_and_defaults() -> None:
    r = route(field("name", "crm"), field("street", "erp"), field("phone", "both"),
              defaults={"currency": "EUR"})
    new = {"id": 7, "c_name": "Acme", "c_street": "Main 1", "c_phone": "+49"}
    [write] = run([RowChange(ACCOUNTS, Op.INSERT, new=new)], r=r).writes
    assert write.kind is WriteKind.UPSERT and write.key == {"crm_id": 7}
    # the ERP's own field starts from the CRM's value; from then on the ERP has the say
    assert write.values == {"e_name": "Acme", "e_street": "Main 1", "e_phone": "+49"}
    assert write.defaults == {"currency": "EUR"}


@pytest.mark.parametrize(("stage", "exists", "expected"), [
    ("prospect", False, None),                 # prospects stay in the CRM
    ("customer", False, WriteKind.UPSERT),     # the update that makes it a customer creates it
    ("prospect", True, WriteKind.UPDATE),      # once there, it is kept in sync
    ("customer", True, WriteKind.UPDATE),
])
def test_create_when_predicate(stage: str, exists: bool, expected: WriteKind | None) -> None:
    r = route(field("name", "crm"), field("stage", "crm"), create=CreateMode.WHEN,
              create_when=(Predicate("c_stage", frozenset({"customer"})),))
    current = {7: {"e_name": "Old", "e_stage": "x"}} if exists else {}
    plan = run([update({"c_name": "Acme", "c_stage": stage})], current, r=r)
    assert [w.kind for w in plan.writes] == ([] if expected is None else [expected])


def test_create_not_null_predicate_and_never() -> None:
    r = route(create=CreateMode.WHEN, create_when=(Predicate("c_name"),))
    assert run([update({"c_name": None})], r=r).writes == []
    assert run([update({"c_name": "A"})], r=r).writes[0].kind is WriteKind.UPSERT
    never = route(create=CreateMode.NEVER)
    assert run([update({"c_name": "A"})], r=never).writes == []
    assert run([update({"c_name": "A"})], {7: {"e_name": "B"}}, r=never).writes[0].values == {
        "e_name": "A"}


def test_unlinked_source_row_is_inserted_and_its_new_key_written_back() -> None:
    r = route(link=LinkKind.SOURCE_HOLDS_KEY, link_column="erp_no")
    plan = run([update({"c_name": "Acme", "erp_no": None})], r=r)
    [write] = plan.writes
    assert write.kind is WriteKind.INSERT and write.key == {}
    [(index, link_route, row)] = plan.links
    assert index == 0 and link_route is r and row["id"] == 7


def test_linked_source_row_locates_the_target_by_its_key() -> None:
    r = route(link=LinkKind.SOURCE_HOLDS_KEY, link_column="erp_no")
    [write] = run([update({"c_name": "New", "erp_no": 1001})], {1001: {"e_name": "Old"}},
                  r=r).writes
    assert write.key == {"no": 1001} and write.values == {"e_name": "New"}


# -- ownership: the owner's changes flow, other changes are sovereignty violations ----------

def test_source_owned_field_flows_whether_or_not_the_old_row_is_known() -> None:
    current = {7: {"e_name": "Old"}}
    for old in (None, {"c_name": "Old"}):
        [write] = run([update({"c_name": "New"}, old)], current).writes
        assert write.values == {"e_name": "New"}


def test_equal_values_are_not_written() -> None:
    plan = run([update({"c_name": "Same"}, {"c_name": "Old"})], {7: {"e_name": "Same"}})
    assert plan.writes == [] and plan.skipped["noop"] == 1


class _Text(str):
    """A str subclass (like the connectors' JsonText): equal text, another type."""


@pytest.mark.parametrize(("held", "sent", "written"), [
    (Decimal("5.00"), 5, False),  # numbers across engines' types: the same value
    (1, True, False),  # MySQL's tinyint 1 is true
    (b"\x00'", bytearray(b"\x00'"), False),
    (_Text("{}"), "{}", True),  # == but not the same type: written
    (datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC), True),  # naive vs aware
    (None, "", True),
    ("x", "x ", True),
])
def test_a_source_owned_field_is_a_no_op_exactly_when_the_values_are_the_same(
        held: object, sent: object, written: bool) -> None:
    """The hot path's inlined comparison agrees with ``same_value`` across engines' types."""
    assert rules.same_value(held, sent) is not written
    plan = run([update({"c_name": sent})], {7: {"e_name": held}})
    assert [w.values for w in plan.writes] == ([{"e_name": sent}] if written else [])


@pytest.mark.parametrize("policy", ["revert", "keep"])
def test_target_owned_field_changed_on_the_source_is_recorded_and_reverted_or_kept(
        policy: str) -> None:
    r = route(field("street", "erp", on_foreign_change=policy))
    plan = run([update({"c_street": "Fake 9"}, {"c_street": "Main 1"})],
               {7: {"e_street": "Main 1"}}, r=r)
    assert plan.writes == []  # never flows from the non-owner
    [conflict] = plan.conflicts
    assert (conflict.source_value, conflict.target_value, conflict.winner, conflict.resolution) \
        == ("Fake 9", "Main 1", "erp", policy)
    if policy == "revert":
        [remedy] = plan.remedies
        assert remedy.table == ACCOUNTS and remedy.key == ("id", 7)
        assert remedy.values == {"c_street": "Main 1"} and remedy.expect == {"c_street": "Fake 9"}
    else:
        assert plan.remedies == []


def test_target_owned_field_without_the_old_row_is_not_a_violation() -> None:
    """No old row (no REPLICA IDENTITY FULL): a differing value may just be stale."""
    plan = run([update({"c_street": "Old"})], {7: {"e_street": "New"}},
               r=route(field("street", "erp")))
    assert plan.writes == [] and plan.conflicts == [] and plan.remedies == []


def test_target_owned_field_untouched_by_the_source_is_left_alone() -> None:
    """The owner changed it and the change is on its way: no violation, no write."""
    r = route(field("name", "crm"), field("street", "erp"))
    plan = run([update({"c_name": "N", "c_street": "Old"}, {"c_name": "M", "c_street": "Old"})],
               {7: {"e_name": "M", "e_street": "New"}}, r=r)
    assert [w.values for w in plan.writes] == [{"e_name": "N"}]
    assert plan.conflicts == [] and plan.remedies == []


def test_value_maps_translate_both_ways() -> None:
    f = field("segment", "crm", value_map={"customer": "C", "partner": "P"})
    [write] = run([update({"c_segment": "partner"})], {7: {"e_segment": "C"}}, r=route(f)).writes
    assert write.values == {"e_segment": "P"}
    assert f.back("C") == "customer"
    reverted = route(field("segment", "erp", value_map={"customer": "C"}))
    plan = run([update({"c_segment": "lead"}, {"c_segment": "customer"})],
               {7: {"e_segment": "C"}}, r=reverted)
    assert plan.remedies[0].values == {"c_segment": "customer"}


# -- owner both: conflicts ---------------------------------------------------------------------

def both(policy: str = "newest", tie: str = "crm") -> Route:
    return route(field("phone", "both", conflict=policy, tie=tie))


def conflicting(r: Route, recent: RecentChanges | None = None,
                ts: datetime = T0) -> rules.Plan:
    """CRM changed the phone from A to B while the ERP changed it from A to E."""
    return run([update({"c_phone": "B"}, {"c_phone": "A"})], {7: {"e_phone": "E"}}, r=r, ts=ts,
               recent=recent)


def test_both_owned_field_without_conflict_flows() -> None:
    [write] = run([update({"c_phone": "B"}, {"c_phone": "A"})], {7: {"e_phone": "A"}},
                  r=both()).writes
    assert write.values == {"e_phone": "B"}


def test_both_owned_field_untouched_by_the_source_does_not_overwrite_the_target() -> None:
    plan = run([update({"c_phone": "A"}, {"c_phone": "A"})], {7: {"e_phone": "E"}}, r=both())
    assert plan.writes == [] and plan.conflicts == []


@pytest.mark.parametrize(("policy", "writes", "winner"), [
    ("crm", True, "crm"), ("erp", False, "erp"), ("manual", False, "none")])
def test_conflict_with_a_fixed_policy(policy: str, writes: bool, winner: str) -> None:
    plan = conflicting(both(policy))
    assert bool(plan.writes) is writes
    [conflict] = plan.conflicts
    assert conflict.winner == winner and conflict.source_value == "B"
    assert conflict.target_value == "E"


@pytest.mark.parametrize(("erp_delta", "crm_wins"), [
    (timedelta(milliseconds=-50), True),   # the ERP changed first: the CRM's later edit wins
    (timedelta(milliseconds=50), False),   # the ERP's edit is newer
    (timedelta(0), True),                  # exact tie: the tie side (crm)
    (None, True),                          # the ERP's change not read yet: provisional
])
def test_conflict_newest(erp_delta: timedelta | None, crm_wins: bool) -> None:
    recent = RecentChanges()
    if erp_delta is not None:
        recent.record("customer", "7", "phone", "erp", T0 + erp_delta, "E")
    plan = conflicting(both("newest"), recent)
    assert bool(plan.writes) is crm_wins
    assert plan.conflicts[0].winner == ("crm" if crm_wins else "erp")


def test_exact_tie_goes_to_the_configured_side() -> None:
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "erp", T0, "E")
    assert conflicting(both("newest", tie="erp"), recent).writes == []


def test_an_older_change_of_the_other_side_is_not_the_competitor() -> None:
    """The ERP's last *read* change set "D"; it holds "E": that change is not read yet."""
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "erp", T0 - timedelta(seconds=5), "D")
    plan = conflicting(both("newest"), recent)
    assert plan.writes and plan.remedies == []  # provisional: no correction of our own side


def test_a_newer_change_puts_itself_back_where_the_agent_wrote_an_older_value() -> None:
    """The other direction wrote "X" (from a change at T0-1s) into the CRM after the CRM's
    edit to "B" at T0 committed: "B" wins, goes to the ERP, and is put back into the CRM
    where the CRM still holds exactly "X"."""
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "crm" + rules.AGENT, T0 - timedelta(seconds=1), "X",
                  last=True)
    plan = run([update({"c_phone": "B"}, {"c_phone": "A"})], {7: {"e_phone": "A"}},
               r=both("newest"), recent=recent)
    assert plan.writes[0].values == {"e_phone": "B"}
    [remedy] = plan.remedies
    assert (remedy.values, remedy.expect) == ({"c_phone": "B"}, {"c_phone": "X"})
    # What the agent writes is noted, for the other direction's decisions.
    assert recent.latest("customer", "7", "phone", "erp" + rules.AGENT) == (T0, "B")


def test_an_agent_write_of_a_newer_change_is_left_alone() -> None:
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "crm" + rules.AGENT, T0 + timedelta(seconds=1), "X",
                  last=True)
    plan = run([update({"c_phone": "B"}, {"c_phone": "A"})], {7: {"e_phone": "A"}},
               r=both("newest"), recent=recent)
    assert plan.remedies == []


def test_a_change_losing_to_a_known_newer_one_gets_the_winner_put_back() -> None:
    """A late-read CRM change loses against the ERP's newer value: the CRM, which holds the
    loser, gets the ERP's value (while it still holds the loser)."""
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "erp", T0 + timedelta(milliseconds=50), "E")
    plan = conflicting(both("newest"), recent)
    assert plan.writes == []
    [remedy] = plan.remedies
    assert (remedy.values, remedy.expect) == ({"c_phone": "E"}, {"c_phone": "B"})


def test_the_agents_last_write_is_noted_whatever_its_change_time() -> None:
    recent = RecentChanges()
    recent.record("c", "7", "f", "erp:agent", T0, "new", last=True)
    recent.record("c", "7", "f", "erp:agent", T0 - timedelta(seconds=1), "later", last=True)
    assert recent.latest("c", "7", "f", "erp:agent") == (T0 - timedelta(seconds=1), "later")
    recent.record("c", "7", "f", "erp", T0, "new")
    recent.record("c", "7", "f", "erp", T0 - timedelta(seconds=1), "older")
    assert recent.latest("c", "7", "f", "erp") == (T0, "new")


def test_record_changes_notes_only_changed_both_owned_fields() -> None:
    recent = RecentChanges()
    r = route(field("phone", "both"), field("name", "crm"))
    table = build_route_table("crm_to_erp", [r])
    rules.record_changes(table, update({"c_phone": "B", "c_name": "N"},
                                       {"c_phone": "A", "c_name": "M"}), T0, recent)
    assert recent.latest("customer", "7", "phone", "crm") == (T0, "B")
    assert recent.latest("customer", "7", "name", "crm") is None
    rules.record_changes(table, update({"c_phone": "B"}, {"c_phone": "B"}), T0 + timedelta(1),
                         recent)
    assert recent.latest("customer", "7", "phone", "crm") == (T0, "B")


def test_directions_are_symmetric() -> None:
    """The same conflict seen from the ERP side picks the same winner."""
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "crm", T0, "B")
    back = route(field("phone", "both"), direction="erp_to_crm", source="erp", target="crm")
    erp_change = RowChange(ACCOUNTS, Op.UPDATE, new={"id": 7, "c_phone": "E"},
                           old={"id": 7, "c_phone": "A"})
    plan = run([erp_change], {7: {"e_phone": "B"}}, r=back, ts=T0 + timedelta(milliseconds=50),
               recent=recent)
    assert plan.conflicts[0].winner == "erp" and plan.writes


# -- deletes -----------------------------------------------------------------------------------

def test_delete_propagate_ignore_flag() -> None:
    gone = [RowChange(ACCOUNTS, Op.DELETE, old={"id": 7})]
    [write] = run(gone, {7: {"e_name": "A"}}).writes
    assert write.kind is WriteKind.DELETE and write.key == {"crm_id": 7}
    assert run(gone, {7: {"e_name": "A"}}, r=route(delete=DeleteMode.IGNORE)).writes == []
    flag = route(delete=DeleteMode.FLAG, delete_flag=("is_active", False))
    [write] = run(gone, {7: {"is_active": True}}, r=flag).writes
    assert write.kind is WriteKind.UPDATE and write.values == {"is_active": False}
    assert run(gone, {7: {"is_active": False}}, r=flag).writes == []


# -- batches and values ------------------------------------------------------------------------

def test_batch_view_tracks_earlier_writes_of_the_same_key() -> None:
    changes = [RowChange(ACCOUNTS, Op.INSERT, new={"id": 7, "c_name": "A"}),
               update({"c_name": "B"}), update({"c_name": "A"})]
    plan = run(changes)
    assert [w.kind for w in plan.writes] == [WriteKind.UPSERT, WriteKind.UPDATE, WriteKind.UPDATE]
    assert [w.values["e_name"] for w in plan.writes] == ["A", "B", "A"]


def test_unchanged_toast_value_is_not_written() -> None:
    plan = run([update({"c_name": UNCHANGED})], {7: {"e_name": "Old"}})
    assert plan.writes == [] and plan.skipped["noop"] == 1


def test_rows_of_unmapped_tables_are_filtered() -> None:
    plan = run([RowChange(TableId("public", "other"), Op.INSERT, new={"id": 1})])
    assert plan.writes == [] and plan.skipped["filter"] == 1


def test_same_value_across_engines() -> None:
    assert rules.same_value(Decimal("1.10"), Decimal("1.1"))
    assert rules.same_value(1, True) and rules.same_value(0, False)
    assert not rules.same_value(None, "")
    assert rules.same_value(memoryview(b"ab"), b"ab")
    assert not rules.same_value("1", 1)


def test_a_quiet_field_settles_on_the_newest_known_change() -> None:
    r = both("newest")
    [f] = r.fields
    recent = RecentChanges()
    judge = rules.Judge(recent)
    recent.record("customer", "7", "phone", "crm", T0, "B")           # the newest change
    recent.record("customer", "7", "phone", "erp", T0 - timedelta(seconds=1), "E")
    recent.record("customer", "7", "phone", "erp" + rules.AGENT, T0 - timedelta(seconds=2),
                  "X", last=True)                                     # a late correction
    write = rules.settle_write(r, f, 7, {"e_phone": "X"}, judge)
    assert write is not None and write.values == {"e_phone": "B"} and write.key == {"crm_id": 7}
    assert rules.settle_write(r, f, 7, {"e_phone": "B"}, judge) is None  # already equal
    # A value the agent does not know is a newer change of the ERP on its way: left alone.
    assert rules.settle_write(r, f, 7, {"e_phone": "N"}, judge) is None


def test_conflicts_mark_the_field_for_a_check_once_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.conflicts.SETTLE_DELAY", 0.0)
    recent = RecentChanges()
    recent.record("customer", "7", "phone", "erp", T0 + timedelta(milliseconds=50), "E")
    conflicting(both("newest"), recent)
    assert recent.settled("erp") == [("customer", "7", "phone", 7)]
    assert recent.settled("crm") == [("customer", "7", "phone", 7)]
    assert recent.settled("erp") == []
