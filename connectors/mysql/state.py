"""The agent's record tables on a MySQL/MariaDB system: conflicts, dead letters, links, key map.

Created by ``cdc-agent setup`` beside the checkpoints; written by the pipelines inside their
target transactions (as ordinary writes) and read and updated by the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pymysql
from pymysql.cursors import DictCursor

from agent.events import TableId
from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.catalog import load_columns, quote_ident, quote_table
from connectors.mysql.values import Kind, converter, to_param

_TABLES = {
    "conflicts": """
        id            bigint AUTO_INCREMENT PRIMARY KEY,
        entity        varchar(100) NOT NULL,
        record        varchar(255) NOT NULL,
        field         varchar(100) NOT NULL,
        direction     varchar(100) NOT NULL,
        source_value  mediumtext,
        target_value  mediumtext,
        winner        varchar(100) NOT NULL,
        rule          varchar(20) NOT NULL,
        resolution    varchar(100) NOT NULL,
        status        varchar(10) NOT NULL DEFAULT 'closed',
        source_commit_ts datetime(6),
        created_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
        resolved_at   datetime(6),
        resolved_by   varchar(100)""",
    "links": """
        ident         varchar(400) PRIMARY KEY,
        entity        varchar(100) NOT NULL,
        source_key    varchar(255) NOT NULL,
        target_key    varchar(255) NOT NULL,
        created_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6)""",
    "remedies": """
        id            varchar(32) NOT NULL PRIMARY KEY,
        direction     varchar(100) NOT NULL,
        entity        varchar(100) NOT NULL,
        reason        varchar(20) NOT NULL,
        target_table  text NOT NULL,
        key_column    varchar(255) NOT NULL,
        key_value     text NOT NULL,
        new_values    mediumtext NOT NULL,
        expect        mediumtext NOT NULL,
        status        varchar(10) NOT NULL DEFAULT 'pending',
        created_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6)""",
    "key_map": """
        ident         varchar(400) PRIMARY KEY,
        local_ident   varchar(400) NOT NULL,
        entity        varchar(100) NOT NULL,
        remote_key    varchar(255) NOT NULL,
        local_key     varchar(255) NOT NULL,
        created_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
        INDEX key_map_local_ident (local_ident)""",
    "dead_letters": """
        id            bigint AUTO_INCREMENT PRIMARY KEY,
        entity        varchar(100) NOT NULL,
        `key`         varchar(255) NOT NULL,
        direction     varchar(100) NOT NULL,
        position      varchar(255),
        error_class   varchar(100) NOT NULL,
        message       text NOT NULL,
        payload       mediumtext,
        status        varchar(10) NOT NULL DEFAULT 'pending',
        created_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
        resolved_at   datetime(6)""",
    "staged_changes": """
        id            varchar(512) NOT NULL PRIMARY KEY,
        direction     varchar(100) NOT NULL,
        entity        varchar(100) NOT NULL,
        record        varchar(255) NOT NULL,
        op            varchar(10) NOT NULL,
        new_values    mediumtext NOT NULL,
        old_values    mediumtext,
        source_commit_ts varchar(40),
        staged_at     varchar(40) NOT NULL""",
    "push_requests": """
        id            bigint AUTO_INCREMENT PRIMARY KEY,
        entity        varchar(100) NOT NULL,
        `key`         varchar(255) NOT NULL,
        status        varchar(10) NOT NULL DEFAULT 'pending',
        reason        text,
        created_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
        done_at       datetime(6)""",
    "reconcile_progress": """
        entity        varchar(100) NOT NULL PRIMARY KEY,
        options       text NOT NULL,
        pass          int NOT NULL,
        last_key      text,
        counts        mediumtext NOT NULL,
        status        varchar(10) NOT NULL,
        started_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
        updated_at    datetime(6) NOT NULL DEFAULT UTC_TIMESTAMP(6)""",
}


def _connect(params: MysqlParams) -> Any:
    return pymysql.connect(**connect_kwargs(params), autocommit=True, cursorclass=DictCursor,
                           init_command="SET time_zone = '+00:00'")


def create_tables(params: MysqlParams, schema: str) -> None:
    """Create the record tables if they do not exist (idempotent)."""
    conn = _connect(params)
    try:
        with conn.cursor() as cur:
            for name, columns in _TABLES.items():
                cur.execute(f"CREATE TABLE IF NOT EXISTS {quote_ident(schema)}.{quote_ident(name)}"
                            f" ({columns}) DEFAULT CHARSET=utf8mb4")
    finally:
        conn.close()


def missing_tables(params: MysqlParams, schema: str) -> list[str]:
    """Record tables this version uses that ``schema`` lacks (none when the database is
    absent: that is reported on its own)."""
    rows = _query(params, "SELECT table_name AS name FROM information_schema.tables "
                          "WHERE table_schema = %s", [schema])
    found = {row["name"] for row in rows}
    return [name for name in _TABLES if found and name not in found]


def staged_summary(params: MysqlParams, schema: str, direction: str) -> dict[str, str]:
    """Per entity, the oldest ``staged_at`` of the direction's staged changes."""
    rows = _query(params, f"SELECT entity, MIN(staged_at) AS t FROM {quote_ident(schema)}"
                          ".`staged_changes` WHERE direction = %s GROUP BY entity", [direction])
    return {str(r["entity"]): str(r["t"]) for r in rows}


def staged_ids(params: MysqlParams, schema: str, direction: str, entity: str) -> list[str]:
    """IDs of the direction's staged changes of ``entity``."""
    rows = _query(params, f"SELECT id FROM {quote_ident(schema)}.`staged_changes`"
                          " WHERE direction = %s AND entity = %s ORDER BY id", [direction, entity])
    return [str(r["id"]) for r in rows]


def save_row(params: MysqlParams, schema: str, table: str, key: str,
             values: Mapping[str, object]) -> None:
    """Insert or replace one row of a state table whose primary key is ``key``."""
    cols = list(values)
    updates = ", ".join(f"{quote_ident(c)} = VALUES({quote_ident(c)})" for c in cols if c != key)
    names, marks = ", ".join(map(quote_ident, cols)), ", ".join(["%s"] * len(cols))
    _query(params, f"INSERT INTO {quote_ident(schema)}.{quote_ident(table)} ({names})"
                   f" VALUES ({marks}) ON DUPLICATE KEY UPDATE {updates}", list(values.values()))


def _query(params: MysqlParams, statement: str, args: Sequence[object]) -> list[dict[str, Any]]:
    conn = _connect(params)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, list(args))
            return list(cur.fetchall())
    finally:
        conn.close()


def select(params: MysqlParams, schema: str, table: str, where: Mapping[str, object],
           order: str = "id") -> list[dict[str, Any]]:
    """Rows of a record table matching every ``where`` column (equality; a list: any of)."""
    conn = _connect(params)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {quote_ident(schema)}.{quote_ident(table)}"
                        f"{_where(where)} ORDER BY {quote_ident(order)}", _args(where))
            return list(cur.fetchall())
    finally:
        conn.close()


def update(params: MysqlParams, schema: str, table: str, where: Mapping[str, object],
           values: Mapping[str, object]) -> int:
    """Set ``values`` on matching rows; how many rows changed."""
    sets = ", ".join(f"{quote_ident(c)} = %s" for c in values)
    conn = _connect(params)
    try:
        with conn.cursor() as cur:
            return int(cur.execute(
                f"UPDATE {quote_ident(schema)}.{quote_ident(table)} SET {sets}{_where(where)}",
                [*values.values(), *_args(where)]))
    finally:
        conn.close()


def _where(where: Mapping[str, object]) -> str:
    if not where:
        return ""
    return " WHERE " + " AND ".join(
        f"{quote_ident(c)} IN ({', '.join(['%s'] * len(v))})" if isinstance(v, list)
        else f"{quote_ident(c)} = %s" for c, v in where.items())


def _args(where: Mapping[str, object]) -> list[object]:
    """The parameters of :func:`_where`: a list value gives one parameter per element."""
    return [a for v in where.values() for a in (v if isinstance(v, list) else [v])]


class MyRows:
    """Reads a MySQL/MariaDB database's rows as the reader represents them (push, reconcile).

    One connection and transaction: :meth:`lookup` with ``lock`` keeps the rows locked
    (FOR UPDATE) until :meth:`end`.
    """

    def __init__(self, params: MysqlParams) -> None:
        self._params = params
        self._zone = ZoneInfo(params.timezone)
        self._conn: Any = None
        self._kinds: dict[TableId, dict[str, Kind]] = {}

    def open(self) -> None:
        """Connect (UTC session, like the sink)."""
        self._conn = pymysql.connect(**connect_kwargs(self._params), autocommit=False,
                                     init_command="SET time_zone = '+00:00'")

    def _kind(self, table: TableId) -> dict[str, Kind]:
        kinds = self._kinds.get(table)
        if kinds is None:
            with self._conn.cursor() as cur:
                defs = load_columns(cur, table)
            kinds = self._kinds[table] = {n: d.kind for n, d in defs.items()}
        return kinds

    def _param(self, table: TableId, column: str, value: object) -> object:
        return to_param(self._kind(table).get(column, Kind.OTHER), value, self._zone, column)

    def _run(self, table: TableId, columns: Sequence[str], statement: str,
             args: Sequence[object]) -> list[dict[str, object]]:
        kinds = self._kind(table)
        convs: list[Callable[[object], object] | None] = [
            converter(kinds.get(c, Kind.OTHER), self._zone) for c in columns]
        with self._conn.cursor() as cur:
            cur.execute(statement, list(args))
            rows = cur.fetchall()
        return [{c: v if f is None or v is None else f(v)
                 for c, f, v in zip(columns, convs, row, strict=True)} for row in rows]

    def columns(self, table: TableId) -> list[str]:
        """The table's column names."""
        return list(self._kind(table))

    def count(self, table: TableId, where: Mapping[str, object]) -> int:
        """How many rows match ``where`` (column = value)."""
        with self._conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {quote_table(table)}{_where(where)}",
                        [self._param(table, c, v) for c, v in where.items()])
            row = cur.fetchone()
        self._conn.rollback()
        return int(row[0]) if row else 0

    def scan(self, table: TableId, key: str, columns: Sequence[str], after: object,
             limit: int, where: Mapping[str, object]) -> list[dict[str, object]]:
        """Up to ``limit`` rows with ``key`` greater than ``after`` (None: from the start), in
        key order, matching ``where`` (column = value)."""
        conds = [f"{quote_ident(c)} = %s" for c in where]
        args = [self._param(table, c, v) for c, v in where.items()]
        if after is not None:
            conds.append(f"{quote_ident(key)} > %s")
            args.append(self._param(table, key, after))
        filters = " WHERE " + " AND ".join(conds) if conds else ""
        rows = self._run(table, columns, f"SELECT {', '.join(map(quote_ident, columns))} FROM"
                         f" {quote_table(table)}{filters} ORDER BY {quote_ident(key)}"
                         f" LIMIT {int(limit)}", args)
        self._conn.rollback()
        return rows

    def lookup(self, table: TableId, column: str, keys: Sequence[object], columns: Sequence[str],
               *, lock: bool) -> list[dict[str, object]]:
        """Rows whose ``column`` is in ``keys``; ``lock`` keeps them locked until :meth:`end`."""
        if not keys:
            return []
        rows = self._run(table, columns, f"SELECT {', '.join(map(quote_ident, columns))} FROM"
                         f" {quote_table(table)} WHERE {quote_ident(column)} IN"
                         f" ({', '.join(['%s'] * len(keys))}){' FOR UPDATE' if lock else ''}",
                         [self._param(table, column, k) for k in keys])
        if not lock:
            self._conn.rollback()
        return rows

    def end(self) -> None:
        """End the transaction (releases the locks)."""
        if self._conn is not None and self._conn.open:
            self._conn.rollback()

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.open:
            conn.close()
