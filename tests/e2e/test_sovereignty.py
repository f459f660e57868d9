"""Data sovereignty, as the business tells it: who holds which data and who has the final say."""

from __future__ import annotations

import copy
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import apply_ddl, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

CRM = """
CREATE TABLE public.accounts (
    id              serial PRIMARY KEY,
    name            text NOT NULL,
    phone           text,
    email           text,
    billing_street  text,
    lifecycle_stage text NOT NULL DEFAULT 'prospect',
    erp_customer_no integer UNIQUE,
    is_active       boolean NOT NULL DEFAULT true,
    notes           text
);
ALTER TABLE public.accounts REPLICA IDENTITY FULL;
"""

ERP = """
CREATE TABLE customers (
    customer_no        int AUTO_INCREMENT PRIMARY KEY,
    name               varchar(200) NOT NULL,
    phone_main         varchar(50),
    email              varchar(200),
    street             varchar(200),
    customer_type      char(1) NOT NULL DEFAULT 'C',
    currency           char(3) NOT NULL DEFAULT 'USD',
    payment_terms_days int NOT NULL DEFAULT 0
) AUTO_INCREMENT = 10001
"""

CUSTOMER: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"crm_column": "erp_customer_no"},
    "create": {"erp": {"when": {"lifecycle_stage": ["customer", "partner"]}}, "crm": "always"},
    "delete": {"crm_to_erp": "ignore",
               "erp_to_crm": {"flag": {"column": "is_active", "value": False}}},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "erp"},
        "phone": {"crm": "phone", "erp": "phone_main", "owner": "both", "conflict": "newest"},
        "email": {"crm": "email", "erp": "email", "owner": "crm"},
        "street": {"crm": "billing_street", "erp": "street", "owner": "erp",
                   "on_foreign_change": "revert"},
        "segment": {"crm": "lifecycle_stage", "erp": "customer_type", "owner": "crm",
                    "values": {"customer": "C", "partner": "P"}},
    },
    "defaults": {"erp": {"currency": "EUR", "payment_terms_days": 30}},
}


class Story:
    """The two databases and a running agent."""

    def __init__(self, crm: PgDatabase, erp: MariaDatabase, agent: AgentProcess) -> None:
        self.crm, self.erp, self.agent = crm, erp, agent

    def crm_do(self, sql: str, *args: object) -> Any:
        with self.crm.connect() as conn:
            cur = conn.execute(sql, args)
            return cur.fetchone() if cur.description else None

    def erp_do(self, sql: str, *args: object) -> int:
        conn = self.erp.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                last = int(cur.lastrowid or 0)
            conn.commit()
            return last
        finally:
            conn.close()

    def account(self, crm_id: int, columns: str) -> tuple[Any, ...] | None:
        rows = crm_rows(self.crm, f"SELECT {columns} FROM accounts WHERE id = %s", (crm_id,))
        return tuple(rows[0]) if rows else None

    def customer(self, no: object, columns: str) -> tuple[Any, ...] | None:
        rows = erp_rows(self.erp, f"SELECT {columns} FROM customers WHERE customer_no = %s",
                        (no,))
        return tuple(rows[0]) if rows else None

    def conflicts(self) -> list[dict[str, Any]]:
        schema = self.agent.setup.state_schema
        found = [dict(zip(("field", "winner", "resolution", "status", "source"), r, strict=True))
                 for r in crm_rows(self.crm, f"SELECT field, winner, resolution, status, "
                                             f"direction FROM {schema}.conflicts ORDER BY id")]
        found += [dict(zip(("field", "winner", "resolution", "status", "source"), r, strict=True))
                  for r in erp_rows(self.erp, f"SELECT field, winner, resolution, status, "
                                              f"direction FROM {schema}.conflicts ORDER BY id")]
        return found

    def new_customer(self, name: str = "Acme GmbH") -> tuple[int, int]:
        """A CRM account that became a customer; returns (crm id, ERP number)."""
        crm_id = self.crm_do("INSERT INTO accounts (name, phone, billing_street, lifecycle_stage)"
                             " VALUES (%s, '+49 1', 'Main 1', 'customer') RETURNING id", name)[0]
        no = wait_until(lambda: (self.account(crm_id, "erp_customer_no") or (None,))[0],
                        timeout=5, message="the ERP number did not come back")
        return crm_id, no


def make_story(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path,
               entity: dict[str, Any]) -> AgentSetup:
    apply_ddl(pg_db, maria_db, CRM, [ERP])
    setup = AgentSetup(tmp_path, "s" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": entity})
    setup.write()
    done = setup.cli("setup")
    assert done.returncode == 0, done.stderr
    return setup


@pytest.fixture
def story_factory(pg_db: PgDatabase, maria_db: MariaDatabase,
                  tmp_path: Path) -> Iterator[Any]:
    agents: list[AgentProcess] = []

    def make(**field_overrides: dict[str, Any]) -> Story:
        entity = copy.deepcopy(CUSTOMER)
        for name, override in field_overrides.items():
            entity["fields"][name].update(override)
        setup = make_story(pg_db, maria_db, tmp_path, entity)
        agent = AgentProcess(setup)
        agents.append(agent)
        agent.wait_streaming()
        return Story(pg_db, maria_db, agent)

    yield make
    for agent in agents:
        agent.stop()
        print(agent.log())


@pytest.fixture
def story(story_factory: Any) -> Story:
    return story_factory()  # type: ignore[no-any-return]


def test_1_a_prospect_stays_in_the_crm_until_it_becomes_a_customer(story: Story) -> None:
    crm_id = story.crm_do("INSERT INTO accounts (name, phone) VALUES ('Prospect AG', '+49 7')"
                          " RETURNING id")[0]
    story.crm_do("UPDATE accounts SET notes = 'called twice' WHERE id = %s", crm_id)
    _, marker_no = story.new_customer("Marker Ltd")  # committed later: proves both were read
    assert [tuple(r) for r in erp_rows(story.erp, "SELECT customer_no FROM customers")] == [
        (marker_no,)]

    story.crm_do("UPDATE accounts SET lifecycle_stage = 'customer' WHERE id = %s", crm_id)
    row = wait_until(lambda: erp_rows(story.erp, "SELECT customer_no, name, phone_main, "
                                                 "customer_type, currency, payment_terms_days "
                                                 "FROM customers WHERE customer_no <> %s",
                                      (marker_no,)),
                     timeout=2, message="the new customer is not in the ERP within 2 s")
    [(no, name, phone, kind, currency, terms)] = row
    assert (name, phone, kind, currency, terms) == ("Prospect AG", "+49 7", "C", "EUR", 30)
    wait_until(lambda: story.account(crm_id, "erp_customer_no") == (no,), timeout=2,
               message="the ERP number is not in the CRM within 2 s")
    assert no >= 10001
    assert erp_rows(story.erp, "SELECT count(*) FROM customers")[0][0] == 2  # no echo, no twin


@pytest.mark.parametrize("policy", ["revert", "keep"])
def test_2_the_erp_owned_street_edited_in_the_crm(story_factory: Any, policy: str) -> None:
    story: Story = story_factory(street={"on_foreign_change": policy})
    crm_id, no = story.new_customer()
    story.crm_do("UPDATE accounts SET billing_street = 'Fake Street 9' WHERE id = %s", crm_id)
    if policy == "revert":
        wait_until(lambda: story.account(crm_id, "billing_street") == ("Main 1",), timeout=2,
                   message="the street was not reverted within 2 s")
    else:
        wait_until(lambda: any(c["field"] == "street" for c in story.conflicts()), timeout=2)
        assert story.account(crm_id, "billing_street") == ("Fake Street 9",)
    assert story.customer(no, "street") == ("Main 1",)
    [conflict] = [c for c in story.conflicts() if c["field"] == "street"]
    assert conflict["winner"] == "erp" and conflict["resolution"] == policy


def _edit_phone_on_both_sides(story: Story, crm_id: int, no: int) -> None:
    """Both edits land while the agent is paused, 50 ms apart: a real conflict."""
    story.agent.proc.send_signal(signal.SIGSTOP)
    try:
        story.crm_do("UPDATE accounts SET phone = '+49 CRM' WHERE id = %s", crm_id)
        story.erp_do("UPDATE customers SET phone_main = '+49 ERP' WHERE customer_no = %s", no)
    finally:
        story.agent.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("policy", ["newest", "erp"])
def test_3_the_phone_edited_on_both_sides_converges(story_factory: Any, policy: str) -> None:
    story: Story = story_factory(phone={"conflict": policy})
    crm_id, no = story.new_customer()
    _edit_phone_on_both_sides(story, crm_id, no)
    # newest: the ERP edit committed later; erp: the ERP wins whatever the timing
    wait_until(lambda: story.account(crm_id, "phone") == ("+49 ERP",)
               and story.customer(no, "phone_main") == ("+49 ERP",), timeout=5,
               message="the sides did not converge on the ERP's phone")
    assert [c for c in story.conflicts() if c["field"] == "phone"]


def test_3_manual_conflicts_wait_for_a_person(story_factory: Any) -> None:
    story: Story = story_factory(phone={"conflict": "manual"})
    crm_id, no = story.new_customer()
    _edit_phone_on_both_sides(story, crm_id, no)
    wait_until(lambda: [c for c in story.conflicts() if c["status"] == "open"], timeout=5,
               message="no open conflict was recorded")
    assert story.account(crm_id, "phone") == ("+49 CRM",)
    assert story.customer(no, "phone_main") == ("+49 ERP",)

    listed = story.agent.setup.cli("conflicts", "list", "--open")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if " phone " in ln)
    conflict_id = line.split()[0]
    done = story.agent.setup.cli("conflicts", "resolve", conflict_id, "--take", "erp")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: story.account(crm_id, "phone") == ("+49 ERP",), timeout=5,
               message="resolving did not write the chosen value")
    assert not [c for c in story.conflicts() if c["status"] == "open"]


def test_4_a_customer_created_in_the_erp_appears_in_the_crm_with_its_link(story: Story) -> None:
    no = story.erp_do("INSERT INTO customers (name, phone_main, street, customer_type) "
                      "VALUES ('Direct KG', '+49 5', 'Erp Weg 2', 'C')")
    row = wait_until(lambda: crm_rows(story.crm, "SELECT name, phone, billing_street, "
                                                 "lifecycle_stage FROM accounts "
                                                 "WHERE erp_customer_no = %s", (no,)),
                     timeout=2, message="the ERP customer is not in the CRM within 2 s")
    assert tuple(row[0]) == ("Direct KG", "+49 5", "Erp Weg 2", "customer")


def test_5_deletes_ignore_towards_the_erp_and_flag_towards_the_crm(story: Story) -> None:
    crm_id, no = story.new_customer()
    story.crm_do("DELETE FROM accounts WHERE id = %s", crm_id)
    other_id, other_no = story.new_customer("Other Ltd")  # proves the delete was processed
    assert story.customer(no, "name") == ("Acme GmbH",)

    story.erp_do("DELETE FROM customers WHERE customer_no = %s", other_no)
    wait_until(lambda: story.account(other_id, "is_active") == (False,), timeout=2,
               message="the ERP delete did not flag the CRM account")


def test_6_a_crm_only_field_changes_nothing_in_the_erp(story: Story) -> None:
    crm_id, no = story.new_customer()
    before = erp_rows(story.erp, "SELECT * FROM customers")
    story.crm_do("UPDATE accounts SET notes = 'likes coffee' WHERE id = %s", crm_id)
    story.crm_do("UPDATE accounts SET email = 'x@example.org' WHERE id = %s", crm_id)
    wait_until(lambda: story.customer(no, "email") == ("x@example.org",), timeout=2)
    after = erp_rows(story.erp, "SELECT * FROM customers")
    assert [r[:3] + r[4:] for r in before] == [r[:3] + r[4:] for r in after]
