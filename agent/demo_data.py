"""The demo's sample company: CRM and ERP schemas and a few thousand realistic rows.

The CRM (PostgreSQL) keeps accounts (leads, prospects, customers) and deals; the ERP
(MariaDB) keeps customers and sales orders. Existing customers are already in both systems,
linked by ``accounts.erp_customer_no`` and ``deals.erp_order_no``, as after an initial load.
The data is generated from a fixed seed, so every run tells the same story.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pymysql

CRM_DDL = """
CREATE TABLE public.accounts (
    id              serial PRIMARY KEY,
    name            text NOT NULL,
    phone           text,
    email           text,
    billing_street  text,
    billing_city    text,
    lifecycle_stage text NOT NULL DEFAULT 'prospect'
                    CHECK (lifecycle_stage IN ('lead', 'prospect', 'customer', 'partner')),
    erp_customer_no integer UNIQUE,
    dunning_level   smallint NOT NULL DEFAULT 0,
    is_active       boolean NOT NULL DEFAULT true,
    sales_rep       text,
    notes           text
);
CREATE TABLE public.deals (
    id              serial PRIMARY KEY,
    account_id      integer NOT NULL REFERENCES public.accounts (id),
    title           text NOT NULL,
    amount          numeric(12, 2) NOT NULL,
    stage           text NOT NULL DEFAULT 'open',
    erp_order_no    integer UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- Old values in the log let the agent tell which fields an update really changed.
ALTER TABLE public.accounts REPLICA IDENTITY FULL;
ALTER TABLE public.deals REPLICA IDENTITY FULL;
"""

ERP_DDL = [
    """
    CREATE TABLE customers (
        customer_no        int AUTO_INCREMENT PRIMARY KEY,
        name               varchar(200) NOT NULL,
        phone_main         varchar(50),
        email              varchar(200),
        street             varchar(200),
        city               varchar(100),
        customer_type      char(1) NOT NULL DEFAULT 'C',
        dunning_level      tinyint NOT NULL DEFAULT 0,
        currency           char(3) NOT NULL DEFAULT 'USD',
        payment_terms_days int NOT NULL DEFAULT 0,
        credit_limit       decimal(12, 2)
    ) AUTO_INCREMENT = 10001
    """,
    """
    CREATE TABLE sales_orders (
        order_no       int AUTO_INCREMENT PRIMARY KEY,
        crm_account_id int NOT NULL,
        title          varchar(200) NOT NULL,
        total_net      decimal(12, 2) NOT NULL,
        currency       char(3) NOT NULL DEFAULT 'USD',
        status         varchar(10) NOT NULL DEFAULT 'OPEN',
        ordered_at     datetime NOT NULL DEFAULT CURRENT_TIMESTAMP
    ) AUTO_INCREMENT = 500001
    """,
]

_FIRST = ["Nord", "Süd", "Alpen", "Rhein", "Elb", "Havel", "Spree", "Main", "Weser", "Isar",
          "Bodensee", "Hanse", "Ostsee", "Harz", "Eifel", "Taunus", "Donau", "Mosel"]
_TRADE = ["Bäckerei", "Maschinenbau", "Logistik", "Elektro", "Holzbau", "Feinkost", "Druckerei",
          "Medizintechnik", "Solartechnik", "Kältetechnik", "Software", "Textil", "Brauerei"]
_FORM = ["GmbH", "AG", "KG", "GmbH & Co. KG", "e.K.", "UG"]
_STREETS = ["Hauptstraße", "Bahnhofstraße", "Industriestraße", "Lindenweg", "Am Markt",
            "Hafenstraße", "Gartenstraße", "Schillerstraße", "Mühlenweg", "Ringstraße"]
_CITIES = [("Hamburg", "040"), ("Berlin", "030"), ("München", "089"), ("Köln", "0221"),
           ("Frankfurt", "069"), ("Stuttgart", "0711"), ("Leipzig", "0341"), ("Bremen", "0421")]
_REPS = ["A. Weber", "K. Schmidt", "M. Yilmaz", "J. Nowak", "S. Fischer"]
_ITEMS = ["Service contract", "Spare parts", "Annual licence", "Installation", "Consulting",
          "Hardware refresh", "Maintenance"]


@dataclass
class SampleData:
    """Rows for both systems, consistent with each other."""

    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    deals: list[tuple[Any, ...]] = field(default_factory=list)
    customers: list[tuple[Any, ...]] = field(default_factory=list)
    orders: list[tuple[Any, ...]] = field(default_factory=list)

    def summary(self) -> str:
        """One line saying what was generated."""
        customers = sum(1 for a in self.accounts if a[6] == "customer")
        return (f"{len(self.accounts)} CRM accounts ({len(self.accounts) - customers} leads and "
                f"prospects, {customers} customers), {len(self.deals)} deals; "
                f"{len(self.customers)} ERP customers, {len(self.orders)} sales orders")


def generate(accounts: int = 3000, seed: int = 42) -> SampleData:
    """Generate ``accounts`` CRM accounts; about 40 % are customers, also in the ERP."""
    rnd, data = random.Random(seed), SampleData()
    next_customer, next_order, deal_id = 10001, 500001, 0
    for account_id in range(1, accounts + 1):
        city, area = rnd.choice(_CITIES)
        name = f"{rnd.choice(_FIRST)} {rnd.choice(_TRADE)} {rnd.choice(_FORM)} {account_id}"
        phone = f"+49 {area[1:]} {rnd.randint(100000, 9999999)}"
        email = f"info{account_id}@example.com"
        street = f"{rnd.choice(_STREETS)} {rnd.randint(1, 180)}"
        stage = "customer" if rnd.random() < 0.4 else rnd.choice(["lead", "prospect", "prospect"])
        customer_no = next_customer if stage == "customer" else None
        dunning = rnd.choice([0, 0, 0, 0, 1, 2]) if customer_no else 0
        data.accounts.append((account_id, name, phone, email, street, city, stage, customer_no,
                              dunning, True, rnd.choice(_REPS), None))
        if customer_no is not None:
            data.customers.append((customer_no, name, phone, email, street, city, "C", dunning,
                                   "EUR", 30, Decimal(rnd.randrange(5, 200) * 1000)))
            next_customer += 1
        for _ in range(rnd.randint(1, 3) if customer_no else rnd.randint(0, 1)):
            deal_id += 1
            amount = Decimal(rnd.randint(20000, 5000000)) / 100
            title = rnd.choice(_ITEMS)
            if customer_no is None:
                data.deals.append((deal_id, account_id, title, amount, "open", None))
                continue
            status = rnd.choice(["OPEN", "BILLED", "PAID", "PAID"])
            crm_stage = {"OPEN": "won", "BILLED": "invoiced", "PAID": "paid"}[status]
            data.deals.append((deal_id, account_id, title, amount, crm_stage, next_order))
            data.orders.append((next_order, account_id, title, amount, "EUR", status))
            next_order += 1
    return data


def load_crm(conninfo: str, data: SampleData) -> None:
    """Create the CRM schema and COPY the accounts and deals in."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(CRM_DDL)
        with conn.cursor() as cur:
            with cur.copy("COPY public.accounts (id, name, phone, email, billing_street, "
                          "billing_city, lifecycle_stage, erp_customer_no, dunning_level, "
                          "is_active, sales_rep, notes) FROM STDIN") as copy:
                for row in data.accounts:
                    copy.write_row(row)
            with cur.copy("COPY public.deals (id, account_id, title, amount, stage, "
                          "erp_order_no) FROM STDIN") as copy:
                for row in data.deals:
                    copy.write_row(row)
            # Rows came with their ids: move the sequences past them.
            for table in ("accounts", "deals"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('public.{table}', 'id'), "
                            f"(SELECT max(id) FROM public.{table}))")


def load_erp(connect_kwargs: dict[str, Any], data: SampleData) -> None:
    """Create the ERP schema and insert the customers and sales orders."""
    conn = pymysql.connect(**connect_kwargs)
    try:
        with conn.cursor() as cur:
            for statement in ERP_DDL:
                cur.execute(statement)
            cur.executemany(
                "INSERT INTO customers (customer_no, name, phone_main, email, street, city, "
                "customer_type, dunning_level, currency, payment_terms_days, credit_limit) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", data.customers)
            cur.executemany(
                "INSERT INTO sales_orders (order_no, crm_account_id, title, total_net, currency,"
                " status) VALUES (%s, %s, %s, %s, %s, %s)", data.orders)
        conn.commit()
    finally:
        conn.close()
