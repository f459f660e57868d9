"""The vertical slice as a user sees it: the daemon replicates CRM (PostgreSQL) -> ERP (MariaDB)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import CUSTOMER_ENTITY, create_schemas, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase


@pytest.fixture
def agent_setup(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path,
                request: pytest.FixtureRequest) -> Iterator[AgentSetup]:
    create_schemas(pg_db, maria_db)
    name = "e" + format(random.getrandbits(40), "x")
    setup = AgentSetup(tmp_path, name, pg_db, maria_db, {"customer": CUSTOMER_ENTITY})
    setup.write()
    done = setup.cli("setup")
    assert done.returncode == 0, done.stderr
    yield setup
    setup.cli("teardown", "--yes")


@pytest.fixture
def agent(agent_setup: AgentSetup) -> Iterator[AgentProcess]:
    proc = AgentProcess(agent_setup, "--log-level", "debug")
    proc.wait_streaming()
    yield proc
    proc.stop()
    print(proc.log())  # shown by pytest when the test failed


def erp_customer(erp: MariaDatabase, crm_id: int) -> tuple[object, ...] | None:
    rows = erp_rows(erp, "SELECT name, phone_main, email, currency FROM customers WHERE crm_id=%s",
                    (crm_id,))
    return rows[0] if rows else None


def test_insert_update_delete_each_appear_in_the_erp_within_2s(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    with pg_db.connect() as conn:
        inserted = conn.execute(
            "INSERT INTO accounts (name, phone, email) VALUES ('Acme GmbH', '+49 30 1234', "
            "'info@acme.example') RETURNING id").fetchone()
    assert inserted is not None
    crm_id = inserted[0]
    wait_until(lambda: erp_customer(maria_db, crm_id) == ("Acme GmbH", "+49 30 1234",
                                                          "info@acme.example", "EUR"),
               timeout=2, message="insert did not reach the ERP within 2 s")

    with pg_db.connect() as conn:
        conn.execute("UPDATE accounts SET phone = '+49 30 9999' WHERE id = %s", (crm_id,))
    wait_until(lambda: (erp_customer(maria_db, crm_id) or ())[1:2] == ("+49 30 9999",),
               timeout=2, message="phone update did not reach the ERP within 2 s")

    with pg_db.connect() as conn:
        conn.execute("DELETE FROM accounts WHERE id = %s", (crm_id,))
    wait_until(lambda: erp_customer(maria_db, crm_id) is None, timeout=2,
               message="delete did not reach the ERP within 2 s")
    assert "+49 30" not in agent.log() and "acme.example" not in agent.log()


def test_sigterm_finishes_the_batch_and_exits_0(agent_setup: AgentSetup, pg_db: PgDatabase,
                                                 maria_db: MariaDatabase) -> None:
    proc = AgentProcess(agent_setup)
    proc.wait_streaming()
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name) SELECT 'n' || g FROM generate_series(1, 500) g")
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == 500,
               timeout=10)
    assert proc.stop() == 0


@pytest.mark.slow
def test_kill_9_loses_nothing_and_applies_nothing_twice(
        agent_setup: AgentSetup, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    keys = 50
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name, seq) "
                     "SELECT 'c' || g, 0 FROM generate_series(1, %s) g", (keys,))
    proc = AgentProcess(agent_setup)
    proc.wait_streaming()
    ids = [r[0] for r in crm_rows(pg_db, "SELECT id FROM accounts ORDER BY id")]
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == keys,
               timeout=20)

    total = 10_000
    writer_done = threading.Event()

    def write_updates() -> None:
        with pg_db.connect(autocommit=True) as conn:
            for seq in range(1, total + 1):
                conn.execute("UPDATE accounts SET seq = %s, phone = %s WHERE id = %s",
                             (seq, f"p{seq}", random.choice(ids)))
        writer_done.set()

    writer = threading.Thread(target=write_updates)
    writer.start()
    kills = 0
    try:
        while kills < 5:
            wait_until(lambda: writer_done.is_set() or random.random() < 0.02, timeout=30,
                       interval=0.05)
            proc.kill()
            kills += 1
            proc = AgentProcess(agent_setup)
            proc.wait_streaming()
    finally:
        writer.join()
    expected = crm_rows(pg_db, "SELECT id, name, phone, email, seq FROM accounts ORDER BY id")

    def converged() -> bool:
        got = erp_rows(maria_db, "SELECT crm_id, name, phone_main, email, seq FROM customers "
                                 "ORDER BY crm_id")
        return [tuple(r) for r in got] == [tuple(r) for r in expected]

    wait_until(converged, timeout=120, interval=0.5, message="ERP did not converge")
    assert proc.stop() == 0
    audit = erp_rows(maria_db, "SELECT crm_id, seq FROM customer_audit WHERE op='U' ORDER BY id")
    last: dict[int, int] = {}
    for crm_id, seq in audit:
        assert seq > last.get(crm_id, 0), f"key {crm_id}: seq {seq} applied after {last[crm_id]}"
        last[crm_id] = seq
    assert kills == 5


@pytest.mark.slow
def test_one_200k_row_transaction_with_bounded_memory(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    rows = 200_000
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name, phone, email, notes) SELECT 'name ' || g, "
                     "'+49 ' || g, 'u' || g || '@example.org', repeat('x', 200) "
                     "FROM generate_series(1, %s) g", (rows,))
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == rows,
               timeout=300, interval=0.5, message="200k-row transaction not applied")
    peak = agent.peak_rss_mb()
    print(f"peak RSS during a {rows}-row transaction: {peak:.0f} MiB")
    assert peak < 300
