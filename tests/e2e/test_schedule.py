"""A cron-scheduled direction: changes are staged net on the ERP and applied at the window."""

from __future__ import annotations

import copy
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import apply_ddl, crm_rows, erp_rows
from tests.e2e.test_push import CONTACT, CRM, ERP, ORDER, Shop
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def test_scheduled_direction_stages_net_changes_until_the_window(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> None:
    apply_ddl(pg_db, maria_db, CRM, ERP)
    order: dict[str, Any] = copy.deepcopy(ORDER)
    order["schedule"] = {"crm_to_erp": "0 2 * * *"}
    setup = AgentSetup(tmp_path, "c" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"order": order, "contact": CONTACT})
    setup.write()
    assert setup.cli("setup").returncode == 0
    clock = tmp_path / "clock"
    clock.write_text("2030-01-01T01:00:00+00:00")
    env = {"CDC_AGENT_CLOCK_FILE": str(clock)}
    agent = AgentProcess(setup, env=env)
    shop = Shop(setup, agent)
    schema = setup.state_schema
    slot = f"cdc_agent_{setup.name}_crm"

    def confirmed() -> int:
        row = crm_rows(pg_db, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                              " WHERE slot_name = %s", (slot,))
        return _lsn(row[0][0])

    def staged() -> list[tuple[Any, ...]]:
        return erp_rows(maria_db, f"SELECT entity, op FROM {schema}.staged_changes ORDER BY id")

    try:
        agent.wait_streaming()
        deal = shop.crm_do("INSERT INTO deals (title, amount) VALUES ('Draft', 1) RETURNING id")[0]
        shop.crm_do("UPDATE deals SET title = 'Second' WHERE id = %s", deal)
        shop.crm_do("UPDATE deals SET amount = 250.00 WHERE id = %s", deal)
        gone = shop.crm_do("INSERT INTO deals (title, amount) VALUES ('Gone', 5) RETURNING id")[0]
        shop.crm_do("DELETE FROM deals WHERE id = %s", gone)
        after_edits = _lsn(shop.crm_do("SELECT pg_current_wal_lsn()::text")[0])
        shop.read_marker("m1")
        assert shop.order(deal) is None and shop.order(gone) is None
        assert staged() == [("order", "upsert"), ("order", "delete")] or sorted(staged()) == [
            ("order", "delete"), ("order", "upsert")]
        wait_until(lambda: confirmed() >= after_edits, timeout=10,
                   message="the slot did not advance while changes were staged")

        assert agent.stop() == 0
        shop.crm_do("UPDATE deals SET title = 'Final' WHERE id = %s", deal)  # while down
        agent = AgentProcess(setup, env=env)
        shop.agent = agent
        agent.wait_streaming()
        shop.read_marker("m2")
        assert shop.order(deal) is None and len(staged()) == 2

        clock.write_text("2030-01-01T02:00:01+00:00")
        row = wait_until(lambda: shop.order(deal), timeout=5,
                         message="the staged order was not applied at the window")
        assert row == ("Final", Decimal("250.00"), "new")  # net: the last value of each field
        assert shop.order(gone) is None
        wait_until(lambda: not staged(), timeout=5, message="staged rows were not deleted")
        assert erp_rows(maria_db, "SELECT count(*) FROM sales_orders")[0][0] == 1
        assert "applied 2 staged order records" in agent.log()
    finally:
        agent.stop()
        print(agent.log()[-4000:])
