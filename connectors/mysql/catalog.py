"""State schema setup/teardown, table descriptions and the live preflight check (MySQL/MariaDB).

The state schema is a MySQL database the agent owns (``checkpoints``, ``heartbeats``; the
core may add its own tables there). :func:`check` names every problem that would stop the
binlog reader or the writer, all at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

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
    params: MysqlParams,
    *,
    tables: Iterable[TableId],
    server_id: int | None = None,
    write_tables: Iterable[TableId] = (),
    state_schema: str | None = None,
) -> list[str]:
    """Every problem found on the live server (empty list: ready).

    Checks binlog settings, the tables (exist, have a primary key), the replication and
    table privileges of the user (SELECT on ``tables``; INSERT, UPDATE, DELETE on
    ``write_tables``, those the agent writes into; with ``state_schema`` also those on the
    agent's own database; each missing one named with the GRANT that fixes it), and whether
    ``server_id`` collides with the server's own or a connected replica's.
    """
    tables = list(tables)
    try:
        with _connection(params) as conn, conn.cursor() as cur:
            problems = _settings_problems(cur)
            problems += _table_problems(cur, tables)
            problems += _privilege_problems(cur, params.user)
            if not any(p.endswith("does not exist") for p in problems):
                problems += _table_privilege_problems(cur, tables, list(write_tables),
                                                      state_schema)
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


# -- table privileges --------------------------------------------------------------------------

_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
_STATE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")  # CREATE, DROP: setup only


def _grantee(cur: Cursor) -> str:
    """CURRENT_USER() as information_schema spells grantees: 'user'@'host'."""
    cur.execute("SELECT CURRENT_USER()")
    row = cur.fetchone()
    user, _, host = str(row[0] if row else "").rpartition("@")
    return f"'{user}'@'{host}'"


def _held(cur: Cursor, grantee: str, schema: str, table: str | None) -> set[str]:
    """Privileges ``grantee`` holds on ``schema``.``table`` (or the schema) directly or above.

    Privileges through MariaDB roles are not resolved here; a role-based setup shows up as
    missing privileges that the server itself would grant (check says so).
    """
    held: set[str] = set()
    cur.execute(
        "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s",
        (grantee,),
    )
    held |= {str(r[0]).upper() for r in cur.fetchall()}
    cur.execute(
        "SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES"
        " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
        (grantee, schema),
    )
    held |= {str(r[0]).upper() for r in cur.fetchall()}
    if table is not None:
        cur.execute(
            "SELECT PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES"
            " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (grantee, schema, table),
        )
        held |= {str(r[0]).upper() for r in cur.fetchall()}
    return held


def _table_privilege_problems(
    cur: Cursor, tables: list[TableId], write_tables: list[TableId], state_schema: str | None
) -> list[str]:
    grantee = _grantee(cur)
    problems = []
    for table in dict.fromkeys([*tables, *write_tables]):
        wanted = _TABLE_PRIVILEGES if table in write_tables else ("SELECT",)
        held = _held(cur, grantee, table.schema, table.name)
        missing = [p for p in wanted if p not in held]
        if missing:
            problems.append(
                f"user {grantee} lacks {', '.join(missing)} on table {table}: "
                f"GRANT {', '.join(missing)} ON {quote_table(table)} TO {grantee}"
            )
    if state_schema is not None:
        missing = [p for p in _STATE_PRIVILEGES if p not in _held(cur, grantee, state_schema, None)]
        if missing:
            problems.append(
                f"user {grantee} lacks {', '.join(missing)} on the state database "
                f"{state_schema}: GRANT {', '.join(_STATE_PRIVILEGES)} ON "
                f"{quote_ident(state_schema)}.* TO {grantee}"
            )
    return problems


# -- live state for metrics and `cdc-agent status` --------------------------------------------

Checkpoint = tuple[str, datetime | None, datetime | None]
"""(position, source commit time, applied at) of one direction."""


class MyInspector:
    """A short-lived read-only look at the agent's state and binlog on one MySQL server.

    A missing state table counts as 0 rows; a connection failure raises the agent's
    TransientError (via :func:`classify`).
    """

    def __init__(self, params: MysqlParams) -> None:
        """Connect now (autocommit)."""
        try:
            self._conn = pymysql.connect(**connect_kwargs(params), autocommit=True,
                                         read_timeout=10, write_timeout=10)
        except pymysql.err.MySQLError as exc:
            raise classify(exc, context=f"connect to {params.host}:{params.port}") from exc

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        if self._conn.open:
            self._conn.close()

    def __enter__(self) -> MyInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def binlog_bytes_behind(self, position: str | None) -> int | None:
        """Binlog bytes after ``position`` ("file:offset"); None when it cannot be told
        (no position yet, binary log off, or no REPLICATION CLIENT / BINLOG MONITOR)."""
        if not position or ":" not in position:
            return None
        file, _, offset_text = position.rpartition(":")
        if not offset_text.isdigit():
            return None
        with self._conn.cursor() as cur:
            try:
                cur.execute("SHOW BINARY LOGS")
            except pymysql.err.MySQLError:
                return None
            logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
        names = [name for name, _ in logs]
        if file not in names:
            return None  # purged or another server: the reader reports that itself
        start = names.index(file)
        behind = sum(size for _, size in logs[start:]) - int(offset_text)
        return max(0, behind)

    def checkpoint(self, state_schema: str, direction: str) -> Checkpoint | None:
        """The stored position of ``direction`` (it lives in the direction's target)."""
        with self._conn.cursor() as cur:
            try:
                cur.execute(
                    f"SELECT position, source_commit_ts, applied_at FROM"
                    f" {quote_ident(state_schema)}.`checkpoints` WHERE direction = %s",
                    (direction,),
                )
            except pymysql.err.ProgrammingError as exc:
                if errno_of(exc) in (1049, 1146):
                    return None
                raise
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0]), _utc(row[1]), _utc(row[2])

    def count_rows(
        self, state_schema: str, table: str, direction: str, status: str | None = None
    ) -> int:
        """Rows of ``direction`` (and ``status``, if given) in a state table; all its rows if
        it lacks those columns; 0 if the table does not exist."""
        target = f"{quote_ident(state_schema)}.{quote_ident(table)}"
        where, args = "direction = %s", [direction]
        if status is not None:
            where, args = where + " AND status = %s", [direction, status]
        with self._conn.cursor() as cur:
            try:
                cur.execute(f"SELECT count(*) FROM {target} WHERE {where}", args)
            except pymysql.err.MySQLError as exc:
                if errno_of(exc) in (1049, 1146):
                    return 0
                if errno_of(exc) != 1054:
                    raise
                cur.execute(f"SELECT count(*) FROM {target}")
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def tls_version(self) -> str | None:
        """The TLS protocol of this connection (e.g. ``TLSv1.3``), None when unencrypted."""
        with self._conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            row = cur.fetchone()
        return str(row[1]) if row and row[1] else None


def _utc(value: object) -> datetime | None:
    # DATETIME(6) columns written by the agent hold UTC wall-clock times.
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
