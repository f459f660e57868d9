"""Readers hand over the agent's own transactions without decoding their rows (skip_origins)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.events import TableId, Transaction
from connectors.mysql import MysqlParams
from connectors.mysql import catalog as my_catalog
from connectors.mysql.reader import MySource
from connectors.postgres import catalog as pg_catalog
from connectors.postgres.reader import PgSource
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase


def _next(poll: Iterator[Transaction | None]) -> Transaction:
    txn = wait_until(lambda: next(poll), 15, interval=0, message="a transaction")
    assert txn is not None
    return txn


def _polling(source: MySource | PgSource) -> Iterator[Transaction | None]:
    while True:
        txn = source.poll(0.2)
        yield None if txn is None or txn.extra.get("keepalive") else txn


@pytest.fixture
def my_params(maria_db: MariaDatabase) -> Iterator[MysqlParams]:
    server = maria_db.server
    params = MysqlParams(host=server.host, port=server.port, user=server.user,
                         password=server.password, database=maria_db.name)
    my_catalog.setup(params, state_schema=f"{maria_db.name}_st")
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(10))")
    yield params
    my_catalog.teardown(params, state_schema=f"{maria_db.name}_st")


@pytest.mark.parametrize("skip", [True, False])
def test_mysql_own_transactions_arrive_without_rows(maria_db: MariaDatabase,
                                                    my_params: MysqlParams, skip: bool) -> None:
    state = f"{maria_db.name}_st"
    source = MySource(my_params, server_id=4242, state_schema=state,
                      tables={TableId(maria_db.name, "t")},
                      skip_origins=frozenset({"a_to_b"}) if skip else frozenset())
    source.open(None)
    try:
        with maria_db.connect(autocommit=False) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO `{state}`.checkpoints (direction, seq) VALUES ('a_to_b', 1)")
            cur.execute("INSERT INTO t VALUES (1, 'own'), (2, 'own')")
            conn.commit()
            cur.execute("INSERT INTO t VALUES (3, 'theirs')")
            conn.commit()
        poll = _polling(source)
        own, theirs = _next(poll), _next(poll)
    finally:
        source.close()
    assert own.origin == "a_to_b" and len(own.changes) == (0 if skip else 2)
    assert theirs.origin is None and [c.new["v"] for c in theirs.changes if c.new] == ["theirs"]


@pytest.mark.parametrize("skip", [True, False])
def test_postgres_own_transactions_arrive_without_rows(pg_db: PgDatabase, skip: bool) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_catalog.setup(pg_db.dsn, state_schema="st", publication="cdc", slot="cdc",
                     tables=[TableId("public", "t")], origins=[pg_db.name])
    source = PgSource(pg_db.dsn, slot="cdc", publication="cdc",
                      skip_origins=frozenset({pg_db.name}) if skip else frozenset())
    source.open(None)
    try:
        with pg_db.connect() as conn:
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (pg_db.name,))
            conn.execute("INSERT INTO t VALUES (1, 'own'), (2, 'own')")
            conn.execute("SELECT pg_replication_origin_session_reset()")
            conn.execute("INSERT INTO t VALUES (3, 'theirs')")
        poll = _polling(source)
        own, theirs = _next(poll), _next(poll)
    finally:
        source.close()
    assert own.origin == pg_db.name and len(own.changes) == (0 if skip else 2)
    assert theirs.origin is None and [c.new["v"] for c in theirs.changes if c.new] == ["theirs"]
