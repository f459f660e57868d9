"""A revert survives a crash between the decision and its correction (the remedies outbox).

The CRM-to-ERP pipeline rejects an edit of the ERP-owned street and records, in the ERP, the
conflict and the revert; the ERP-to-CRM pipeline writes the revert into the CRM. Here the CRM
row is locked so the revert cannot be written, the agent is killed (kill -9), the lock is
released and the agent restarted: the revert must still arrive, read from the outbox.
"""

from __future__ import annotations

import copy
from pathlib import Path

import psycopg

from tests.e2e.agentproc import AgentProcess
from tests.e2e.test_sovereignty import CUSTOMER, Story, make_story
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase


def _outbox(story: Story) -> list[tuple[str, str]]:
    schema = story.agent.setup.state_schema
    conn = story.erp.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT reason, status FROM {schema}.remedies ORDER BY created_at")
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _edit_and_hold(story: Story, crm_id: int) -> psycopg.Connection[tuple[object, ...]] | None:
    """Edit the street, then lock the row before the agent reverts it (None: too late)."""
    story.crm_do("UPDATE accounts SET billing_street = 'Fake Street 9' WHERE id = %s", crm_id)
    holder = psycopg.connect(story.crm.dsn)
    row = holder.execute("SELECT billing_street FROM accounts WHERE id = %s FOR UPDATE",
                         (crm_id,)).fetchone()
    if row == ("Fake Street 9",):
        return holder
    holder.close()  # the revert was faster than the lock: try again
    story.crm_do("UPDATE accounts SET billing_street = 'Main 1' WHERE id = %s", crm_id)
    return None


def test_a_revert_decided_before_a_crash_is_applied_after_the_restart(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> None:
    setup = make_story(pg_db, maria_db, tmp_path, copy.deepcopy(CUSTOMER))
    agent = AgentProcess(setup)
    agent.wait_streaming()
    story = Story(pg_db, maria_db, agent)
    crm_id, _ = story.new_customer()
    wait_until(lambda: ("link", "done") in _outbox(story), timeout=30,
               message="the key write-back was not marked done in the outbox")

    holder = None
    for _ in range(5):
        holder = _edit_and_hold(story, crm_id)
        if holder is not None:
            break
    assert holder is not None, "the revert always beat the test's lock"
    try:
        wait_until(lambda: ("revert", "pending") in _outbox(story), timeout=10,
                   message="the revert was not stored in the ERP's outbox")
        agent.kill()
    finally:
        holder.close()
    print(agent.log())
    assert story.account(crm_id, "billing_street") == ("Fake Street 9",)

    restarted = AgentProcess(setup)
    story.agent = restarted
    try:
        restarted.wait_streaming()
        wait_until(lambda: story.account(crm_id, "billing_street") == ("Main 1",), timeout=20,
                   message="the revert was lost in the crash")
        wait_until(lambda: all(status == "done" for _, status in _outbox(story)), timeout=10,
                   message="the outbox still lists the revert as pending")
    finally:
        restarted.stop()
        print(restarted.log())


def test_check_names_state_tables_an_upgrade_added(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> None:
    # As after installing a version that added the outbox, before `setup` ran again.
    setup = make_story(pg_db, maria_db, tmp_path, copy.deepcopy(CUSTOMER))
    conn = maria_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE {setup.state_schema}.remedies")
    finally:
        conn.close()
    done = setup.cli("check")
    assert done.returncode == 1
    assert (f"erp: state tables missing in {setup.state_schema}: remedies; "
            "run `cdc-agent setup`") in done.stderr, done.stderr
    assert setup.cli("setup").returncode == 0
    done = setup.cli("check")
    assert done.returncode == 0, done.stderr
