"""PostgreSQL sink: applies writes and the checkpoint in one transaction per batch.

Loop prevention: the session runs ``pg_replication_origin_session_setup(origin)``, so every
transaction it commits carries the origin and the reader on this database drops it.

Values: every value is sent as the text the column type's input function parses
(:func:`connectors.postgres.values.to_param`) with an untyped parameter, so the server
converts it for the actual column type exactly (numeric, json/jsonb, timestamp...). The
session runs in UTC: an aware datetime is an instant; a naive datetime is a wall-clock
time, stored as given in a ``timestamp`` column and read as UTC by a ``timestamptz`` one.

Batches: a run of UPDATE, UPSERT or DELETE writes of one shape with at least
``COPY_MIN_ROWS`` rows goes through COPY into a temporary table (created like the target's
columns, so values are parsed by the same input functions) and then one
``UPDATE ... FROM`` / ``INSERT ... SELECT ... ON CONFLICT`` / ``DELETE ... USING``: about
twice the rows/s of a pipelined executemany. A run is cut where a key repeats, so one
statement never touches a row twice and per-key order holds. Shorter runs (and the
write-by-write isolation after a row error) use executemany.

INSERT writes (target-assigned keys) return the new row's primary key: after
:meth:`PgSink.write`, :attr:`PgSink.returned_keys` lists ``(index, key)`` pairs, ``index``
being the position of the INSERT in the ``writes`` passed to that call.

Errors: a transient failure raises ``TransientError``, a row's data or constraint failure
``RowError``; in both cases the whole open transaction is rolled back (the caller retries
the batch, or smaller parts of it to isolate the failing row).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import groupby
from typing import cast

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from agent.errors import PermanentError, RowError, SchemaError, TransientError
from agent.events import TableId
from agent.ports import Write, WriteKind
from connectors.keyruns import unique_key_parts
from connectors.postgres.errors import translate
from connectors.postgres.values import converter_for, converter_or_none, to_param

__all__ = ["PgSink"]

SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c bytea_output=hex"
    " -c extra_float_digits=1 -c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
)
_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_FETCH_CHUNK = 5000  # keys per read: one round trip per batch at the default batch size
COPY_MIN_ROWS = 32
_COPIED_KINDS = (WriteKind.UPDATE, WriteKind.UPSERT, WriteKind.DELETE)
_PLAN_NESTED = (
    "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin'),"
    " set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)")
_PLAN_RESTORE = ("SELECT set_config('enable_hashjoin', %s, true),"
                 " set_config('enable_mergejoin', %s, true)")
_AS_IS = frozenset({str, int, Decimal, type(None)})
"""Types COPY gets as they are: psycopg writes the same text as to_param (str(value))."""

Conn = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class _TableMeta:
    type_oids: Mapping[str, int]
    primary_key: tuple[str, ...]
    type_names: Mapping[str, str]  # format_type without modifier: what a key is cast to


_COLUMNS_SQL = """
SELECT a.attname, a.atttypid::int, coalesce(a.attnum = ANY(i.indkey), false),
       array_position(i.indkey::int2[], a.attnum), format_type(a.atttypid, NULL)
FROM pg_attribute a
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))
  AND a.attnum > 0 AND NOT a.attisdropped
"""


def _key_array(keys: Sequence[object]) -> object:
    """The keys as one text[] parameter: integers as a finished array literal (they need
    no quoting; the driver's list dumper costs about 1 us per element), else a list."""
    if all(type(k) is int for k in keys):
        return "{" + ",".join(map(str, keys)) + "}"
    return [to_param(k) for k in keys]


class PgSink:
    """Writes to one PostgreSQL database (implements Sink)."""

    def __init__(self, conninfo: str, *, state_schema: str, origin: str,
                 reads_only: bool = False) -> None:
        for label, name in (("state_schema", state_schema), ("origin", origin)):
            if not _NAME.match(name):
                raise ValueError(f"{label} must match [a-z0-9_]{{1,63}}: {name!r}")
        self._conninfo = conninfo
        self._origin = origin
        self._reads_only = reads_only
        """Only :meth:`fetch`, each read its own transaction (no origin: it never writes)."""
        self._checkpoints = sql.Identifier(state_schema, "checkpoints")
        self._conn: Conn | None = None
        self._meta: dict[TableId, _TableMeta] = {}
        self._temps: dict[tuple[TableId, tuple[str, ...]], str] = {}
        self._temps_used: set[str] = set()  # filled in the open transaction
        self._temps_new: list[tuple[TableId, tuple[str, ...]]] = []  # made in the open one
        self.returned_keys: list[tuple[int, dict[str, object]]] = []
        """Primary keys assigned to the INSERT writes of the last :meth:`write` call."""

    # --- Sink protocol -----------------------------------------------------------------

    def open(self) -> None:
        """Connect and tag the session with the replication origin (a reads-only sink: just
        connect; it holds no transaction, so no snapshot or lock, between reads)."""
        self.close()
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=self._reads_only,
                application_name="cdc-agent",
                options=SESSION_OPTIONS,
            )
        except psycopg.Error as exc:
            raise translate(exc, "connecting") from exc
        self._conn = conn
        if self._reads_only:
            return
        with self._guard("replication origin session setup"):
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", [self._origin])
            conn.commit()

    def read_checkpoint(self, direction: str) -> str | None:
        """The last position committed for ``direction``, or None."""
        query = sql.SQL("SELECT position FROM {} WHERE direction = %s").format(self._checkpoints)
        with self._guard("reading the checkpoint"):
            conn = self._connection()
            row = conn.execute(query, [direction]).fetchone()
            conn.rollback()
        return None if row is None else str(row[0])

    def begin(self, direction: str) -> None:
        """Start a target transaction (reconnecting first if the connection was lost)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.open()
        self.rollback()
        self.returned_keys = []
        self._temps_used.clear()

    def write(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order; runs of the same shape go out as one executemany."""
        self.returned_keys = []
        with self._guard("applying writes"):
            conn = self._connection()
            indexed = list(enumerate(writes))
            for _, run in groupby(indexed, key=lambda item: _shape(item[1])):
                self._apply_run(conn, list(run))

    def generated_keys(self) -> Mapping[int, object]:
        """The primary key (its only or first column) of each INSERT of the last write()."""
        return {index: next(iter(key.values()), None) for index, key in self.returned_keys}

    def commit(self, direction: str, position: str, source_commit_ts: datetime) -> None:
        """Upsert the checkpoint row in the open transaction, then COMMIT."""
        query = sql.SQL(
            "INSERT INTO {} AS c (direction, position, source_commit_ts) VALUES (%s, %s, %s)"
            " ON CONFLICT (direction) DO UPDATE SET position = EXCLUDED.position,"
            " source_commit_ts = EXCLUDED.source_commit_ts, applied_at = now()"
        ).format(self._checkpoints)
        with self._guard("committing"):
            conn = self._connection()
            conn.execute(query, [direction, position, source_commit_ts])
            conn.commit()
        self._temps_used.clear()  # ON COMMIT DELETE ROWS emptied them
        self._temps_new.clear()

    def rollback(self) -> None:
        """Abandon the open transaction, if any (a lost connection is simply dropped)."""
        conn = self._conn
        self._temps_used.clear()
        for made in self._temps_new:  # their CREATE is rolled back too
            self._temps.pop(made, None)
        self._temps_new.clear()
        if conn is None or conn.closed:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            self.close()

    def fetch(
        self, table: TableId, key_column: str, keys: Sequence[object], columns: Sequence[str],
        *, lock: bool = True,
    ) -> Mapping[object, Mapping[str, object]]:
        """Current values of ``columns`` for rows whose ``key_column`` is in ``keys``
        (``lock``: SELECT ... FOR UPDATE).

        Values come back in the reader's representation (see :mod:`values`), keyed by the
        key column's value in that representation.
        """
        result: dict[object, Mapping[str, object]] = {}
        with self._guard(f"reading {table}"):
            conn = self._connection()
            meta = self._table_meta(conn, table)
            names = [key_column, *columns]
            for start in range(0, len(keys), _FETCH_CHUNK):
                chunk = keys[start : start + _FETCH_CHUNK]
                for key, values in self._select(conn, table, meta, names, chunk, lock):
                    result[key] = values
        return result

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        conn, self._conn = self._conn, None
        self._temps.clear()  # temporary tables live as long as the session
        self._temps_used.clear()
        self._temps_new.clear()
        if conn is not None:
            conn.close()

    # --- internals ---------------------------------------------------------------------

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            raise TransientError("the sink connection is not open")
        return self._conn

    @contextmanager
    def _guard(self, context: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            self.rollback()
            if self._conn is not None and self._conn.broken:
                self.close()
            raise translate(exc, context) from exc
        except (TypeError, ValueError) as exc:  # a value to_param cannot convert
            self.rollback()
            raise RowError("22000 data_exception", f"{context}: {exc}") from exc

    def _table_meta(self, conn: Conn, table: TableId) -> _TableMeta:
        meta = self._meta.get(table)
        if meta is None:
            rows = conn.execute(_COLUMNS_SQL, [table.schema, table.name]).fetchall()
            if not rows:
                raise PermanentError(f"table {table} does not exist")
            pk = sorted((int(str(pos)), str(n)) for n, _, in_pk, pos, _ in rows if in_pk)
            meta = _TableMeta({str(n): int(str(o)) for n, o, _, _, _ in rows},
                              tuple(n for _, n in pk), {str(n): str(t) for n, *_, t in rows})
            self._meta[table] = meta
        return meta

    def _select(
        self, conn: Conn, table: TableId, meta: _TableMeta, names: list[str],
        keys: Sequence[object], lock: bool = True,
    ) -> Iterator[tuple[object, dict[str, object]]]:
        """(key, {column: value}) per row found; the key column is the first of ``names``."""
        # FOR UPDATE: the rules decide on these values, so no other transaction may change
        # the rows between this read and the agent's write (a lost update otherwise); the
        # caller says when no decision depends on them beyond "already equal".
        # One array parameter (text, cast to the key's type: the same input function as an
        # untyped parameter): the query text is the same for every chunk, so it is parsed
        # and prepared once, not once per batch with a thousand placeholders.
        _oid(meta, table, names[0])
        query = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s::text[]::{}[])" + (
            " FOR UPDATE" if lock else "")).format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.Identifier(table.schema, table.name),
            sql.Identifier(names[0]),
            sql.SQL(meta.type_names[names[0]]),
        )
        cur = conn.cursor()
        oids = [_oid(meta, table, n) for n in names]
        for oid in set(oids):  # raw text, converted exactly like the reader does
            cur.adapters.register_loader(oid, TextLoader)
        cur.execute(query, [_key_array(keys)])
        key_conv, columns = converter_for(oids[0]), names[1:]
        # TextLoader: every value is a str (or None); only non-text columns are converted.
        converted = [(n, c) for n, o in zip(columns, oids[1:], strict=True)
                     if (c := converter_or_none(o)) is not None]
        for row in cur.fetchall():  # one call loads every row (iterating costs one per row)
            key = cast(str | None, row[0])
            values: dict[str, object] = dict(zip(columns, row[1:], strict=True))
            for n, c in converted:
                v = values[n]
                if v is not None:
                    values[n] = c(cast(str, v))
            yield (None if key is None else key_conv(key)), values

    def _apply_run(self, conn: Conn, run: list[tuple[int, Write]]) -> None:
        first = run[0][1]
        if first.kind is WriteKind.UPDATE and not first.values:
            return
        if (first.kind not in _COPIED_KINDS or len(run) < COPY_MIN_ROWS
                or not first.key.keys().isdisjoint(first.values)):  # a key that changes
            self._execute_run(conn, run)
            return
        for part in unique_key_parts(run):
            if len(part) >= COPY_MIN_ROWS:
                self._copy_run(conn, [w for _, w in part])
            else:
                self._execute_run(conn, part)

    def _copy_run(self, conn: Conn, writes: list[Write]) -> None:
        """COPY the writes into a temporary table, then apply them with one statement.

        The keys of ``writes`` are distinct (a statement must not touch a row twice)."""
        first = writes[0]
        key_cols = list(first.key)
        cols = [*key_cols, *(c for c in first.values if c not in first.key)]
        cols += [c for c in first.defaults if c not in cols]
        if len(cols) == len(first.key) + len(first.values) + len(first.defaults):
            # Disjoint key, values and defaults (the usual shape): each write's values in
            # column order without a lookup per value (same shape: same dict orders).
            rows = [[v if type(v) in _AS_IS else to_param(v)
                     for v in (*w.key.values(), *w.values.values(), *w.defaults.values())]
                    for w in writes]
        else:
            rows = [[to_param(_value(w, c)) for c in cols] for w in writes]
        name = self._temp_table(conn, first.table, tuple(cols))
        temp = sql.Identifier(name)
        cur = conn.cursor()
        if name in self._temps_used:
            cur.execute(sql.SQL("TRUNCATE {}").format(temp))
        self._temps_used.add(name)
        names = sql.SQL(", ").join(map(sql.Identifier, cols))
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(temp, names)) as copy:
            for row in rows:
                copy.write_row(row)
        if first.kind is WriteKind.UPSERT:  # no join: INSERT ... SELECT
            cur.execute(_from_statement(first, key_cols, cols, temp))
            return
        # A join with the temporary table: the planner knows nothing of its rows and, on a
        # target whose statistics are known, hashes the WHOLE target table (a sequential
        # scan per batch, ruinous on a large table; about half the statement's time on a
        # 100,000-row one). Each batch row is looked up through the key's index instead.
        settings = cur.execute(_PLAN_NESTED).fetchone()
        cur.execute(_from_statement(first, key_cols, cols, temp))
        cur.execute(_PLAN_RESTORE, settings[:2] if settings else ("on", "on"))

    def _temp_table(self, conn: Conn, table: TableId, cols: tuple[str, ...]) -> str:
        """A session-lifetime temporary table with ``cols`` typed as in ``table``."""
        temp = self._temps.get((table, cols))
        if temp is None:
            temp = f"cdc_agent_batch_{len(self._temps)}"
            # ON COMMIT DELETE ROWS: empty at every commit. A rollback forgets the tables
            # made in its transaction (see rollback); IF NOT EXISTS is a second safety.
            conn.execute(sql.SQL(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS"
                " AS SELECT {} FROM {} WITH NO DATA").format(
                    sql.Identifier(temp), sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.Identifier(table.schema, table.name)))
            self._temps[(table, cols)] = temp
            self._temps_new.append((table, cols))
        return temp

    def _execute_run(self, conn: Conn, run: list[tuple[int, Write]]) -> None:
        first = run[0][1]
        key_cols, value_cols = list(first.key), list(first.values)
        query, param_cols = _statement(first, key_cols, value_cols, self._returning(conn, first))
        params = [[to_param(_value(w, c)) for c in param_cols] for _, w in run]
        cur = conn.cursor()
        if first.kind is not WriteKind.INSERT:
            cur.executemany(query, params)
            return
        meta = self._table_meta(conn, first.table)
        convs = [converter_for(_oid(meta, first.table, c)) for c in meta.primary_key]
        for oid in {_oid(meta, first.table, c) for c in meta.primary_key}:
            cur.adapters.register_loader(oid, TextLoader)
        cur.executemany(query, params, returning=True)
        for index, _ in run:
            row = cur.fetchone()
            if row is not None:
                key = {
                    c: None if v is None else f(str(v))
                    for c, f, v in zip(meta.primary_key, convs, row, strict=True)
                }
                self.returned_keys.append((index, key))
            cur.nextset()

    def _returning(self, conn: Conn, write: Write) -> tuple[str, ...]:
        if write.kind is not WriteKind.INSERT:
            return ()
        pk = self._table_meta(conn, write.table).primary_key
        if not pk:
            raise PermanentError(f"table {write.table} has no primary key to return")
        return pk


def _from_statement(write: Write, key_cols: list[str], cols: list[str],
                    temp: sql.Identifier) -> sql.Composed:
    """One statement applying every row of ``temp`` (same semantics as :func:`_statement`)."""
    table = sql.Identifier(write.table.schema, write.table.name)
    ident = sql.Identifier
    join = sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(ident(c)) for c in key_cols)
    if write.kind is WriteKind.DELETE:
        return sql.SQL("DELETE FROM {} AS t USING {} AS s WHERE {}").format(table, temp, join)
    updates = [c for c in write.values if c not in write.key]
    if write.kind is WriteKind.UPDATE:
        sets = sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(ident(c)) for c in write.values)
        return sql.SQL("UPDATE {} AS t SET {} FROM {} AS s WHERE {}").format(
            table, sets, temp, join)
    names = sql.SQL(", ").join(map(ident, cols))
    insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(table, names, names, temp)
    conflict = sql.SQL(", ").join(map(ident, key_cols))
    if not updates:
        return insert + sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(conflict)
    action = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(ident(c)) for c in updates)
    return insert + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(conflict, action)


def _shape(write: Write) -> tuple[object, ...]:
    return (write.table, write.kind, tuple(write.key), tuple(write.values), tuple(write.defaults))


def _value(write: Write, column: str) -> object:
    if column in write.values:
        return write.values[column]
    if column in write.key:
        return write.key[column]
    return write.defaults[column]


def _oid(meta: _TableMeta, table: TableId, column: str) -> int:
    try:
        return meta.type_oids[column]
    except KeyError:
        raise SchemaError(f"column {column} does not exist in {table}", str(table),
                          column) from None


def _statement(
    write: Write, key_cols: list[str], value_cols: list[str], returning: tuple[str, ...]
) -> tuple[sql.Composed, list[str]]:
    """The SQL for one write shape and the order its parameters are bound in."""
    table = sql.Identifier(write.table.schema, write.table.name)
    ident = sql.Identifier
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(ident(c)) for c in key_cols)
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(ident(c)) for c in value_cols)
    if write.kind is WriteKind.DELETE:
        return sql.SQL("DELETE FROM {} WHERE {}").format(table, where), key_cols
    if write.kind is WriteKind.UPDATE:
        return sql.SQL("UPDATE {} SET {} WHERE {}").format(table, sets, where), [
            *value_cols,
            *key_cols,
        ]
    cols = [*key_cols, *(c for c in value_cols if c not in write.key)]
    # Defaults are set only by the INSERT: an existing row keeps its own values.
    cols += [c for c in write.defaults if c not in cols]
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        table,
        sql.SQL(", ").join(map(ident, cols)),
        sql.SQL(", ").join(sql.Placeholder() * len(cols)),
    )
    if write.kind is WriteKind.INSERT:
        return insert + sql.SQL(" RETURNING {}").format(
            sql.SQL(", ").join(map(ident, returning))
        ), cols
    updates = [c for c in value_cols if c not in write.key]
    if not updates:
        return insert + sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(
            sql.SQL(", ").join(map(ident, key_cols))
        ), cols
    action = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(ident(c)) for c in updates)
    return insert + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
        sql.SQL(", ").join(map(ident, key_cols)), action
    ), cols
