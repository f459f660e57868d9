"""State schema setup, describe and the preflight check against a real MariaDB 10.11."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from agent.events import TableId
from connectors.mysql import MysqlParams, catalog
from tests.servers import MariaDatabase


def params_of(db: MariaDatabase, user: str | None = None, password: str | None = None
              ) -> MysqlParams:
    server = db.server
    return MysqlParams(host=server.host, port=server.port, user=user or server.user,
                       password=password or server.password, database=db.name)


@pytest.fixture
def tables(maria_db: MariaDatabase) -> dict[str, TableId]:
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE withpk (id int unsigned PRIMARY KEY, doc json,"
                    " name varchar(30), ts timestamp(6) NULL)")
        cur.execute("CREATE TABLE nopk (a int)")
    return {name: TableId(maria_db.name, name) for name in ("withpk", "nopk", "missing")}


def test_setup_is_idempotent_and_teardown_removes_it(maria_db: MariaDatabase) -> None:
    params = params_of(maria_db)
    state = f"{maria_db.name}_st"
    catalog.setup(params, state_schema=state)
    catalog.setup(params, state_schema=state)
    described = catalog.describe(params, [TableId(state, "checkpoints"),
                                          TableId(state, "heartbeats")])
    assert described[TableId(state, "checkpoints")] == {
        "direction": "varchar(100)", "seq": "bigint(20)", "position": "varchar(255)",
        "source_commit_ts": "datetime(6)", "applied_at": "datetime(6)"}
    assert described[TableId(state, "heartbeats")] == {"id": "int(11)", "ts": "datetime(6)"}
    catalog.teardown(params, state_schema=state)
    catalog.teardown(params, state_schema=state)
    assert catalog.describe(params, [TableId(state, "checkpoints")]) == {}


def test_describe_reports_column_types_and_recognises_mariadb_json(
        maria_db: MariaDatabase, tables: dict[str, TableId]) -> None:
    described = catalog.describe(params_of(maria_db), tables.values())
    assert described == {tables["withpk"]: {"id": "int(10) unsigned", "doc": "json",
                                            "name": "varchar(30)", "ts": "timestamp(6)"},
                         tables["nopk"]: {"a": "int(11)"}}


def test_check_names_table_problems_and_server_id_collision(
        maria_db: MariaDatabase, tables: dict[str, TableId]) -> None:
    params = params_of(maria_db)
    assert catalog.check(params, tables=[tables["withpk"]], server_id=4711) == []
    problems = catalog.check(params, tables=tables.values(), server_id=1)
    assert problems == [
        f"table {tables['nopk']} has no primary key",
        f"table {tables['missing']} does not exist",
        "server_id 1 is the server's own server_id; choose another",
    ]


@pytest.fixture
def plain_user(maria_db: MariaDatabase) -> Iterator[tuple[str, str]]:
    user, password = f"u{secrets.token_hex(4)}", secrets.token_hex(8)
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (user, password))
        cur.execute(f"GRANT SELECT ON `{maria_db.name}`.* TO %s@'127.0.0.1'", (user,))
    yield user, password
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP USER %s@'127.0.0.1'", (user,))


def test_check_names_missing_replication_privileges(
        maria_db: MariaDatabase, tables: dict[str, TableId],
        plain_user: tuple[str, str]) -> None:
    user, password = plain_user
    problems = catalog.check(params_of(maria_db, user, password), tables=[tables["withpk"]])
    assert problems == [
        f"user '{user}' lacks the REPLICATION SLAVE privilege (GRANT REPLICATION SLAVE ON *.*"
        " TO ...)",
        f"user '{user}' lacks the REPLICATION CLIENT privilege (GRANT REPLICATION CLIENT ON *.*"
        " TO ...)",
    ]
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO %s@'127.0.0.1'",
                    (user,))
    assert catalog.check(params_of(maria_db, user, password), tables=[tables["withpk"]]) == []


def test_check_reports_an_unreachable_server_as_one_problem(maria_db: MariaDatabase) -> None:
    params = params_of(maria_db, password="wrong-password")
    problems = catalog.check(params, tables=[])
    assert len(problems) == 1 and "1045" in problems[0] and "wrong-password" not in problems[0]
