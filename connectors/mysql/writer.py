"""MySQL/MariaDB sink: applies writes in one target transaction per batch (PyMySQL).

Session: strict ``sql_mode``, utf8mb4, autocommit off, ``time_zone='+00:00'`` and the
FOUND_ROWS client flag (an UPDATE reports matched rows, not changed rows).

Every transaction starts with the loop marker, an upsert of ``<state_schema>.checkpoints``
for the direction (``seq = seq + 1`` so the row really changes: MySQL does not log an UPDATE
that changes nothing); the binlog reader recognises the agent's own transactions by it.
:meth:`MySink.commit` stores the source position in the same row, then commits.

Generated keys: after :meth:`MySink.write`, :attr:`MySink.last_insert_ids` maps the index of
each INSERT write (in the sequence given to ``write``) to its AUTO_INCREMENT value.

Errors are classified by errno (:mod:`connectors.mysql.errors`). A row error raises
:class:`~connectors.mysql.errors.WriteRowError` naming the failing write's index; the
transaction stays open with the earlier writes applied, for the caller to roll back. After a
TransientError the connection is dropped and the next :meth:`begin` reconnects; the caller
retries the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import Any
from zoneinfo import ZoneInfo

import pymysql
from pymysql.constants import CLIENT, SERVER_STATUS
from pymysql.cursors import Cursor

from agent.errors import AgentError, RowError, TransientError
from agent.events import TableId
from agent.ports import Write, WriteKind
from connectors.keyruns import unique_key_parts
from connectors.mysql import MysqlParams, connect_kwargs
from connectors.mysql.catalog import load_columns, quote_ident, quote_table
from connectors.mysql.errors import WriteRowError, classify
from connectors.mysql.jsonrows import decimal_positions, json_readable, json_rows, json_select
from connectors.mysql.literals import Literal, literal, quote_text
from connectors.mysql.values import ColumnDef, Kind, converter, to_param

SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO"
# group_concat_max_len also bounds JSON_ARRAYAGG on MariaDB (fetch reads rows as one document).
_INIT = (f"SET SESSION sql_mode='{SQL_MODE}', time_zone='+00:00',"
         " group_concat_max_len = 4294967295")
UPSERT_ROWS_PER_STATEMENT = 500
UPDATE_ROWS_PER_STATEMENT = 500
FETCH_KEYS_PER_STATEMENT = 1000


class MySink:
    """agent.ports.Sink for MySQL/MariaDB (see the module docstring)."""

    def __init__(self, params: MysqlParams, *, state_schema: str) -> None:
        self._params = params
        self._zone = ZoneInfo(params.timezone)
        self._checkpoints = f"{quote_ident(state_schema)}.`checkpoints`"
        self._conn: pymysql.connections.Connection[Cursor] | None = None
        self._columns: dict[TableId, dict[str, ColumnDef]] = {}
        self._kinds: dict[TableId, dict[str, Kind]] = {}
        # Literal writers by (table, NO_BACKSLASH_ESCAPES in the session), then column.
        self._literals: dict[tuple[TableId, bool], dict[str, Literal]] = {}
        self._in_tx = False
        self._mariadb = False
        self.last_insert_ids: dict[int, int] = {}

    # -- connection -----------------------------------------------------------------------

    def open(self) -> None:
        """Connect and prepare the session."""
        if self._conn is not None and self._conn.open:
            return
        try:
            self._conn = pymysql.connect(
                **connect_kwargs(self._params, database=self._params.database),
                autocommit=False, client_flag=CLIENT.FOUND_ROWS, init_command=_INIT,
            )
        except pymysql.err.MySQLError as exc:
            raise classify(exc, context=f"connect to {self._params.host}") from exc
        self._in_tx = False
        self._literals = {}  # they escape through the connection
        # The handshake's version string, e.g. "10.11.6-MariaDB-log" (untyped in the stubs).
        self._mariadb = "mariadb" in str(getattr(self._conn, "server_version", "")).lower()

    def close(self) -> None:
        """Disconnect (an open transaction is rolled back by the server); safe to call twice."""
        conn, self._conn = self._conn, None
        self._in_tx = False
        if conn is not None and conn.open:
            with contextlib.suppress(pymysql.err.Error):  # the server side is gone already
                conn.close()

    def _cursor(self) -> Cursor:
        if self._conn is None or not self._conn.open:
            self.open()
        assert self._conn is not None
        return self._conn.cursor()

    def _fail(self, exc: BaseException, context: str) -> AgentError:
        error = classify(exc, context=context)
        if isinstance(error, TransientError):
            self.close()  # the session may be dead or its transaction rolled back
        return error

    # -- transactions ---------------------------------------------------------------------

    def begin(self, direction: str) -> None:
        """START TRANSACTION, then the loop marker as its first change."""
        try:
            with self._cursor() as cur:
                cur.execute("START TRANSACTION")
                self._in_tx = True
                cur.execute(
                    f"INSERT INTO {self._checkpoints} (`direction`, `seq`) VALUES (%s, 1)"
                    " ON DUPLICATE KEY UPDATE `seq` = `seq` + 1",
                    (direction,),
                )
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "begin") from exc

    def generated_keys(self) -> Mapping[int, object]:
        """The AUTO_INCREMENT value of each INSERT of the last write()."""
        return dict(self.last_insert_ids)

    def commit(self, direction: str, position: str, source_commit_ts: datetime) -> None:
        """Store the checkpoint in the open transaction, then COMMIT."""
        ts = source_commit_ts.astimezone(UTC).replace(tzinfo=None)
        try:
            with self._cursor() as cur:
                cur.execute(
                    f"UPDATE {self._checkpoints} SET `position` = %s, `source_commit_ts` = %s,"
                    " `applied_at` = UTC_TIMESTAMP(6) WHERE `direction` = %s",
                    (position, ts, direction),
                )
            assert self._conn is not None
            self._conn.commit()
            self._in_tx = False
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "commit") from exc

    def rollback(self) -> None:
        """Abandon the open transaction, if any (a dead connection is simply dropped)."""
        if self._conn is None or not self._in_tx:
            return
        try:
            self._conn.rollback()
            self._in_tx = False
        except pymysql.err.MySQLError:
            self.close()

    def read_checkpoint(self, direction: str) -> str | None:
        """The last source position committed for ``direction``, or None."""
        try:
            with self._cursor() as cur:
                cur.execute(
                    f"SELECT `position` FROM {self._checkpoints} WHERE `direction` = %s",
                    (direction,),
                )
                row = cur.fetchone()
            self._end_read()
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "read checkpoint") from exc
        return None if row is None or row[0] is None else str(row[0])

    def _end_read(self) -> None:
        # Outside a batch a SELECT opened a transaction (autocommit is off); end it so the
        # session holds no snapshot.
        if not self._in_tx and self._conn is not None:
            self._conn.rollback()

    # -- writes ---------------------------------------------------------------------------

    def write(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order inside the open transaction."""
        self.last_insert_ids = {}
        indexed = list(enumerate(writes))
        for (table, kind, _shape), group in groupby(indexed, key=_shape_of):
            batch = list(group)
            if kind is WriteKind.UPSERT:
                self._upserts(table, batch)
            elif kind is WriteKind.UPDATE and len(batch) > 1:
                self._updates(table, batch)
            else:
                for index, item in batch:
                    self._single(index, item)

    def _upserts(self, table: TableId, batch: list[tuple[int, Write]]) -> None:
        for start in range(0, len(batch), UPSERT_ROWS_PER_STATEMENT):
            part = batch[start : start + UPSERT_ROWS_PER_STATEMENT]
            if len(part) == 1 or not self._upsert_rows(table, part):
                # One row, or a row error somewhere in a multi-row statement (which was
                # undone as a whole): row by row, so the error names the failing write.
                for index, item in part:
                    self._single(index, item)

    def _upsert_rows(self, table: TableId, part: list[tuple[int, Write]]) -> bool:
        """One multi-row upsert; False (nothing applied) if some row cannot be applied."""
        first = part[0][1]
        columns = _insert_columns(first)

        def build() -> str:
            literals = self._literal_writers(table, columns)
            rows = [_row_text(literals, [merged[c] for c in columns])
                    for merged in ({**w.defaults, **w.values, **w.key} for _, w in part)]
            return _upsert_text(table, columns, first, rows)

        return self._multi(table, build)

    def _multi(self, table: TableId, build: Callable[[], str]) -> bool:
        """Run one multi-row statement; False (nothing applied) if some row cannot be applied:
        the caller then goes row by row, so the error names the failing write."""
        try:
            sql = build()
            with self._cursor() as cur:
                cur.execute(sql)  # no args: the text is complete, '%' is not special
        except RowError:
            return False
        except pymysql.err.MySQLError as exc:
            error = self._fail(exc, str(table))
            if isinstance(error, RowError):
                return False
            raise error from exc
        return True

    def _updates(self, table: TableId, batch: list[tuple[int, Write]]) -> None:
        """Same-shape UPDATEs as multi-row ``UPDATE ... JOIN (derived rows)`` statements.

        Like one UPDATE per row it only changes rows that exist (a row deleted meanwhile
        stays deleted, unlike an upsert). A key appears once per statement, so several
        updates of one row apply in order, in consecutive statements.
        """
        for part in unique_key_parts(batch, UPDATE_ROWS_PER_STATEMENT):
            if len(part) == 1 or not self._update_rows(table, part):
                for index, item in part:
                    self._single(index, item)

    def _update_rows(self, table: TableId, part: list[tuple[int, Write]]) -> bool:
        """One multi-row update; False (nothing applied) if some row cannot be applied."""
        first = part[0][1]
        keys, columns = list(first.key), list(first.values)

        def build() -> str:
            literals = self._literal_writers(table, keys + columns)
            # Same shape (_shape_of): every write lists its key and values in this order.
            rows = [[f(v) for f, v in zip(literals, [*w.key.values(), *w.values.values()],
                                          strict=True)] for _, w in part]
            return _update_join_text(table, keys, columns, rows, values=self._mariadb)

        return self._multi(table, build)

    def _single(self, index: int, item: Write) -> None:
        try:
            sql, args = self._statement(item)
            with self._cursor() as cur:
                cur.execute(sql, args)
                if item.kind is WriteKind.INSERT and cur.lastrowid:
                    self.last_insert_ids[index] = int(cur.lastrowid)
        except pymysql.err.MySQLError as exc:
            raise _at(self._fail(exc, str(item.table)), index) from exc
        except RowError as exc:  # a value no column can hold
            raise _at(exc, index) from exc

    def _statement(self, item: Write) -> tuple[str, list[object]]:
        table = quote_table(item.table)
        if item.kind is WriteKind.UPSERT:
            columns = _insert_columns(item)
            return _upsert_sql(item.table, columns, item, 1), self._params_of(
                item.table, item, columns)
        if item.kind is WriteKind.INSERT:
            columns = _insert_columns(item)
            sql = (f"INSERT INTO {table} ({_names(columns)})"
                   f" VALUES ({', '.join(['%s'] * len(columns))})")
            return sql, self._params_of(item.table, item, columns)
        where, key_args = self._where(item)
        if item.kind is WriteKind.DELETE:
            return f"DELETE FROM {table} WHERE {where}", key_args
        columns = [*item.values]
        sets = ", ".join(f"{quote_ident(c)} = %s" for c in columns)
        return (f"UPDATE {table} SET {sets} WHERE {where}",
                self._values(item.table, item.values, columns) + key_args)

    def _where(self, item: Write) -> tuple[str, list[object]]:
        # <=> is NULL-safe equality: a NULL key part matches a NULL column.
        where = " AND ".join(f"{quote_ident(c)} <=> %s" for c in item.key)
        return where, self._values(item.table, item.key, list(item.key))

    def _params_of(self, table: TableId, item: Write, columns: list[str]) -> list[object]:
        merged = {**item.defaults, **item.values, **item.key}
        return self._values(table, merged, columns)

    def _values(self, table: TableId, values: Mapping[str, object],
                columns: list[str]) -> list[object]:
        kinds = self._kinds.get(table)
        if kinds is None:  # ColumnDef.kind is computed on each access: once per table here
            kinds = self._kinds[table] = {n: d.kind for n, d in self._column_defs(table).items()}
        zone, other = self._zone, Kind.OTHER
        return [to_param(kinds.get(c, other), values[c], zone, c) for c in columns]

    def _literal_writers(self, table: TableId, columns: list[str]) -> list[Literal]:
        """The literal writer of each column (chosen once per table and column)."""
        conn = self._conn
        if conn is None or not conn.open:
            self.open()
            conn = self._conn
        assert conn is not None
        # The status flag follows the session's sql_mode (PyMySQL escapes by it too).
        status: int = getattr(conn, "server_status", 0) or 0  # not in the type stubs
        no_backslash = bool(status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)
        writers = self._literals.setdefault((table, no_backslash), {})
        missing = [c for c in columns if c not in writers]
        if missing:
            defs = self._column_defs(table)
            quote = quote_text(no_backslash)
            for c in missing:
                kind = defs[c].kind if c in defs else Kind.OTHER
                writers[c] = literal(kind, self._zone, c, quote, conn.escape)
        return [writers[c] for c in columns]

    def _column_defs(self, table: TableId) -> dict[str, ColumnDef]:
        defs = self._columns.get(table)
        if defs is None:
            try:
                with self._cursor() as cur:
                    defs = load_columns(cur, table)
            except pymysql.err.MySQLError as exc:
                raise self._fail(exc, f"columns of {table}") from exc
            self._columns[table] = defs
        return defs

    # -- reads ----------------------------------------------------------------------------

    def fetch(self, table: TableId, key_column: str, keys: Sequence[object],
              columns: Sequence[str], *, lock: bool = True
              ) -> Mapping[object, Mapping[str, object]]:
        """Current values of ``columns`` for the rows whose ``key_column`` is in ``keys``
        (``lock``: a locking read, SELECT ... FOR UPDATE).

        Values use the reader's representation (:mod:`connectors.mysql.values`).
        """
        defs = self._column_defs(table)
        wanted = [key_column, *columns]
        convert = [converter(defs[c].kind, self._zone) if c in defs else None for c in wanted]
        key_convert, named = convert[0], list(zip(columns, convert[1:], strict=True))
        described = [defs.get(c) for c in wanted]
        # Reading as JSON, the values need none of the converters (jsonrows says why).
        decimals = decimal_positions(described) if json_readable(described) else None
        result: dict[object, Mapping[str, object]] = {}
        try:
            for chunk in _chunks(list(keys), FETCH_KEYS_PER_STATEMENT):
                rows = (None if decimals is None or not self._mariadb else
                        self._select_json(table, key_column, wanted, chunk, decimals, lock))
                if rows is not None:
                    for values in rows:
                        result[values[0]] = dict(zip(columns, values[1:], strict=True))
                    continue
                for row in self._select(table, key_column, wanted, chunk, lock):
                    # One dict per row; columns without a converter are taken as they are.
                    result[_apply(key_convert, row[0])] = {
                        c: v if f is None or v is None else f(v)
                        for (c, f), v in zip(named, row[1:], strict=True)}
            self._end_read()
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, f"fetch from {table}") from exc
        return result

    def _select(self, table: TableId, key_column: str, wanted: list[str],
                keys: list[object], lock: bool = True) -> list[tuple[object, ...]]:
        with self._cursor() as cur:
            cur.execute(self._read(table, key_column, _names(wanted), keys, lock))
            return list(cur.fetchall())

    def _select_json(self, table: TableId, key_column: str, wanted: list[str],
                     keys: list[object], decimals: list[int],
                     lock: bool) -> list[list[object]] | None:
        """The rows as one JSON document (MariaDB); None if it was cut short by a limit."""
        select = json_select([quote_ident(c) for c in wanted])
        with self._cursor() as cur:
            cur.execute(self._read(table, key_column, select, keys, lock))
            found = cur.fetchone()
        if found is None:
            return None
        return json_rows(int(found[0]), found[1], decimals)

    def _read(self, table: TableId, key_column: str, select: str, keys: list[object],
              lock: bool) -> str:
        write = self._literal_writers(table, [key_column])[0]
        return (f"SELECT {select} FROM {quote_table(table)} WHERE"
                f" {quote_ident(key_column)} IN ({', '.join([write(k) for k in keys])})"
                # A locking read: the latest committed rows, kept until the agent's write (the
                # rules decide on these values; a plain read could miss a concurrent change).
                + (" FOR UPDATE" if lock else ""))


def _shape_of(indexed: tuple[int, Write]) -> tuple[TableId, WriteKind, object]:
    item = indexed[1]
    if item.kind is WriteKind.UPSERT:
        return item.table, item.kind, (tuple(item.key), tuple(item.values), tuple(item.defaults))
    if item.kind is WriteKind.UPDATE and item.values:
        return item.table, item.kind, (tuple(item.key), tuple(item.values))
    return item.table, item.kind, indexed[0]  # never grouped


def _row_text(literals: list[Literal], values: list[object]) -> str:
    return ", ".join([f(v) for f, v in zip(literals, values, strict=True)])


def _update_join_sql(table: TableId, keys: list[str], columns: list[str], rows: int,
                     values: bool = False) -> str:
    """:func:`_update_join_text` with ``%s`` placeholders (bench.refs runs it with PyMySQL
    parameters, as the reference for this statement form)."""
    placeholders = ["%s"] * (len(keys) + len(columns))
    return _update_join_text(table, keys, columns, [placeholders] * rows, values)


def _update_join_text(table: TableId, keys: list[str], columns: list[str],
                      rows: list[list[str]], values: bool = False) -> str:
    """``UPDATE t JOIN (SELECT 1 AS k0, 'a' AS v0 UNION ALL SELECT 2, 'b' ...) v ON ... SET ...``
    from each row's literals (key columns, then value columns).

    ``values``: the rows after the first as one table value constructor, ``UNION ALL VALUES
    (2, 'b'), ...`` (MariaDB 10.3+; the first SELECT names the columns). The server
    executes that about 15% faster than a SELECT per row (500-row statements, MariaDB 10.11).
    """
    names = [f"`_k{i}`" for i in range(len(keys))] + [f"`_v{i}`" for i in range(len(columns))]
    first = ", ".join([f"{v} AS {n}" for v, n in zip(rows[0], names, strict=True)])
    if values and len(rows) > 1:
        derived = first + " UNION ALL VALUES (" + "), (".join(
            ", ".join(row) for row in rows[1:]) + ")"
    else:
        derived = " UNION ALL SELECT ".join([first, *(", ".join(row) for row in rows[1:])])
    on = " AND ".join(f"`_t`.{quote_ident(k)} <=> `_v`.`_k{i}`" for i, k in enumerate(keys))
    sets = ", ".join(f"`_t`.{quote_ident(c)} = `_v`.`_v{i}`" for i, c in enumerate(columns))
    return (f"UPDATE {quote_table(table)} AS `_t` JOIN (SELECT {derived}) AS `_v`"
            f" ON {on} SET {sets}")


def _names(columns: Sequence[str]) -> str:
    return ", ".join(quote_ident(c) for c in columns)


def _insert_columns(item: Write) -> list[str]:
    """Key, values, then the insert-only defaults, each column once."""
    columns = [*item.key, *(c for c in item.values if c not in item.key)]
    return columns + [c for c in item.defaults if c not in columns]


def _upsert_sql(table: TableId, columns: list[str], item: Write, rows: int) -> str:
    row = ", ".join(["%s"] * len(columns))
    return _upsert_text(table, columns, item, [row] * rows)


def _upsert_text(table: TableId, columns: list[str], item: Write, rows: list[str]) -> str:
    """``INSERT ... VALUES (row), (row) ... ON DUPLICATE KEY UPDATE``; a row is its values'
    text (literals or placeholders) without the parentheses."""
    # Defaults are set only by the INSERT: an existing row keeps its own values.
    updates = [c for c in item.values if c not in item.key] or [columns[0]]
    # VALUES(col) works on MariaDB and MySQL 8 (where it is deprecated but still supported).
    assignments = ", ".join(f"{quote_ident(c)} = VALUES({quote_ident(c)})" for c in updates)
    values = "), (".join(rows)
    return (f"INSERT INTO {quote_table(table)} ({_names(columns)}) VALUES"
            f" ({values}) ON DUPLICATE KEY UPDATE {assignments}")


def _at(error: AgentError, index: int) -> AgentError:
    if isinstance(error, RowError) and not isinstance(error, WriteRowError):
        message = str(error).removeprefix(f"{error.error_class}: ")
        return WriteRowError(error.error_class, message, index)
    return error


def _apply(convert: Any, value: object) -> object:
    return value if convert is None or value is None else convert(value)


def _chunks(items: list[object], size: int) -> Iterator[list[object]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
