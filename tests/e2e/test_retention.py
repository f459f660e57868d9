"""Bounded retention: an idle captured table must not make the slot hold WAL.

Other tables in the same PostgreSQL database churn (hundreds of MB of WAL), the captured
tables stay idle; heartbeats (1 s) keep the slot's position moving, so the WAL the slot
retains stays far below what was written.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PgServerFactory
from tests.e2e.agentproc import AgentProcess
from tests.e2e.faultload import make_setup, pg_database, seed
from tests.e2e.schema import erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

RUN_SECONDS = 60
LIMIT = 64 * 1024 * 1024


def _one(conn: psycopg.Connection[Any], query: str, args: tuple[Any, ...]) -> Any:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


RETAINED_SQL = ("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint,"
                " pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = %s")


def _churn(crm: PgDatabase, stop: threading.Event) -> None:
    with crm.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE churn (id bigserial PRIMARY KEY, v text)")
        rounds = 0
        while not stop.is_set():
            conn.execute("INSERT INTO churn (v) SELECT repeat('x', 200) "
                         "FROM generate_series(1, 2000)")
            rounds += 1
            if rounds % 20 == 0:
                conn.execute("TRUNCATE churn")
            # Pacing, about 2 MB of WAL per second: PostgreSQL 15 moves a slot's restart_lsn
            # only at running-xacts records (every 15 s), so even a perfect agent retains
            # 15-30 s of WAL; faster churn would measure the server, not the agent.
            stop.wait(0.3)


@pytest.mark.slow
def test_idle_slot_retains_under_64mb_while_other_tables_churn(
        pg_server_factory: PgServerFactory, maria_db: MariaDatabase, tmp_path: Path) -> None:
    crm = pg_database(pg_server_factory(), "crm")
    setup = make_setup(tmp_path, crm, maria_db)
    slot = f"cdc_agent_{setup.name}_crm"
    seed(crm, 3)
    proc = AgentProcess(setup)
    stop = threading.Event()
    churn = threading.Thread(target=_churn, args=(crm, stop), daemon=True)
    try:
        proc.wait_streaming()
        wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == 3, 20,
                   message="seed rows did not reach the ERP")
        with crm.connect(autocommit=True) as conn:
            start_lsn = _one(conn, "SELECT pg_current_wal_insert_lsn()", ())
            churn.start()
            peak = peak_unconfirmed = 0
            deadline = time.monotonic() + RUN_SECONDS
            while time.monotonic() < deadline:
                row = conn.execute(RETAINED_SQL, (slot,)).fetchone()
                assert row is not None
                peak, peak_unconfirmed = max(peak, row[0]), max(peak_unconfirmed, row[1])
                time.sleep(0.5)  # sampling interval of the measurement, not synchronisation
            written = _one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)",
                           (start_lsn,))
        assert proc.proc.poll() is None, proc.log()[-4000:]
        print(f"WAL written {written / 2**20:.0f} MiB in {RUN_SECONDS}s; "
              f"peak retained by the slot {peak / 2**20:.1f} MiB "
              f"(not yet confirmed: {peak_unconfirmed / 2**20:.1f} MiB)")
        assert written > 1.5 * LIMIT, "too little WAL written for the test to mean anything"
        assert peak < LIMIT
    finally:
        stop.set()
        if churn.ident is not None:
            churn.join(30)
        proc.stop()
        setup.cli("teardown", "--yes")
