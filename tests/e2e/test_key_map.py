"""The agent-managed key map (`link: {map: crm}`): neither table keeps the other's key.

The CRM's accounts and the ERP's customers only have their own keys; the agent keeps the
pairs in `<state_schema>.key_map` on both systems. Audit triggers on both sides count every
write, so an echo or a twin shows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import apply_ddl, crm_rows, erp_rows
from tests.e2e.test_sovereignty import Story
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

CRM = """
CREATE TABLE public.accounts (
    id              serial PRIMARY KEY,
    name            text NOT NULL,
    phone           text,
    lifecycle_stage text NOT NULL DEFAULT 'prospect'
);
ALTER TABLE public.accounts REPLICA IDENTITY FULL;
CREATE TABLE public.accounts_audit (
    n      bigserial PRIMARY KEY,
    id     int NOT NULL,
    op     char(1) NOT NULL,
    phone  text
);
CREATE FUNCTION audit_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.accounts_audit (id, op, phone) VALUES (NEW.id, left(TG_OP, 1), NEW.phone);
    RETURN NULL;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE ON public.accounts
    FOR EACH ROW EXECUTE FUNCTION audit_accounts();
"""

ERP = [
    """
    CREATE TABLE customers (
        customer_no    int AUTO_INCREMENT PRIMARY KEY,
        name           varchar(200) NOT NULL,
        phone_main     varchar(50),
        customer_type  char(1) NOT NULL DEFAULT 'C',
        currency       char(3) NOT NULL DEFAULT 'USD'
    ) AUTO_INCREMENT = 20001
    """,
    """
    CREATE TABLE customer_audit (
        n      bigint AUTO_INCREMENT PRIMARY KEY,
        no     int NOT NULL,
        op     char(1) NOT NULL,
        phone  varchar(50)
    )
    """,
    """
    CREATE TRIGGER customers_audit_i AFTER INSERT ON customers FOR EACH ROW
        INSERT INTO customer_audit (no, op, phone) VALUES (NEW.customer_no, 'I', NEW.phone_main)
    """,
    """
    CREATE TRIGGER customers_audit_u AFTER UPDATE ON customers FOR EACH ROW
        INSERT INTO customer_audit (no, op, phone) VALUES (NEW.customer_no, 'U', NEW.phone_main)
    """,
]

CUSTOMER: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"map": "crm"},
    "create": {"erp": {"when": {"lifecycle_stage": ["customer"]}}, "crm": "always"},
    "delete": {"crm_to_erp": "propagate", "erp_to_crm": "propagate"},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "crm"},
        "phone": {"crm": "phone", "erp": "phone_main", "owner": "both", "conflict": "newest"},
        "segment": {"crm": "lifecycle_stage", "erp": "customer_type", "owner": "crm",
                    "values": {"customer": "C"}},
    },
    "defaults": {"erp": {"currency": "EUR"}},
}


class MapStory(Story):
    """The story's databases and agent, plus the key maps and the audit trails."""

    def pairs(self, system: str) -> set[tuple[str, str]]:
        """The key map on ``system`` as (other system's key, own key)."""
        query = f"SELECT remote_key, local_key FROM {self.agent.setup.state_schema}.key_map"
        rows = crm_rows(self.crm, query) if system == "crm" else erp_rows(self.erp, query)
        return {(str(r[0]), str(r[1])) for r in rows}

    def mapped(self, crm_id: int, no: int) -> bool:
        """The pair is in both systems' maps."""
        return ((str(no), str(crm_id)) in self.pairs("crm")
                and (str(crm_id), str(no)) in self.pairs("erp"))

    def erp_no(self, crm_id: int) -> int:
        """The ERP number the CRM account got (from the reference map, on the CRM)."""
        found = wait_until(lambda: [r for r, local in self.pairs("crm") if local == str(crm_id)],
                           timeout=2, message="the pair is not in the CRM's map within 2 s")
        return int(found[0])

    def crm_audit(self, crm_id: int) -> list[tuple[str, str | None]]:
        return [(r[0], r[1]) for r in crm_rows(
            self.crm, "SELECT op, phone FROM accounts_audit WHERE id = %s ORDER BY n", (crm_id,))]

    def erp_audit(self, no: int) -> list[tuple[str, str | None]]:
        return [(r[0], r[1]) for r in erp_rows(
            self.erp, "SELECT op, phone FROM customer_audit WHERE no = %s ORDER BY n", (no,))]

    def counts(self) -> tuple[int, int]:
        return (crm_rows(self.crm, "SELECT count(*) FROM accounts")[0][0],
                erp_rows(self.erp, "SELECT count(*) FROM customers")[0][0])

    def settle(self) -> None:
        """Both directions have passed everything written so far: a marker customer goes
        CRM -> ERP and back (an echo of an earlier write would have landed before it)."""
        crm_id = self.crm_do("INSERT INTO accounts (name, lifecycle_stage) VALUES "
                             "('Marker', 'customer') RETURNING id")[0]
        no = self.erp_no(crm_id)
        self.erp_do("UPDATE customers SET phone_main = 'marker' WHERE customer_no = %s", no)
        wait_until(lambda: self.account(crm_id, "phone") == ("marker",), timeout=5,
                   message="the marker did not come back")

    def restart(self) -> None:
        self.agent = AgentProcess(self.agent.setup)
        self.agent.wait_streaming()


@pytest.fixture
def story(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[MapStory]:
    apply_ddl(pg_db, maria_db, CRM, ERP)
    setup = AgentSetup(tmp_path, "k" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": CUSTOMER})
    setup.write()
    for command in ("setup", "setup", "check"):  # setup is idempotent; check sees the map
        done = setup.cli(command)
        assert done.returncode == 0, done.stdout + done.stderr
    agent = AgentProcess(setup)
    agent.wait_streaming()
    story = MapStory(pg_db, maria_db, agent)
    yield story
    story.agent.stop()
    print(story.agent.log())


def test_1_a_prospect_becomes_a_customer_and_edits_flow_through_the_map(story: MapStory) -> None:
    crm_id = story.crm_do("INSERT INTO accounts (name, phone) VALUES ('Prospect AG', '+49 7')"
                          " RETURNING id")[0]
    story.crm_do("UPDATE accounts SET lifecycle_stage = 'customer' WHERE id = %s", crm_id)
    row = wait_until(lambda: erp_rows(story.erp, "SELECT customer_no, name, phone_main, "
                                                 "customer_type, currency FROM customers"),
                     timeout=2, message="the new customer is not in the ERP within 2 s")
    [(no, name, phone, kind, currency)] = row
    assert (name, phone, kind, currency) == ("Prospect AG", "+49 7", "C", "EUR")
    assert no >= 20001
    assert story.erp_no(crm_id) == no  # the reference map (CRM) within 2 s
    wait_until(lambda: story.mapped(crm_id, no), timeout=2, message="the ERP's copy is missing")

    story.crm_do("UPDATE accounts SET phone = '+49 CRM' WHERE id = %s", crm_id)
    wait_until(lambda: story.customer(no, "phone_main") == ("+49 CRM",), timeout=2,
               message="the CRM's phone is not in the ERP within 2 s")
    story.erp_do("UPDATE customers SET phone_main = '+49 ERP' WHERE customer_no = %s", no)
    wait_until(lambda: story.account(crm_id, "phone") == ("+49 ERP",), timeout=2,
               message="the ERP's phone is not in the CRM within 2 s")

    story.settle()
    # exactly one write per edit on each side: no twin, no echo
    assert story.erp_audit(no) == [("I", "+49 7"), ("U", "+49 CRM"), ("U", "+49 ERP")]
    assert story.crm_audit(crm_id) == [("I", "+49 7"), ("U", "+49 7"), ("U", "+49 CRM"),
                                       ("U", "+49 ERP")]
    assert story.counts() == (2, 2)  # the customer and the marker, once each


def test_2_a_customer_created_in_the_erp_appears_in_the_crm_with_its_pair(
        story: MapStory) -> None:
    no = story.erp_do("INSERT INTO customers (name, phone_main) VALUES ('Direct KG', '+49 5')")
    row = wait_until(lambda: crm_rows(story.crm, "SELECT id, name, phone, lifecycle_stage "
                                                 "FROM accounts"),
                     timeout=2, message="the ERP customer is not in the CRM within 2 s")
    [(crm_id, name, phone, stage)] = row
    assert (name, phone, stage) == ("Direct KG", "+49 5", "customer")
    wait_until(lambda: story.mapped(crm_id, no), timeout=2,
               message="the pair is not in both maps within 2 s")

    story.crm_do("UPDATE accounts SET phone = '+49 CRM' WHERE id = %s", crm_id)
    wait_until(lambda: story.customer(no, "phone_main") == ("+49 CRM",), timeout=2,
               message="the CRM's phone is not in the ERP within 2 s")
    story.settle()
    assert story.erp_audit(no) == [("I", "+49 5"), ("U", "+49 CRM")]
    assert story.counts() == (2, 2)


def test_3_kill_9_right_after_creates_makes_no_twin(story: MapStory) -> None:
    # Deterministic: the copy of a pair is lost (as in a crash before it reached the CRM).
    no = story.erp_do("INSERT INTO customers (name, phone_main) VALUES ('Lost Copy', '1')")
    crm_id = wait_until(lambda: crm_rows(story.crm, "SELECT id FROM accounts"), timeout=2,
                        message="the ERP customer is not in the CRM")[0][0]
    crm_first = story.crm_do("INSERT INTO accounts (name, lifecycle_stage) VALUES "
                             "('Crm First', 'customer') RETURNING id")[0]
    no_first = story.erp_no(crm_first)
    wait_until(lambda: story.mapped(crm_id, no) and story.mapped(crm_first, no_first), timeout=2)
    story.agent.kill()
    schema = story.agent.setup.state_schema
    story.crm_do(f"DELETE FROM {schema}.key_map")  # the CRM's map lost both pairs
    story.restart()
    story.erp_do("UPDATE customers SET phone_main = '2' WHERE customer_no = %s", no)
    story.erp_do("UPDATE customers SET phone_main = '3' WHERE customer_no = %s", no_first)
    wait_until(lambda: story.account(crm_id, "phone") == ("2",)
               and story.account(crm_first, "phone") == ("3",), timeout=5,
               message="the ERP edits did not reach the CRM rows")
    assert story.counts() == (2, 2)  # found through the ERP's map: no twin
    assert story.mapped(crm_id, no) and story.mapped(crm_first, no_first)  # copied back

    # Then kill -9 at once after creates on both sides, a few rounds.
    created_crm, created_erp = [], []
    for round_ in range(3):
        for i in range(4):
            created_crm.append(story.crm_do(
                "INSERT INTO accounts (name, phone, lifecycle_stage) VALUES (%s, 'c', "
                "'customer') RETURNING id", f"crm {round_}.{i}")[0])
            created_erp.append(story.erp_do(
                "INSERT INTO customers (name, phone_main) VALUES (%s, 'e')", f"erp {round_}.{i}"))
        story.agent.kill()  # at once: the creates are in flight (read, applied or copied)
        story.restart()
    total = 2 + 2 * len(created_crm)
    wait_until(lambda: story.counts() == (total, total), timeout=10,
               message="the created rows did not all arrive")
    for crm_id in created_crm:  # every edit finds the one counterpart
        story.crm_do("UPDATE accounts SET phone = %s WHERE id = %s", f"c{crm_id}", crm_id)
    for no in created_erp:
        story.erp_do("UPDATE customers SET phone_main = %s WHERE customer_no = %s", f"e{no}", no)
    story.settle()
    assert story.counts() == (total + 1, total + 1)  # no twin anywhere
    erp_phones = {r[0] for r in erp_rows(story.erp, "SELECT phone_main FROM customers")}
    crm_phones = {r[0] for r in crm_rows(story.crm, "SELECT phone FROM accounts")}
    assert {f"c{c}" for c in created_crm} <= erp_phones
    assert {f"e{n}" for n in created_erp} <= crm_phones
    # Every row has one pair, in both maps: a copy in flight at a kill waits in the remedies
    # outbox and is applied when the other pipeline starts again.
    def both_maps() -> set[tuple[str, str]] | None:
        crm_map, erp_map = story.pairs("crm"), {(e, c) for c, e in story.pairs("erp")}
        return crm_map if crm_map == erp_map and len(crm_map) == total + 1 else None

    crm_map = wait_until(both_maps, timeout=10, message="the two maps differ after the kills")
    assert crm_map is not None
    assert len({e for e, _ in crm_map}) == len({c for _, c in crm_map}) == total + 1


def test_4_a_propagated_delete_removes_the_counterpart_and_the_pair(story: MapStory) -> None:
    crm_id = story.crm_do("INSERT INTO accounts (name, lifecycle_stage) VALUES "
                          "('Gone Ltd', 'customer') RETURNING id")[0]
    no = story.erp_no(crm_id)
    other = story.erp_do("INSERT INTO customers (name) VALUES ('Gone Too')")
    other_id = wait_until(lambda: crm_rows(story.crm, "SELECT id FROM accounts WHERE "
                                                      "name = 'Gone Too'"), timeout=2)[0][0]
    wait_until(lambda: story.mapped(crm_id, no) and story.mapped(other_id, other), timeout=2)

    story.crm_do("DELETE FROM accounts WHERE id = %s", crm_id)
    wait_until(lambda: story.customer(no, "name") is None, timeout=2,
               message="the CRM delete did not remove the ERP customer within 2 s")
    story.erp_do("DELETE FROM customers WHERE customer_no = %s", other)
    wait_until(lambda: story.account(other_id, "name") is None, timeout=2,
               message="the ERP delete did not remove the CRM account within 2 s")
    wait_until(lambda: not story.pairs("crm") and not story.pairs("erp"), timeout=2,
               message="the pairs were not removed from both maps")


def test_5_push_goes_through_the_map(pg_db: PgDatabase, maria_db: MariaDatabase,
                                     tmp_path: Path) -> None:
    # As DESIGN's `order` entity: a key map and records that move only on demand (push).
    apply_ddl(pg_db, maria_db, CRM, ERP)
    entity = {**CUSTOMER, "schedule": {"crm_to_erp": "manual"}}
    setup = AgentSetup(tmp_path, "k" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": entity})
    setup.write()
    assert setup.cli("setup").returncode == 0
    with pg_db.connect() as conn:
        row = conn.execute("INSERT INTO accounts (name, phone, lifecycle_stage) VALUES "
                           "('Pushed', '+1', 'customer') RETURNING id").fetchone()
    assert row is not None
    crm_id = row[0]

    done = setup.cli("push", "customer", str(crm_id))
    assert done.returncode == 0, done.stdout + done.stderr
    [(no, phone)] = erp_rows(maria_db, "SELECT customer_no, phone_main FROM customers")
    assert phone == "+1"
    query = f"SELECT remote_key, local_key FROM {setup.state_schema}.key_map"
    assert [tuple(r) for r in erp_rows(maria_db, query)] == [(str(crm_id), str(no))]
    assert [tuple(r) for r in crm_rows(pg_db, query)] == [(str(no), str(crm_id))]  # the copy

    with pg_db.connect() as conn:
        conn.execute("UPDATE accounts SET phone = '+2' WHERE id = %s", (crm_id,))
    done = setup.cli("push", "customer", str(crm_id))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [tuple(r) for r in erp_rows(maria_db, "SELECT customer_no, phone_main "
                                                 "FROM customers")] == [(no, "+2")]  # no twin
    assert [tuple(r) for r in erp_rows(maria_db, "SELECT op, phone FROM customer_audit "
                                                 "ORDER BY n")] == [("I", "+1"), ("U", "+2")]


def test_6_reconcile_compares_and_repairs_through_the_map(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> None:
    import json

    apply_ddl(pg_db, maria_db, CRM, ERP)
    setup = AgentSetup(tmp_path, "k" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": CUSTOMER})
    setup.write()
    assert setup.cli("setup").returncode == 0
    schema = setup.state_schema
    with pg_db.connect() as conn:  # written while no agent ran
        for name in ("Paired", "Crm Only"):
            conn.execute("INSERT INTO accounts (name, phone, lifecycle_stage) VALUES "
                         "(%s, '+1', 'customer')", (name,))
        paired = conn.execute("SELECT id FROM accounts WHERE name = 'Paired'").fetchone()
    assert paired is not None
    erp_rows(maria_db, "INSERT INTO customers (name, phone_main) VALUES "
                       "('Paired (old name)', '+1')")
    [(no,)] = erp_rows(maria_db, "SELECT customer_no FROM customers")
    erp_rows(maria_db, "INSERT INTO customers (name, phone_main) VALUES ('Erp Only', '+2')")
    erp_rows(maria_db, f"INSERT INTO {schema}.key_map (ident, local_ident, entity, remote_key,"
                       " local_key) VALUES (%s, %s, 'customer', %s, %s)",
             (f"customer:{paired[0]}", f"customer:{no}", str(paired[0]), str(no)))

    def reconcile(*args: str) -> dict[str, Any]:
        done = setup.cli("reconcile", "customer", "--json", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    found = reconcile()
    assert (found["only"], found["differing"]) == ({"crm": 1, "erp": 1}, {"name": 1}), found
    reconcile("--apply")
    after = reconcile()
    assert (after["only"], after["differing"]) == ({}, {}), after
    names = {r[0] for r in erp_rows(maria_db, "SELECT name FROM customers")}
    assert names == {"Paired", "Crm Only", "Erp Only"}  # the CRM owns the name
    assert erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == 3  # no twin
    assert crm_rows(pg_db, "SELECT count(*) FROM accounts")[0][0] == 3
    # The pairs reconcile created are on both systems (the hand-made one only on the ERP).
    assert len(erp_rows(maria_db, f"SELECT 1 FROM {schema}.key_map")) == 3
    assert len(crm_rows(pg_db, f"SELECT 1 FROM {schema}.key_map")) == 2
