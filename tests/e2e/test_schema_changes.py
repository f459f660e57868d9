"""Schema changes while streaming (issue 5): a mapped column dropped or renamed pauses its
entity with an ERROR and a metric while the other entity flows; after the configuration is
fixed and reloaded (SIGHUP) the parked changes arrive exactly once, in order. An added
unmapped column is ignored."""

from __future__ import annotations

import copy
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agentproc import AgentProcess, AgentSetup, running
from tests.e2e.schema import CUSTOMER_ENTITY, apply_ddl, create_schemas, crm_rows, erp_rows
from tests.e2e.test_operations import metric, metrics_port
from tests.polling import free_port, wait_until
from tests.servers import MariaDatabase, PgDatabase

CRM_EXTRA = """
CREATE TABLE public.deals (id serial PRIMARY KEY, title text NOT NULL, status text);
CREATE TABLE public.street_audit (n bigserial PRIMARY KEY, id int, street text);
CREATE FUNCTION street_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.billing_street IS DISTINCT FROM OLD.billing_street THEN
        INSERT INTO street_audit (id, street) VALUES (NEW.id, NEW.billing_street);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_street_audit AFTER UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION street_audit();
"""

ERP_EXTRA = ["""
    CREATE TABLE orders (
        order_no int AUTO_INCREMENT PRIMARY KEY,
        crm_id   int UNIQUE,
        title    varchar(200) NOT NULL,
        status   varchar(20)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""]

ORDER_ENTITY: dict[str, Any] = {
    "crm": {"table": "public.deals", "key": "id"},
    "erp": {"table": "orders", "key": "order_no"},
    "link": {"erp_column": "crm_id"},
    "fields": {
        "title": {"crm": "title", "erp": "title", "owner": "crm"},
        "status": {"crm": "status", "erp": "status", "owner": "erp"},
    },
}


def customer_entity() -> dict[str, Any]:
    entity = copy.deepcopy(CUSTOMER_ENTITY)
    entity["fields"]["street"] = {"crm": "billing_street", "erp": "street", "owner": "erp"}
    return entity


@pytest.fixture
def agent(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[AgentProcess]:
    create_schemas(pg_db, maria_db)
    apply_ddl(pg_db, maria_db, CRM_EXTRA, ERP_EXTRA)
    setup = AgentSetup(tmp_path, "s" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": customer_entity(), "order": copy.deepcopy(ORDER_ENTITY)},
                       agent_extra={"metrics_listen": f"127.0.0.1:{free_port()}"}).prepare()
    with running(setup) as proc:
        yield proc


def crm(db: PgDatabase, sql: str, args: tuple[Any, ...] = ()) -> None:
    with db.connect() as conn:
        conn.execute(sql, args)


def erp(db: MariaDatabase, sql: str, args: tuple[Any, ...] = ()) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def erp_value(db: MariaDatabase, sql: str, args: tuple[Any, ...]) -> object:
    rows = erp_rows(db, sql, args)
    return rows[0][0] if rows else None


def crm_value(db: PgDatabase, sql: str, args: tuple[Any, ...]) -> object:
    rows = crm_rows(db, sql, args)
    return rows[0][0] if rows else None


def paused(agent: AgentProcess, entity: str, direction: str) -> float | None:
    return metric(metrics_port(agent.setup), "cdc_agent_entity_paused",
                  f'direction="{direction}",entity="{entity}"')


def start_rows(pg_db: PgDatabase, maria_db: MariaDatabase) -> tuple[int, int]:
    """One account and one deal, replicated to the ERP."""
    crm(pg_db, "INSERT INTO accounts (name, phone, seq) VALUES ('A', 'p0', 0)")
    crm(pg_db, "INSERT INTO deals (title) VALUES ('d0')")
    account = int(str(crm_value(pg_db, "SELECT max(id) FROM accounts", ())))
    deal = int(str(crm_value(pg_db, "SELECT max(id) FROM deals", ())))
    wait_until(lambda: erp_value(maria_db, "SELECT title FROM orders WHERE crm_id = %s",
                                 (deal,)) == "d0", 10, message="deal did not arrive")
    wait_until(lambda: erp_value(maria_db, "SELECT seq FROM customers WHERE crm_id = %s",
                                 (account,)) == 0, 10, message="account did not arrive")
    return account, deal


def reload(agent: AgentProcess, edit: dict[str, Any]) -> None:
    """Change customer fields in the config file and send SIGHUP."""
    doc = yaml.safe_load(agent.setup.config_path.read_text())
    doc["entities"]["customer"]["fields"].update(edit)
    agent.setup.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    agent.proc.send_signal(signal.SIGHUP)


def test_renamed_crm_column_pauses_entity_then_resumes_after_reload(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    account, deal = start_rows(pg_db, maria_db)
    crm(pg_db, "ALTER TABLE accounts RENAME COLUMN phone TO phone_number")
    for seq in range(1, 21):
        crm(pg_db, "UPDATE accounts SET phone_number = %s, seq = %s WHERE id = %s",
            (f"p{seq}", seq, account))
    crm(pg_db, "INSERT INTO accounts (name, phone_number, seq) VALUES ('B', 'b1', 1)")
    crm(pg_db, "UPDATE deals SET title = 'd1' WHERE id = %s", (deal,))
    # The other entity keeps flowing; the paused one is reported and named.
    wait_until(lambda: erp_value(maria_db, "SELECT title FROM orders WHERE crm_id = %s",
                                 (deal,)) == "d1", 2, message="the other entity stopped")
    wait_until(lambda: paused(agent, "customer", "crm_to_erp") == 1, 5,
               message="no paused metric")
    assert paused(agent, "order", "crm_to_erp") == 0
    log = agent.log()
    assert re.search(r"ERROR .*entity customer paused: crm table public\.accounts has no "
                     r"column phone\b.*reload", log), log
    assert len(re.findall(r"entity customer paused", log)) == 1
    assert agent.proc.poll() is None
    assert erp_value(maria_db, "SELECT seq FROM customers WHERE crm_id = %s", (account,)) == 0
    schema = agent.setup.state_schema
    parked = erp_rows(maria_db, f"SELECT error_class, status FROM {schema}.dead_letters")
    assert {tuple(r) for r in parked} == {("schema", "pending")} and len(parked) == 21

    # A reload that still names the old column is refused: the entity stays paused.
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in agent.log(), 15, message="bad reload not refused")
    assert paused(agent, "customer", "crm_to_erp") == 1

    reload(agent, {"phone": {"crm": "phone_number", "erp": "phone_main", "owner": "crm"}})
    wait_until(lambda: erp_value(maria_db, "SELECT seq FROM customers WHERE crm_id = %s",
                                 (account,)) == 20, 20, message="parked changes not applied")
    wait_until(lambda: paused(agent, "customer", "crm_to_erp") == 0, 10,
               message="paused metric stayed 1")
    assert erp_value(maria_db, "SELECT phone_main FROM customers WHERE crm_id = %s",
                     (account,)) == "p20"
    audit = erp_rows(maria_db, "SELECT op, seq, phone FROM customer_audit WHERE crm_id = %s "
                     "ORDER BY id", (account,))
    assert [tuple(r) for r in audit] == [("I", 0, "p0")] + [
        ("U", s, f"p{s}") for s in range(1, 21)], audit  # exactly once, in order
    assert erp_value(maria_db, "SELECT phone_main FROM customers WHERE name = 'B'", ()) == "b1"
    assert [tuple(r) for r in erp_rows(
        maria_db, f"SELECT DISTINCT status FROM {schema}.dead_letters")] == [("retried",)]
    crm(pg_db, "UPDATE accounts SET phone_number = 'p21', seq = 21 WHERE id = %s", (account,))
    wait_until(lambda: erp_value(maria_db, "SELECT seq FROM customers WHERE crm_id = %s",
                                 (account,)) == 21, 5, message="entity did not flow again")


def test_renamed_erp_column_pauses_entity_in_both_directions(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    account, deal = start_rows(pg_db, maria_db)
    erp(maria_db, "ALTER TABLE customers RENAME COLUMN street TO street_name")
    for n in range(1, 6):
        erp(maria_db, "UPDATE customers SET street_name = %s WHERE crm_id = %s",
            (f"s{n}", account))
    crm(pg_db, "UPDATE accounts SET seq = 1 WHERE id = %s", (account,))  # target side: ERP
    erp(maria_db, "UPDATE orders SET status = 'won' WHERE crm_id = %s", (deal,))
    wait_until(lambda: crm_value(pg_db, "SELECT status FROM deals WHERE id = %s",
                                 (deal,)) == "won", 2, message="the other entity stopped")
    wait_until(lambda: paused(agent, "customer", "erp_to_crm") == 1
               and paused(agent, "customer", "crm_to_erp") == 1, 10,
               message="customer not paused in both directions")
    log = agent.log()
    assert re.search(r"erp_to_crm: entity customer paused: erp table \S+customers has no "
                     r"column street\b", log), log
    assert re.search(r"crm_to_erp: entity customer paused: erp table \S+customers has no "
                     r"column street\b", log), log
    assert agent.proc.poll() is None
    assert crm_value(pg_db, "SELECT billing_street FROM accounts WHERE id = %s",
                     (account,)) is None

    reload(agent, {"street": {"crm": "billing_street", "erp": "street_name", "owner": "erp"}})
    wait_until(lambda: erp_value(maria_db, "SELECT seq FROM customers WHERE crm_id = %s",
                                 (account,)) == 1, 20, message="CRM change not applied")
    wait_until(lambda: crm_value(pg_db, "SELECT billing_street FROM accounts WHERE id = %s",
                                 (account,)) == "s5", 20, message="ERP changes not applied")
    wait_until(lambda: paused(agent, "customer", "erp_to_crm") == 0
               and paused(agent, "customer", "crm_to_erp") == 0, 10,
               message="paused metric stayed 1")
    audit = crm_rows(pg_db, "SELECT street FROM street_audit WHERE id = %s ORDER BY n",
                     (account,))
    assert [r[0] for r in audit] == [f"s{n}" for n in range(1, 6)]  # exactly once, in order


def test_added_unmapped_columns_are_ignored(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    account, _ = start_rows(pg_db, maria_db)
    crm(pg_db, "ALTER TABLE accounts ADD COLUMN loyalty int")
    erp(maria_db, "ALTER TABLE customers ADD COLUMN rating int")
    crm(pg_db, "UPDATE accounts SET phone = 'p1', loyalty = 3 WHERE id = %s", (account,))
    erp(maria_db, "UPDATE customers SET street = 's1', rating = 5 WHERE crm_id = %s", (account,))
    wait_until(lambda: erp_value(maria_db, "SELECT phone_main FROM customers WHERE crm_id = %s",
                                 (account,)) == "p1", 5, message="CRM change lost")
    wait_until(lambda: crm_value(pg_db, "SELECT billing_street FROM accounts WHERE id = %s",
                                 (account,)) == "s1", 5, message="ERP change lost")
    assert paused(agent, "customer", "crm_to_erp") == 0
    assert paused(agent, "customer", "erp_to_crm") == 0
    assert "paused" not in agent.log()
