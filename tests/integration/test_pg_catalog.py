"""Catalog helpers against a real PostgreSQL 15: setup/teardown idempotence, describe, check."""

from __future__ import annotations

from typing import Any

import pytest

from agent.events import TableId
from connectors.postgres import catalog
from tests.servers import PgDatabase

ACCOUNTS = TableId("public", "accounts")
NOKEY = TableId("public", "no_key")


@pytest.fixture
def db(pg_db: PgDatabase) -> PgDatabase:
    with pg_db.connect() as conn:
        conn.execute(
            'CREATE TABLE accounts (id int PRIMARY KEY, "Name" varchar(20), n numeric(8,2))'
        )
        conn.execute("CREATE TABLE no_key (v text)")
    return pg_db


def names(db: PgDatabase, query: str, *params: object) -> list[Any]:
    with db.connect() as conn:
        return [r[0] for r in conn.execute(query, params).fetchall()]


def do_setup(db: PgDatabase, tables: list[TableId]) -> None:
    catalog.setup(
        db.dsn,
        state_schema="cdc_state",
        publication="cdc_pub",
        slot="cdc_slot",
        tables=tables,
        origins=[db.name],
    )


def test_setup_is_idempotent_and_updates_the_publication(db: PgDatabase) -> None:
    do_setup(db, [ACCOUNTS])
    do_setup(db, [ACCOUNTS])
    assert names(
        db, "SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc_pub' ORDER BY 1"
    ) == ["accounts", "heartbeats"]
    assert names(db, "SELECT plugin FROM pg_replication_slots WHERE slot_name = 'cdc_slot'") == [
        "pgoutput"
    ]
    assert names(db, "SELECT roname FROM pg_replication_origin WHERE roname = %s", db.name) == [
        db.name
    ]
    assert names(db, "SELECT count(*) FROM cdc_state.checkpoints") == [0]
    with db.connect() as conn:
        conn.execute("ALTER TABLE no_key REPLICA IDENTITY FULL")
    do_setup(db, [NOKEY])
    assert names(
        db, "SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc_pub' ORDER BY 1"
    ) == ["heartbeats", "no_key"]


def test_teardown_drops_everything_and_is_idempotent(db: PgDatabase) -> None:
    do_setup(db, [ACCOUNTS])
    for _ in range(2):
        catalog.teardown(
            db.dsn,
            state_schema="cdc_state",
            publication="cdc_pub",
            slot="cdc_slot",
            origins=[db.name],
        )
    assert (
        names(db, "SELECT slot_name FROM pg_replication_slots WHERE slot_name = 'cdc_slot'") == []
    )
    assert names(db, "SELECT pubname FROM pg_publication WHERE pubname = 'cdc_pub'") == []
    assert names(db, "SELECT roname FROM pg_replication_origin WHERE roname = %s", db.name) == []
    assert names(db, "SELECT nspname FROM pg_namespace WHERE nspname = 'cdc_state'") == []


def test_describe_lists_columns_and_omits_missing_tables(db: PgDatabase) -> None:
    missing = TableId("public", "missing")
    found = catalog.describe(db.dsn, [ACCOUNTS, missing])
    assert found == {
        ACCOUNTS: {"id": "integer", "Name": "character varying(20)", "n": "numeric(8,2)"}
    }


def test_check_names_each_problem(db: PgDatabase) -> None:
    missing = TableId("public", "missing")
    kwargs: dict[str, Any] = {"slot": "cdc_slot", "publication": "cdc_pub"}
    problems = catalog.check(db.dsn, tables=[ACCOUNTS, NOKEY, missing], **kwargs)
    assert len(problems) == 4, problems
    assert any("no_key has no primary key" in p for p in problems)
    assert any("missing does not exist" in p for p in problems)
    assert any("slot cdc_slot does not exist" in p for p in problems)
    assert any("publication cdc_pub does not exist" in p for p in problems)

    do_setup(db, [ACCOUNTS])
    assert catalog.check(db.dsn, tables=[ACCOUNTS], **kwargs) == []
    problems = catalog.check(db.dsn, tables=[ACCOUNTS, NOKEY], **kwargs)
    assert len(problems) == 2 and all("no_key" in p for p in problems), problems


def test_check_reports_wal_level(pg_server_factory: Any) -> None:
    server = pg_server_factory(settings={"wal_level": "replica"})
    problems = catalog.check(server.dsn(), tables=[], slot="s", publication="p")
    assert any("wal_level" in p for p in problems), problems
