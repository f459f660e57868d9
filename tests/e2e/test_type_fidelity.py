"""Type fidelity: values survive CRM (PostgreSQL) -> ERP (MariaDB) -> CRM unchanged.

A row written in the CRM flows to the ERP; the ERP copies it into a new row, which flows back
to the CRM as a new account. Every column of the copy must equal the original, type by type.
The ERP interprets DATETIME in Europe/Berlin, so wall-clock times around both 2026 DST
changes are included, and instants in the repeated autumn hour.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

# name: (PostgreSQL type, MariaDB type, value)
COLUMNS: dict[str, tuple[str, str, object]] = {
    "numeric_exact": ("numeric(20,6)", "decimal(20,6)", Decimal("0.1") + Decimal("0.2")),
    "numeric_wide": ("numeric(20,6)", "decimal(20,6)", Decimal("12345678901234.123456")),
    "bigint_min": ("bigint", "bigint", -(2**63)),
    "bigint_max": ("bigint", "bigint", 2**63 - 1),
    "unsigned_max": ("numeric(20,0)", "bigint unsigned", Decimal(2**64 - 1)),
    "float_tenth": ("double precision", "double", 0.1),
    "float_huge": ("double precision", "double", 1.7976931348623157e308),
    "a_date": ("date", "date", date(2026, 2, 28)),
    "a_time": ("time", "time(6)", time(23, 59, 58, 123456)),
    "wall_spring_gap": ("timestamp", "datetime(6)", datetime(2026, 3, 29, 2, 30)),
    "wall_autumn_twice": ("timestamp", "datetime(6)", datetime(2026, 10, 25, 2, 30, 0, 5)),
    "instant_spring": ("timestamptz", "timestamp(6) NULL",
                       datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    "instant_autumn_1": ("timestamptz", "timestamp(6) NULL",
                         datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    "instant_autumn_2": ("timestamptz", "timestamp(6) NULL",
                         datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    "text_4byte": ("text", "varchar(100)", "Grüße 𝄞 😀 — ß"),
    "a_json": ("jsonb", "json", '{"a": 1, "b": [1, 2.50, "x"], "c": {"d": null}}'),
    "some_bytes": ("bytea", "blob", b"\x00\xff\x10binary\x80"),
    "a_bool": ("boolean", "tinyint(1)", True),
}


@pytest.fixture
def agent(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Any:
    pg_cols = ", ".join(f"{n} {t}" for n, (t, _, _) in COLUMNS.items())
    my_cols = ", ".join(f"{n} {t}" for n, (_, t, _) in COLUMNS.items())
    with pg_db.connect() as conn:
        conn.execute(f"CREATE TABLE samples (id serial PRIMARY KEY, {pg_cols})")
        conn.execute("ALTER TABLE samples REPLICA IDENTITY FULL")
    conn_m = maria_db.connect()
    with conn_m.cursor() as cur:
        cur.execute(f"CREATE TABLE samples (no int AUTO_INCREMENT PRIMARY KEY, crm_id int UNIQUE,"
                    f" {my_cols}) DEFAULT CHARSET=utf8mb4")
    conn_m.close()
    entity = {"crm": {"table": "public.samples", "key": "id"},
              "erp": {"table": "samples", "key": "no"},
              "link": {"erp_column": "crm_id"},
              "fields": {n: {"crm": n, "erp": n, "owner": "both"} for n in COLUMNS}}
    setup = AgentSetup(tmp_path, "y" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"sample": entity})
    setup.write()
    assert setup.cli("setup").returncode == 0
    proc = AgentProcess(setup)
    proc.wait_streaming()
    yield proc
    proc.stop()
    print(proc.log())


def _crm_row(pg_db: PgDatabase, crm_id: int) -> dict[str, Any]:
    names = ", ".join(COLUMNS)
    [row] = crm_rows(pg_db, f"SELECT {names} FROM samples WHERE id = %s", (crm_id,))
    return dict(zip(COLUMNS, row, strict=True))


@pytest.mark.parametrize("with_values", [True, False], ids=["values", "null-in-every-column"])
def test_every_type_round_trips_crm_erp_crm(agent: AgentProcess, pg_db: PgDatabase,
                                            maria_db: MariaDatabase, with_values: bool) -> None:
    names = list(COLUMNS)
    values = [COLUMNS[n][2] if with_values else None for n in names]
    with pg_db.connect() as conn:
        inserted = conn.execute(
            f"INSERT INTO samples ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
            " RETURNING id", values).fetchone()
    assert inserted is not None
    original = inserted[0]
    wait_until(lambda: erp_rows(maria_db, "SELECT 1 FROM samples WHERE crm_id = %s",
                                (original,)), timeout=5, message="the row did not reach the ERP")
    conn_m = maria_db.connect()
    with conn_m.cursor() as cur:
        cur.execute(f"INSERT INTO samples ({', '.join(names)}) SELECT {', '.join(names)} "
                    "FROM samples WHERE crm_id = %s", (original,))
        copy_no = cur.lastrowid
    conn_m.commit()
    conn_m.close()
    copy_id = wait_until(lambda: erp_rows(maria_db, "SELECT crm_id FROM samples WHERE no = %s",
                                          (copy_no,))[0][0],
                         timeout=5, message="the ERP copy did not come back to the CRM")
    before, after = _crm_row(pg_db, original), _crm_row(pg_db, copy_id)
    differing = {n: (before[n], after[n]) for n in names if before[n] != after[n]}
    assert differing == {}, f"changed on the round trip: {sorted(differing)}"
    if with_values:  # and the original holds what was written, so equality means something
        assert before["numeric_exact"] == Decimal("0.300000")
        assert before["unsigned_max"] == 2**64 - 1 and before["bigint_min"] == -(2**63)
        assert before["text_4byte"] == COLUMNS["text_4byte"][2]
        assert bytes(before["some_bytes"]) == COLUMNS["some_bytes"][2]
