"""Fault suite: the daemon killed, the databases restarted or frozen, positions lost.

Every scenario runs the real daemon as a subprocess against real servers under load on both
sides (faultload.Load) and ends with the same verdict: the tables are equal (nothing lost)
and every audit trail rises strictly per key (nothing applied twice or out of order).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest

from tests.conftest import MariaServerFactory, PgServerFactory
from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.faultload import (
    assert_exactly_once_in_order,
    make_setup,
    maria_database,
    pg_database,
    running_load,
    seed,
    wait_converged,
)
from tests.e2e.schema import crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

ROOT = Path(__file__).resolve().parents[2]
SEED_ROWS = 50
KILL_ROUNDS = 20


@pytest.fixture
def teardown_after() -> Iterator[list[AgentSetup]]:
    """Setups whose server objects `cdc-agent teardown` removes after the test."""
    setups: list[AgentSetup] = []
    yield setups
    for setup in setups:
        setup.cli("teardown", "--yes")


def _applied(crm: PgDatabase, erp: MariaDatabase) -> tuple[int, int]:
    """How many changes each direction applied so far (audit rows on each target)."""
    return (erp_rows(erp, "SELECT count(*) FROM customer_audit")[0][0],
            crm_rows(crm, "SELECT count(*) FROM account_audit")[0][0])


def _wait_both_directions_apply(crm: PgDatabase, erp: MariaDatabase, timeout: float) -> None:
    """Both directions apply new changes (the load is running): replication is live."""
    before = wait_until(lambda: _applied(crm, erp), timeout, message="targets unreachable",
                        ignore=(psycopg.OperationalError, pymysql.err.OperationalError))

    def moved() -> bool:
        now = _applied(crm, erp)
        return now[0] > before[0] and now[1] > before[1]

    wait_until(moved, timeout, interval=0.1, message="replication did not resume",
               ignore=(psycopg.OperationalError, pymysql.err.OperationalError))


def _start(setup: AgentSetup) -> AgentProcess:
    proc = AgentProcess(setup)
    proc.wait_streaming()
    return proc


def _finish(proc: AgentProcess, crm: PgDatabase, erp: MariaDatabase) -> dict[str, int]:
    try:
        assert proc.proc.poll() is None, f"agent exited:\n{proc.log()[-4000:]}"
        wait_converged(crm, erp, timeout=60)
        return assert_exactly_once_in_order(crm, erp)
    finally:
        assert proc.stop() == 0, proc.log()[-4000:]


def _kill_at_random_moment(setup: AgentSetup, after: float) -> AgentProcess:
    """Start the agent and SIGKILL it ``after`` seconds later, whatever it is doing."""
    proc = AgentProcess(setup)
    deadline = time.monotonic() + after
    wait_until(lambda: time.monotonic() >= deadline or proc.proc.poll() is not None,
               after + 1, message="round did not end")
    assert proc.proc.poll() is None, f"agent exited:\n{proc.log()[-4000:]}"
    proc.kill()
    return proc


@pytest.mark.slow
def test_20_sigkills_at_random_moments_lose_nothing_and_apply_nothing_twice(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path,
        teardown_after: list[AgentSetup]) -> None:
    setup = make_setup(tmp_path, pg_db, maria_db)
    teardown_after.append(setup)
    seed(pg_db, SEED_ROWS)
    rng = random.Random()
    started = time.monotonic()
    with running_load(pg_db, maria_db) as load:
        proc = _start(setup)
        wait_until(lambda: _applied(pg_db, maria_db)[0] >= SEED_ROWS, 30,
                   message="seed rows did not reach the ERP")
        proc.kill()
        for _ in range(KILL_ROUNDS - 1):
            # From the start of the process: some kills land during startup, most mid-apply.
            proc = _kill_at_random_moment(setup, rng.uniform(0.5, 3.0))
        proc = _start(setup)
        try:
            _wait_both_directions_apply(pg_db, maria_db, 30)
        except BaseException:
            proc.kill()
            raise
    applied = _finish(proc, pg_db, maria_db)
    print(f"{KILL_ROUNDS} kill rounds in {time.monotonic() - started:.0f}s; load "
          f"{dict(load.done)}; applied {applied}")
    assert load.done["crm"] > 0 and load.done["erp"] > 0


@pytest.mark.slow
def test_postgres_then_mariadb_restart_mid_load_recovers_without_operator(
        pg_server_factory: PgServerFactory, maria_server_factory: MariaServerFactory,
        tmp_path: Path, teardown_after: list[AgentSetup]) -> None:
    pg = pg_server_factory()
    maria = maria_server_factory()
    crm, erp = pg_database(pg, "crm"), maria_database(maria, "erp")
    setup = make_setup(tmp_path, crm, erp)
    teardown_after.append(setup)
    seed(crm, SEED_ROWS)
    proc = _start(setup)
    try:
        with running_load(crm, erp):
            _wait_both_directions_apply(crm, erp, 30)
            pg.restart()
            _wait_both_directions_apply(crm, erp, 60)
            maria.restart()
            _wait_both_directions_apply(crm, erp, 60)
    except BaseException:
        proc.kill()
        raise
    _finish(proc, crm, erp)


@pytest.mark.slow
def test_target_frozen_30s_with_sigstop_recovers_nothing_lost_nothing_twice(
        pg_db: PgDatabase, maria_server_factory: MariaServerFactory, tmp_path: Path,
        teardown_after: list[AgentSetup]) -> None:
    maria = maria_server_factory()
    erp = maria_database(maria, "erp")
    setup = make_setup(tmp_path, pg_db, erp)
    teardown_after.append(setup)
    seed(pg_db, SEED_ROWS)
    proc = _start(setup)
    try:
        with running_load(pg_db, erp):
            _wait_both_directions_apply(pg_db, erp, 30)
            maria.pause()
            try:
                time.sleep(30)  # the fault itself: the target stays frozen for 30 s
                assert proc.proc.poll() is None, f"agent exited:\n{proc.log()[-4000:]}"
            finally:
                maria.resume()
            _wait_both_directions_apply(pg_db, erp, 60)
    except BaseException:
        proc.kill()
        raise
    _finish(proc, pg_db, erp)


def _exit_69(setup: AgentSetup) -> str:
    proc = AgentProcess(setup)
    try:
        code = proc.wait_exit(60)
    finally:
        proc.kill()
    log = proc.log()
    assert code == 69, f"exit {code}:\n{log[-4000:]}"
    assert "reconcile" in log, log[-4000:]
    return log


def test_lost_slot_stops_with_exit_69_and_names_the_recovery(
        pg_server_factory: PgServerFactory, maria_db: MariaDatabase, tmp_path: Path,
        teardown_after: list[AgentSetup]) -> None:
    pg = pg_server_factory(max_slot_wal_keep_size="1MB",
                           settings={"max_wal_size": "32MB", "min_wal_size": "32MB"})
    crm = pg_database(pg, "crm")
    setup = make_setup(tmp_path, crm, maria_db)
    teardown_after.append(setup)
    seed(crm, 3)
    proc = _start(setup)
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == 3, 20,
               message="seed rows did not reach the ERP")
    assert proc.stop() == 0
    with crm.connect() as conn:  # while the agent is down, WAL moves far past the slot
        conn.execute("CREATE TABLE junk (v text)")
        for _ in range(6):
            conn.execute("INSERT INTO junk SELECT repeat('x', 200) FROM generate_series(1, 40000)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
        status = conn.execute("SELECT wal_status FROM pg_replication_slots "
                              "WHERE slot_name = %s", (f"cdc_agent_{setup.name}_crm",)).fetchone()
    assert status == ("lost",)
    log = _exit_69(setup)
    assert re.search(r"slot .* (invalidated|does not exist|cannot stream)", log), log[-4000:]


def test_purged_binlog_stops_with_exit_69_and_names_the_recovery(
        pg_db: PgDatabase, maria_server_factory: MariaServerFactory, tmp_path: Path,
        teardown_after: list[AgentSetup]) -> None:
    maria = maria_server_factory()
    erp = maria_database(maria, "erp")
    setup = make_setup(tmp_path, pg_db, erp)
    teardown_after.append(setup)
    seed(pg_db, 3)
    proc = _start(setup)
    wait_until(lambda: erp_rows(erp, "SELECT count(*) FROM customers")[0][0] == 3, 20,
               message="seed rows did not reach the ERP")
    conn = erp.connect()
    with conn.cursor() as cur:  # an ERP change, so erp_to_crm checkpoints a binlog position
        cur.execute("UPDATE customers SET seq_erp = 1")
    conn.commit()
    wait_until(lambda: crm_rows(pg_db, "SELECT min(seq_erp) FROM accounts")[0][0] == 1, 20,
               message="the ERP change did not reach the CRM")
    assert proc.stop() == 0
    with conn.cursor() as cur:
        cur.execute("UPDATE customers SET seq_erp = 2")  # missed while the agent is down
        conn.commit()
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW BINARY LOGS")
        newest = cur.fetchall()[-1][0]

        def purged() -> bool:
            # The server keeps a file a dump thread still reads (the stopped agent's, until
            # the server notices): purge until only the newest file is left.
            cur.execute("PURGE BINARY LOGS TO %s", (newest,))
            cur.execute("SHOW BINARY LOGS")
            return [r[0] for r in cur.fetchall()] == [newest]

        wait_until(purged, 20, interval=0.2, message="binlogs were not purged")
    conn.close()
    log = _exit_69(setup)
    assert "binlog" in log, log[-4000:]


def test_systemd_does_not_restart_after_exit_69() -> None:
    unit = (ROOT / "systemd" / "cdc-agent.service").read_text()
    values = re.findall(r"^RestartPreventExitStatus=(.*)$", unit, re.MULTILINE)
    assert values and "69" in " ".join(values).split()


def test_erp_change_made_while_down_before_any_erp_checkpoint_is_not_lost(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path,
        teardown_after: list[AgentSetup]) -> None:
    setup = make_setup(tmp_path, pg_db, maria_db)
    teardown_after.append(setup)
    seed(pg_db, 1)
    proc = _start(setup)
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == 1, 20,
               message="the seed row did not reach the ERP")
    assert proc.stop() == 0  # erp_to_crm has applied nothing yet: it has no checkpoint
    conn = maria_db.connect()
    with conn.cursor() as cur:
        cur.execute("UPDATE customers SET seq_erp = 7")
    conn.commit()
    conn.close()
    proc = _start(setup)
    try:
        wait_until(lambda: crm_rows(pg_db, "SELECT seq_erp FROM accounts") == [(7,)], 15,
                   message="the ERP change made while the agent was down was lost")
    finally:
        proc.stop()
