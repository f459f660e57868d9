"""Reconcile and initial load: exact counts, repair by ownership, safe while streaming."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import BIN, AgentProcess, AgentSetup
from tests.e2e.schema import crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

CRM = """
CREATE TABLE public.items (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(10, 2) NOT NULL,
    erp_stock  integer NOT NULL DEFAULT 0
);
ALTER TABLE public.items REPLICA IDENTITY FULL;
"""

ERP = """CREATE TABLE items (
    item_no  int AUTO_INCREMENT PRIMARY KEY,
    crm_id   int UNIQUE,
    name     varchar(200) NOT NULL,
    price    decimal(10, 2) NOT NULL,
    stock    int NOT NULL DEFAULT 0
) DEFAULT CHARSET=utf8mb4"""

ITEM: dict[str, Any] = {
    "crm": {"table": "public.items", "key": "id"},
    "erp": {"table": "items", "key": "item_no"},
    "link": {"erp_column": "crm_id"},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "crm"},
        "price": {"crm": "price", "erp": "price", "owner": "crm"},
        "stock": {"crm": "erp_stock", "erp": "stock", "owner": "erp"},
    },
}


@dataclass
class World:
    setup: AgentSetup
    crm: PgDatabase
    erp: MariaDatabase

    def crm_do(self, sql: str, *args: object) -> None:
        with self.crm.connect() as conn:
            conn.execute(sql, args)

    def erp_do(self, sql: str, *args: object) -> None:
        conn = self.erp.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
        finally:
            conn.close()

    def reconcile(self, *args: str) -> dict[str, Any]:
        done = self.setup.cli("reconcile", "item", "--json", *args, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def make_world(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path, rows: int,
               erp_rows_too: bool = True, drift: bool = True) -> tuple[World, int]:
    """Both tables (drift planted), then `cdc-agent setup`: the agent streams only later
    changes. Returns the world and the drift count per kind."""
    with pg_db.connect() as conn:
        conn.execute(CRM)
        conn.execute("INSERT INTO items (id, name, price, erp_stock) SELECT g, 'item ' || g,"
                     " g * 1.5, g %% 100 FROM generate_series(1, %s) g", [rows])
        conn.execute("SELECT setval('items_id_seq', %s)", [rows])
    conn_m = maria_db.connect()
    with conn_m.cursor() as cur:
        cur.execute(ERP)
        if erp_rows_too:
            cur.execute(f"INSERT INTO items (crm_id, name, price, stock) SELECT seq,"
                        f" CONCAT('item ', seq), seq * 1.5, seq % 100 FROM seq_1_to_{rows}")
    conn_m.close()
    setup = AgentSetup(tmp_path, "r" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"item": ITEM})
    world = World(setup, pg_db, maria_db)
    n = plant_drift(world, rows) if drift else 0
    setup.write()
    done = setup.cli("setup")
    assert done.returncode == 0, done.stderr
    return world, n


def plant_drift(world: World, rows: int) -> int:
    """1% of the rows on each side: half differ in a field that side owns, half exist only
    there. Returns the count per kind."""
    n = rows // 200
    world.crm_do("UPDATE items SET price = price + 1000 WHERE id %% 200 = 1")
    world.crm_do("INSERT INTO items (name, price) SELECT 'crm only ' || g, 7 FROM"
                 " generate_series(1, %s) g", n)
    world.erp_do("UPDATE items SET stock = stock + 1000 WHERE crm_id % 200 = 101")
    world.erp_do(f"INSERT INTO items (name, price, stock) SELECT CONCAT('erp only ', seq), 9, 3"
                 f" FROM seq_1_to_{n}")
    return n


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()
        print(agent.log()[-3000:])


class Streamer:
    """Updates CRM names at about ``rate`` per second, each key to an increasing version."""

    def __init__(self, crm: PgDatabase, keys: int, rate: int = 100) -> None:
        self.crm, self.keys, self.rate = crm, keys, rate
        self.stop = threading.Event()
        self.sent = 0
        self.last: dict[int, str] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        with self.crm.connect() as conn:
            started = time.monotonic()
            while not self.stop.is_set():
                key = rng.randint(1, self.keys)
                value = f"streamed {self.sent}"
                conn.execute("UPDATE items SET name = %s WHERE id = %s", [value, key])
                self.last[key] = value
                self.sent += 1
                ahead = self.sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    self.stop.wait(ahead)  # pacing the load, not synchronising


def _expected(n: int) -> dict[str, Any]:
    return {"only": {"crm": n, "erp": n}, "differing": {"price": n, "stock": n}}


@pytest.mark.slow
def test_reconcile_200k_with_drift_while_streaming(pg_db: PgDatabase, maria_db: MariaDatabase,
                                                   tmp_path: Path,
                                                   agents: list[AgentProcess]) -> None:
    rows = int(os.environ.get("RECONCILE_ROWS", "200000"))
    world, n = make_world(pg_db, maria_db, tmp_path, rows)

    found = world.reconcile()
    assert {"only": found["only"], "differing": found["differing"]} == _expected(n), found
    assert found["scanned"] == {"crm": rows + n, "erp": rows + n}
    print(f"FIGURE reconcile report over {rows}+{rows} rows: {found['seconds']} s,"
          f" {found['rows_per_second']} rows/s")

    agent = AgentProcess(world.setup)
    agents.append(agent)
    agent.wait_streaming()
    streamer = Streamer(world.crm, rows)
    streamer.thread.start()
    try:
        repaired = world.reconcile("--apply")
    finally:
        streamer.stop.set()
        streamer.thread.join()
    print(f"FIGURE reconcile --apply over {rows}+{rows} rows while {streamer.sent} updates"
          f" streamed: {repaired['seconds']} s, {repaired['rows_per_second']} rows/s")
    assert streamer.sent >= 100 * repaired["seconds"] * 0.8
    assert repaired["only"] == {"crm": n, "erp": n}, repaired

    last = list(streamer.last.items())
    wait_until(lambda: all(erp_rows(world.erp, "SELECT name FROM items WHERE crm_id = %s",
                                    (k,))[0][0] == v for k, v in last[-20:]),
               timeout=30, message="the streamed updates did not arrive")
    # Nothing regressed: every streamed key holds its last streamed value on both sides.
    names = dict(erp_rows(world.erp, "SELECT crm_id, name FROM items"
                                     " WHERE name LIKE 'streamed %%'"))
    assert all(names.get(k) == v for k, v in streamer.last.items())
    after = world.reconcile()
    assert (after["only"], after["differing"]) == ({}, {}), after
    assert after["scanned"] == {"crm": rows + 2 * n, "erp": rows + 2 * n}


@pytest.mark.slow
def test_initial_load_200k_into_an_empty_erp(pg_db: PgDatabase, maria_db: MariaDatabase,
                                             tmp_path: Path,
                                             agents: list[AgentProcess]) -> None:
    rows = int(os.environ.get("RECONCILE_ROWS", "200000"))
    world, _ = make_world(pg_db, maria_db, tmp_path, rows, erp_rows_too=False, drift=False)
    agent = AgentProcess(world.setup)
    agents.append(agent)
    agent.wait_streaming()
    loaded = world.reconcile("--apply")
    print(f"FIGURE initial load of {rows} rows into an empty ERP: {loaded['seconds']} s,"
          f" {rows / loaded['seconds']:.0f} rows/s")
    assert loaded["only"] == {"crm": rows}
    assert erp_rows(world.erp, "SELECT count(*), sum(price) FROM items")[0] == tuple(
        crm_rows(world.crm, "SELECT count(*), sum(price) FROM items")[0])
    after = world.reconcile()
    assert (after["only"], after["differing"]) == ({}, {}), after


def test_reconcile_resumes_after_a_kill_and_filters(pg_db: PgDatabase, maria_db: MariaDatabase,
                                                    tmp_path: Path) -> None:
    rows = 20000
    world, n = make_world(pg_db, maria_db, tmp_path, rows)
    schema = world.setup.state_schema
    output = tmp_path / "reconcile.out"
    proc = subprocess.Popen([str(BIN), "--config", str(world.setup.config_path), "reconcile",
                             "item", "--chunk", "100"], stdout=output.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or crm_rows(
            world.crm, f"SELECT 1 FROM {schema}.reconcile_progress WHERE pass = 1 AND"
                       " last_key IS NOT NULL"), timeout=30, message="no progress was stored")
        assert proc.poll() is None, output.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    [(status, last)] = crm_rows(world.crm, f"SELECT status, last_key FROM {schema}"
                                           ".reconcile_progress")
    assert status == "running" and int(last) < rows
    resumed = world.reconcile("--chunk", "100")
    assert resumed["resumed"] is True
    assert {"only": resumed["only"], "differing": resumed["differing"]} == _expected(n)

    fresh = world.reconcile("--restart", "--where", "name=item 201")
    assert fresh["resumed"] is False and fresh["scanned"] == {"crm": 1, "erp": 1}
    assert fresh["differing"] == {"price": 1} and fresh["samples"] == {"differing:price": ["201"]}
