"""Setup, teardown and preflight checks of the objects the agent needs on PostgreSQL.

All functions open their own short-lived normal connection. Every identifier is quoted;
``setup`` and ``teardown`` are idempotent.

Objects: ``<state_schema>.checkpoints`` (position per direction, written by the sink),
``<state_schema>.heartbeats`` (advanced by the daemon so an idle slot moves on; it is in the
publication so its changes reach the reader), a publication of the mapped tables plus the
heartbeats table, a pgoutput logical slot, and the replication origins the sinks write under.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from psycopg import sql

from agent.events import TableId
from connectors.postgres.errors import translate

__all__ = ["check", "describe", "setup", "teardown"]

Conn = psycopg.Connection[tuple[object, ...]]


def _connect(conninfo: str) -> Conn:
    try:
        return psycopg.connect(conninfo, autocommit=True, application_name="cdc-agent")
    except psycopg.Error as exc:
        raise translate(exc, "connecting") from exc


def _table(t: TableId) -> sql.Identifier:
    return sql.Identifier(t.schema, t.name)


def setup(
    conninfo: str,
    *,
    state_schema: str,
    publication: str,
    slot: str,
    tables: Sequence[TableId],
    origins: Sequence[str],
) -> None:
    """Create (or bring up to date) the state schema, publication, slot and origins."""
    with _connect(conninfo) as conn:
        try:
            _create_state(conn, state_schema)
            heartbeats = TableId(state_schema, "heartbeats")
            _publish(conn, publication, [*dict.fromkeys([*tables, heartbeats])])
            if not _exists(conn, "pg_replication_slots", "slot_name", slot):
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
            for origin in origins:
                if not _exists(conn, "pg_replication_origin", "roname", origin):
                    conn.execute("SELECT pg_replication_origin_create(%s)", [origin])
        except psycopg.Error as exc:
            raise translate(exc, "setup") from exc


def _create_state(conn: Conn, schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (direction text PRIMARY KEY, position text NOT NULL,"
            " source_commit_ts timestamptz, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(schema, "checkpoints"))
    )
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, ts timestamptz)").format(
            sql.Identifier(schema, "heartbeats")
        )
    )


def _publish(conn: Conn, publication: str, tables: Iterable[TableId]) -> None:
    listed = sql.SQL(", ").join(map(_table, tables))
    verb = "ALTER PUBLICATION {} SET TABLE {}"
    if not _exists(conn, "pg_publication", "pubname", publication):
        verb = "CREATE PUBLICATION {} FOR TABLE {}"
    conn.execute(sql.SQL(verb).format(sql.Identifier(publication), listed))


def _exists(conn: Conn, catalog: str, column: str, name: str) -> bool:
    query = sql.SQL("SELECT 1 FROM {} WHERE {} = %s").format(
        sql.Identifier("pg_catalog", catalog), sql.Identifier(column)
    )
    return conn.execute(query, [name]).fetchone() is not None


def teardown(
    conninfo: str,
    *,
    state_schema: str,
    publication: str,
    slot: str,
    origins: Sequence[str],
) -> None:
    """Drop the slot, publication, origins and state schema (whatever of them exists).

    An active slot or origin (a running agent) makes this fail with a TransientError.
    """
    with _connect(conninfo) as conn:
        try:
            if _exists(conn, "pg_replication_slots", "slot_name", slot):
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            conn.execute(
                sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication))
            )
            for origin in origins:
                if _exists(conn, "pg_replication_origin", "roname", origin):
                    conn.execute("SELECT pg_replication_origin_drop(%s)", [origin])
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(state_schema))
            )
        except psycopg.Error as exc:
            raise translate(exc, "teardown") from exc


_DESCRIBE_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def describe(conninfo: str, tables: Sequence[TableId]) -> dict[TableId, dict[str, str]]:
    """Column name -> type (as ``format_type`` prints it) per existing table."""
    found: dict[TableId, dict[str, str]] = {}
    with _connect(conninfo) as conn:
        for table in tables:
            rows = conn.execute(_DESCRIBE_SQL, [table.schema, table.name]).fetchall()
            if rows:
                found[table] = {str(name): str(type_) for name, type_ in rows}
    return found


_IDENTITY_SQL = """
SELECT c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_class c
WHERE c.oid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))
"""


def check(conninfo: str, *, tables: Sequence[TableId], slot: str, publication: str) -> list[str]:
    """Problems that stop streaming from this database, each as one sentence."""
    with _connect(conninfo) as conn:
        problems = _server_problems(conn)
        for table in tables:
            problems.extend(_table_problems(conn, table))
        problems.extend(_slot_problems(conn, slot))
        problems.extend(_publication_problems(conn, publication, tables))
    return problems


def _setting(conn: Conn, name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
    return "" if row is None else str(row[0])


def _server_problems(conn: Conn) -> list[str]:
    problems = []
    if _setting(conn, "wal_level") != "logical":
        problems.append(
            f"wal_level is {_setting(conn, 'wal_level')!r}, must be 'logical' (restart needed)"
        )
    if _setting(conn, "server_encoding") != "UTF8":
        problems.append(f"server_encoding is {_setting(conn, 'server_encoding')}, must be UTF8")
    row = conn.execute(
        "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not (row and row[0]):
        problems.append("the agent's role needs the REPLICATION attribute")
    return problems


def _table_problems(conn: Conn, table: TableId) -> list[str]:
    row = conn.execute(_IDENTITY_SQL, [table.schema, table.name]).fetchone()
    if row is None:
        return [f"table {table} does not exist"]
    identity, has_pk, has_index = row
    if identity == "n" or (identity == "d" and not has_pk) or (identity == "i" and not has_index):
        return [
            f"table {table} has no primary key or replica identity: add a primary key or"
            " ALTER TABLE ... REPLICA IDENTITY FULL"
        ]
    return []


def _slot_problems(conn: Conn, slot: str) -> list[str]:
    row = conn.execute(
        "SELECT plugin, wal_status FROM pg_replication_slots WHERE slot_name = %s", [slot]
    ).fetchone()
    if row is not None:
        plugin, wal_status = row
        if wal_status == "lost":
            return [f"replication slot {slot} was invalidated; run `cdc-agent setup` and reconcile"]
        if plugin != "pgoutput":
            return [f"replication slot {slot} uses plugin {plugin}, not pgoutput"]
        return []
    problems = [f"replication slot {slot} does not exist (run `cdc-agent setup`)"]
    row = conn.execute(
        "SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_replication_slots"
    ).fetchone()
    if row is None or int(str(row[0])) < 1:
        problems.append("max_replication_slots leaves no free slot for the agent")
    return problems


def _publication_problems(conn: Conn, publication: str, tables: Sequence[TableId]) -> list[str]:
    if not _exists(conn, "pg_publication", "pubname", publication):
        return [f"publication {publication} does not exist (run `cdc-agent setup`)"]
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [publication]
    ).fetchall()
    published = {TableId(str(s), str(n)) for s, n in rows}
    return [
        f"table {t} is not in publication {publication} (run `cdc-agent setup`)"
        for t in tables
        if t not in published
    ]
