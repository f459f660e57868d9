"""Metric names, bounded label sets and the heartbeat lag."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import DIRECTION_STATES, Metrics, retry_kind

SYSTEMS = ("crm", "erp")
DIRECTIONS = ("crm_to_erp", "erp_to_crm")
ENTITIES = {"customer": ("name", "phone"), "order": ("total",)}


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _metrics(clock: FakeClock | None = None) -> Metrics:
    return Metrics(SYSTEMS, DIRECTIONS, ENTITIES, clock=clock or FakeClock())


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return _samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_names_are_prefixed_and_complete() -> None:
    body, content_type = _metrics().exposition()
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert content_type.startswith("text/plain")
    assert all(name.startswith("cdc_agent_") for name in families)
    assert {
        "cdc_agent_build_info",
        "cdc_agent_connected",
        "cdc_agent_lag_seconds",
        "cdc_agent_end_to_end_latency_seconds",
        "cdc_agent_applied_transactions",
        "cdc_agent_applied_rows",
        "cdc_agent_skipped_changes",
        "cdc_agent_conflicts",
        "cdc_agent_open_conflicts",
        "cdc_agent_quarantined_rows",
        "cdc_agent_quarantined",
        "cdc_agent_retries",
        "cdc_agent_slot_retained_wal_bytes",
        "cdc_agent_binlog_bytes_behind",
        "cdc_agent_staged_changes",
        "cdc_agent_config_reload_success",
        "cdc_agent_config_reload_timestamp_seconds",
        "cdc_agent_direction_state",
        "cdc_agent_last_apply_timestamp_seconds",
    } <= families


def test_own_registry_not_the_global_one() -> None:
    first, second = _metrics(), _metrics()
    first.record_apply("crm_to_erp", 1, 5)
    assert _value(second, "cdc_agent_applied_rows_total", direction="crm_to_erp") == 0
    assert (
        REGISTRY.get_sample_value("cdc_agent_applied_rows_total", {"direction": "crm_to_erp"})
        is None
    )


def test_series_exist_at_zero_before_first_event() -> None:
    metrics = _metrics()
    for reason in ("loop", "ownership", "filter", "noop"):
        assert (
            _value(
                metrics, "cdc_agent_skipped_changes_total", direction="erp_to_crm", reason=reason
            )
            == 0
        )
    assert (
        _value(metrics, "cdc_agent_direction_state", direction="crm_to_erp", state="starting") == 1
    )


def _record_everything(metrics: Metrics, key: int) -> None:
    """What the pipeline records for one change of row ``key``; the key itself has nowhere to go."""
    direction = DIRECTIONS[key % 2]
    metrics.record_apply(direction, 1, 3, [0.002 * (key % 7)])
    metrics.skipped(direction, ("loop", "ownership", "filter", "noop")[key % 4])
    metrics.conflict("customer", "phone", ("newest", "manual", "revert", "keep", "erp")[key % 5])
    metrics.set_open_conflicts(("customer", "order")[key % 2], key)
    metrics.quarantine(direction)
    metrics.set_quarantined_rows(direction, key)
    metrics.retry(direction, "deadlock")
    metrics.set_connected(SYSTEMS[key % 2], True)
    metrics.set_staged_changes(direction, key)
    metrics.set_slot_retained_wal_bytes("crm", key * 100)
    metrics.set_binlog_bytes_behind("erp", key * 10)
    metrics.heartbeat_written(direction, float(key))
    metrics.heartbeat_applied(direction, float(key))


def test_series_count_stays_flat_over_many_keys() -> None:
    metrics = _metrics()
    for key in range(20):  # every label combination the loop can reach
        _record_everything(metrics, key)
    before = len(_samples(metrics))
    for key in range(20, 5020):
        _record_everything(metrics, key)
    assert len(_samples(metrics)) == before
    assert _value(metrics, "cdc_agent_applied_rows_total", direction="crm_to_erp") == 3 * 2510


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.set_connected("crm-db.example.com", True),
        lambda m: m.record_apply("public.accounts", 1, 1),
        lambda m: m.skipped("crm_to_erp", "because"),
        lambda m: m.conflict("customer", "phone", "42"),
        lambda m: m.conflict("customer", "street", "newest"),
        lambda m: m.conflict("invoice", "phone", "newest"),
        lambda m: m.set_open_conflicts("invoice", 1),
        lambda m: m.set_direction_state("crm_to_erp", "confused"),
    ],
)
def test_label_values_outside_their_sets_are_refused(call: Callable[[Metrics], object]) -> None:
    metrics = _metrics()
    with pytest.raises(ValueError, match="unknown"):
        call(metrics)


def test_direction_state_is_one_hot() -> None:
    metrics = _metrics()
    metrics.set_direction_state("crm_to_erp", "streaming")
    states = {
        s: _value(metrics, "cdc_agent_direction_state", direction="crm_to_erp", state=s)
        for s in DIRECTION_STATES
    }
    assert states == {
        "starting": 0, "streaming": 1, "staging": 0, "retrying": 0, "stopped": 0, "failed": 0
    }  # fmt: skip


def test_lag_from_heartbeats_grows_while_one_is_outstanding() -> None:
    clock = FakeClock(1000.0)
    metrics = _metrics(clock)
    metrics.heartbeat_written("crm_to_erp", 1000.0)
    clock.now = 1000.05
    metrics.heartbeat_applied("crm_to_erp", 1000.0)
    assert _value(metrics, "cdc_agent_lag_seconds", direction="crm_to_erp") == pytest.approx(0.05)
    metrics.heartbeat_written("crm_to_erp", 1010.0)
    clock.now = 1025.0  # the second heartbeat is stuck somewhere
    assert _value(metrics, "cdc_agent_lag_seconds", direction="crm_to_erp") == pytest.approx(15)
    metrics.heartbeat_applied("crm_to_erp", 1010.0)
    clock.now = 1030.0  # caught up: the measured value stands, not the time since
    assert _value(metrics, "cdc_agent_lag_seconds", direction="crm_to_erp") == pytest.approx(15)
    assert _value(metrics, "cdc_agent_lag_seconds", direction="erp_to_crm") == 0


def test_latency_histogram_and_last_apply() -> None:
    clock = FakeClock(2000.0)
    metrics = _metrics(clock)
    metrics.record_apply("erp_to_crm", 2, 7, [0.004, -0.5])
    name = "cdc_agent_end_to_end_latency_seconds_bucket"
    assert _value(metrics, name, direction="erp_to_crm", le="0.001") == 1  # clamped skew
    assert _value(metrics, name, direction="erp_to_crm", le="0.005") == 2
    assert _value(metrics, name, direction="erp_to_crm", le="30.0") == 2
    assert _value(metrics, "cdc_agent_last_apply_timestamp_seconds", direction="erp_to_crm") == 2000


def test_failed_reload_keeps_the_last_good_timestamp() -> None:
    clock = FakeClock(3000.0)
    metrics = _metrics(clock)
    metrics.config_loaded(True)
    clock.now = 3100.0
    metrics.config_loaded(False)
    assert _value(metrics, "cdc_agent_config_reload_success") == 0
    assert _value(metrics, "cdc_agent_config_reload_timestamp_seconds") == 3000


def test_openmetrics_when_asked() -> None:
    body, content_type = _metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


class FakePgError(Exception):
    """Shaped like psycopg's errors: a ``sqlstate`` attribute."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__("driver message")
        self.sqlstate = sqlstate


def _wrapped(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("transient") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_wrapped(FakePgError("40P01")), "deadlock"),
        (_wrapped(FakePgError("55P03")), "lock_timeout"),
        (_wrapped(FakePgError("40001")), "serialization"),
        (_wrapped(FakePgError("57P01")), "connection"),
        (_wrapped(Exception(1213, "Deadlock found when trying to get lock")), "deadlock"),
        (_wrapped(Exception(1205, "Lock wait timeout exceeded")), "lock_timeout"),
        (_wrapped(Exception(2013, "Lost connection to server during query")), "connection"),
        (_wrapped(ConnectionResetError()), "connection"),
        (_wrapped(FakePgError("23505")), "other"),
        (RuntimeError("no cause"), "other"),
    ],
)
def test_retry_kind_classifies_wrapped_driver_errors(error: BaseException, kind: str) -> None:
    assert retry_kind(error) == kind


def test_retry_accepts_errors_and_folds_unknown_kinds_into_other() -> None:
    metrics = _metrics()
    metrics.retry("crm_to_erp", _wrapped(FakePgError("40P01")))
    metrics.retry("crm_to_erp", "TransientError")
    metrics.retry("crm_to_erp", "deadlock")
    name = "cdc_agent_retries_total"
    assert _value(metrics, name, direction="crm_to_erp", kind="deadlock") == 2
    assert _value(metrics, name, direction="crm_to_erp", kind="other") == 1


def test_a_reload_declares_new_directions_entities_and_fields() -> None:
    metrics = _metrics()
    with pytest.raises(ValueError):
        metrics.conflict("invoice", "total", "newest")
    metrics.heartbeat_applied("crm_to_erp", 1.0)
    metrics.declare(["crm", "erp", "wms"], ["crm_to_wms"], {"invoice": ["total"]})
    metrics.conflict("invoice", "total", "newest")
    metrics.skipped("crm_to_wms", "loop")
    assert _value(metrics, "cdc_agent_conflicts_total", entity="invoice", field="total",
                  resolution="newest") == 1
    assert _value(metrics, "cdc_agent_open_conflicts", entity="invoice") == 0
    assert _value(metrics, "cdc_agent_applied_rows_total", direction="crm_to_wms") == 0
    # What the first configuration declared keeps working.
    metrics.conflict(*next((e, f) for e, fs in ENTITIES.items() for f in fs), "newest")
    metrics.skipped(DIRECTIONS[0], "loop")
