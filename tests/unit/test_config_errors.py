"""Every kind of configuration error is reported as FILE:LINE: dotted.path: message."""

from __future__ import annotations

from tests.unit.data.config_fixtures import BASE, edit, load, problems

F = "/etc/cdc-agent/agent.yaml"


def test_base_config_is_valid() -> None:
    assert load().agent.name == "t"


def test_invalid_owner_names_choices_with_file_and_line() -> None:
    text = edit("owner: erp}", "owner: sap}")
    assert problems(text) == [
        f"{F}:21: entities.customer.fields.name.owner: must be one of crm, erp, both"
    ]


def test_yaml_syntax_error_reports_parser_line() -> None:
    text = edit("  name: t\n", "  name: [t\n")
    (problem,) = problems(text)
    assert problem.startswith(f"{F}:3: invalid YAML: ")


def test_unknown_key_at_every_level() -> None:
    text = edit("  name: t\n", "  name: t\n  colour: blue\n")
    text = edit("    server_id: 7\n", "    server_id: 7\n    sever_id: 8\n", text)
    text = edit("owner: erp}", "owner: erp, ownr: crm}", text)
    assert problems(text) == [
        f"{F}:3: agent.colour: unknown key",
        f"{F}:15: systems.erp.sever_id: unknown key",
        f"{F}:23: entities.customer.fields.name.ownr: unknown key",
    ]


def test_duplicate_key_reports_the_repeat_and_the_first_line() -> None:
    text = edit("    server_id: 7\n", "    server_id: 7\n    server_id: 8\n")
    assert problems(text) == [
        f"{F}:14: systems.erp.server_id: duplicate key (first defined on line 13)"
    ]


def test_wrong_types() -> None:
    text = edit("    server_id: 7\n", "    server_id: seven\n    port: [1]\n")
    assert problems(text) == [
        f"{F}:13: systems.erp.server_id: must be a whole number",
        f"{F}:14: systems.erp.port: must be a whole number",
    ]


def test_missing_required_key_points_at_parent() -> None:
    text = edit("    server_id: 7\n", "")
    text = edit(
        "      name: {crm: name, erp: name, owner: erp}\n", "      name: {crm: name}\n", text
    )
    assert problems(text) == [
        f"{F}:8: systems.erp.server_id: is required",
        f"{F}:20: entities.customer.fields.name.erp: is required: the field's column on erp",
        f"{F}:20: entities.customer.fields.name.owner: is required",
    ]


def test_bad_names() -> None:
    text = edit("  name: t\n", "  name: Crm-Agent\n")
    text = edit("  customer:\n", "  Customer:\n", text)
    text = edit("      phone:", "      phone-no:", text)
    assert problems(text) == [
        f"{F}:2: agent.name: the agent name may only contain a-z, 0-9 and _",
        f"{F}:15: entities.Customer: names may only contain a-z, 0-9 and _",
        f"{F}:20: entities.Customer.fields.phone-no: names may only contain a-z, 0-9 and _",
    ]


def test_agent_name_length_limit() -> None:
    text = edit("  name: t\n", f"  name: {'a' * 41}\n")
    assert problems(text) == [
        f"{F}:2: agent.name: the agent name may be at most 40 characters long"
    ]


def test_unknown_engine_and_missing_engine() -> None:
    text = edit("    engine: mysql\n", "    engine: oracle\n")
    text = edit("    engine: postgresql\n", "", text)
    assert problems(text) == [
        f"{F}:4: systems.crm.engine: is required: postgresql or mysql",
        f"{F}:8: systems.erp.engine: must be one of postgresql, mysql",
    ]


def test_system_count_and_reserved_names() -> None:
    text = edit("systems:\n", "systems:\n  link: {engine: mysql}\n")
    found = problems(text)
    assert f"{F}:4: systems.link: link is a reserved word and cannot name a system" in found


def test_references_to_unknown_systems_and_directions() -> None:
    text = edit(
        "    fields:\n",
        "    create: {sap: always}\n    delete: {crm_to_sap: ignore}\n"
        "    schedule: {erp_to_crm: nightly}\n    fields:\n",
    )
    text = edit("  name: t\n", "  name: t\n  ha: sap\n", text)
    assert problems(text) == [
        f"{F}:3: agent.ha: must be one of crm, erp",
        f"{F}:20: entities.customer.create.sap: must be one of crm, erp",
        f"{F}:21: entities.customer.delete.crm_to_sap: must be one of crm_to_erp, erp_to_crm",
        f"{F}:22: entities.customer.schedule.erp_to_crm: "
        'must be continuous, manual or a cron expression like "0 2 * * *"',
    ]


def test_scalar_schedule_error_is_reported_once() -> None:
    text = edit("    fields:\n", "    schedule: sometimes\n    fields:\n")
    assert problems(text) == [
        f"{F}:19: entities.customer.schedule: "
        'must be continuous, manual or a cron expression like "0 2 * * *"'
    ]


def test_link_forms() -> None:
    assert problems(edit("{crm_column: erp_no}", "{crm_col: erp_no}")) == [
        f"{F}:18: entities.customer.link: must be one of {{crm_column: COLUMN}} or "
        "{erp_column: COLUMN} or {map: SYSTEM}"
    ]
    assert problems(edit("{crm_column: erp_no}", "{map: sap}")) == [
        f"{F}:18: entities.customer.link: must be one of crm, erp"
    ]


def test_missing_side_of_an_entity() -> None:
    text = edit("    erp: {table: customers, key: customer_no}\n", "")
    assert problems(text) == [
        f"{F}:15: entities.customer.erp: is required: {{table: TABLE, key: COLUMN}} on erp"
    ]


def test_field_rule_consistency() -> None:
    text = edit("owner: erp}", "owner: erp, conflict: crm, tie: erp}")
    text = edit("owner: both}", "owner: both, on_foreign_change: keep}", text)
    assert problems(text) == [
        f"{F}:20: entities.customer.fields.phone.on_foreign_change: "
        "only applies when owner is a system",
        f"{F}:21: entities.customer.fields.name.conflict: only applies when owner is both",
        f"{F}:21: entities.customer.fields.name.tie: only applies when owner is both",
    ]


def test_value_map_must_be_reversible_when_flowing_to_first_system() -> None:
    text = edit("owner: both}", "owner: both, values: {a: X, b: X}}")
    assert problems(text) == [
        f"{F}:20: entities.customer.fields.phone.values: maps several values to 'X'; it must "
        "be reversible because the field flows from erp to crm"
    ]
    # one way from the first system: a many-to-one map is fine
    load(edit("owner: both}", "owner: crm, values: {a: X, b: X}}"))


def test_column_used_twice_on_one_side() -> None:
    text = edit("{crm: name, erp: name,", "{crm: phone, erp: name,")
    assert problems(text) == [
        f"{F}:21: entities.customer.fields.name.crm: column phone is already used by "
        "fields.phone.crm"
    ]


def test_table_mapped_by_two_entities() -> None:
    text = BASE + (
        "  other:\n"
        "    crm: {table: public.accounts, key: id}\n"
        "    erp: {table: others, key: id}\n"
        "    link: {map: erp}\n"
        "    fields: {x: {crm: x, erp: x, owner: crm}}\n"
    )
    assert problems(text) == [
        f"{F}:23: entities.other.crm.table: table public.accounts is already mapped by "
        "entity customer"
    ]


def test_nul_in_identifiers_is_rejected_but_odd_characters_are_fine() -> None:
    config = load(edit("{crm: phone,", '{crm: "Phone No. (main)",'))
    assert config.entities["customer"].fields["phone"].columns["crm"] == "Phone No. (main)"
    assert problems(edit("{crm: phone,", '{crm: "ph\\0one",')) == [
        f"{F}:20: entities.customer.fields.phone.crm: must not contain a NUL character"
    ]


def test_bad_table_names() -> None:
    assert problems(edit("table: accounts,", "table: a.b.c,")) == [
        f"{F}:16: entities.customer.crm.table: too many dots: quote names that contain dots "
        '("schema"."na.me")'
    ]


def test_many_errors_at_once_sorted_by_line() -> None:
    text = edit("  name: t\n", "  name: T\n  heartbeat_interval: soon\n")
    text = edit("    server_id: 7\n", "    server_id: 0\n    timezone: Mars/Base\n", text)
    text = edit("owner: erp}", "owner: nobody}", text)
    found = problems(text)
    assert found == [
        f"{F}:2: agent.name: the agent name may only contain a-z, 0-9 and _",
        f"{F}:3: agent.heartbeat_interval: must be a duration: "
        '"50ms", "10s", "5m", "1h", or a plain number of seconds',
        f"{F}:14: systems.erp.server_id: must be >= 1",
        f"{F}:15: systems.erp.timezone: must be an IANA time zone name like UTC or Europe/Berlin",
        f"{F}:23: entities.customer.fields.name.owner: must be one of crm, erp, both",
    ]


def test_top_level_must_be_a_mapping_and_not_empty() -> None:
    assert problems("- a\n- b\n") == [f"{F}:1: (top level): must be a mapping"]
    assert problems("# nothing\n") == [f"{F}:1: the file is empty"]


def test_yaml_12_scalars_keep_yes_no_on_off_as_text() -> None:
    config = load(edit("owner: both}", "owner: both, values: {yes: on, no: off, NO: 010}}"))
    values = config.entities["customer"].fields["phone"].values
    assert values == {"yes": "on", "no": "off", "NO": 10}


def test_exactly_two_systems_even_when_a_system_is_invalid() -> None:
    found = problems(edit("entities:\n", "  sap:\n    engine: mysql\nentities:\n"))
    assert found[0] == f"{F}:3: systems: must name exactly two systems (found 3)"
    assert f"{F}:14: systems.sap.server_id: is required" in found
    erp = "  erp:\n    engine: mysql\n    host: localhost\n    database: erp\n    user: agent\n"
    one = edit(erp + "    server_id: 7\n", "")
    assert problems(one)[0] == f"{F}:3: systems: must name exactly two systems (found 1)"


def test_create_defaults_and_flag_errors() -> None:
    text = edit(
        "    fields:\n",
        "    create: {erp: {when: {}}, crm: {when: {stage: []}, mode: x}}\n"
        "    defaults: {sap: {a: 1}, erp: {b: [1]}}\n"
        "    delete: {crm_to_erp: {flag: {column: a}}}\n"
        "    fields:\n",
    )
    assert problems(text) == [
        f"{F}:19: entities.customer.create.erp.when: must name at least one column",
        f"{F}:19: entities.customer.create.crm.when.stage: must list at least one value",
        f"{F}:19: entities.customer.create.crm.mode: unknown key",
        f"{F}:20: entities.customer.defaults.sap: must be one of crm, erp",
        f"{F}:20: entities.customer.defaults.erp.b: "
        "must be a single value (text, number, true/false or null)",
        f"{F}:21: entities.customer.delete.crm_to_erp.flag.value: is required",
    ]


def test_system_names_are_at_most_40_characters() -> None:
    # Direction names like <a>_to_<b>_manual are stored in the checkpoints table (varchar(100)).
    text = BASE.replace("erp", "e" * 41)
    assert problems(text) == [
        f"{F}:8: systems.{'e' * 41}: system names may be at most 40 characters long"
    ]
