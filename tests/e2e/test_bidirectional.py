"""Both directions in one daemon: edits flow each way, and the agent never echoes its own writes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import create_schemas, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

BOTH_WAYS: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"erp_column": "crm_id"},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "crm"},
        "phone": {"crm": "phone", "erp": "phone_main", "owner": "both"},
        "seq": {"crm": "seq", "erp": "seq", "owner": "both"},
    },
}

CRM_AUDIT = """
ALTER TABLE accounts REPLICA IDENTITY FULL;  -- owner: both needs old values to see conflicts
CREATE TABLE account_audit (id bigserial PRIMARY KEY, account_id int, op char(1), seq bigint,
                            phone text, origin text);
CREATE FUNCTION audit_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO account_audit (account_id, op, seq, phone)
  VALUES (NEW.id, left(TG_OP, 1), NEW.seq, NEW.phone);
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE ON accounts
  FOR EACH ROW EXECUTE FUNCTION audit_account();
"""


@pytest.fixture
def setup(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[AgentSetup]:
    create_schemas(pg_db, maria_db)
    with pg_db.connect() as conn:
        conn.execute(CRM_AUDIT)
    s = AgentSetup(tmp_path, "b" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                   {"customer": BOTH_WAYS})
    s.write()
    assert s.cli("setup").returncode == 0
    yield s
    s.cli("teardown", "--yes")


@pytest.fixture
def agent(setup: AgentSetup) -> Iterator[AgentProcess]:
    proc = AgentProcess(setup)
    proc.wait_streaming()
    yield proc
    proc.stop()


def _seed(pg_db: PgDatabase, maria_db: MariaDatabase, n: int) -> list[int]:
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name, phone, seq) "
                     "SELECT 'c' || g, 'p0', 0 FROM generate_series(1, %s) g", (n,))
    ids = [r[0] for r in crm_rows(pg_db, "SELECT id FROM accounts ORDER BY id")]
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == n,
               timeout=20, message="seed rows did not reach the ERP")
    return ids


def test_phone_changes_flow_both_ways_within_1s_without_echo(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    [crm_id] = _seed(pg_db, maria_db, 1)
    with pg_db.connect() as conn:
        conn.execute("UPDATE accounts SET phone = '+49 111', seq = 1 WHERE id = %s", (crm_id,))
    wait_until(lambda: erp_rows(maria_db, "SELECT phone_main FROM customers WHERE crm_id=%s",
                                (crm_id,)) == [("+49 111",)],
               timeout=1, message="CRM phone not in the ERP within 1 s")
    conn_m = maria_db.connect()
    with conn_m.cursor() as cur:
        cur.execute("UPDATE customers SET phone_main = '+49 222', seq = 2 WHERE crm_id = %s",
                    (crm_id,))
    conn_m.commit()
    conn_m.close()
    wait_until(lambda: crm_rows(pg_db, "SELECT phone FROM accounts WHERE id=%s", (crm_id,))
               == [("+49 222",)], timeout=1, message="ERP phone not in the CRM within 1 s")

    _assert_quiet(pg_db, maria_db, seconds=2)
    crm_audit = crm_rows(pg_db, "SELECT op, seq FROM account_audit ORDER BY id")
    erp_audit = erp_rows(maria_db, "SELECT op, seq FROM customer_audit ORDER BY id")
    # CRM: the seed insert, the user's edit (seq 1), the agent's one write of the ERP edit (seq 2)
    assert [tuple(r) for r in crm_audit] == [("I", 0), ("U", 1), ("U", 2)]
    # ERP: the agent's insert, the agent's one write of the CRM edit, the user's edit
    assert [tuple(r) for r in erp_audit] == [("I", 0), ("U", 1), ("U", 2)]


def _retrying(execute: Callable[..., object], sql: str, args: tuple[object, ...]) -> None:
    """As an application does: a deadlock victim (the agent holds row locks too) tries again."""
    for attempt in range(10):
        try:
            execute(sql, args)
            return
        except (pymysql.err.OperationalError, psycopg.errors.DeadlockDetected) as error:
            code = error.args[0] if isinstance(error, pymysql.err.OperationalError) else 1213
            if code not in (1213, 1205) or attempt == 9:
                raise


def _counts(pg_db: PgDatabase, maria_db: MariaDatabase) -> tuple[int, int]:
    return (crm_rows(pg_db, "SELECT count(*) FROM account_audit")[0][0],
            erp_rows(maria_db, "SELECT count(*) FROM customer_audit")[0][0])


def _assert_quiet(pg_db: PgDatabase, maria_db: MariaDatabase, seconds: float) -> None:
    """No write lands on either side for ``seconds`` (audit tables stay the same)."""
    before = _counts(pg_db, maria_db)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _counts(pg_db, maria_db) == before, "the agent wrote while nothing changed"
        time.sleep(0.1)  # observation interval of a quiet period, not synchronisation


def _goes_quiet(pg_db: PgDatabase, maria_db: MariaDatabase, quiet: float,
                within: float) -> None:
    """Within ``within`` seconds, a period of ``quiet`` seconds comes in which no write lands
    on either side (late corrections of a conflict may still land first; a ping-pong never
    stops)."""
    deadline = time.monotonic() + within
    before, since = _counts(pg_db, maria_db), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"writes did not stop within {within:g} s"
        time.sleep(0.1)  # observation interval of a quiet period, not synchronisation
        now = _counts(pg_db, maria_db)
        if now != before:
            before, since = now, time.monotonic()


@pytest.mark.slow
def test_storm_of_edits_on_both_sides_converges_and_goes_quiet(
        agent: AgentProcess, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    ids = _seed(pg_db, maria_db, 100)
    rng = random.Random(7)
    conn_m = maria_db.connect()
    conn_m.autocommit(True)
    with pg_db.connect(autocommit=True) as conn_p, conn_m.cursor() as cur:
        for seq in range(1, 2001):
            key = rng.choice(ids)
            if rng.random() < 0.5:
                _retrying(conn_p.execute, "UPDATE accounts SET phone = %s, seq = %s WHERE id = %s",
                          (f"c{seq}", seq, key))
            else:
                _retrying(cur.execute,
                          "UPDATE customers SET phone_main = %s, seq = %s WHERE crm_id = %s",
                          (f"e{seq}", seq, key))
    conn_m.close()

    def equal() -> bool:
        crm = crm_rows(pg_db, "SELECT id, phone, seq FROM accounts ORDER BY id")
        erp = erp_rows(maria_db, "SELECT crm_id, phone_main, seq FROM customers ORDER BY crm_id")
        return [tuple(r) for r in crm] == [tuple(r) for r in erp]

    try:
        wait_until(equal, timeout=60, interval=0.25, message="sides did not converge")
    finally:
        crm = crm_rows(pg_db, "SELECT id, phone, seq FROM accounts ORDER BY id")
        erp = erp_rows(maria_db, "SELECT crm_id, phone_main, seq FROM customers ORDER BY crm_id")
        print("differing:",
              [(a, b) for a, b in zip(crm, erp, strict=False) if tuple(a) != tuple(b)])
    _goes_quiet(pg_db, maria_db, quiet=5, within=30)
    assert equal(), "the sides differ after the agent went quiet"
