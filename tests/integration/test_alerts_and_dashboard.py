"""Alert rules (promtool check + promtool unit tests) and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
GIB = 1024**3


def _tool(name: str) -> str:
    """Path of an ops tool; in CI (where bootstrap installs it) its absence is a failure."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; scripts/install-ops-tools.sh installs it")
        pytest.skip(f"{name} is not installed (bash scripts/install-ops-tools.sh)")
    return path


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_every_alert_is_documented() -> None:
    names = set()
    for rule in _rules():
        names.add(rule["alert"])
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert re.fullmatch(r"docs/operations\.md#[a-z0-9-]+", annotations["runbook_url"])
        assert rule["labels"]["severity"] in ("warning", "critical")
    assert {
        "CdcAgentDown",
        "CdcAgentLagHigh",
        "CdcAgentDirectionNotStreaming",
        "CdcAgentQuarantinedRows",
        "CdcAgentEntityPaused",
        "CdcAgentConflictsParked",
        "CdcAgentSlotRetainedWalHigh",
        "CdcAgentBinlogBehindHigh",
        "CdcAgentConfigReloadFailed",
    } <= names


# (alert, input series -> values, eval time, labels of the one expected alert, its summary)
CASES: list[tuple[str, dict[str, str], str, dict[str, str] | None, str]] = [
    ("CdcAgentDown", {'up{job="cdc-agent"}': "0x5"}, "2m", {"job": "cdc-agent"},
     "cdc-agent a is down or unreachable"),
    ("CdcAgentDown", {'up{job="cdc-agent"}': "1x5"}, "2m", None, ""),
    ("CdcAgentLagHigh", {'cdc_agent_lag_seconds{direction="crm_to_erp"}': "0 120x10"}, "10m",
     {"direction": "crm_to_erp"}, "crm_to_erp lags 2m 0s on a"),
    ("CdcAgentLagHigh", {'cdc_agent_lag_seconds{direction="crm_to_erp"}': "0.02x10"}, "10m",
     None, ""),
    ("CdcAgentLagCritical", {'cdc_agent_lag_seconds{direction="erp_to_crm"}': "1000x15"},
     "15m", {"direction": "erp_to_crm"}, "erp_to_crm lags 16m 40s on a"),
    ("CdcAgentDirectionNotStreaming",
     {'cdc_agent_direction_state{direction="crm_to_erp",state="streaming"}': "0x8",
      'cdc_agent_direction_state{direction="crm_to_erp",state="staging"}': "0x8",
      'cdc_agent_direction_state{direction="crm_to_erp",state="failed"}': "1x8",
      'cdc_agent_direction_state{direction="erp_to_crm",state="streaming"}': "0x8",
      'cdc_agent_direction_state{direction="erp_to_crm",state="staging"}': "1x8"},
     "6m", {"direction": "crm_to_erp"}, "crm_to_erp is not streaming on a"),
    ("CdcAgentDisconnected", {'cdc_agent_connected{system="erp"}': "0x5"}, "3m",
     {"system": "erp"}, "cdc-agent on a has lost erp"),
    ("CdcAgentQuarantinedRows", {'cdc_agent_quarantined_rows{direction="crm_to_erp"}': "3x5"},
     "2m", {"direction": "crm_to_erp"}, "3 rows quarantined in crm_to_erp on a"),
    ("CdcAgentEntityPaused",
     {'cdc_agent_entity_paused{entity="customer",direction="crm_to_erp"}': "1x5"}, "2m",
     {"entity": "customer", "direction": "crm_to_erp"}, "customer paused in crm_to_erp on a"),
    ("CdcAgentConflictsParked", {'cdc_agent_open_conflicts{entity="customer"}': "2x8"}, "6m",
     {"entity": "customer"}, "2 customer conflicts wait for a person on a"),
    ("CdcAgentSlotRetainedWalHigh",
     {'cdc_agent_slot_retained_wal_bytes{system="crm"}': f"{12 * GIB}x12"}, "11m",
     {"system": "crm"}, "slot on crm retains 12GiB of WAL"),
    ("CdcAgentBinlogBehindHigh",
     {'cdc_agent_binlog_bytes_behind{system="erp"}': f"{2 * GIB}x12"}, "11m",
     {"system": "erp"}, "reader is 2GiB behind the binlog of erp"),
    ("CdcAgentConfigReloadFailed", {"cdc_agent_config_reload_success": "1 0x3"}, "3m", {},
     "cdc-agent on a rejected its new configuration"),
    ("CdcAgentConfigReloadFailed", {"cdc_agent_config_reload_success": "0 1x3"}, "3m", None,
     ""),
]  # fmt: skip


def _with_instance(series: str) -> str:
    """Every scraped series carries instance and job; add them to the test input."""
    name, _, labels = series.partition("{")
    labels = labels.rstrip("}")
    extra = 'instance="a"' + ("" if "job=" in labels else ',job="cdc-agent"')
    return f"{name}{{{extra}{',' + labels if labels else ''}}}"


def _expected(alert: str, labels: dict[str, str] | None, summary: str) -> list[dict[str, Any]]:
    if labels is None:
        return []
    rule = next(r for r in _rules() if r["alert"] == alert)
    all_labels = {"instance": "a", **labels, "severity": rule["labels"]["severity"]}
    if alert != "CdcAgentDirectionNotStreaming":  # that one aggregates job away
        all_labels.setdefault("job", "cdc-agent")
    description = re.sub(
        r"\{\{ \$labels\.(\w+) \}\}", lambda m: all_labels[m.group(1)],
        rule["annotations"]["description"],
    )  # fmt: skip
    annotations = {
        "summary": summary,
        "description": description,
        "runbook_url": rule["annotations"]["runbook_url"],
    }
    return [{"exp_labels": all_labels, "exp_annotations": annotations}]


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {"series": _with_instance(series), "values": values}
                for series, values in inputs.items()
            ],
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": _expected(alert, labels, summary),
                }
            ],
        }
        for alert, inputs, at, labels, summary in CASES
    ]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "tests": tests}))
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _exposed_names() -> set[str]:
    metrics = Metrics(("crm", "erp"), ("crm_to_erp", "erp_to_crm"), {"customer": ("phone",)})
    metrics.conflict("customer", "phone", "newest")
    metrics.retry("crm_to_erp", "deadlock")
    metrics.set_slot_retained_wal_bytes("crm", 1)  # per engine: not created up front
    metrics.set_binlog_bytes_behind("erp", 1)
    body, _ = metrics.exposition()
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _referenced(text: str) -> set[str]:
    return set(re.findall(r"\bcdc_agent_[a-z0-9_]+", text))


def test_alerts_use_only_metrics_that_exist() -> None:
    exprs = " ".join(rule["expr"] for rule in _rules())
    missing = _referenced(exprs) - _exposed_names()
    assert not missing


def test_dashboard_queries_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    referenced = _referenced(" ".join(exprs))
    assert not referenced - _exposed_names()
    for required in (
        "cdc_agent_lag_seconds",
        "cdc_agent_end_to_end_latency_seconds_bucket",
        "cdc_agent_applied_rows_total",
        "cdc_agent_skipped_changes_total",
        "cdc_agent_conflicts_total",
        "cdc_agent_quarantined_rows",
        "cdc_agent_slot_retained_wal_bytes",
        "cdc_agent_binlog_bytes_behind",
    ):
        assert required in referenced
    assert any("histogram_quantile(0.99" in expr for expr in exprs)
    assert all('instance=~"$instance"' in expr for expr in exprs)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
