"""Schema changes while streaming: detection, pausing and resuming (no I/O; in-memory sink)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.apply import Applier, Exchange
from agent.codec import encode_row
from agent.errors import RowError, SchemaError
from agent.events import UNCHANGED, Op, RowChange, TableId
from agent.ports import Write, WriteKind
from agent.quarantine import Poison
from agent.routes import FieldRoute, LinkKind, Route, build_route_table
from agent.rules import Judge
from agent.schema_pause import (
    SCHEMA,
    Pauses,
    SchemaDrift,
    missing_columns,
    target_drift,
)
from tests.unit.test_pipeline import CallSink

ACCOUNTS, DEALS = TableId("public", "accounts"), TableId("public", "deals")
CUSTOMERS, ORDERS = TableId("erp", "customers"), TableId("erp", "orders")
TS = datetime(2026, 1, 1, tzinfo=UTC)


def route(entity: str, source: TableId, target: TableId) -> Route:
    return Route(entity, "crm_to_erp", source, "id", target, "no", LinkKind.TARGET_HOLDS_KEY,
                 "crm_id", (FieldRoute("phone", "phone", "phone_main", "crm"),),
                 source="crm", target="erp")


CUSTOMER, ORDER = route("customer", ACCOUNTS, CUSTOMERS), route("order", DEALS, ORDERS)
ROUTES = build_route_table("crm_to_erp", [CUSTOMER, ORDER])


def upd(table: TableId, key: int, **row: object) -> RowChange:
    return RowChange(table, Op.UPDATE, new={"id": key, **row})


def test_a_row_without_a_mapped_column_is_missing_it() -> None:
    assert missing_columns(CUSTOMER, upd(ACCOUNTS, 1, phone_number="p")) == ["phone"]
    assert missing_columns(CUSTOMER, RowChange(ACCOUNTS, Op.INSERT, new={"phone": "p"})) == ["id"]


def test_added_columns_unchanged_toast_and_key_only_deletes_are_fine() -> None:
    assert missing_columns(CUSTOMER, upd(ACCOUNTS, 1, phone="p", loyalty=3)) == []
    assert missing_columns(CUSTOMER, upd(ACCOUNTS, 1, phone=UNCHANGED)) == []
    assert missing_columns(CUSTOMER, RowChange(ACCOUNTS, Op.DELETE, old={"id": 1})) == []
    assert missing_columns(CUSTOMER, RowChange(ACCOUNTS, Op.DELETE, old={"ident": 1})) == ["id"]
    assert missing_columns(CUSTOMER, RowChange(ACCOUNTS, Op.DELETE)) == []


def applier(pauses: Pauses | None = None) -> Applier:
    return Applier("crm_to_erp", ROUTES, Judge(), Exchange(), "cdc_agent",
                   pauses=pauses or Pauses("crm_to_erp", "cdc_agent", "erp"))


class RecordingSink(CallSink):
    def __init__(self) -> None:
        super().__init__("0/10")
        self.writes: list[Write] = []

    def write(self, writes: Sequence[Write]) -> None:
        super().write(writes)
        self.writes += writes


def test_the_first_change_without_the_column_pauses_its_entity_others_flow(
        caplog: pytest.LogCaptureFixture) -> None:
    a = applier()
    sink = RecordingSink()
    buffer = [(upd(ACCOUNTS, 1, phone="p0"), TS, "0/1"),
              (upd(ACCOUNTS, 1, phone_number="p1"), TS, "0/2"),
              (upd(DEALS, 7, phone="d1"), TS, "0/3"),
              (upd(ACCOUNTS, 2, phone="p2"), TS, "0/4")]  # paused: parked, though complete
    with caplog.at_level(logging.ERROR):
        a.apply(sink, buffer)
    letters = [w for w in sink.writes if w.table.name == "dead_letters"]
    assert [(w.values["key"], w.values["error_class"], w.values["position"])
            for w in letters] == [("1", SCHEMA, "0/2"), ("2", SCHEMA, "0/4")]
    assert json.loads(str(letters[0].values["payload"]))["new"]
    data = [(w.table, w.values) for w in sink.writes if w.table.name != "dead_letters"]
    assert data == [(CUSTOMERS, {"phone_main": "p0"}), (ORDERS, {"phone_main": "d1"})]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "entity customer paused: crm table public.accounts has no " \
        "column phone " in errors[0] and "reload" in errors[0]


def test_a_pause_found_in_a_batch_holds_only_once_it_commits() -> None:
    pauses = Pauses("crm_to_erp", "cdc_agent", "erp")
    assert pauses.parks(ROUTES, upd(ACCOUNTS, 1, phone_number="p"))
    pauses.rolled_back()
    assert not pauses.paused("customer")  # the replay finds it again at the same change
    assert pauses.parks(ROUTES, upd(ACCOUNTS, 1, phone_number="p"))
    pauses.committed()
    pauses.rolled_back()
    assert pauses.paused("customer") and not pauses.paused("order")


def write(entity: str, table: TableId) -> Write:
    return Write(table, WriteKind.UPDATE, {"no": 1}, {"phone_main": "x"}, {}, entity, "1")


def test_a_target_column_error_is_the_drift_of_the_writes_entity() -> None:
    error = SchemaError("unknown column phone_main", column="phone_main")
    drift = target_drift(ROUTES, [write("customer", CUSTOMERS)], None, error)
    assert isinstance(drift, SchemaDrift)
    assert (drift.entity, drift.system, drift.columns, drift.side) == (
        "customer", "erp", ("phone_main",), "target")
    mixed = [write("customer", CUSTOMERS), write("order", ORDERS)]
    unknown = target_drift(ROUTES, mixed, None, error)
    assert isinstance(unknown, Poison) and unknown.record is None  # isolate writes next time
    culprit = target_drift(ROUTES, mixed, mixed[1], error)
    assert isinstance(culprit, SchemaDrift) and culprit.entity == "order"
    state = Write(TableId("cdc_agent", "conflicts"), WriteKind.INSERT, {}, {}, {}, "order", "1")
    assert target_drift(ROUTES, [state], None, error) is None


class FailingSink(RecordingSink):
    def write(self, writes: Sequence[Write]) -> None:
        if any(w.table == CUSTOMERS for w in writes):
            raise SchemaError("MySQL error 1054: unknown column phone_main", column="phone_main")
        super().write(writes)


def test_applier_turns_a_target_schema_error_into_a_drift() -> None:
    with pytest.raises(SchemaDrift) as caught:
        applier().apply(FailingSink(), [(upd(ACCOUNTS, 1, phone="p"), TS, "0/1")])
    assert caught.value.entity == "customer" and caught.value.columns == ("phone_main",)


def letter_row(ident: int, key: int, **row: object) -> dict[str, Any]:
    """A pending schema letter of the customer entity, as the dead_letters table holds it."""
    payload = {"op": "update", "table": str(ACCOUNTS), "new": encode_row({"id": key, **row}),
               "old": None, "ts": TS.isoformat()}
    return {"id": ident, "entity": "customer", "key": str(key), "position": f"0/{ident}",
            "payload": json.dumps(payload), "error_class": SCHEMA, "status": "pending"}


def letters() -> list[dict[str, Any]]:
    return [letter_row(1, 1, phone="p1"), letter_row(2, 1, phone="p2")]


def test_resume_applies_parked_changes_first_in_order_with_the_checkpoint() -> None:
    reports: list[tuple[str, bool]] = []
    pauses = Pauses("crm_to_erp", "cdc_agent", "erp", load=letters)
    pauses.report = lambda entity, on: reports.append((entity, on))
    sink = RecordingSink()
    assert pauses.resume(applier(pauses), sink, "0/10") == 2
    assert sink.calls[0] == ("begin", "crm_to_erp") and sink.calls[-1] == ("commit", "0/10")
    data = [w.values for w in sink.writes if w.table == CUSTOMERS]
    assert data == [{"phone_main": "p1"}, {"phone_main": "p2"}]
    marks = [w for w in sink.writes if w.table.name == "dead_letters"]
    assert [(w.key, w.values["status"]) for w in marks] == [({"id": 1}, "retried"),
                                                           ({"id": 2}, "retried")]
    assert ("customer", False) in reports and not pauses.paused("customer")


def test_resume_keeps_an_entity_paused_while_its_changes_still_miss_a_column() -> None:
    stale = [letter_row(1, 1, phone_number="p1")]
    pauses = Pauses("crm_to_erp", "cdc_agent", "erp", load=lambda: stale)
    sink = RecordingSink()
    assert pauses.resume(applier(pauses), sink, "0/10") == 0
    assert sink.calls == [] and pauses.paused("customer")


def test_parked_changes_of_a_quarantined_key_wait_behind_its_letters() -> None:
    a = applier(Pauses("crm_to_erp", "cdc_agent", "erp", load=letters))
    a.quarantine.block(Poison(("customer", "1"), RowError("too_long", "x")))
    sink = RecordingSink()
    assert a.pauses.resume(a, sink, "0/10") == 0
    marks = [w.values.get("error_class") for w in sink.writes if w.table.name == "dead_letters"]
    assert marks == ["waiting", "waiting"] and sink.calls[-1] == ("commit", "0/10")


def test_a_long_pause_resumes_in_chunks_each_with_its_marks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.schema_pause.RESUME_CHUNK", 2)
    parked = [letter_row(n, 1, phone=f"p{n}") for n in range(1, 6)]
    pauses = Pauses("crm_to_erp", "cdc_agent", "erp", load=lambda: parked)
    sink = RecordingSink()
    assert pauses.resume(applier(pauses), sink, "0/10") == 5
    assert [c for c in sink.calls if c[0] == "commit"] == [("commit", "0/10")] * 3
    data = [w.values["phone_main"] for w in sink.writes if w.table == CUSTOMERS]
    assert data == ["p1", "p2", "p3", "p4", "p5"]  # in order, each once
    marks = [w.key["id"] for w in sink.writes if w.table.name == "dead_letters"]
    assert marks == [1, 2, 3, 4, 5]
