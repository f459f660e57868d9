"""High availability: the holder of the advisory lock replicates, a standby takes over.

First the election itself on both engines (agent.ha.Leadership over real servers), then two
daemons with the same configuration: the active one is SIGKILLed under load and the standby
must be applying within 10 s, with nothing lost or applied twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.ha import AdvisoryLock, Leadership
from connectors.mysql import MysqlParams
from connectors.mysql.advisory_lock import MyAdvisoryLock, lock_name
from connectors.postgres.advisory_lock import PgAdvisoryLock
from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.faultload import (
    assert_exactly_once_in_order,
    make_setup,
    running_load,
    seed,
    wait_converged,
)
from tests.e2e.schema import crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

TAKEOVER_LIMIT = 10.0


def _fast(lock: AdvisoryLock) -> Leadership:
    """Shorter intervals than the daemon uses, so the election tests run quickly."""
    return Leadership(lock, poll_interval=0.2, check_interval=0.2, lease=0.8)


def _pg_lock(db: PgDatabase, name: str) -> PgAdvisoryLock:
    return PgAdvisoryLock(db.dsn, name)


def _my_lock(db: MariaDatabase, name: str) -> MyAdvisoryLock:
    kw = db.connect_kwargs
    return MyAdvisoryLock(MysqlParams(host=kw["host"], port=kw["port"], user=kw["user"],
                                      password=kw["password"], database=db.name), name)


def _kill_pg_session(db: PgDatabase, name: str) -> None:
    with db.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = 'cdc-agent ha' AND datname = %s", (db.name,))


def _kill_my_session(db: MariaDatabase, name: str) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT IS_USED_LOCK(%s)", (lock_name(name),))
            [owner] = cur.fetchone()
            cur.execute("KILL %s", (owner,))
    finally:
        conn.close()


@pytest.fixture(params=["postgresql", "mysql"])
def engine(request: pytest.FixtureRequest, pg_db: PgDatabase, maria_db: MariaDatabase
           ) -> tuple[Callable[[str], AdvisoryLock], Callable[[str], None]]:
    """(make a lock for a name, kill the session holding that name's lock)."""
    if request.param == "postgresql":
        return (lambda n: _pg_lock(pg_db, n)), (lambda n: _kill_pg_session(pg_db, n))
    return (lambda n: _my_lock(maria_db, n)), (lambda n: _kill_my_session(maria_db, n))


@pytest.fixture
def released() -> Iterator[list[Leadership]]:
    held: list[Leadership] = []
    yield held
    for leadership in held:
        leadership.release()


def test_one_leader_and_the_standby_takes_over_when_the_lock_frees(
        engine: tuple[Callable[[str], AdvisoryLock], Callable[[str], None]],
        released: list[Leadership]) -> None:
    make, _ = engine
    first, second = _fast(make("ha1")), _fast(make("ha1"))
    released += [first, second]
    stop = threading.Event()
    assert first.wait_until_leader(stop)
    assert first.still_leader()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(second.wait_until_leader(stop)))
    waiter.start()
    waiter.join(first.fence_delay + 1)
    assert waiter.is_alive() and not second.still_leader(), "two leaders at once"
    freed = time.monotonic()
    first.release()
    waiter.join(10)
    assert result == [True]
    took = time.monotonic() - freed
    assert first.fence_delay <= took < first.fence_delay + 1
    assert second.still_leader() and not first.still_leader()


def test_losing_the_lock_session_ends_leadership_within_the_lease(
        engine: tuple[Callable[[str], AdvisoryLock], Callable[[str], None]],
        released: list[Leadership]) -> None:
    make, kill_session = engine
    leader = _fast(make("ha2"))
    released.append(leader)
    assert leader.wait_until_leader(threading.Event())
    lost = threading.Event()
    leader.watch(lost.set)
    killed = time.monotonic()
    kill_session("ha2")
    assert lost.wait(5), "the lost lock was not noticed"
    assert not leader.still_leader()
    assert time.monotonic() - killed < leader.fence_delay, "a new leader could start too soon"


def test_stop_while_waiting_returns_false(
        engine: tuple[Callable[[str], AdvisoryLock], Callable[[str], None]],
        released: list[Leadership]) -> None:
    make, _ = engine
    holder, waiter = _fast(make("ha3")), _fast(make("ha3"))
    released += [holder, waiter]
    assert holder.wait_until_leader(threading.Event())
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    assert waiter.wait_until_leader(stop) is False
    assert holder.still_leader()


# --- two daemons ---------------------------------------------------------------------------


@pytest.fixture
def ha_setup(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[AgentSetup]:
    setup = make_setup(tmp_path, pg_db, maria_db, ha="crm")
    yield setup
    setup.cli("teardown", "--yes")


def _erp_seq_crm(erp: MariaDatabase, crm_id: int) -> int | None:
    rows = erp_rows(erp, "SELECT seq_crm FROM customers WHERE crm_id = %s", (crm_id,))
    return rows[0][0] if rows else None


@pytest.mark.slow
def test_sigkill_of_the_active_instance_the_standby_applies_within_10s(
        ha_setup: AgentSetup, pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    seed(pg_db, 30)
    active = AgentProcess(ha_setup)
    active.wait_streaming()
    standby = AgentProcess(ha_setup)
    try:
        wait_until(lambda: "waiting for the" in standby.log(), 20,
                   message="the second instance did not wait as a standby")
        with running_load(pg_db, maria_db):
            wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] >= 30,
                       20, message="seed rows did not reach the ERP")
            assert "streaming" not in standby.log(), "the standby replicates: split brain"
            active.kill()
            killed = time.monotonic()
            [(probe,)] = crm_rows(pg_db, "SELECT min(id) FROM accounts")
            with pg_db.connect() as conn:
                conn.execute("UPDATE accounts SET seq_crm = 1000000000 WHERE id = %s", (probe,))
            wait_until(lambda: (_erp_seq_crm(maria_db, probe) or 0) >= 1000000000,
                       TAKEOVER_LIMIT, interval=0.05,
                       message="the standby did not apply within 10 s")
            took = time.monotonic() - killed
            assert standby.proc.poll() is None
        wait_converged(pg_db, maria_db)
        applied = assert_exactly_once_in_order(pg_db, maria_db)
        print(f"takeover: first change applied {took:.1f}s after SIGKILL; {applied}")
    finally:
        active.kill()
        assert standby.stop() == 0, standby.log()[-4000:]
