"""ERP (MariaDB) -> CRM (PostgreSQL): the crash test of the vertical slice, the other way round."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import create_schemas, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

ERP_OWNED: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"erp_column": "crm_id"},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "erp"},
        "phone": {"crm": "phone", "erp": "phone_main", "owner": "erp"},
        "seq": {"crm": "seq", "erp": "seq", "owner": "erp"},
    },
}

CRM_AUDIT = """
CREATE TABLE account_audit (id bigserial PRIMARY KEY, account_id int, seq bigint);
CREATE FUNCTION audit_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO account_audit (account_id, seq) VALUES (NEW.id, NEW.seq); RETURN NEW; END $$;
CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts
  FOR EACH ROW EXECUTE FUNCTION audit_account();
"""


@pytest.mark.slow
def test_kill_9_erp_to_crm_loses_nothing_and_applies_nothing_twice(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> None:
    create_schemas(pg_db, maria_db)
    with pg_db.connect() as conn:
        conn.execute(CRM_AUDIT)
        conn.execute("INSERT INTO accounts (name, seq) SELECT 'c' || g, 0 "
                     "FROM generate_series(1, 50) g")
    setup = AgentSetup(tmp_path, "k" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": ERP_OWNED})
    setup.write()
    assert setup.cli("setup").returncode == 0
    with pg_db.connect() as conn:  # the agent starts after the rows: link them by hand
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id").fetchall()]
    conn_m = maria_db.connect()
    with conn_m.cursor() as cur:
        cur.executemany("INSERT INTO customers (crm_id, name, seq) VALUES (%s, %s, 0)",
                        [(i, f"c{n}") for n, i in enumerate(ids, 1)])
    conn_m.commit()
    proc = AgentProcess(setup)
    proc.wait_streaming()

    total = 5_000
    done = threading.Event()

    def write_updates() -> None:
        conn = maria_db.connect()
        conn.autocommit(True)
        with conn.cursor() as cur:
            for seq in range(1, total + 1):
                cur.execute("UPDATE customers SET seq = %s, phone_main = %s WHERE crm_id = %s",
                            (seq, f"p{seq}", random.choice(ids)))
        conn.close()
        done.set()

    writer = threading.Thread(target=write_updates)
    writer.start()
    try:
        for _ in range(5):
            wait_until(lambda: done.is_set() or random.random() < 0.02, timeout=30,
                       interval=0.05)
            proc.kill()
            proc = AgentProcess(setup)
            proc.wait_streaming()
    finally:
        writer.join()

    expected = [tuple(r) for r in erp_rows(
        maria_db, "SELECT crm_id, name, phone_main, seq FROM customers ORDER BY crm_id")]

    def converged() -> bool:
        got = crm_rows(pg_db, "SELECT id, name, phone, seq FROM accounts ORDER BY id")
        return [tuple(r) for r in got] == expected

    wait_until(converged, timeout=120, interval=0.5, message="the CRM did not converge")
    assert proc.stop() == 0
    last: dict[int, int] = {}
    for account, seq in crm_rows(pg_db, "SELECT account_id, seq FROM account_audit ORDER BY id"):
        assert seq > last.get(account, -1), f"{account}: {seq} applied after {last[account]}"
        last[account] = seq
