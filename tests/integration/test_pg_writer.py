"""PgSink against a real PostgreSQL 15: writes, checkpoint atomicity, errors, exact types."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from agent.errors import RowError, SchemaError, TransientError
from agent.events import TableId, Transaction
from agent.ports import Write, WriteKind
from connectors.postgres import catalog
from connectors.postgres.reader import PgSource
from connectors.postgres.values import JsonText
from connectors.postgres.writer import COPY_MIN_ROWS, PgSink
from tests.polling import wait_until
from tests.servers import PgDatabase

ACCOUNTS = TableId("public", "accounts")
TS = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(pg_db: PgDatabase) -> PgDatabase:
    with pg_db.connect() as conn:
        conn.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, phone text,"
            " CHECK (name <> 'forbidden'))"
        )
        conn.execute(
            "CREATE TABLE orders (order_no bigint GENERATED ALWAYS AS IDENTITY"
            " PRIMARY KEY, customer int)"
        )
    catalog.setup(
        pg_db.dsn,
        state_schema="cdc_state",
        publication="cdc",
        slot="cdc",
        tables=[ACCOUNTS],
        origins=[pg_db.name],
    )
    return pg_db


@pytest.fixture
def sink(db: PgDatabase) -> Iterator[PgSink]:
    sink = PgSink(db.dsn, state_schema="cdc_state", origin=db.name)
    sink.open()
    yield sink
    sink.close()


def next_txn(source: PgSource) -> Transaction:
    txn = wait_until(lambda: source.poll(0.2), 10, interval=0)
    assert txn is not None
    return txn


def upsert(id_: int, **values: object) -> Write:
    return Write(ACCOUNTS, WriteKind.UPSERT, {"id": id_}, values)


def rows(db: PgDatabase) -> list[tuple[object, ...]]:
    with db.connect() as conn:
        return conn.execute("SELECT id, name, phone FROM accounts ORDER BY id").fetchall()


def test_upsert_update_delete_and_checkpoint(db: PgDatabase, sink: PgSink) -> None:
    assert sink.read_checkpoint("crm_to_erp") is None
    sink.begin("crm_to_erp")
    sink.write(
        [upsert(i, name=f"n{i}", phone=None) for i in range(1, 4)]
        + [upsert(1, name="renamed", phone="+49")]
    )
    sink.commit("crm_to_erp", "0/100", TS)
    assert rows(db) == [(1, "renamed", "+49"), (2, "n2", None), (3, "n3", None)]

    sink.begin("crm_to_erp")
    sink.write(
        [
            Write(ACCOUNTS, WriteKind.UPDATE, {"id": 2}, {"phone": "123"}),
            Write(ACCOUNTS, WriteKind.UPDATE, {"id": 99}, {"phone": "nobody"}),  # not created
            Write(ACCOUNTS, WriteKind.DELETE, {"id": 3}, {}),
        ]
    )
    sink.commit("crm_to_erp", "0/200", TS)
    assert rows(db) == [(1, "renamed", "+49"), (2, "n2", "123")]
    assert sink.read_checkpoint("crm_to_erp") == "0/200"
    assert sink.read_checkpoint("erp_to_crm") is None
    with db.connect() as conn:
        stored = conn.execute("SELECT source_commit_ts FROM cdc_state.checkpoints").fetchone()
    assert stored == (TS,)


def test_rollback_discards_rows_and_checkpoint_together(db: PgDatabase, sink: PgSink) -> None:
    sink.begin("d")
    sink.write([upsert(1, name="a")])
    sink.commit("d", "0/1", TS)
    sink.begin("d")
    sink.write([upsert(2, name="b")])
    sink.rollback()
    assert rows(db) == [(1, "a", None)]
    assert sink.read_checkpoint("d") == "0/1"


def test_row_errors_roll_back_and_name_no_values(db: PgDatabase, sink: PgSink) -> None:
    sink.begin("d")
    sink.write([upsert(1, name="ok")])
    with pytest.raises(RowError) as err:
        sink.write([upsert(2, name="forbidden")])
    assert err.value.error_class == "23514 check_violation"
    assert "forbidden" not in str(err.value) and "accounts" in str(err.value)
    with pytest.raises(RowError) as err:
        sink.write([Write(ACCOUNTS, WriteKind.UPSERT, {"id": "secret-text"}, {"name": "x"})])
    assert err.value.error_class.startswith("22P02") and "secret-text" not in str(err.value)
    with pytest.raises(RowError):
        sink.write([upsert(3, name="nul\x00byte")])
    sink.begin("d")  # the failed transaction is gone; the session still works
    sink.write([upsert(4, name="fine")])
    sink.commit("d", "0/2", TS)
    assert rows(db) == [(4, "fine", None)]


def test_a_column_renamed_under_the_sink_is_a_schema_error(db: PgDatabase, sink: PgSink) -> None:
    sink.begin("d")
    sink.write([upsert(1, name="a", phone="p")])  # the sink now knows the table's columns
    sink.commit("d", "0/1", TS)
    with db.connect() as conn:
        conn.execute("ALTER TABLE accounts RENAME COLUMN phone TO phone_number")
    sink.begin("d")
    with pytest.raises(SchemaError) as err:
        sink.write([upsert(1, name="b", phone="q")])
    assert err.value.column == "phone" and "42703" in str(err.value)
    with pytest.raises(SchemaError) as err:
        sink.fetch(ACCOUNTS, "id", [1], ["name", "phone"])
    assert err.value.column == "phone"
    sink.close()  # one session per replication origin
    fresh = PgSink(db.dsn, state_schema="cdc_state", origin=db.name)
    fresh.open()
    try:  # a new session reads the columns again: the missing one is named before any SQL
        fresh.begin("d")
        with pytest.raises(SchemaError) as err:
            fresh.write([upsert(1, name="b", phone="q")])
        assert err.value.column == "phone"
    finally:
        fresh.close()


def test_insert_returns_generated_keys(db: PgDatabase, sink: PgSink) -> None:
    orders = TableId("public", "orders")
    sink.begin("d")
    sink.write(
        [
            upsert(1, name="a"),
            Write(orders, WriteKind.INSERT, {}, {"customer": 1}),
            Write(orders, WriteKind.INSERT, {}, {"customer": 2}),
        ]
    )
    assert sink.returned_keys == [(1, {"order_no": 1}), (2, {"order_no": 2})]
    sink.commit("d", "0/1", TS)


def test_fetch_returns_current_values(db: PgDatabase, sink: PgSink) -> None:
    sink.begin("d")
    sink.write([upsert(i, name=f"n{i}", phone=None) for i in range(1, 2500)])
    sink.commit("d", "0/1", TS)
    found = sink.fetch(ACCOUNTS, "id", [1, 2499, 5000, *range(2, 1500)], ["name", "phone"])
    assert len(found) == 1500 and 5000 not in found
    assert found[2499] == {"name": "n2499", "phone": None}


def test_written_transactions_carry_the_origin(db: PgDatabase, sink: PgSink) -> None:
    sink.begin("d")
    sink.write([upsert(1, name="agent")])
    sink.commit("d", "0/1", TS)
    with db.connect() as conn:
        conn.execute("INSERT INTO accounts VALUES (2, 'user')")
    source = PgSource(db.dsn, slot="cdc", publication="cdc")
    try:
        source.open(None)
        origins: list[str | None] = []
        while len(origins) < 2:
            txn = next_txn(source)
            if txn.changes and txn.changes[0].table == ACCOUNTS:
                origins.append(txn.origin)
    finally:
        source.close()
    assert origins == [db.name, None]


def test_lost_connection_is_transient_and_begin_reconnects(db: PgDatabase, sink: PgSink) -> None:
    sink.begin("d")
    sink.write([upsert(1, name="a")])
    with db.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'cdc-agent' AND backend_type = 'client backend'"
        )
    with pytest.raises(TransientError):
        sink.commit("d", "0/1", TS)
    sink.begin("d")
    sink.write([upsert(1, name="b")])
    sink.commit("d", "0/1", TS)
    assert rows(db) == [(1, "b", None)]


TYPES_DDL = """
CREATE TABLE typed (
  id int PRIMARY KEY, t text, vc varchar(10), n numeric, n2 numeric(10,2), i2 smallint,
  i8 bigint, f4 real, f8 double precision, b bool, bt bytea, d date, tm time, ttz timetz,
  ts timestamp, tstz timestamptz, j json, jb jsonb, u uuid, iv interval, arr int[]
)
"""

ROUND_TRIP: dict[str, list[object]] = {
    "t": ["", "ü😀'\"\\", "x" * 10_000],
    "vc": ["abc", "ß😀"],
    "n": [
        Decimal("0.1") + Decimal("0.2"),
        Decimal("-123456789012345678901234567890.123456789"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("0.000"),
    ],
    "n2": [Decimal("12345678.90")],
    "i2": [-32768, 32767],
    "i8": [-(2**63), 2**63 - 1],
    "f4": [0.5, math.inf],
    "f8": [0.1, 1.7976931348623157e308, 5e-324, -0.0, -math.inf],
    "b": [True, False],
    "bt": [b"", bytes(range(256))],
    "d": [date(1, 1, 1), date(9999, 12, 31), date(2024, 2, 29)],
    "tm": [time(0), time(23, 59, 59, 999999)],
    "ttz": [time(12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))],
    "ts": [datetime(2024, 3, 31, 2, 30), datetime(1970, 1, 1, 0, 0, 0, 1)],
    "tstz": [datetime(2024, 10, 27, 0, 30, tzinfo=UTC), datetime(2024, 10, 27, 1, 30, tzinfo=UTC)],
    "j": [JsonText('{"b": 1, "a": 1.10, "a": 2}')],
    "jb": [JsonText('{"a": 1.10, "b": [true, null]}')],
    "u": [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")],
    "iv": ["1 year 2 mons 3 days 04:05:06.5"],
    "arr": ["{1,2,NULL}"],
}


def test_every_type_round_trips_exactly_through_writer_and_reader(db: PgDatabase) -> None:
    with db.connect() as conn:
        conn.execute(TYPES_DDL)
    typed = TableId("public", "typed")
    catalog.setup(
        db.dsn,
        state_schema="cdc_state",
        publication="cdc",
        slot="cdc",
        tables=[typed],
        origins=[db.name],
    )
    writes = [
        Write(typed, WriteKind.UPSERT, {"id": i}, {col: value})
        for i, (col, value) in enumerate((c, v) for c, vs in ROUND_TRIP.items() for v in vs)
    ]
    sink = PgSink(db.dsn, state_schema="cdc_state", origin=db.name)
    source = PgSource(db.dsn, slot="cdc", publication="cdc", chunk_rows=10_000)
    try:
        sink.open()
        sink.begin("d")
        sink.write(writes)
        sink.commit("d", "0/1", TS)
        fetched = sink.fetch(typed, "id", list(range(len(writes))), list(ROUND_TRIP))
        source.open(None)
        txn = next_txn(source)
    finally:
        sink.close()
        source.close()
    streamed = {c.new["id"]: c.new for c in txn.changes if c.new is not None}
    for i, write in enumerate(writes):
        ((col, expected),) = write.values.items()
        for got in (fetched[i][col], streamed[i][col]):
            assert same(got, expected, col), f"{col}: {got!r} != {expected!r}"


def same(got: object, expected: object, column: str) -> bool:
    if column == "jb":  # jsonb normalises the text; the document must be equal
        return isinstance(got, JsonText) and got.parse() == JsonText(str(expected)).parse()
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(expected, Decimal) and expected.is_nan():
        return isinstance(got, Decimal) and got.is_nan()
    if isinstance(expected, float) and expected == 0:
        return isinstance(got, float) and got == 0 and str(got) == str(expected)
    if isinstance(expected, Decimal):
        return isinstance(got, Decimal) and str(got) == str(expected)  # scale kept too
    return type(got) is type(expected) and got == expected


AUDIT_DDL = """
CREATE TABLE audit (n bigserial PRIMARY KEY, id int, name text, via_copy bool);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (id, name, via_copy) VALUES (
    coalesce(NEW.id, OLD.id), CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.name END,
    current_query() LIKE '%cdc_agent_batch%');
  RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON accounts
  FOR EACH ROW EXECUTE FUNCTION audit_row();
"""


def audit(db: PgDatabase) -> list[tuple[object, ...]]:
    with db.connect() as conn:
        return conn.execute("SELECT id, name, via_copy FROM audit ORDER BY n").fetchall()


def test_long_runs_are_copied_and_keep_per_key_order(db: PgDatabase, sink: PgSink) -> None:
    with db.connect() as conn:
        conn.execute(AUDIT_DDL)
    n = COPY_MIN_ROWS * 2
    sink.begin("d")
    sink.write([upsert(i, name=f"a{i}", phone=None) for i in range(n)])
    # Keys repeat in the run: every key's second UPDATE must land after its first.
    updates = [Write(ACCOUNTS, WriteKind.UPDATE, {"id": i % n}, {"name": f"u{i}"})
               for i in range(2 * n)]
    sink.write([*updates, Write(ACCOUNTS, WriteKind.UPDATE, {"id": 10_000}, {"name": "none"})])
    sink.write([Write(ACCOUNTS, WriteKind.DELETE, {"id": i}, {}) for i in range(COPY_MIN_ROWS)])
    sink.commit("d", "0/1", TS)
    assert rows(db) == [(i, f"u{i + n}", None) for i in range(COPY_MIN_ROWS, n)]
    log = audit(db)
    assert all(via for _, _, via in log[: 3 * n]) and len(log) == 3 * n + COPY_MIN_ROWS
    for key in (0, n - 1):
        assert [name for id_, name, _ in log if id_ == key][:3] == [f"a{key}", f"u{key}",
                                                                   f"u{key + n}"]
    # Same table again in a new transaction, and after a rollback.
    for attempt in ("rolled back", "committed"):
        sink.begin("d")
        sink.write([upsert(i, name=attempt) for i in range(n)])
        if attempt == "rolled back":
            sink.rollback()
    sink.commit("d", "0/2", TS)
    assert {name for _, name, _ in rows(db)} == {"committed"} and len(rows(db)) == n


def test_a_row_error_in_a_copied_run_rolls_back_and_names_no_values(
        db: PgDatabase, sink: PgSink) -> None:
    n = COPY_MIN_ROWS * 2
    for bad, error_class in (({"name": "forbidden"}, "23514"), ({"name": None}, "23502"),
                             ({"name": "nul\x00byte"}, "22")):
        sink.begin("d")
        writes = [upsert(i, name=f"n{i}") for i in range(n)]
        writes[n // 2] = upsert(n // 2, **bad)
        with pytest.raises(RowError) as err:
            sink.write(writes)
        assert err.value.error_class.startswith(error_class), err.value.error_class
        assert "forbidden" not in str(err.value) and "byte" not in str(err.value)
    sink.begin("d")  # the session still works, and write by write names the row
    sink.write([upsert(i, name="fine") for i in range(n)])
    sink.commit("d", "0/1", TS)
    assert len(rows(db)) == n


def test_every_type_round_trips_through_the_copy_path(db: PgDatabase) -> None:
    with db.connect() as conn:
        conn.execute(TYPES_DDL)
    typed = TableId("public", "typed")
    n = max(COPY_MIN_ROWS, max(len(vs) for vs in ROUND_TRIP.values()))
    wanted = {i: {c: vs[i % len(vs)] for c, vs in ROUND_TRIP.items()} for i in range(n)}
    sink = PgSink(db.dsn, state_schema="cdc_state", origin=db.name)
    try:
        sink.open()
        sink.begin("d")
        sink.write([Write(typed, WriteKind.UPSERT, {"id": i}, {c: None for c in ROUND_TRIP})
                    for i in range(n)])
        sink.write([Write(typed, WriteKind.UPDATE, {"id": i}, v) for i, v in wanted.items()])
        sink.commit("d", "0/1", TS)
        fetched = sink.fetch(typed, "id", list(range(n)), list(ROUND_TRIP))
        by_key = {col: sink.fetch(typed, col, [wanted[0][col], wanted[1][col]], ["id"])
                  for col in ("t", "vc", "n2", "i8", "u", "d", "ts", "tstz", "bt")}
    finally:
        sink.close()
    for col, found in by_key.items():  # keys of other types than int locate rows too
        asked = [wanted[0][col], wanted[1][col]]
        assert len(found) == len({str(k) for k in asked}), col
        for key in asked:
            row_id = found[key]["id"]
            assert isinstance(row_id, int) and same(wanted[row_id][col], key, col), col
    for i, values in wanted.items():
        for col, expected in values.items():
            got = fetched[i][col]
            assert same(got, expected, col), f"{col}: {got!r} != {expected!r}"


def test_a_copied_run_looks_target_rows_up_by_key_not_by_scanning_the_table(
        db: PgDatabase, sink: PgSink) -> None:
    """With the target's statistics known and none for the batch's temporary table, the
    planner would hash the whole target (a scan per batch); each row is found by its key."""
    with db.connect() as conn:
        conn.execute("INSERT INTO accounts SELECT i, 'n' || i FROM generate_series(1, 20000) i")
        conn.execute("ANALYZE accounts")
    n = COPY_MIN_ROWS * 2
    sink.begin("d")
    sink.write([Write(ACCOUNTS, WriteKind.UPDATE, {"id": i}, {"name": f"u{i}"})
                for i in range(1, n + 1)])
    sink.write([Write(ACCOUNTS, WriteKind.DELETE, {"id": i}, {}) for i in range(n + 1, 2 * n + 1)])
    conn = sink._connection()  # the sink's own session: its transaction's counters
    scans = conn.execute("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
                         " WHERE relname = 'accounts'").fetchone()
    settings = conn.execute("SELECT current_setting('enable_hashjoin'),"
                            " current_setting('enable_mergejoin')").fetchone()
    sink.commit("d", "0/1", TS)
    assert scans is not None, "no counters for accounts"
    seq_scans, index_scans = scans
    assert seq_scans == 0 and isinstance(index_scans, int) and index_scans > 0, scans
    assert settings == ("on", "on")  # the planner settings are back for the rest
    assert len(rows(db)) == 20000 - n and rows(db)[0] == (1, "u1", None)
