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
from datetime import datetime

import psycopg
from psycopg import sql

from agent.events import TableId
from connectors.postgres.errors import translate

__all__ = ["PgInspector", "check", "describe", "privilege_problems", "setup", "teardown"]

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


def check(
    conninfo: str,
    *,
    tables: Sequence[TableId],
    slot: str,
    publication: str,
    write_tables: Sequence[TableId] = (),
    state_schema: str | None = None,
) -> list[str]:
    """Problems that stop streaming from this database, each as one sentence.

    Missing privileges are named with the GRANT that fixes them: SELECT on ``tables``,
    INSERT, UPDATE, DELETE on ``write_tables`` (those the agent writes into), and with
    ``state_schema`` those on the agent's own schema.
    """
    with _connect(conninfo) as conn:
        problems = _server_problems(conn)
        for table in tables:
            problems.extend(_table_problems(conn, table))
        problems.extend(_slot_problems(conn, slot))
        problems.extend(_publication_problems(conn, publication, tables))
        problems.extend(_privilege_problems(conn, tables, write_tables, state_schema))
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


# -- privileges --------------------------------------------------------------------------------

_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def privilege_problems(
    conninfo: str,
    *,
    tables: Sequence[TableId],
    write_tables: Sequence[TableId] = (),
    state_schema: str | None = None,
) -> list[str]:
    """Privileges the agent's role lacks, each with the GRANT that fixes it (docs/security.md).

    The role reads the mapped tables (``tables``: SELECT) and writes those it is the target
    of (``write_tables``); it needs REPLICATION (checked in :func:`check`), CREATE on the
    database for ``setup`` when the state schema does not exist yet, and USAGE + the table
    privileges on the state schema once it does.
    """
    with _connect(conninfo) as conn:
        return _privilege_problems(conn, tables, write_tables, state_schema)


def _privilege_problems(
    conn: Conn, tables: Sequence[TableId], write_tables: Sequence[TableId],
    state_schema: str | None,
) -> list[str]:
    problems = []
    for table in dict.fromkeys([*tables, *write_tables]):
        found = conn.execute(_REGCLASS_SQL, [table.schema, table.name]).fetchone()
        if found is None or found[0] is None:
            continue  # reported as missing elsewhere
        wanted = _TABLE_PRIVILEGES if table in write_tables else ("SELECT",)
        problems += _table_privilege_problems(conn, table, wanted)
    if state_schema is None:
        return problems
    row = conn.execute(
        "SELECT has_schema_privilege(current_user, n.oid, 'USAGE')"
        " FROM pg_namespace n WHERE n.nspname = %s",
        [state_schema],
    ).fetchone()
    if row is None:
        created = conn.execute(
            "SELECT has_database_privilege(current_user, current_database(), 'CREATE')"
        ).fetchone()
        if not (created and created[0]):
            problems.append(
                f"the state schema {state_schema} does not exist and the agent's role cannot "
                "create it: run `cdc-agent setup` as a DBA (or GRANT CREATE ON DATABASE <db> "
                "TO <role>)"
            )
    elif not row[0]:
        schema = sql.Identifier(state_schema).as_string(conn)
        problems.append(
            f"the agent's role lacks USAGE on schema {state_schema}: GRANT USAGE ON SCHEMA "
            f"{schema} TO <role>; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN "
            f"SCHEMA {schema} TO <role>"
        )
    return problems


_REGCLASS_SQL = "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))"


def _table_privilege_problems(conn: Conn, table: TableId, wanted: Sequence[str]) -> list[str]:
    qualified = sql.Identifier(table.schema, table.name).as_string(conn)
    missing = [
        privilege for privilege in wanted if not _has_table_privilege(conn, qualified, privilege)
    ]
    usage = conn.execute(
        "SELECT has_schema_privilege(current_user, %s, 'USAGE')", [table.schema]
    ).fetchone()
    problems = []
    if not (usage and usage[0]):
        problems.append(
            f"the agent's role lacks USAGE on schema {table.schema}: "
            f"GRANT USAGE ON SCHEMA {sql.Identifier(table.schema).as_string(conn)} TO <role>"
        )
    if missing:
        problems.append(
            f"the agent's role lacks {', '.join(missing)} on table {table}: "
            f"GRANT {', '.join(missing)} ON {qualified} TO <role>"
        )
    return problems


def _has_table_privilege(conn: Conn, qualified: str, privilege: str) -> bool:
    row = conn.execute(
        "SELECT has_table_privilege(current_user, %s::regclass, %s)", [qualified, privilege]
    ).fetchone()
    return bool(row and row[0])


# -- live state for metrics and `cdc-agent status` --------------------------------------------

Checkpoint = tuple[str, "datetime | None", "datetime | None"]
"""(position, source commit time, applied at) of one direction."""


class PgInspector:
    """A short-lived read-only look at the agent's state on one PostgreSQL database.

    Never raises for a missing state table (a feature not set up yet counts as 0 rows); a
    connection failure raises the agent's TransientError.
    """

    def __init__(self, conninfo: str) -> None:
        """Connect now (autocommit, application_name ``cdc-agent status``)."""
        try:
            self._conn: Conn = psycopg.connect(
                conninfo, autocommit=True, application_name="cdc-agent status", connect_timeout=10
            )
        except psycopg.Error as exc:
            raise translate(exc, "connecting") from exc

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        self._conn.close()

    def __enter__(self) -> PgInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def slot_retained_wal_bytes(self, slot: str) -> int | None:
        """WAL the slot holds back (``pg_current_wal_lsn() - restart_lsn``); None: no slot."""
        row = self._conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = %s",
            [slot],
        ).fetchone()
        return None if row is None or row[0] is None else int(str(row[0]))

    def checkpoint(self, state_schema: str, direction: str) -> Checkpoint | None:
        """The stored position of ``direction`` (it lives in the direction's target)."""
        query = sql.SQL(
            "SELECT position, source_commit_ts, applied_at FROM {} WHERE direction = %s"
        ).format(sql.Identifier(state_schema, "checkpoints"))
        try:
            row = self._conn.execute(query, [direction]).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        if row is None or row[0] is None:
            return None
        return str(row[0]), _instant(row[1]), _instant(row[2])

    def count_rows(
        self, state_schema: str, table: str, direction: str, status: str | None = None
    ) -> int:
        """Rows of ``direction`` (and ``status``, if given) in a state table; all its rows if
        it lacks those columns; 0 if the table does not exist."""
        target = sql.Identifier(state_schema, table)
        where, args = "direction = %s", [direction]
        if status is not None:
            where, args = where + " AND status = %s", [direction, status]
        try:
            row = self._conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(target), args
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        except psycopg.errors.UndefinedColumn:
            row = self._conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()
        return 0 if row is None else int(str(row[0]))

    def ssl_in_use(self) -> bool:
        """True when this connection is encrypted with TLS."""
        return bool(self._conn.pgconn.ssl_in_use)


def _instant(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None
