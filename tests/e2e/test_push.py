"""On-demand transfer: a `manual` order entity moves only when pushed (CLI or push_requests)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import apply_ddl, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

CRM = """
CREATE TABLE public.deals (
    id            serial PRIMARY KEY,
    title         text NOT NULL,
    amount        numeric(12, 2) NOT NULL,
    erp_status    text NOT NULL DEFAULT 'new'
);
ALTER TABLE public.deals REPLICA IDENTITY FULL;
CREATE TABLE public.contacts (id serial PRIMARY KEY, name text NOT NULL);
ALTER TABLE public.contacts REPLICA IDENTITY FULL;
"""

ERP = [
    """CREATE TABLE sales_orders (
        order_no     int AUTO_INCREMENT PRIMARY KEY,
        crm_deal_id  int UNIQUE,
        title        varchar(200) NOT NULL,
        amount       decimal(12, 2) NOT NULL,
        status       varchar(20) NOT NULL DEFAULT 'new'
    ) AUTO_INCREMENT = 5001""",
    "CREATE TABLE contacts (no int AUTO_INCREMENT PRIMARY KEY, crm_id int UNIQUE,"
    " name varchar(200) NOT NULL)",
]

ORDER: dict[str, Any] = {
    "crm": {"table": "public.deals", "key": "id"},
    "erp": {"table": "sales_orders", "key": "order_no"},
    "link": {"erp_column": "crm_deal_id"},
    "create": {"crm": "never"},
    "fields": {
        "title": {"crm": "title", "erp": "title", "owner": "crm"},
        "amount": {"crm": "amount", "erp": "amount", "owner": "crm"},
        "status": {"crm": "erp_status", "erp": "status", "owner": "erp"},
    },
    "schedule": {"crm_to_erp": "manual"},
}

CONTACT: dict[str, Any] = {  # flows continuously: a marker that the CRM's log was read
    "crm": {"table": "public.contacts", "key": "id"},
    "erp": {"table": "contacts", "key": "no"},
    "link": {"erp_column": "crm_id"},
    "create": {"crm": "never"},
    "fields": {"name": {"crm": "name", "erp": "name", "owner": "crm"}},
}


class Shop:
    def __init__(self, setup: AgentSetup, agent: AgentProcess) -> None:
        self.setup, self.agent = setup, agent
        self.crm, self.erp = setup.crm, setup.erp

    def crm_do(self, sql: str, *args: object) -> Any:
        with self.crm.connect() as conn:
            cur = conn.execute(sql, args)
            return cur.fetchone() if cur.description else None

    def order(self, deal: int) -> tuple[Any, ...] | None:
        rows = erp_rows(self.erp, "SELECT title, amount, status FROM sales_orders"
                                  " WHERE crm_deal_id = %s", (deal,))
        return tuple(rows[0]) if rows else None

    def read_marker(self, name: str) -> None:
        """A contact written after the edits reaches the ERP: the edits before it were read."""
        self.crm_do("INSERT INTO contacts (name) VALUES (%s)", name)
        wait_until(lambda: erp_rows(self.erp, "SELECT 1 FROM contacts WHERE name = %s", (name,)),
                   timeout=5, message="the marker contact did not arrive")


@pytest.fixture
def shop(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[Shop]:
    apply_ddl(pg_db, maria_db, CRM, ERP)
    setup = AgentSetup(tmp_path, "p" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"order": ORDER, "contact": CONTACT})
    setup.write()
    done = setup.cli("setup")
    assert done.returncode == 0, done.stderr
    agent = AgentProcess(setup)
    agent.wait_streaming()
    yield Shop(setup, agent)
    agent.stop()
    print(agent.log()[-5000:])


def test_manual_order_moves_only_when_pushed(shop: Shop) -> None:
    deal = shop.crm_do("INSERT INTO deals (title, amount) VALUES ('Pumps', 1200.50)"
                       " RETURNING id")[0]
    shop.crm_do("UPDATE deals SET amount = 1300.00 WHERE id = %s", deal)
    shop.read_marker("after-insert")
    assert shop.order(deal) is None, "a manual direction must not flow"

    started = time.monotonic()
    done = shop.setup.cli("push", "order", str(deal))
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"order {deal}: done" in done.stdout
    from decimal import Decimal

    assert shop.order(deal) == ("Pumps", Decimal("1300.00"), "new")
    transferred = float(done.stdout.rsplit("transferred in ", 1)[1].split()[0])
    print(f"FIGURE push: transfer {transferred:.2f} s; CLI process start to exit {elapsed:.2f} s")
    assert transferred < 2.0 and elapsed < 5.0, done.stdout

    # Edits after the push do not flow either; a second push carries the current state.
    shop.crm_do("UPDATE deals SET title = 'Pumps XL' WHERE id = %s", deal)
    shop.read_marker("after-edit")
    assert shop.order(deal) == ("Pumps", Decimal("1300.00"), "new")


def test_push_request_row_is_carried_out_and_marked(shop: Shop) -> None:
    from decimal import Decimal

    schema = shop.setup.state_schema
    deal = shop.crm_do("INSERT INTO deals (title, amount) VALUES ('Valves', 99.90)"
                       " RETURNING id")[0]
    started = time.monotonic()
    request = shop.crm_do(f"INSERT INTO {schema}.push_requests (entity, key) VALUES"
                          " ('order', %s) RETURNING id", str(deal))[0]
    wait_until(lambda: shop.order(deal), timeout=2,
               message="the requested order is not in the ERP within 2 s")
    arrived = time.monotonic() - started
    status = wait_until(lambda: _marked(shop, request), timeout=2,
                        message="the request was not marked")
    print(f"FIGURE push_requests INSERT -> ERP row: {arrived:.2f} s")
    assert status is not None
    assert status[0] == "done" and status[1] is None and status[2] is not None
    assert shop.order(deal) == ("Valves", Decimal("99.90"), "new")

    missing = shop.crm_do(f"INSERT INTO {schema}.push_requests (entity, key) VALUES"
                          " ('order', '999999') RETURNING id")[0]
    failed = wait_until(lambda: _marked(shop, missing), timeout=2,
                        message="the bad request was not marked")
    assert failed is not None
    assert failed[0] == "failed" and "999999" in failed[1]


def _marked(shop: Shop, request: int) -> tuple[Any, ...] | None:
    row = crm_rows(shop.crm, f"SELECT status, reason, done_at FROM {shop.setup.state_schema}"
                             ".push_requests WHERE id = %s", (request,))[0]
    return tuple(row) if row[0] != "pending" else None


def test_push_from_the_erp_carries_only_what_the_erp_owns(shop: Shop) -> None:
    deal = shop.crm_do("INSERT INTO deals (title, amount) VALUES ('Gears', 10) RETURNING id")[0]
    assert shop.setup.cli("push", "order", str(deal)).returncode == 0
    conn = shop.erp.connect()
    with conn.cursor() as cur:
        cur.execute("UPDATE sales_orders SET status = 'shipped', title = 'ERP title'"
                    " WHERE crm_deal_id = %s", (deal,))
        cur.execute("SELECT order_no FROM sales_orders WHERE crm_deal_id = %s", (deal,))
        (order_no,) = cur.fetchone()
    conn.close()
    # erp_to_crm is continuous: the status arrives; the foreign title edit is reverted.
    wait_until(lambda: crm_rows(shop.crm, "SELECT erp_status FROM deals WHERE id = %s",
                                (deal,))[0][0] == "shipped", timeout=5)
    shop.crm_do("UPDATE deals SET erp_status = 'lost' WHERE id = %s", deal)  # a foreign edit
    done = shop.setup.cli("push", "order", str(order_no), "--from", "erp")
    assert done.returncode == 0, done.stdout + done.stderr
    assert crm_rows(shop.crm, "SELECT erp_status, title FROM deals WHERE id = %s",
                    (deal,))[0] == ("shipped", "Gears")
