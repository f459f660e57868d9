"""Sample CRM and ERP schemas for end-to-end tests, and ways to read them back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.servers import MariaDatabase, PgDatabase

CRM_DDL = """
CREATE TABLE public.accounts (
    id              serial PRIMARY KEY,
    name            text NOT NULL,
    phone           text,
    email           text,
    billing_street  text,
    lifecycle_stage text NOT NULL DEFAULT 'prospect',
    erp_customer_no integer UNIQUE,
    seq             bigint NOT NULL DEFAULT 0,
    notes           text
)
"""

ERP_DDL = [
    """
    CREATE TABLE customers (
        customer_no  int AUTO_INCREMENT PRIMARY KEY,
        crm_id       int UNIQUE,
        name         varchar(200) NOT NULL,
        phone_main   varchar(50),
        email        varchar(200),
        street       varchar(200),
        seq          bigint NOT NULL DEFAULT 0,
        currency     char(3) NOT NULL DEFAULT 'USD',
        is_active    tinyint(1) NOT NULL DEFAULT 1
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE customer_audit (
        id      bigint AUTO_INCREMENT PRIMARY KEY,
        crm_id  int NOT NULL,
        op      char(1) NOT NULL,
        seq     bigint NOT NULL,
        phone   varchar(50)
    ) ENGINE=InnoDB
    """,
    """
    CREATE TRIGGER customers_audit_i AFTER INSERT ON customers FOR EACH ROW
        INSERT INTO customer_audit (crm_id, op, seq, phone)
        VALUES (NEW.crm_id, 'I', NEW.seq, NEW.phone_main)
    """,
    """
    CREATE TRIGGER customers_audit_u AFTER UPDATE ON customers FOR EACH ROW
        INSERT INTO customer_audit (crm_id, op, seq, phone)
        VALUES (NEW.crm_id, 'U', NEW.seq, NEW.phone_main)
    """,
]

CUSTOMER_ENTITY: dict[str, Any] = {
    "crm": {"table": "public.accounts", "key": "id"},
    "erp": {"table": "customers", "key": "customer_no"},
    "link": {"erp_column": "crm_id"},
    "fields": {
        "name": {"crm": "name", "erp": "name", "owner": "crm"},
        "phone": {"crm": "phone", "erp": "phone_main", "owner": "crm"},
        "email": {"crm": "email", "erp": "email", "owner": "crm"},
        "seq": {"crm": "seq", "erp": "seq", "owner": "crm"},
    },
    "defaults": {"erp": {"currency": "EUR"}},
}


def apply_ddl(crm: PgDatabase, erp: MariaDatabase, crm_ddl: str,
              erp_ddl: Sequence[str]) -> None:
    """Create a test's tables: one PostgreSQL script, then MariaDB statements one by one."""
    with crm.connect() as conn:
        conn.execute(crm_ddl)
    conn_m = erp.connect()
    try:
        with conn_m.cursor() as cur:
            for statement in erp_ddl:
                cur.execute(statement)
        conn_m.commit()
    finally:
        conn_m.close()


def create_schemas(crm: PgDatabase, erp: MariaDatabase) -> None:
    """The sample CRM accounts and ERP customers with their audit triggers."""
    apply_ddl(crm, erp, CRM_DDL, ERP_DDL)


def erp_rows(erp: MariaDatabase, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = erp.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def crm_rows(crm: PgDatabase, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with crm.connect() as conn:
        return list(conn.execute(sql, args).fetchall())
