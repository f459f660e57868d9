"""Names of the agent's server objects: unique per system, within PostgreSQL's 63 bytes."""

from __future__ import annotations

from agent.wiring import Names, bounded

LONG = "a" * 40


def test_slot_and_publication_are_per_system() -> None:
    # Slots are cluster-wide: two systems in one PostgreSQL cluster (PG<->PG) must not share one.
    n = Names("crm_erp", "cdc_agent")
    assert n.slot("crm") == "cdc_agent_crm_erp_crm"
    assert n.slot("crm") != n.slot("erp")
    assert n.publication("erp") == "cdc_agent_crm_erp_erp"


def test_short_names_are_kept_as_they_are() -> None:
    assert Names("crm_erp", "s").origin("crm_to_erp") == "cdc_agent_crm_erp_crm_to_erp"
    assert Names("crm_erp", "s").origin("crm_to_erp", "_manual") == (
        "cdc_agent_crm_erp_crm_to_erp_manual")


def test_long_names_fit_63_bytes_and_stay_distinct_and_stable() -> None:
    n = Names(LONG, "s")
    direction = f"{'b' * 40}_to_{'c' * 40}"
    plain, manual = n.origin(direction), n.origin(direction, "_manual")
    assert len(plain) <= 63 and len(manual) <= 63
    assert plain != manual
    assert plain == Names(LONG, "s").origin(direction)
    assert plain.startswith("cdc_agent_aaaa")
    assert len(n.slot("x" * 40)) <= 63


def test_bounded_distinguishes_names_with_a_common_prefix() -> None:
    first, second = "p" * 70 + "1", "p" * 70 + "2"
    assert bounded(first) != bounded(second)
    assert bounded("short") == "short"
