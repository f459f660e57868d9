"""The demo's story, told live against the running agent, one step after the other.

Each step changes one database the way an application would, shows the statement, waits
(with a deadline) for the expected outcome on the other side and says whether it happened:
a line ``[ok] N. title: detail``, ``[FAILED] ...`` or ``[skipped] ...``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from agent.polling import WaitTimeout, wait_until

if TYPE_CHECKING:
    from agent.demo import DemoWorld

STATE = "cdc_agent"  # agent.state_schema in config/demo.yaml
DEADLINE = 15.0  # seconds a step waits for its outcome


class StepFailed(Exception):
    """A step's expected outcome did not happen."""


class StepSkipped(Exception):
    """A step cannot run with this build."""


class Narrator:
    """Readable output: headings, statements, notes and one result line per step."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def _say(self, text: str, **style: Any) -> None:
        click.echo(click.style(text, **style) if self.color else text)

    def heading(self, text: str) -> None:
        self._say(f"\n== {text}", bold=True)

    def info(self, text: str) -> None:
        self._say(f"   {text}")

    def statement(self, system: str, sql: str) -> None:
        self._say(f"   {system}> {' '.join(sql.split())}", fg="cyan")

    def result(self, status: str, title: str, detail: str) -> None:
        colors = {"ok": "green", "FAILED": "red", "skipped": "yellow"}
        self._say(f"[{status}] {title}: {detail}", fg=colors[status], bold=True)

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Say what starts, then how long it took."""
        started = time.monotonic()
        click.echo(f"   {what} ...", nl=False)
        try:
            yield
        except BaseException:
            click.echo(" failed")
            raise
        click.echo(f" done ({time.monotonic() - started:.1f} s)")


@dataclass
class Company:
    """The prospect the story follows."""

    name: str = "Nordlicht Bäckerei GmbH"
    phone: str = "+49 40 5550123"
    street: str = "Hafenstraße 12"
    crm_id: int = 0
    customer_no: int = 0
    deal_id: int = 0


class Story:
    """The six steps of the story, against a running :class:`~agent.demo.DemoWorld`."""

    def __init__(self, world: DemoWorld, out: Narrator) -> None:
        self.world, self.out, self.co = world, out, Company()

    # -- database access -------------------------------------------------------------------

    def crm(self, sql: str, *args: object, show: bool = True) -> Any:
        """Run one statement in the CRM (autocommit); the first row, if any."""
        if show:
            self.out.statement("CRM", sql % tuple(_literal(a) for a in args))
        with self.world.crm.connect("crm") as conn:
            cur = conn.execute(sql, args)
            return cur.fetchone() if cur.description else None

    def erp(self, sql: str, *args: object, show: bool = True) -> Any:
        """Run one statement in the ERP (autocommit); the first row, if any."""
        if show:
            self.out.statement("ERP", sql % tuple(_literal(a) for a in args))
        conn = self.world.erp.connect("erp")
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone()
        finally:
            conn.close()

    def conflicts(self, field: str) -> list[dict[str, Any]]:
        """Conflict records of ``field`` on both systems (each is kept on one of them)."""
        query = (f"SELECT id, record, field, direction, winner, resolution, status "
                 f"FROM {STATE}.conflicts WHERE entity = 'customer' AND field = %s")
        names = ("system", "id", "record", "field", "direction", "winner", "resolution",
                 "status")
        with self.world.crm.connect("crm") as conn:
            rows = [("crm", *row) for row in conn.execute(query, (field,)).fetchall()]
        conn_m = self.world.erp.connect("erp")
        try:
            with conn_m.cursor() as cur:
                cur.execute(query, (field,))
                rows += [("erp", *row) for row in cur.fetchall()]
        finally:
            conn_m.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def expect(self, what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
        """Wait for ``check`` to return something truthy; return it and the time it took."""
        started = time.monotonic()
        try:
            value = wait_until(check, timeout, interval=0.02, message=what)
        except WaitTimeout as error:
            raise StepFailed(f"{what}: not within {timeout:g} s") from error
        self.out.info(f"... {what}: after {(time.monotonic() - started) * 1000:.0f} ms")
        return value

    # -- the story -------------------------------------------------------------------------

    def tell(self) -> bool:
        """Run every step; True when none failed (skipped steps do not count as failed)."""
        steps = [
            ("A prospect stays in the CRM", self.prospect_stays),
            ("An order makes it a customer in the ERP", self.order_makes_customer),
            ("A phone number edited in the ERP shows in the CRM", self.phone_from_erp),
            ("An address edited in the CRM is reverted (the ERP owns it)", self.address_reverted),
            ("A concurrent edit of the phone on both sides", self.concurrent_conflict),
            ("An order transferred on demand", self.push_order),
        ]
        counts = {"ok": 0, "FAILED": 0, "skipped": 0}
        for number, (title, step) in enumerate(steps, 1):
            heading = f"{number}. {title}"
            self.out.heading(heading)
            try:
                detail = step()
            except StepSkipped as why:
                status, detail = "skipped", str(why)
            except StepFailed as why:
                status, detail = "FAILED", str(why)
                self.out.info(f"agent log (end):\n{self.world.log_tail(1500)}")
            else:
                status = "ok"
            counts[status] += 1
            self.out.result(status, heading, detail)
        self.out.heading(f"Story done: {counts['ok']} ok, {counts['skipped']} skipped, "
                         f"{counts['FAILED']} failed")
        return counts["FAILED"] == 0

    def prospect_stays(self) -> str:
        co = self.co
        self.out.info("Sales records a new prospect and a first call. Prospects are CRM-only "
                      "(create.erp.when: lifecycle_stage in [customer, partner]).")
        co.crm_id = self.crm(
            "INSERT INTO accounts (name, phone, email, billing_street, billing_city, "
            "lifecycle_stage, sales_rep) VALUES (%s, %s, %s, %s, %s, 'prospect', %s) "
            "RETURNING id", co.name, co.phone, "einkauf@nordlicht.example", co.street,
            "Hamburg", "A. Weber")[0]
        self.crm("UPDATE accounts SET notes = %s WHERE id = %s",
                 "first call: wants 40 deck ovens", co.crm_id)
        lsn = self.crm("SELECT pg_current_wal_lsn()::text", show=False)[0]
        self.expect("the agent has read past it (the crm_to_erp checkpoint in the ERP)",
                    lambda: self._checkpoint_past(lsn))
        if self.erp("SELECT count(*) FROM customers WHERE name = %s", co.name, show=False)[0]:
            raise StepFailed("the prospect was copied to the ERP")
        return f"account {co.crm_id} ({co.name}) is in the CRM only"

    def _checkpoint_past(self, lsn: str) -> bool:
        row = self.erp(f"SELECT position FROM {STATE}.checkpoints WHERE direction = "
                       "'crm_to_erp'", show=False)
        if not row or not row[0]:
            return False
        done = self.crm("SELECT %s::pg_lsn >= %s::pg_lsn", row[0], lsn, show=False)
        return bool(done[0])

    def order_makes_customer(self) -> str:
        co = self.co
        self.out.info("The prospect orders: in one CRM transaction sales records the won deal "
                      "and marks the account a customer.")
        self.out.statement("CRM", "BEGIN; INSERT INTO deals (...) VALUES (..., 'won'); "
                                  "UPDATE accounts SET lifecycle_stage = 'customer' ...; COMMIT")
        with self.world.crm.connect("crm", autocommit=False) as conn:
            co.deal_id = conn.execute(
                "INSERT INTO deals (account_id, title, amount, stage) "
                "VALUES (%s, 'Deck ovens, 40 units', 184000.00, 'won') RETURNING id",
                (co.crm_id,)).fetchone()[0]  # type: ignore[index]
            conn.execute("UPDATE accounts SET lifecycle_stage = 'customer' WHERE id = %s",
                         (co.crm_id,))
        co.customer_no = self.expect(
            "the ERP's customer number is written back to accounts.erp_customer_no",
            lambda: self.crm("SELECT erp_customer_no FROM accounts WHERE id = %s", co.crm_id,
                             show=False)[0])
        row = self.erp("SELECT name, customer_type, currency, payment_terms_days FROM customers"
                       " WHERE customer_no = %s", co.customer_no)
        if row != (co.name, "C", "EUR", 30):
            raise StepFailed(f"ERP customer {co.customer_no} is {row}")
        self.out.info(f"ERP customer {co.customer_no}: type C, currency EUR, 30 days "
                      "(defaults for rows the agent creates)")
        return f"ERP customer {co.customer_no} created, number written back to the CRM"

    def phone_from_erp(self) -> str:
        co = self.co
        self.out.info("Accounting updates the central phone number (owner: both).")
        co.phone = "+49 40 5550999"
        self.erp("UPDATE customers SET phone_main = %s WHERE customer_no = %s",
                 co.phone, co.customer_no)
        self.expect("the CRM shows the new phone number",
                    lambda: self.crm("SELECT phone FROM accounts WHERE id = %s", co.crm_id,
                                     show=False)[0] == co.phone)
        return f"accounts.phone = {co.phone!r}"

    def address_reverted(self) -> str:
        co = self.co
        self.out.info("A sales rep 'fixes' the billing street in the CRM. The ERP owns the "
                      "legal address (owner: erp, on_foreign_change: revert).")
        self.crm("UPDATE accounts SET billing_street = %s WHERE id = %s", "Elbchaussee 1",
                 co.crm_id)
        records = self.expect(
            "the CRM edit is reverted and recorded as a conflict",
            lambda: self.crm("SELECT billing_street FROM accounts WHERE id = %s", co.crm_id,
                             show=False)[0] == co.street and self.conflicts("street"))
        street = self.erp("SELECT street FROM customers WHERE customer_no = %s",
                          co.customer_no, show=False)[0]
        if street != co.street:
            raise StepFailed(f"the ERP street changed to {street!r}")
        self._show(records[-1])
        return f"billing_street back to {co.street!r}; the rejected value is in the record"

    def concurrent_conflict(self) -> str:
        co = self.co
        agent = self.world.agent
        assert agent is not None
        self.out.info("Sales and accounting change the phone within milliseconds (the agent "
                      "is paused meanwhile, so neither edit has been replicated). "
                      "conflict: newest -- the later commit wins.")
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            self.crm("UPDATE accounts SET phone = %s WHERE id = %s", "+49 40 1111111",
                     co.crm_id)
            self.erp("UPDATE customers SET phone_main = %s WHERE customer_no = %s",
                     "+49 40 2222222", co.customer_no)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        co.phone = "+49 40 2222222"
        records = self.expect(
            "both sides hold the ERP's (newer) number and the conflict is recorded",
            lambda: self.crm("SELECT phone FROM accounts WHERE id = %s", co.crm_id,
                             show=False)[0] == co.phone
            and self.erp("SELECT phone_main FROM customers WHERE customer_no = %s",
                         co.customer_no, show=False)[0] == co.phone
            and self.conflicts("phone"))
        self._show(records[-1])
        listed = self.world.cli("conflicts", "list")
        self.out.info("$ cdc-agent conflicts list")
        for line in (listed.stdout + listed.stderr).splitlines():
            self.out.info(f"  {line}")
        return f"phone = {co.phone!r} on both sides; winner {records[-1]['winner']}"

    def push_order(self) -> str:
        co = self.co
        self.out.info("Orders go to the ERP on demand only (schedule: {crm_to_erp: manual}).")
        if self.world.cli("push", "--help").returncode != 0:
            raise StepSkipped("this build has no `cdc-agent push` yet")
        if self._order():
            raise StepFailed("the won deal reached the ERP before it was pushed")
        self.out.info(f"deal {co.deal_id} is still CRM-only. $ cdc-agent push order {co.deal_id}")
        done = self.world.cli("push", "order", str(co.deal_id))
        for line in (done.stdout + done.stderr).splitlines():
            self.out.info(f"  {line}")
        if done.returncode != 0:
            raise StepFailed(f"cdc-agent push exited {done.returncode}")
        order = self.expect("the order is in the ERP", self._order)
        self.expect("the ERP's order number is written back to deals.erp_order_no",
                    lambda: self.crm("SELECT erp_order_no FROM deals WHERE id = %s",
                                     co.deal_id, show=False)[0] == order[0])
        return f"deal {co.deal_id} is ERP sales order {order[0]} ({order[1]} EUR)"

    def _order(self) -> Any:
        return self.erp("SELECT order_no, total_net FROM sales_orders WHERE crm_account_id = %s",
                        self.co.crm_id, show=False)

    def _show(self, record: dict[str, Any]) -> None:
        self.out.info(f"conflict {record['system']}:{record['id']}: customer "
                      f"{record['record']}, field {record['field']}, {record['direction']}: "
                      f"winner {record['winner']}, resolution {record['resolution']} "
                      f"({record['status']})")


def _literal(value: object) -> str:
    """A value as it would read in SQL, for showing statements (never executed)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)
