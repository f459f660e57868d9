"""PgSource against a real PostgreSQL 15: streaming, chunking, origins, resume, confirm."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable, Iterator
from decimal import Decimal

import psycopg
import pytest

from agent.errors import PositionLostError, TransientError
from agent.events import UNCHANGED, Op, TableId, Transaction
from connectors.postgres import catalog
from connectors.postgres.reader import PgSource, parse_lsn
from tests.polling import wait_until
from tests.servers import PgDatabase

ITEMS = TableId("public", "items")


@pytest.fixture
def db(pg_db: PgDatabase) -> PgDatabase:
    """A database with public.items published in slot/publication 'cdc'."""
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, note text)")
        conn.execute("CREATE TABLE unpublished (id int)")
    catalog.setup(
        pg_db.dsn,
        state_schema="cdc_state",
        publication="cdc",
        slot="cdc",
        tables=[ITEMS],
        origins=[pg_db.name],
    )
    return pg_db


@pytest.fixture
def source(db: PgDatabase) -> Iterator[PgSource]:
    src = PgSource(db.dsn, slot="cdc", publication="cdc", chunk_rows=100, status_interval=0.1)
    yield src
    src.close()


def next_txn(src: PgSource, timeout: float = 10.0, keepalives: bool = False) -> Transaction:
    """The next transaction (or chunk), skipping keepalive-only ones unless asked for."""

    def poll() -> Transaction | None:
        txn = src.poll(0.2)
        if txn is not None and txn.extra.get("keepalive") and not keepalives:
            return None
        return txn

    txn = wait_until(poll, timeout, interval=0, message="transaction from the slot")
    assert txn is not None
    return txn


def sql(db: PgDatabase, *statements: str) -> None:
    with db.connect() as conn:
        for statement in statements:
            conn.execute(statement)


def test_insert_update_delete_arrive_as_transactions(db: PgDatabase, source: PgSource) -> None:
    sql(db, "INSERT INTO items VALUES (1, 'ä😀', 0.10, NULL), (2, 'b', NULL, 'x')")
    sql(db, "UPDATE items SET price = price + 0.20 WHERE id = 1")
    sql(db, "DELETE FROM items WHERE id = 2")
    source.open(None)

    first = next_txn(source)
    assert first.final and first.origin is None and first.commit_ts.tzinfo is not None
    assert [(c.table, c.op) for c in first.changes] == [(ITEMS, Op.INSERT), (ITEMS, Op.INSERT)]
    assert first.changes[0].new == {"id": 1, "name": "ä😀", "price": Decimal("0.10"), "note": None}

    update = next_txn(source)
    assert update.changes[0].op is Op.UPDATE
    assert update.changes[0].new is not None and update.changes[0].new["price"] == Decimal("0.30")
    assert update.changes[0].old is None  # default replica identity, key unchanged

    delete = next_txn(source)
    assert delete.changes[0].op is Op.DELETE and delete.changes[0].old == {"id": 2}
    positions = [parse_lsn(t.position) for t in (first, update, delete)]
    assert positions == sorted(positions) and len(set(positions)) == 3


def test_replica_identity_full_sends_old_row_and_unchanged_toast(
    db: PgDatabase, source: PgSource
) -> None:
    big = "x" * 200_000  # TOASTed out of line
    sql(db, f"INSERT INTO items VALUES (1, 'a', 1, repeat('x', {len(big)}))")
    sql(db, "ALTER TABLE items ALTER note SET STORAGE EXTERNAL")
    sql(db, "UPDATE items SET note = note || '' WHERE id = 1")  # re-toast with EXTERNAL
    sql(db, "UPDATE items SET name = 'b' WHERE id = 1")
    sql(db, "ALTER TABLE items REPLICA IDENTITY FULL", "UPDATE items SET name = 'c' WHERE id = 1")
    source.open(None)
    for _ in range(2):
        next_txn(source)
    toast_update = next_txn(source).changes[0]
    assert toast_update.new is not None and toast_update.new["note"] is UNCHANGED
    full = next_txn(source).changes[0]
    assert full.old is not None and full.old["name"] == "b" and full.old["note"] == big


def test_large_transaction_is_chunked_with_bounded_memory(db: PgDatabase) -> None:
    rows = 200_000
    sql(
        db,
        "INSERT INTO items SELECT g, 'name ' || g, g * 1.5, NULL"
        f" FROM generate_series(1, {rows}) g",
    )
    src = PgSource(db.dsn, slot="cdc", publication="cdc", chunk_rows=1000)
    try:
        src.open(None)
        tracemalloc.start()
        count, chunks, final = 0, 0, None
        while final is None:
            txn = next_txn(src, timeout=60)
            assert len(txn.changes) <= 1000
            count += len(txn.changes)
            chunks += 1
            if txn.final:
                final = txn
            else:
                nonfinal_position = parse_lsn(txn.position)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        src.close()
    assert count == rows and chunks == rows // 1000
    assert nonfinal_position < parse_lsn(final.position)
    assert peak < 20_000_000, f"peak {peak} bytes while reading {rows} rows"


def test_origin_tagged_transaction_carries_origin_name(db: PgDatabase, source: PgSource) -> None:
    with db.connect() as conn:
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", [db.name])
        conn.execute("INSERT INTO items VALUES (1, 'from agent', 1, NULL)")
    sql(db, "INSERT INTO items VALUES (2, 'from user', 1, NULL)")
    source.open(None)
    assert next_txn(source).origin == db.name
    assert next_txn(source).origin is None


def test_resume_after_position_skips_earlier_transactions(db: PgDatabase, source: PgSource) -> None:
    for i in range(3):
        sql(db, f"INSERT INTO items VALUES ({i}, 'n', 1, NULL)")
    source.open(None)
    first = next_txn(source)
    source.close()  # nothing confirmed: the server sends everything again

    source.open(first.position)
    resumed = next_txn(source)
    assert resumed.changes[0].new is not None and resumed.changes[0].new["id"] == 1
    assert parse_lsn(resumed.position) > parse_lsn(first.position)


def slot_confirmed(db: PgDatabase) -> int:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cdc'"
        ).fetchone()
    assert row is not None
    return parse_lsn(row[0])


def poll_until(src: PgSource, condition: Callable[[], bool], timeout: float = 10) -> None:
    """Keep the stream (and its status updates) going until ``condition`` holds."""
    wait_until(lambda: src.poll(0.05) is None and condition(), timeout, interval=0)


def test_confirm_advances_the_slot(db: PgDatabase, source: PgSource) -> None:
    sql(db, "INSERT INTO items VALUES (1, 'a', 1, NULL)")
    source.open(None)
    txn = next_txn(source)
    assert slot_confirmed(db) < parse_lsn(txn.position)
    source.confirm(txn.position)
    poll_until(source, lambda: slot_confirmed(db) >= parse_lsn(txn.position))
    assert slot_confirmed(db) == parse_lsn(txn.position)  # never more than confirmed


def test_idle_slot_gets_keepalive_positions(db: PgDatabase, source: PgSource) -> None:
    sql(db, "INSERT INTO items VALUES (1, 'a', 1, NULL)")
    source.open(None)
    txn = next_txn(source)
    source.confirm(txn.position)
    sql(db, "INSERT INTO unpublished SELECT generate_series(1, 1000)")
    idle = next_txn(source, keepalives=True)
    assert idle.extra.get("keepalive") and idle.final and idle.changes == ()
    assert parse_lsn(idle.position) > parse_lsn(txn.position)


def test_missing_slot_is_position_lost(db: PgDatabase) -> None:
    src = PgSource(db.dsn, slot="nosuch", publication="cdc")
    with pytest.raises(PositionLostError, match="cdc-agent setup"):
        src.open(None)


def test_checkpoint_behind_the_slot_is_position_lost(db: PgDatabase, source: PgSource) -> None:
    sql(db, "INSERT INTO items VALUES (1, 'a', 1, NULL)")
    sql(db, "INSERT INTO items VALUES (2, 'a', 1, NULL)")
    source.open(None)
    first, second = next_txn(source), next_txn(source)
    source.confirm(second.position)
    poll_until(source, lambda: slot_confirmed(db) >= parse_lsn(second.position))
    source.close()
    with pytest.raises(PositionLostError, match="reconcile"):
        source.open(first.position)
    source.open(second.position)  # the confirmed position itself is fine


def test_lost_connection_is_transient(db: PgDatabase, source: PgSource) -> None:
    source.open(None)
    with db.connect() as conn:
        wait_until(
            lambda: conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = 'cdc' AND active_pid IS NOT NULL"
            ).fetchone(),
            10,
        )
    with pytest.raises(TransientError):
        wait_until(lambda: source.poll(0.2), 10)


def test_unreachable_server_is_transient(db: PgDatabase) -> None:
    dsn = psycopg.conninfo.make_conninfo(db.dsn, port=1, connect_timeout=2)
    with pytest.raises(TransientError):
        PgSource(dsn, slot="cdc", publication="cdc").open(None)


def test_transactions_below_the_start_are_dropped_client_side() -> None:
    # PostgreSQL itself never resends them, so feed the frames by hand: the reader must
    # still drop a transaction whose commit is below the resume position (no I/O here).
    def frame(payload: bytes) -> bytes:
        return b"w" + struct.pack(">QQq", 0, 0, 0) + payload

    relation = (
        b"R"
        + struct.pack(">I", 1)
        + b"public\0items\0d"
        + struct.pack(">H", 1)
        + b"\x01id\0"
        + struct.pack(">Ii", 23, -1)
    )
    src = PgSource("", slot="s", publication="p")
    src._start = 0x200  # what open("0/200") sets
    out = []
    for final_lsn, end_lsn in ((0x100, 0x130), (0x200, 0x230)):
        for payload in (
            b"B" + struct.pack(">QqI", final_lsn, 0, 1),
            relation,
            b"I"
            + struct.pack(">I", 1)
            + b"N"
            + struct.pack(">H", 1)
            + b"t"
            + struct.pack(">I", 1)
            + b"7",
            b"C" + struct.pack(">BQQq", 0, final_lsn, end_lsn, 0),
        ):
            txn = src._handle_frame(frame(payload))
            if txn is not None:
                out.append(txn)
    assert [t.position for t in out] == ["0/230"]
    assert out[0].changes[0].new == {"id": 7}
