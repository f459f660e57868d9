"""Bidirectional load and the checks of the fault suite: nothing lost, nothing twice, in order.

Schema: each side owns one counter per row (the CRM owns ``seq_crm``, the ERP ``seq_erp``),
so the load needs no conflict handling. Writers set a counter to the next value of a rising
sequence; audit triggers on the receiving side log every applied change of the other side's
counter. Exactly-once and per-key order then read as: the audit values of each key rise
strictly (a replayed change would repeat or go back), and the tables end equal (nothing lost).
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from tests.e2e.agentproc import AgentSetup
from tests.e2e.schema import apply_ddl, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, MariaServer, PgDatabase, PgServer

CRM_DDL = """
CREATE TABLE public.accounts (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    seq_crm bigint NOT NULL DEFAULT 0,
    seq_erp bigint NOT NULL DEFAULT 0
);
-- The old row tells the rules which fields a CRM change touched (see the module docstring).
ALTER TABLE public.accounts REPLICA IDENTITY FULL;
CREATE TABLE public.account_audit (
    id bigserial PRIMARY KEY, account_id int NOT NULL, seq_erp bigint NOT NULL);
CREATE FUNCTION audit_seq_erp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO account_audit (account_id, seq_erp) VALUES (NEW.id, NEW.seq_erp);
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_seq_erp AFTER UPDATE OF seq_erp ON accounts FOR EACH ROW
  WHEN (OLD.seq_erp IS DISTINCT FROM NEW.seq_erp) EXECUTE FUNCTION audit_seq_erp();
"""

ERP_DDL = [
    """
    CREATE TABLE customers (
        customer_no int AUTO_INCREMENT PRIMARY KEY,
        crm_id      int UNIQUE,
        name        varchar(200) NOT NULL,
        seq_crm     bigint NOT NULL DEFAULT 0,
        seq_erp     bigint NOT NULL DEFAULT 0
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE customer_audit (
        id bigint AUTO_INCREMENT PRIMARY KEY, crm_id int, op char(1) NOT NULL,
        seq_crm bigint NOT NULL
    ) ENGINE=InnoDB
    """,
    """
    CREATE TRIGGER customers_audit_i AFTER INSERT ON customers FOR EACH ROW
        INSERT INTO customer_audit (crm_id, op, seq_crm) VALUES (NEW.crm_id, 'I', NEW.seq_crm)
    """,
    """
    CREATE TRIGGER customers_audit_u AFTER UPDATE ON customers FOR EACH ROW
        INSERT INTO customer_audit (crm_id, op, seq_crm)
        SELECT NEW.crm_id, 'U', NEW.seq_crm FROM DUAL WHERE NOT (OLD.seq_crm <=> NEW.seq_crm)
    """,
]

ENTITY: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"erp_column": "crm_id"},
    "create": {"erp": "always", "crm": "never"},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "crm"},
        "seq_crm": {"crm": "seq_crm", "erp": "seq_crm", "owner": "crm"},
        "seq_erp": {"crm": "seq_erp", "erp": "seq_erp", "owner": "erp"},
    },
}


def create_schema(crm: PgDatabase, erp: MariaDatabase) -> None:
    """The CRM and ERP tables and audit triggers of the fault suite."""
    apply_ddl(crm, erp, CRM_DDL, ERP_DDL)


def pg_database(server: PgServer, name: str) -> PgDatabase:
    """A fresh database on a dedicated (factory) server."""
    return PgDatabase(server, name, server.create_database(name))


def maria_database(server: MariaServer, name: str) -> MariaDatabase:
    """A fresh database on a dedicated (factory) server."""
    return MariaDatabase(server, name, server.create_database(name))


def make_setup(workdir: Path, crm: PgDatabase, erp: MariaDatabase,
               **agent_extra: Any) -> AgentSetup:
    """Schema, config and `cdc-agent setup` for one fault-suite agent."""
    create_schema(crm, erp)
    setup = AgentSetup(workdir, "f" + format(random.getrandbits(40), "x"), crm, erp,
                       {"customer": ENTITY}, agent_extra=agent_extra)
    setup.write()
    done = setup.cli("setup")
    assert done.returncode == 0, done.stderr
    return setup


def seed(crm: PgDatabase, n: int) -> None:
    """``n`` accounts in the CRM (the agent creates them in the ERP)."""
    with crm.connect() as conn:
        conn.execute("INSERT INTO accounts (name) SELECT 'c' || g FROM generate_series(1, %s) g",
                     (n,))


@dataclass
class Load:
    """Two writer threads, one per side, each about ``rate`` changes per second.

    They survive server restarts and pauses (a failed statement is dropped and the
    connection opened again): the checks read the databases, not a list of expectations.
    """

    crm: PgDatabase
    erp: MariaDatabase
    rate: float = 50.0
    insert_share: float = 0.05
    stop: threading.Event = field(default_factory=threading.Event)
    done: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for name, target in (("crm", self._crm_loop), ("erp", self._erp_loop)):
            thread = threading.Thread(target=self._paced, args=(name, target), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "a load thread hangs"

    def _paced(self, name: str, step_factory: Callable[[], Iterator[None]]) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        steps = step_factory()
        while not self.stop.is_set():
            try:
                next(steps)
                self.done[name] += 1
            except StopIteration:
                return
            except Exception:  # the server is down or restarting: reconnect and go on
                self.failures[name] += 1
                steps = step_factory()
                self.stop.wait(0.2)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _crm_loop(self) -> Iterator[None]:
        rng = random.Random()
        with psycopg.connect(self.crm.dsn, autocommit=True, connect_timeout=5) as conn:
            while True:
                if rng.random() < self.insert_share:
                    conn.execute("INSERT INTO accounts (name, seq_crm) "
                                 "VALUES ('n' || nextval('accounts_id_seq'), 1)")
                else:
                    conn.execute(
                        "UPDATE accounts SET seq_crm = seq_crm + 1 + (random() * 3)::int "
                        "WHERE id = (SELECT id FROM accounts ORDER BY random() LIMIT 1)")
                yield None

    def _erp_loop(self) -> Iterator[None]:
        conn = pymysql.connect(**self.erp.connect_kwargs, autocommit=True, connect_timeout=5,
                               read_timeout=10, write_timeout=10)
        try:
            with conn.cursor() as cur:
                while True:
                    cur.execute("SELECT customer_no FROM customers ORDER BY rand() LIMIT 1")
                    row = cur.fetchone()
                    if row is not None:
                        cur.execute("UPDATE customers SET seq_erp = seq_erp + 1 + floor(rand() * 3)"
                                    " WHERE customer_no = %s", (row[0],))
                    yield None
        finally:
            with suppress(Exception):
                conn.close()


@contextmanager
def running_load(crm: PgDatabase, erp: MariaDatabase, rate: float = 50.0) -> Iterator[Load]:
    """A :class:`Load` for the duration of a ``with`` block."""
    load = Load(crm, erp, rate=rate).start()
    try:
        yield load
    finally:
        load.finish()


def tables(crm: PgDatabase, erp: MariaDatabase) -> tuple[list[tuple[Any, ...]], ...]:
    """(CRM rows, ERP rows) as comparable (crm id, name, seq_crm, seq_erp) tuples."""
    left = crm_rows(crm, "SELECT id, name, seq_crm, seq_erp FROM accounts ORDER BY id")
    right = erp_rows(erp, "SELECT crm_id, name, seq_crm, seq_erp FROM customers ORDER BY crm_id")
    return [tuple(r) for r in left], [tuple(r) for r in right]


def wait_converged(crm: PgDatabase, erp: MariaDatabase, timeout: float = 60) -> None:
    """Both tables hold the same rows (tolerates a server still coming back)."""
    def equal() -> bool:
        left, right = tables(crm, erp)
        return left == right

    wait_until(equal, timeout, interval=0.25, message="CRM and ERP did not converge",
               ignore=(psycopg.OperationalError, pymysql.err.OperationalError))


def order_violations(pairs: list[tuple[Any, Any]], label: str) -> list[str]:
    """Keys whose audit values do not rise strictly (a change applied twice or out of order)."""
    last: dict[Any, Any] = {}
    bad = []
    for key, value in pairs:
        if key in last and value <= last[key]:
            bad.append(f"{label}: key {key}: {value} after {last[key]}")
        last[key] = value
    return bad


def assert_exactly_once_in_order(crm: PgDatabase, erp: MariaDatabase) -> dict[str, int]:
    """Audit trails rise strictly per key on both sides; each ERP row was inserted once.

    Returns how many applied changes each audit trail holds (for the report).
    """
    erp_audit = erp_rows(erp, "SELECT crm_id, op, seq_crm FROM customer_audit ORDER BY id")
    inserts: dict[Any, int] = defaultdict(int)
    for crm_id, op, _ in erp_audit:
        if op == "I":
            inserts[crm_id] += 1
    assert [k for k, n in inserts.items() if n != 1] == [], "an ERP row was inserted twice"
    problems = order_violations([(r[0], r[2]) for r in erp_audit], "crm_to_erp seq_crm")
    crm_audit = crm_rows(crm, "SELECT account_id, seq_erp FROM account_audit ORDER BY id")
    problems += order_violations([(r[0], r[1]) for r in crm_audit], "erp_to_crm seq_erp")
    assert problems == [], "applied twice or out of order:\n" + "\n".join(problems[:20])
    return {"crm_to_erp_applied": len(erp_audit), "erp_to_crm_applied": len(crm_audit)}
