"""A row the ERP refuses is quarantined; its key's later changes wait; the rest flows."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import CUSTOMER_ENTITY, create_schemas, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase


@pytest.fixture
def agent(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[AgentProcess]:
    create_schemas(pg_db, maria_db)
    setup = AgentSetup(tmp_path, "q" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": CUSTOMER_ENTITY})
    setup.write()
    assert setup.cli("setup").returncode == 0
    proc = AgentProcess(setup)
    proc.wait_streaming()
    yield proc
    proc.stop()
    print(proc.log())


def phone(maria_db: MariaDatabase, crm_id: int) -> object:
    rows = erp_rows(maria_db, "SELECT phone_main FROM customers WHERE crm_id = %s", (crm_id,))
    return rows[0][0] if rows else None


def test_poison_row_is_quarantined_then_retried_in_order(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    schema = agent.setup.state_schema
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name, phone) VALUES ('A', 'a0'), ('B', 'b0')")
    a, b = (r[0] for r in crm_rows(pg_db, "SELECT id FROM accounts ORDER BY id"))
    wait_until(lambda: phone(maria_db, b) == "b0", timeout=5)

    with pg_db.connect() as conn:
        conn.execute("UPDATE accounts SET phone = %s WHERE id = %s", ("9" * 60, a))  # too long
        conn.execute("UPDATE accounts SET phone = 'b1' WHERE id = %s", (b,))
        conn.execute("UPDATE accounts SET phone = 'a2' WHERE id = %s", (a,))  # waits behind
    wait_until(lambda: phone(maria_db, b) == "b1", timeout=10,
               message="other keys stopped flowing")
    letters = wait_until(lambda: erp_rows(
        maria_db, f"SELECT `key`, error_class, status FROM {schema}.dead_letters ORDER BY id"),
        timeout=5, message="no dead letter")
    assert letters[0][0] == str(a) and {r[0] for r in letters} == {str(a)}
    assert "too_long" in letters[0][1] or "1406" in letters[0][1]
    assert [r[1] for r in letters][1:] == ["waiting"] * (len(letters) - 1)
    assert phone(maria_db, a) == "a0"
    assert "9" * 60 not in agent.log()

    conn_m = maria_db.connect()
    with conn_m.cursor() as cur:
        cur.execute("ALTER TABLE customers MODIFY phone_main varchar(100)")
        cur.execute("ALTER TABLE customer_audit MODIFY phone varchar(100)")  # its trigger too
    conn_m.close()
    done = agent.setup.cli("dead-letters", "retry", "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert phone(maria_db, a) == "a2"  # applied in order: the later value is the last
    statuses = erp_rows(maria_db, f"SELECT DISTINCT status FROM {schema}.dead_letters")
    assert [tuple(r) for r in statuses] == [("retried",)]

    with pg_db.connect() as conn:
        conn.execute("UPDATE accounts SET phone = 'a3' WHERE id = %s", (a,))
    wait_until(lambda: phone(maria_db, a) == "a3", timeout=10,
               message="the key did not flow again after the retry")
