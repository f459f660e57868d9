"""The agent's record tables on a MySQL/MariaDB system: conflicts, dead letters, generated links.

Created by ``cdc-agent setup`` beside the checkpoints; written by the pipelines inside their
target transactions (as ordinary writes) and read and updated by the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pymysql
from pymysql.cursors import DictCursor

from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.catalog import quote_ident

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


def select(params: MysqlParams, schema: str, table: str, where: Mapping[str, object],
           order: str = "id") -> list[dict[str, Any]]:
    """Rows of a record table matching every ``where`` column (equality)."""
    conn = _connect(params)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {quote_ident(schema)}.{quote_ident(table)}"
                        f"{_where(where)} ORDER BY {quote_ident(order)}", list(where.values()))
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
                [*values.values(), *where.values()]))
    finally:
        conn.close()


def _where(where: Mapping[str, object]) -> str:
    if not where:
        return ""
    return " WHERE " + " AND ".join(f"{quote_ident(c)} = %s" for c in where)
