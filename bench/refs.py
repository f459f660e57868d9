"""Reference limits: raw apply with the drivers, and raw reading of each engine's log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from bench import load
from bench.env import FIELDS, MySide, PgSide, create_source, row_values, servers
from bench.native import recvlogical
from bench.stats import Table

COMMIT_ROWS = 5000  # rows per target transaction in the batched methods (the agent's max_rows)


def _timed(rows: int, action: Any) -> float:
    started = time.monotonic()
    action()
    return rows / (time.monotonic() - started)


def apply_limits(rows: int, runs: int) -> Table:
    """Full-row updates of ``rows`` existing rows through each driver technique."""
    table = Table("Raw apply limits (full-row UPDATE of existing rows)",
                  f"python -m bench apply --rows {rows} --runs {runs}")
    with servers() as found:
        pg = found.side("pg", 0, "apply")
        my = found.side("mysql", 0, "apply")
        assert isinstance(pg, PgSide) and isinstance(my, MySide)
        create_source(pg, rows)
        create_source(my, rows)
        for run in range(1, runs + 1):
            table.add("psycopg one row per transaction", _pg_single(pg, 2.0, run), "rows/s")
            table.add("psycopg executemany, 500-row batches",
                      _timed(rows, lambda r=run: _pg_many(pg, rows, r)), "rows/s")
            table.add("psycopg COPY + UPDATE FROM",
                      _timed(rows, lambda r=run: _pg_copy(pg, rows, r + 100)), "rows/s")
            table.add("PyMySQL one row per transaction", _my_single(my, 2.0, run), "rows/s")
            table.add("PyMySQL executemany UPDATE (one statement per row)",
                      _timed(rows, lambda r=run: _my_many_update(my, rows, r)), "rows/s")
            table.add("PyMySQL multi-row INSERT ... ON DUPLICATE KEY UPDATE",
                      _timed(rows, lambda r=run: _my_upsert(my, rows, r + 100)), "rows/s")
            table.add("PyMySQL multi-row UPDATE ... JOIN derived rows (MySink's form)",
                      _timed(rows, lambda r=run: _my_update_join(my, rows, r + 200)), "rows/s")
    table.notes.append(f"batched methods commit every {COMMIT_ROWS} rows; fsync on both servers")
    return table


_COLS = ("id", *FIELDS)
_PG_UPDATE = "UPDATE customers SET " + ", ".join(f"{c} = %s" for c in FIELDS) + " WHERE id = %s"


def _pg_single(pg: PgSide, seconds: float, run: int) -> float:
    with pg.connect() as conn:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            v = row_values(n % 1000 + 1, run)
            conn.execute(_PG_UPDATE, [*v[1:], v[0]])
            n += 1
    return n / seconds


def _pg_many(pg: PgSide, rows: int, run: int) -> None:
    with pg.connect(autocommit=False) as conn, conn.cursor() as cur:
        for lo in range(1, rows + 1, 500):
            params = [[*v[1:], v[0]] for v in
                      (row_values(k, run) for k in range(lo, min(rows, lo + 499) + 1))]
            cur.executemany(_PG_UPDATE, params)
            if (lo + 499) % COMMIT_ROWS == 0:
                conn.commit()
        conn.commit()


def _pg_copy(pg: PgSide, rows: int, run: int) -> None:
    sets = sql.SQL(", ").join(sql.SQL("{0} = t.{0}").format(sql.Identifier(c)) for c in FIELDS)
    update = sql.SQL("UPDATE customers c SET {} FROM _stage t WHERE c.id = t.id").format(sets)
    with pg.connect(autocommit=False) as conn, conn.cursor() as cur:
        for lo in range(1, rows + 1, COMMIT_ROWS):
            cur.execute("CREATE TEMP TABLE _stage (LIKE customers) ON COMMIT DROP")
            with cur.copy("COPY _stage FROM STDIN") as copy:
                for k in range(lo, min(rows, lo + COMMIT_ROWS - 1) + 1):
                    copy.write_row(row_values(k, run))
            cur.execute(update)
            conn.commit()


_MY_UPDATE = ("UPDATE customers SET " + ", ".join(f"`{c}` = %s" for c in FIELDS)
              + " WHERE id = %s")


def _my_single(my: MySide, seconds: float, run: int) -> float:
    conn = my.connect()
    try:
        with conn.cursor() as cur:
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                v = row_values(n % 1000 + 1, run)
                cur.execute(_MY_UPDATE, [*v[1:], v[0]])
                n += 1
    finally:
        conn.close()
    return n / seconds


def _my_chunks(my: MySide, rows: int, apply: Callable[[Any, range], None]) -> None:
    """Apply keys 1..rows in 500-row statements, committing every COMMIT_ROWS rows."""
    conn = my.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            for lo in range(1, rows + 1, 500):
                apply(cur, range(lo, min(rows, lo + 499) + 1))
                if (lo + 499) % COMMIT_ROWS == 0:
                    conn.commit()
        conn.commit()
    finally:
        conn.close()


def _my_many_update(my: MySide, rows: int, run: int) -> None:
    _my_chunks(my, rows, lambda cur, keys: cur.executemany(
        _MY_UPDATE, [[*v[1:], v[0]] for v in (row_values(k, run) for k in keys)]))


def _my_upsert(my: MySide, rows: int, run: int) -> None:
    head = (f"INSERT INTO customers ({', '.join(_COLS)}) VALUES ")
    tail = " ON DUPLICATE KEY UPDATE " + ", ".join(f"`{c}` = VALUES(`{c}`)" for c in FIELDS)
    one = "(" + ", ".join(["%s"] * len(_COLS)) + ")"
    _my_chunks(my, rows, lambda cur, keys: cur.execute(
        head + ", ".join([one] * len(keys)) + tail,
        [x for k in keys for x in row_values(k, run)]))


def _my_update_join(my: MySide, rows: int, run: int) -> None:
    from agent.events import TableId
    from connectors.mysql.writer import _update_join_sql

    def apply(cur: Any, keys: range) -> None:
        sql = _update_join_sql(TableId(my.name, "customers"), ["id"], list(FIELDS), len(keys),
                               values=True)
        cur.execute(sql, [x for k in keys for x in row_values(k, run)])

    _my_chunks(my, rows, apply)


# --- reading -------------------------------------------------------------------------------


def read_speed(rows: int, runs: int) -> Table:
    """Drain a backlog of ``rows`` full-row updates (500-row transactions) from each log."""
    table = Table(f"Reading a {rows:,}-change backlog (no apply)",
                  f"python -m bench read --rows {rows} --runs {runs}")
    with servers() as found:
        pg = found.side("pg", 0, "read")
        my = found.side("mysql", 0, "read")
        assert isinstance(pg, PgSide) and isinstance(my, MySide)
        create_source(pg, rows)
        create_source(my, rows)
        pg.execute("CREATE PUBLICATION bench_read FOR TABLE customers")
        for run in range(1, runs + 1):
            for slot in ("recv", "ours"):
                pg.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                           (f"bench_{slot}_{run}",))
            file, pos = _binlog_end(my)
            load.backlog(pg, rows, run)
            load.backlog(my, rows, run)
            end = str(pg.scalar("SELECT pg_current_wal_insert_lsn()"))
            table.add("pg_recvlogical (pgoutput)",
                      rows / recvlogical(pg, f"bench_recv_{run}", "bench_read", end), "rows/s")
            table.add("PgSource (our pgoutput reader)",
                      _timed(rows, lambda r=run: _drain_pg(pg, f"bench_ours_{r}", rows)),
                      "rows/s")
            table.add("mysql-replication as shipped",
                      _timed(rows, lambda f=file, p=pos: _drain_library(my, f, p, rows)),
                      "rows/s")
            table.add("BinlogStream (our binlog adapter)",
                      _timed(rows, lambda f=file, p=pos: _drain_ours(my, f, p, rows)), "rows/s")
            for slot in ("recv", "ours"):
                pg.execute("SELECT pg_drop_replication_slot(%s)", (f"bench_{slot}_{run}",))
    table.notes.append("one process, one core: decoding only, rows are counted and dropped")
    return table


def _binlog_end(my: MySide) -> tuple[str, int]:
    with my.conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return str(row[0]), int(row[1])


def _drain_pg(pg: PgSide, slot: str, rows: int) -> None:
    from connectors.postgres.reader import PgSource

    source = PgSource(pg.server.dsn(pg.name), slot=slot, publication="bench_read")
    source.open(None)
    try:
        seen = 0
        while seen < rows:
            txn = source.poll(1.0)
            if txn is not None:
                seen += len(txn.changes)
    finally:
        source.close()


def _drain_library(my: MySide, file: str, pos: int, rows: int) -> None:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import UpdateRowsEvent

    settings = my.server.connect_kwargs()
    reader = BinLogStreamReader(connection_settings=settings, server_id=90001, blocking=True,
                                resume_stream=True, log_file=file, log_pos=pos,
                                only_events=[UpdateRowsEvent], only_schemas=[my.name])
    try:
        seen = 0
        for event in reader:
            seen += len(event.rows)
            if seen >= rows:
                break
    finally:
        reader.close()


def _drain_ours(my: MySide, file: str, pos: int, rows: int) -> None:
    from agent.events import TableId
    from connectors.mysql import MysqlParams
    from connectors.mysql.binlog import BinlogStream, TxRows

    server = my.server
    params = MysqlParams(host=server.host, port=server.port, user=server.user,
                         password=server.password, database=my.name)
    table = TableId(my.name, "customers")
    stream = BinlogStream(params, server_id=90002, log_file=file, log_pos=pos,
                          wants=lambda t: t == table)
    try:
        seen = 0
        while seen < rows:
            item = stream.next_item()
            if isinstance(item, TxRows):
                seen += len(item.changes)
    finally:
        stream.close()
