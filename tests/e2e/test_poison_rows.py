"""Poison rows: a change the target refuses goes to dead_letters; the rest keeps flowing.

Each case writes one poison change for key A and a later change of A, and a change of key B.
Expected: exactly one dead letter for A with the error class of the failure (the later
change waits behind it, as a letter of class "waiting"), B arrives, A does not move. Then the
data is fixed and `cdc-agent dead-letters retry --all` applies A's changes exactly once, in
order; afterwards A flows again like any key.

Target-side fixes (a wider column, utf8mb4, a nullable column, the clashing row removed) let
the stored change itself apply. A MySQL zero date or a NUL character can never be written
into PostgreSQL: there the source row is fixed (a later change, which waits), the poison
letter discarded, and the retry applies the fixed change.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import apply_ddl, crm_rows, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase, quote_maria

CRM_DDL = """
CREATE TABLE public.accounts (
    id    serial PRIMARY KEY,
    name  text,
    code  text,
    email text,
    note  text,
    seq   bigint NOT NULL DEFAULT 0,
    due   date,
    memo  text,
    eseq  bigint NOT NULL DEFAULT 0
);
ALTER TABLE public.accounts REPLICA IDENTITY FULL;
CREATE TABLE public.account_audit (id bigserial PRIMARY KEY, account_id int, eseq bigint);
CREATE FUNCTION audit_eseq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO account_audit (account_id, eseq) VALUES (NEW.id, NEW.eseq);
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_eseq AFTER UPDATE OF eseq ON accounts FOR EACH ROW
  WHEN (OLD.eseq IS DISTINCT FROM NEW.eseq) EXECUTE FUNCTION audit_eseq();
"""

ERP_DDL = [
    """
    CREATE TABLE customers (
        customer_no int AUTO_INCREMENT PRIMARY KEY,
        crm_id      int UNIQUE,
        name        varchar(200) NOT NULL,
        code        varchar(5),
        email       varchar(100) UNIQUE,
        note        varchar(100) CHARACTER SET utf8mb3,
        seq         bigint NOT NULL DEFAULT 0,
        due         date,
        memo        varchar(100),
        eseq        bigint NOT NULL DEFAULT 0
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE customer_audit (id bigint AUTO_INCREMENT PRIMARY KEY, crm_id int, seq bigint)
    """,
    """
    CREATE TRIGGER customers_audit_u AFTER UPDATE ON customers FOR EACH ROW
        INSERT INTO customer_audit (crm_id, seq)
        SELECT NEW.crm_id, NEW.seq FROM DUAL WHERE NOT (OLD.seq <=> NEW.seq)
    """,
]

ENTITY: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"erp_column": "crm_id"},
    "create": {"erp": "always", "crm": "never"},
    "fields": {
        **{f: {"crm": f, "erp": f, "owner": "crm"} for f in ("name", "code", "email", "note",
                                                            "seq")},
        **{f: {"crm": f, "erp": f, "owner": "erp"} for f in ("due", "memo", "eseq")},
    },
}


@dataclass
class World:
    setup: AgentSetup
    crm: PgDatabase
    erp: MariaDatabase
    a: int  # CRM id of the poisoned record
    b: int  # CRM id of a healthy record

    def erp_exec(self, statement: str, args: tuple[Any, ...] = (), sql_mode: str | None = None
                 ) -> None:
        conn = self.erp.connect()
        try:
            with conn.cursor() as cur:
                if sql_mode is not None:
                    cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
                cur.execute(statement, args)
            conn.commit()
        finally:
            conn.close()

    def crm_exec(self, statement: str, args: tuple[Any, ...] = ()) -> None:
        with self.crm.connect() as conn:
            conn.execute(statement, args)

    def erp_no(self, crm_id: int) -> int:
        return int(erp_rows(self.erp, "SELECT customer_no FROM customers WHERE crm_id = %s",
                            (crm_id,))[0][0])

    def letters(self, system: str, key: object) -> list[tuple[Any, ...]]:
        """(id, error_class, status) of the dead letters of ``key`` stored on ``system``."""
        schema = self.setup.state_schema
        if system == "erp":
            return [tuple(r) for r in erp_rows(
                self.erp, f"SELECT id, error_class, status FROM {quote_maria(schema)}.dead_letters"
                " WHERE entity = 'customer' AND `key` = %s ORDER BY id", (str(key),))]
        return [tuple(r) for r in crm_rows(
            self.crm, f'SELECT id, error_class, status FROM "{schema}".dead_letters'
            " WHERE entity = 'customer' AND key = %s ORDER BY id", (str(key),))]

    def cli_ok(self, *args: str) -> str:
        done = self.setup.cli(*args)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture
def world(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[World]:
    apply_ddl(pg_db, maria_db, CRM_DDL, [
        *ERP_DDL,
        # An ERP-only customer (no CRM link) whose email a CRM record will clash with.
        "INSERT INTO customers (name, email) VALUES ('erp only', 'taken@example')"])
    setup = AgentSetup(tmp_path, "p" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": ENTITY})
    setup.write()
    assert setup.cli("setup").returncode == 0
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name, code, email) VALUES "
                     "('alpha', 'A1', 'a@example'), ('beta', 'B1', 'b@example')")
    a, b = (r[0] for r in crm_rows(pg_db, "SELECT id FROM accounts ORDER BY id"))
    proc = AgentProcess(setup)
    try:
        proc.wait_streaming()
        wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers "
                                    "WHERE crm_id IS NOT NULL")[0][0] == 2, 20,
                   message="seed rows did not reach the ERP")
        # An ERP change first, so that erp_to_crm has stored a checkpoint (see the report:
        # a MySQL-source direction without one restarts at the binlog's current end).
        conn_m = maria_db.connect()
        with conn_m.cursor() as cur:
            cur.execute("UPDATE customers SET memo = 'warm' WHERE crm_id = %s", (b,))
        conn_m.commit()
        conn_m.close()
        wait_until(lambda: crm_rows(pg_db, "SELECT memo FROM accounts WHERE id = %s", (b,))
                   == [("warm",)], 20, message="the ERP change did not reach the CRM")
        yield World(setup, pg_db, maria_db, a, b)
        assert proc.proc.poll() is None, f"agent exited:\n{proc.log()[-4000:]}"
    finally:
        proc.stop()
        print(proc.log()[-6000:])
        setup.cli("teardown", "--yes")


@dataclass(frozen=True)
class CrmToErp:
    """A CRM change the ERP refuses, the error class it must get, and the ERP-side fix."""

    poison: str  # SQL on accounts, %s = id
    error_class: str  # regex
    fix: str  # SQL on the ERP


CRM_TO_ERP = {
    "null_into_not_null": CrmToErp("UPDATE accounts SET name = NULL, seq = 1 WHERE id = %s",
                                   r"not_null|1048|23502",
                                   "ALTER TABLE customers MODIFY name varchar(200) NULL"),
    "over_long_string": CrmToErp("UPDATE accounts SET code = 'TOOLONG123', seq = 1 WHERE id = %s",
                                 r"too_long|1406|22001",
                                 "ALTER TABLE customers MODIFY code varchar(20)"),
    "emoji_into_utf8mb3": CrmToErp(
        "UPDATE accounts SET note = 'ok \U0001F600', seq = 1 WHERE id = %s",
        r"bad_string|1366|string|encoding|character",
        "ALTER TABLE customers MODIFY note varchar(100) CHARACTER SET utf8mb4"),
    "duplicate_unique_key": CrmToErp(
        "UPDATE accounts SET email = 'taken@example', seq = 1 WHERE id = %s",
        r"duplicate|1062|23505|unique", "DELETE FROM customers WHERE crm_id IS NULL"),
}


def _erp_seq(w: World, crm_id: int) -> int:
    return int(erp_rows(w.erp, "SELECT seq FROM customers WHERE crm_id = %s", (crm_id,))[0][0])


def _only_letter(w: World, system: str, key: object, pattern: str) -> int:
    """The id of the one letter of ``key`` that carries an error (others only wait)."""
    letters = w.letters(system, key)
    failed = [row for row in letters if row[1] != "waiting"]
    assert len(failed) == 1, f"expected one dead letter for key {key}, got {letters}"
    assert re.search(pattern, failed[0][1], re.IGNORECASE), failed[0]
    return int(failed[0][0])


@pytest.mark.parametrize("case", list(CRM_TO_ERP))
def test_crm_change_the_erp_refuses_is_quarantined_then_retried_once_in_order(
        world: World, case: str) -> None:
    w, spec = world, CRM_TO_ERP[case]
    w.crm_exec(spec.poison, (w.a,))
    w.crm_exec("UPDATE accounts SET seq = 2 WHERE id = %s", (w.a,))  # waits behind the poison
    w.crm_exec("UPDATE accounts SET seq = 1 WHERE id = %s", (w.b,))
    wait_until(lambda: _erp_seq(w, w.b) == 1, 15, message="the healthy key did not flow")
    wait_until(lambda: len(w.letters("erp", w.a)) >= 2, 15,
               message="the poison change and the one behind it were not quarantined")
    letter = _only_letter(w, "erp", w.a, spec.error_class)
    assert _erp_seq(w, w.a) == 0, "a change behind the poison was applied"

    w.erp_exec(spec.fix)
    w.cli_ok("dead-letters", "retry", "--all")
    assert _erp_seq(w, w.a) == 2
    audit = erp_rows(w.erp, "SELECT seq FROM customer_audit WHERE crm_id = %s ORDER BY id",
                     (w.a,))
    assert [r[0] for r in audit] == [1, 2], "not applied exactly once, in order"
    assert all(status != "pending" for _, _, status in w.letters("erp", w.a))
    assert letter > 0
    w.crm_exec("UPDATE accounts SET seq = 3 WHERE id = %s", (w.a,))
    wait_until(lambda: _erp_seq(w, w.a) == 3, 15,
               message=f"the key stayed blocked after retry: {w.letters('erp', w.a)}")


@dataclass(frozen=True)
class ErpToCrm:
    """An ERP change PostgreSQL can never store, and the source-side fix."""

    poison: str  # SQL on customers, %s = customer_no
    sql_mode: str | None
    fix: str  # SQL on customers, %s = customer_no


ERP_TO_CRM = {
    "mysql_zero_date": ErpToCrm(
        "UPDATE customers SET due = '0000-00-00', eseq = 1 WHERE customer_no = %s", "",
        "UPDATE customers SET due = '2024-01-31', eseq = 2 WHERE customer_no = %s"),
    "nul_character": ErpToCrm(
        "UPDATE customers SET memo = CONCAT('a', CHAR(0), 'b'), eseq = 1 WHERE customer_no = %s",
        None, "UPDATE customers SET memo = 'ab', eseq = 2 WHERE customer_no = %s"),
}
ERP_TO_CRM_CLASS = r"^22|data|zero|value"


def _crm_eseq(w: World, crm_id: int) -> int:
    return int(crm_rows(w.crm, "SELECT eseq FROM accounts WHERE id = %s", (crm_id,))[0][0])


@pytest.mark.parametrize("case", list(ERP_TO_CRM))
def test_erp_change_postgres_cannot_store_is_quarantined_then_fixed_at_the_source(
        world: World, case: str) -> None:
    w, spec = world, ERP_TO_CRM[case]
    a_no, b_no = w.erp_no(w.a), w.erp_no(w.b)
    w.erp_exec(spec.poison, (a_no,), sql_mode=spec.sql_mode)
    w.erp_exec("UPDATE customers SET eseq = 1 WHERE customer_no = %s", (b_no,))
    wait_until(lambda: _crm_eseq(w, w.b) == 1, 15, message="the healthy key did not flow")
    wait_until(lambda: w.letters("crm", a_no), 15, message="the poison was not quarantined")
    letter = _only_letter(w, "crm", a_no, ERP_TO_CRM_CLASS)
    w.erp_exec(spec.fix, (a_no,))  # the source is fixed; the fixed change waits too
    wait_until(lambda: len(w.letters("crm", a_no)) >= 2, 15,
               message="the change behind the poison did not wait")
    assert _crm_eseq(w, w.a) == 0, "a change behind the poison was applied"

    w.cli_ok("dead-letters", "discard", f"crm:{letter}")
    w.cli_ok("dead-letters", "retry", "--all")
    assert _crm_eseq(w, w.a) == 2
    audit = crm_rows(w.crm, "SELECT eseq FROM account_audit WHERE account_id = %s ORDER BY id",
                     (w.a,))
    assert [r[0] for r in audit] == [2], "not applied exactly once"
    check: Callable[[], bool] = lambda: _crm_eseq(w, w.a) == 3  # noqa: E731
    w.erp_exec("UPDATE customers SET eseq = 3 WHERE customer_no = %s", (a_no,))
    wait_until(check, 15, message=f"the key stayed blocked after retry: {w.letters('crm', a_no)}")
