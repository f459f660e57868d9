"""The agent's record tables on a PostgreSQL system: conflicts, dead letters, links, key map.

Created by ``cdc-agent setup`` beside the checkpoints; written by the pipelines inside their
target transactions (as ordinary writes) and read and updated by the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from agent.events import TableId
from connectors.postgres.values import converter_for, to_param
from connectors.postgres.writer import SESSION_OPTIONS

_TABLES = {
    "conflicts": """
        id            bigserial PRIMARY KEY,
        entity        text NOT NULL,
        record        text NOT NULL,
        field         text NOT NULL,
        direction     text NOT NULL,
        source_value  text,
        target_value  text,
        winner        text NOT NULL,
        rule          text NOT NULL,
        resolution    text NOT NULL,
        status        text NOT NULL DEFAULT 'closed',
        source_commit_ts timestamptz,
        created_at    timestamptz NOT NULL DEFAULT now(),
        resolved_at   timestamptz,
        resolved_by   text""",
    "links": """
        ident         text PRIMARY KEY,
        entity        text NOT NULL,
        source_key    text NOT NULL,
        target_key    text NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now()""",
    "remedies": """
        id            text PRIMARY KEY,
        direction     text NOT NULL,
        entity        text NOT NULL,
        reason        text NOT NULL,
        target_table  text NOT NULL,
        key_column    text NOT NULL,
        key_value     text NOT NULL,
        new_values    text NOT NULL,
        expect        text NOT NULL,
        status        text NOT NULL DEFAULT 'pending',
        created_at    timestamptz NOT NULL DEFAULT clock_timestamp()""",
    "key_map": """
        ident         text PRIMARY KEY,
        local_ident   text NOT NULL,
        entity        text NOT NULL,
        remote_key    text NOT NULL,
        local_key     text NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now()""",
    "dead_letters": """
        id            bigserial PRIMARY KEY,
        entity        text NOT NULL,
        key           text NOT NULL,
        direction     text NOT NULL,
        position      text,
        error_class   text NOT NULL,
        message       text NOT NULL,
        payload       text,
        status        text NOT NULL DEFAULT 'pending',
        created_at    timestamptz NOT NULL DEFAULT now(),
        resolved_at   timestamptz""",
    "staged_changes": """
        id            text PRIMARY KEY,
        direction     text NOT NULL,
        entity        text NOT NULL,
        record        text NOT NULL,
        op            text NOT NULL,
        new_values    text NOT NULL,
        old_values    text,
        source_commit_ts text,
        staged_at     text NOT NULL""",
    "push_requests": """
        id            bigserial PRIMARY KEY,
        entity        text NOT NULL,
        key           text NOT NULL,
        status        text NOT NULL DEFAULT 'pending',
        reason        text,
        created_at    timestamptz NOT NULL DEFAULT now(),
        done_at       timestamptz""",
    "reconcile_progress": """
        entity        text PRIMARY KEY,
        options       text NOT NULL,
        pass          integer NOT NULL,
        last_key      text,
        counts        text NOT NULL,
        status        text NOT NULL,
        started_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now()""",
}


def create_tables(conninfo: str, schema: str) -> None:
    """Create the record tables if they do not exist (idempotent)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name, columns in _TABLES.items():
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                sql.Identifier(schema, name), sql.SQL(columns)))
        # The key map is also read by the counterpart's key (see agent.keymap).
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS key_map_local_ident ON {}"
                             " (local_ident)").format(sql.Identifier(schema, "key_map")))


def missing_tables(conninfo: str, schema: str) -> list[str]:
    """Record tables this version uses that ``schema`` lacks (none when the schema is absent:
    that is reported on its own)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [schema])}
    return [name for name in _TABLES if found and name not in found]


def publish_requests(conninfo: str, schema: str, publication: str) -> None:
    """Add ``push_requests`` to the publication, so applications' requests reach the reader."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        listed = conn.execute(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s"
            " AND tablename = 'push_requests'", [publication, schema]).fetchone()
        if listed is None:
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), sql.Identifier(schema, "push_requests")))


def staged_summary(conninfo: str, schema: str, direction: str) -> dict[str, str]:
    """Per entity, the oldest ``staged_at`` of the direction's staged changes."""
    query = sql.SQL("SELECT entity, min(staged_at) FROM {} WHERE direction = %s"
                    " GROUP BY entity").format(sql.Identifier(schema, "staged_changes"))
    with psycopg.connect(conninfo) as conn:
        return {str(e): str(t) for e, t in conn.execute(query, [direction]).fetchall()}


def staged_ids(conninfo: str, schema: str, direction: str, entity: str) -> list[str]:
    """IDs of the direction's staged changes of ``entity``."""
    query = sql.SQL("SELECT id FROM {} WHERE direction = %s AND entity = %s ORDER BY id").format(
        sql.Identifier(schema, "staged_changes"))
    with psycopg.connect(conninfo) as conn:
        return [str(r[0]) for r in conn.execute(query, [direction, entity]).fetchall()]


def save_row(conninfo: str, schema: str, table: str, key: str,
             values: Mapping[str, object]) -> None:
    """Insert or replace one row of a state table whose primary key is ``key``."""
    cols = list(values)
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(sql.Placeholder() * len(cols)), sql.Identifier(key),
        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                           for c in cols if c != key))
    with psycopg.connect(conninfo) as conn:
        conn.execute(query, list(values.values()))


def select(conninfo: str, schema: str, table: str, where: Mapping[str, object],
           order: str = "id") -> list[dict[str, Any]]:
    """Rows of a record table matching every ``where`` column (equality; a list: any of)."""
    query = sql.SQL("SELECT * FROM {} {} ORDER BY {}").format(
        sql.Identifier(schema, table), _where(where), sql.Identifier(order))
    with psycopg.connect(conninfo) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return list(cur.execute(query, list(where.values())).fetchall())


def update(conninfo: str, schema: str, table: str, where: Mapping[str, object],
           values: Mapping[str, object]) -> int:
    """Set ``values`` on matching rows; how many rows changed."""
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values)
    query = sql.SQL("UPDATE {} SET {} {}").format(sql.Identifier(schema, table), sets,
                                                  _where(where))
    with psycopg.connect(conninfo) as conn:
        cur = conn.execute(query, [*values.values(), *where.values()])
        return cur.rowcount


def _where(where: Mapping[str, object]) -> sql.Composable:
    if not where:
        return sql.SQL("")
    parts: Sequence[sql.Composable] = [
        sql.SQL("{} = ANY(%s)" if isinstance(v, list) else "{} = %s").format(sql.Identifier(c))
        for c, v in where.items()]
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(parts)


Conn = psycopg.Connection[tuple[object, ...]]


class PgRows:
    """Reads a PostgreSQL database's rows as the reader represents them (push, reconcile).

    One connection and transaction: :meth:`lookup` with ``lock`` keeps the rows locked
    (FOR UPDATE) until :meth:`end`, which is how push and reconcile keep a source row from
    changing while its value is written into the other system.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: Conn | None = None
        self._oids: dict[TableId, dict[str, int]] = {}

    def open(self) -> None:
        """Connect (UTC session, like the sink)."""
        self._conn = psycopg.connect(self._conninfo, autocommit=False,
                                     application_name="cdc-agent", options=SESSION_OPTIONS)

    def _connection(self) -> Conn:
        if self._conn is None:
            raise RuntimeError("PgRows is not open")
        return self._conn

    def _types(self, table: TableId) -> dict[str, int]:
        oids = self._oids.get(table)
        if oids is None:
            rows = self._connection().execute(
                "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid ="
                " to_regclass(quote_ident(%s) || '.' || quote_ident(%s))"
                " AND attnum > 0 AND NOT attisdropped", [table.schema, table.name]).fetchall()
            oids = self._oids[table] = {str(n): int(str(o)) for n, o in rows}
        return oids

    def _run(self, table: TableId, columns: Sequence[str], query: sql.Composed,
             params: Sequence[object]) -> list[dict[str, object]]:
        oids = [self._types(table)[c] for c in columns]
        cur = self._connection().cursor()
        for oid in set(oids):  # raw text, converted exactly like the reader does
            cur.adapters.register_loader(oid, TextLoader)
        convs = [converter_for(o) for o in oids]
        cur.execute(query, list(params))
        return [{c: None if v is None else f(str(v)) for c, f, v in zip(columns, convs, row,
                                                                         strict=True)}
                for row in cur.fetchall()]

    def columns(self, table: TableId) -> list[str]:
        """The table's column names."""
        return list(self._types(table))

    def count(self, table: TableId, where: Mapping[str, object]) -> int:
        """How many rows match ``where`` (column = value)."""
        query = sql.SQL("SELECT count(*) FROM {}{}").format(_table(table), _conds(where))
        row = self._connection().execute(query, [to_param(v) for v in where.values()]).fetchone()
        self._connection().rollback()
        return int(str(row[0])) if row else 0

    def scan(self, table: TableId, key: str, columns: Sequence[str], after: object,
             limit: int, where: Mapping[str, object]) -> list[dict[str, object]]:
        """Up to ``limit`` rows with ``key`` greater than ``after`` (None: from the start), in
        key order, matching ``where`` (column = value)."""
        conds = dict(where)
        params = [to_param(v) for v in conds.values()]
        keyset: sql.Composable | None = None
        if after is not None:
            keyset = sql.SQL("{} > %s").format(sql.Identifier(key))
            params.append(to_param(after))
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), _table(table),
            _conds(conds, keyset), sql.Identifier(key), sql.Literal(limit))
        rows = self._run(table, columns, query, params)
        self._connection().rollback()
        return rows

    def lookup(self, table: TableId, column: str, keys: Sequence[object], columns: Sequence[str],
               *, lock: bool) -> list[dict[str, object]]:
        """Rows whose ``column`` is in ``keys``; ``lock`` keeps them locked until :meth:`end`."""
        if not keys:
            return []
        query = sql.SQL("SELECT {} FROM {} WHERE {} IN ({}){}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), _table(table),
            sql.Identifier(column), sql.SQL(", ").join(sql.Placeholder() * len(keys)),
            sql.SQL(" FOR UPDATE") if lock else sql.SQL(""))
        rows = self._run(table, columns, query, [to_param(k) for k in keys])
        if not lock:
            self._connection().rollback()
        return rows

    def end(self) -> None:
        """End the transaction (releases the locks)."""
        if self._conn is not None and not self._conn.closed:
            self._conn.rollback()

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _table(table: TableId) -> sql.Composable:
    return sql.Identifier(table.schema, table.name)


def _conds(where: Mapping[str, object], keyset: sql.Composable | None = None) -> sql.Composable:
    parts: list[sql.Composable] = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in where]
    if keyset is not None:
        parts.append(keyset)
    if not parts:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts)
