"""Defaults, helpers, the shipped example and the generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config import (
    AgentSettings,
    BatchSettings,
    Config,
    CreateRule,
    DeleteRule,
    Direction,
    EntityConfig,
    FieldConfig,
    FlagSpec,
    LinkConfig,
    MysqlSystem,
    PostgresSystem,
    Schedule,
    TableRef,
    TlsSettings,
    load_config,
    reference_markdown,
)
from agent.config.yamlsrc import parse
from tests.unit.data.config_fixtures import edit, load

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def test_agent_and_system_defaults() -> None:
    config = load()
    agent = config.agent
    assert (agent.state_schema, str(agent.metrics_listen), agent.heartbeat_interval) == (
        "cdc_agent",
        "127.0.0.1:9464",
        10.0,
    )
    assert (agent.metrics_listen.host, agent.metrics_listen.port) == ("127.0.0.1", 9464)
    assert (agent.batch.max_rows, agent.batch.max_delay, agent.ha) == (5000, 0.02, None)
    erp = config.systems["erp"]
    assert isinstance(erp, MysqlSystem)
    assert (erp.port, erp.timezone, erp.tls, erp.connect_timeout, erp.password) == (
        3306,
        "UTC",
        None,
        10.0,
        None,
    )


def test_entity_defaults() -> None:
    customer = load().entities["customer"]
    # phone (both) flows to each side: rows are created on both by default
    assert {s: r.mode for s, r in customer.create.items()} == {"crm": "always", "erp": "always"}
    assert {d: r.mode for d, r in customer.delete.items()} == {
        "crm_to_erp": "propagate",
        "erp_to_crm": "propagate",
    }
    assert {d: s.mode for d, s in customer.schedule.items()} == {
        "crm_to_erp": "continuous",
        "erp_to_crm": "continuous",
    }
    assert customer.on_error == "quarantine"
    phone, name = customer.fields["phone"], customer.fields["name"]
    assert (phone.conflict, phone.tie, phone.on_foreign_change) == ("newest", "crm", "revert")
    assert (name.owner, name.tie, name.values) == ("erp", None, {})


def test_create_default_is_never_on_a_side_that_receives_nothing() -> None:
    text = edit("owner: both}", "owner: erp}")
    customer = load(text).entities["customer"]
    assert {s: r.mode for s, r in customer.create.items()} == {"crm": "always", "erp": "never"}


def test_scalar_rules_apply_to_every_direction_and_mappings_fill_defaults() -> None:
    text = edit(
        "    fields:\n",
        "    delete: ignore\n    schedule: {erp_to_crm: '*/5 * * * *'}\n    fields:\n",
    )
    customer = load(text).entities["customer"]
    assert {d: r.mode for d, r in customer.delete.items()} == {
        "crm_to_erp": "ignore",
        "erp_to_crm": "ignore",
    }
    assert customer.schedule["erp_to_crm"] == Schedule.model_validate("*/5 * * * *")
    assert customer.schedule["erp_to_crm"].cron == "*/5 * * * *"
    assert customer.schedule["crm_to_erp"].mode == "continuous"


def test_create_when_and_delete_flag_forms() -> None:
    text = edit(
        "    fields:\n",
        "    create: {erp: {when: {stage: [customer, partner], erp_no: {not: null}}}, crm: never}\n"
        "    delete: {erp_to_crm: {flag: {column: active, value: false}}}\n"
        "    fields:\n",
    )
    customer = load(text).entities["customer"]
    when = customer.create["erp"].when
    assert when["stage"].holds("partner") and not when["stage"].holds("prospect")
    assert when["erp_no"].holds(7) and not when["erp_no"].holds(None)
    assert customer.create["crm"] == CreateRule.model_validate("never")
    assert customer.delete["erp_to_crm"].flag == FlagSpec(column="active", value=False)


def test_link_forms() -> None:
    link = load().entities["customer"].link
    assert (link.kind, link.side, link.column) == ("column", "crm", "erp_no")
    link = load(edit("{crm_column: erp_no}", "{map: erp}")).entities["customer"].link
    assert (link.kind, link.side, link.column) == ("map", "erp", None)


def test_value_map_direction_rule() -> None:
    text = edit("owner: both}", "owner: both, values: {customer: C, partner: P}}")
    phone = load(text).entities["customer"].fields["phone"]
    assert phone.value_map("crm", "crm") == {"customer": "C", "partner": "P"}
    assert phone.value_map("erp", "crm") == {"C": "customer", "P": "partner"}
    assert phone.flows_from("crm") and phone.flows_from("erp")


def test_directions_where_and_other() -> None:
    config = load()
    assert config.directions() == [
        Direction("crm_to_erp", "crm", "erp"),
        Direction("erp_to_crm", "erp", "crm"),
    ]
    assert config.other("crm") == "erp"
    assert config.where("entities.customer.fields.phone.owner") == "/etc/cdc-agent/agent.yaml:20"
    assert config.where("entities.customer.crm.table") == "/etc/cdc-agent/agent.yaml:16"
    # absent keys resolve to the nearest parent present in the file
    assert config.where("entities.customer.delete.crm_to_erp") == "/etc/cdc-agent/agent.yaml:15"
    assert config.where("nothing.here") == "/etc/cdc-agent/agent.yaml:1"


def test_models_are_frozen() -> None:
    config = load()
    with pytest.raises(ValueError, match="frozen"):
        config.agent.name = "x"


def _example_env(tmp_path: Path) -> dict[str, str]:
    for name in ("crm", "erp"):
        (tmp_path / name).write_text(f"{name}-password\n", encoding="utf-8")
        (tmp_path / name).chmod(0o600)
    return {"CREDENTIALS_DIRECTORY": str(tmp_path)}


def test_example_file_loads(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, _example_env(tmp_path))
    assert list(config.systems) == ["crm", "erp"]
    assert isinstance(config.systems["crm"], PostgresSystem)
    assert list(config.entities) == ["customer", "order"]
    assert config.entities["order"].schedule["crm_to_erp"].mode == "manual"
    erp = config.systems["erp"]
    assert erp.password is not None and erp.password.get_secret_value() == "erp-password"


_MODELS: list[type[BaseModel]] = [
    Config,
    AgentSettings,
    BatchSettings,
    PostgresSystem,
    MysqlSystem,
    TlsSettings,
    EntityConfig,
    TableRef,
    LinkConfig,
    CreateRule,
    DeleteRule,
    FlagSpec,
    Schedule,
    FieldConfig,
]


def test_every_setting_has_a_description() -> None:
    for model in _MODELS:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"


def test_reference_mentions_every_key() -> None:
    text = reference_markdown()
    for model in _MODELS:
        for name, info in model.model_fields.items():
            key = info.alias or name
            if key.startswith("@"):
                continue
            assert f".{key}` |" in text or f"`{key}` |" in text, f"{model.__name__}.{key}"
    assert "`entities.<entity>.<system>`" in text
    assert "`entities.<entity>.fields.<field>.<system>`" in text


def test_reference_covers_every_key_of_the_example() -> None:
    text = reference_markdown()
    doc = parse(EXAMPLE.read_text(encoding="utf-8"), {"CREDENTIALS_DIRECTORY": "/x"})
    for path in doc.lines:
        generic = _generic(path)
        if generic:
            assert f"`{generic}`" in text, generic


def _generic(path: tuple[str | int, ...]) -> str:
    """The reference's name for a path: system, entity, field and direction names generalised."""
    names = {"crm": "<system>", "erp": "<system>", "customer": "<entity>", "order": "<entity>"}
    parts: list[str] = []
    for index, elem in enumerate(path):
        if not isinstance(elem, str):
            return ""
        if index >= 1 and path[index - 1] == "fields":
            elem = "<field>"
        elif elem.endswith("_to_erp") or elem.endswith("_to_crm"):
            elem = "<direction>"
        elif path[:1] in (("systems",), ("entities",)) and elem in names:
            elem = names[elem]
        parts.append(elem)
        # below these the keys are column names or values, not settings
        if elem in ("when", "defaults", "values", "link") or parts[-2:-1] == ["link"]:
            return ".".join(parts)
    return ".".join(parts)
