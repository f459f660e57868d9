"""Checking the configuration against a described catalog."""

from __future__ import annotations

from agent.config import check_catalog, mapped_columns, mapped_tables
from agent.events import TableId
from tests.unit.data.config_fixtures import edit, load

F = "/etc/cdc-agent/agent.yaml"
RULES = (
    "    create: {erp: {when: {stage: [customer]}}}\n"
    "    delete: {erp_to_crm: {flag: {column: active, value: false}}}\n"
    "    defaults: {erp: {currency: EUR}}\n"
    "    fields:\n"
)
ACCOUNTS = TableId("public", "accounts")
CUSTOMERS = TableId("erp", "customers")


def test_mapped_tables_and_columns() -> None:
    config = load(edit("    fields:\n", RULES))
    assert mapped_tables(config, "crm") == [ACCOUNTS]
    assert mapped_columns(config, "crm") == {
        ACCOUNTS: ["id", "erp_no", "phone", "name", "stage", "active"]
    }
    assert mapped_columns(config, "erp") == {
        CUSTOMERS: ["customer_no", "phone_main", "name", "currency"]
    }


def test_complete_catalog_has_no_problems() -> None:
    config = load(edit("    fields:\n", RULES))
    described = {
        ACCOUNTS: dict.fromkeys(["id", "erp_no", "phone", "name", "stage", "active"], "text"),
        CUSTOMERS: dict.fromkeys(["customer_no", "phone_main", "name", "currency"], "text"),
    }
    assert check_catalog(config, "crm", described) == []
    assert check_catalog(config, "erp", described) == []


def test_missing_table_is_reported_once() -> None:
    config = load(edit("    fields:\n", RULES))
    assert check_catalog(config, "erp", {TableId("erp", "Customers"): {}}) == [
        f"{F}:17: entities.customer.erp.table: table erp.customers does not exist "
        "(did you mean erp.Customers?)"
    ]


def test_missing_columns_are_located() -> None:
    config = load(edit("    fields:\n", RULES))
    described = {ACCOUNTS: {"id": "integer", "Phone": "text", "name": "text"}}
    assert check_catalog(config, "crm", described) == [
        f"{F}:18: entities.customer.link.crm_column: column public.accounts.erp_no does not exist",
        f"{F}:19: entities.customer.create.erp.when.stage: column public.accounts.stage does "
        "not exist",
        f"{F}:20: entities.customer.delete.erp_to_crm.flag.column: column public.accounts.active "
        "does not exist",
        f"{F}:23: entities.customer.fields.phone.crm: column public.accounts.phone does not "
        "exist (did you mean Phone?)",
    ]
