"""State schema setup/teardown, table descriptions and the live preflight check (MySQL/MariaDB).

The state schema is a MySQL database the agent owns (``checkpoints``, ``heartbeats``; the
core may add its own tables there). :func:`check` names every problem that would stop the
binlog reader or the writer, all at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pymysql
from pymysql.cursors import Cursor

from agent.errors import AgentError
from agent.events import TableId
from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.errors import classify, errno_of
from connectors.mysql.values import ColumnDef

_CHECKPOINTS_DDL = """CREATE TABLE IF NOT EXISTS {schema}.`checkpoints` (
  `direction` varchar(100) NOT NULL PRIMARY KEY,
  `seq` bigint NOT NULL DEFAULT 0,
  `position` varchar(255) NULL,
  `source_commit_ts` datetime(6) NULL,
  `applied_at` datetime(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

_HEARTBEATS_DDL = """CREATE TABLE IF NOT EXISTS {schema}.`heartbeats` (
  `id` int NOT NULL PRIMARY KEY,
  `ts` datetime(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

REQUIRED_SETTINGS: dict[str, str] = {
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}


def quote_ident(name: str) -> str:
    """A MySQL identifier in backticks (embedded backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def quote_table(table: TableId) -> str:
    """``schema`.`name``, both parts quoted."""
    return f"{quote_ident(table.schema)}.{quote_ident(table.name)}"


@contextmanager
def _connection(params: MysqlParams) -> Iterator[pymysql.connections.Connection[Cursor]]:
    try:
        conn = pymysql.connect(**connect_kwargs(params), autocommit=True)
    except pymysql.err.MySQLError as exc:
        raise classify(exc, context=f"connect to {params.host}:{params.port}") from exc
    try:
        yield conn
    finally:
        conn.close()


def setup(params: MysqlParams, *, state_schema: str) -> None:
    """Create the state database and its tables if missing (idempotent)."""
    schema = quote_ident(state_schema)
    with _connection(params) as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE DATABASE IF NOT EXISTS {schema} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
        cur.execute(_CHECKPOINTS_DDL.format(schema=schema))
        cur.execute(_HEARTBEATS_DDL.format(schema=schema))


def teardown(params: MysqlParams, *, state_schema: str) -> None:
    """Drop the state database with everything in it (idempotent)."""
    with _connection(params) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(state_schema)}")


def load_columns(cur: Cursor, table: TableId) -> dict[str, ColumnDef]:
    """The table's columns in ordinal order (empty if the table does not exist)."""
    cur.execute(
        "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE) FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (table.schema, table.name),
    )
    rows = [(str(n), str(d), str(c)) for n, d, c in cur.fetchall()]
    json_columns = _mariadb_json_columns(cur, table)
    return {
        name: ColumnDef(name, "json", "json") if name in json_columns else ColumnDef(name, d, c)
        for name, d, c in rows
    }


def _mariadb_json_columns(cur: Cursor, table: TableId) -> set[str]:
    # MariaDB's JSON is LONGTEXT plus a column-level CHECK (json_valid(`col`)). MySQL 8 has a
    # real JSON type and a CHECK_CONSTRAINTS view without TABLE_NAME (error 1054).
    try:
        cur.execute(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
            " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
            (table.schema, table.name),
        )
    except pymysql.err.OperationalError as exc:
        if errno_of(exc) == 1054:
            return set()
        raise
    found = set()
    for (clause,) in cur.fetchall():
        text = str(clause)
        if text.startswith("json_valid(`") and text.endswith("`)"):
            found.add(text[len("json_valid(`") : -2].replace("``", "`"))
    return found


def describe(params: MysqlParams, tables: Iterable[TableId]) -> dict[TableId, dict[str, str]]:
    """Column name -> column type (e.g. ``varchar(50)``, ``int(10) unsigned``, ``json``).

    Tables that do not exist are left out.
    """
    result: dict[TableId, dict[str, str]] = {}
    with _connection(params) as conn, conn.cursor() as cur:
        for table in tables:
            columns = load_columns(cur, table)
            if columns:
                result[table] = {name: col.column_type for name, col in columns.items()}
    return result


def check(
    params: MysqlParams, *, tables: Iterable[TableId], server_id: int | None = None
) -> list[str]:
    """Every problem found on the live server (empty list: ready).

    Checks binlog settings, the tables (exist, have a primary key), the replication
    privileges of the user, and whether ``server_id`` collides with the server's own or a
    connected replica's.
    """
    try:
        with _connection(params) as conn, conn.cursor() as cur:
            problems = _settings_problems(cur)
            problems += _table_problems(cur, tables)
            problems += _privilege_problems(cur, params.user)
            if server_id is not None:
                problems += _server_id_problems(cur, server_id)
            return problems
    except pymysql.err.MySQLError as exc:
        return [str(classify(exc, context=f"{params.host}:{params.port}"))]
    except AgentError as exc:  # could not connect
        return [str(exc)]


def _variable(cur: Cursor, name: str) -> str | None:
    cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
    row = cur.fetchone()
    return None if row is None else str(row[1])


def _settings_problems(cur: Cursor) -> list[str]:
    problems = []
    log_bin = _variable(cur, "log_bin")
    if (log_bin or "OFF").upper() not in ("ON", "1"):
        problems.append("log_bin is OFF: enable the binary log (log_bin) and restart the server")
    for name, wanted in REQUIRED_SETTINGS.items():
        value = _variable(cur, name)
        if value is None:
            problems.append(f"{name} is not supported by this server (MySQL 8.0.14+ / MariaDB"
                            " 10.5+ needed)")
        elif value.upper() != wanted:
            problems.append(f"{name} is {value}, must be {wanted} (SET GLOBAL {name}={wanted}"
                            " and in the server configuration)")
    return problems


def _table_problems(cur: Cursor, tables: Iterable[TableId]) -> list[str]:
    problems = []
    for table in tables:
        cur.execute(
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = %s",
            (table.schema, table.name),
        )
        if cur.fetchone() is None:
            problems.append(f"table {table} does not exist")
            continue
        cur.execute(
            # STATISTICS, unlike TABLE_CONSTRAINTS, is visible with only SELECT on the table.
            "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' LIMIT 1",
            (table.schema, table.name),
        )
        if cur.fetchone() is None:
            problems.append(f"table {table} has no primary key")
    return problems


# MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR.
_PRIVILEGES = {
    "REPLICATION SLAVE": ("REPLICATION SLAVE", "REPLICATION REPLICA"),
    "REPLICATION CLIENT": ("REPLICATION CLIENT", "BINLOG MONITOR"),
}


def _privilege_problems(cur: Cursor, user: str) -> list[str]:
    cur.execute("SHOW GRANTS")
    global_grants = [
        str(row[0]).upper() for row in cur.fetchall() if " ON *.* " in str(row[0]).upper()
    ]
    if any("ALL PRIVILEGES" in grant for grant in global_grants):
        return []
    return [
        f"user {user!r} lacks the {name} privilege (GRANT {name} ON *.* TO ...)"
        for name, spellings in _PRIVILEGES.items()
        if not any(s in grant for grant in global_grants for s in spellings)
    ]


def _server_id_problems(cur: Cursor, server_id: int) -> list[str]:
    cur.execute("SELECT @@server_id")
    row = cur.fetchone()
    if row is not None and int(row[0]) == server_id:
        return [f"server_id {server_id} is the server's own server_id; choose another"]
    try:
        cur.execute("SHOW SLAVE HOSTS")
    except pymysql.err.MySQLError:
        return []  # not allowed or not supported: collisions cannot be detected
    hosts = [r for r in cur.fetchall() if int(r[0]) == server_id]
    return [
        f"server_id {server_id} is in use by a connected replica ({r[1]}); the agent would"
        " disconnect it"
        for r in hosts
    ]
