"""A MySink on a fresh MariaDB database with the agent's state schema (shared fixture body)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from connectors.mysql import MysqlParams, catalog
from connectors.mysql.writer import MySink
from tests.servers import MariaDatabase


@contextmanager
def open_sink(maria_db: MariaDatabase, statements: Sequence[str]) -> Iterator[MySink]:
    """Run ``statements`` (the test's tables), then yield an open sink writing into them
    (session zone Europe/Berlin); the state schema is removed afterwards."""
    server = maria_db.server
    params = MysqlParams(host=server.host, port=server.port, user=server.user,
                         password=server.password, database=maria_db.name,
                         timezone="Europe/Berlin")
    state = f"{maria_db.name}_st"
    catalog.setup(params, state_schema=state)
    with maria_db.connect() as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    sink = MySink(params, state_schema=state)
    sink.open()
    try:
        yield sink
    finally:
        sink.close()
        catalog.teardown(params, state_schema=state)
