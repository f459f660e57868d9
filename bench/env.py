"""Servers, schemas and agent processes for the benchmarks.

Every workload runs on real servers started by :mod:`tests.servers` (fsync on, durable
commits on both engines), with one 9-column customer table on the source side and the same
columns plus a link column on the target side. The agent runs as a user runs it: a config
file and a ``cdc-agent run`` subprocess (:class:`tests.e2e.agentproc.AgentProcess`).
"""

from __future__ import annotations

import contextlib
import random
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.serverprocess import ServerProcess
from tests.e2e.agentproc import AgentProcess, AgentSetup, write_secret
from tests.servers import MariaServer, PgServer

FIELDS = ("name", "email", "phone", "street", "city", "country", "balance", "seq")
"""The replicated columns; with the key ``id`` they make the 9-column customer table."""

PG_SOURCE_DDL = """
CREATE TABLE public.customers (
    id integer PRIMARY KEY, name text NOT NULL, email text, phone text, street text,
    city text, country char(2), balance numeric(12,2), seq bigint NOT NULL DEFAULT 0)
"""
PG_TARGET_DDL = """
CREATE TABLE public.customers (
    id serial PRIMARY KEY, src_id integer UNIQUE, name text NOT NULL, email text, phone text,
    street text, city text, country char(2), balance numeric(12,2), seq bigint NOT NULL DEFAULT 0)
"""
MY_SOURCE_DDL = """
CREATE TABLE customers (
    id int PRIMARY KEY, name varchar(100) NOT NULL, email varchar(100), phone varchar(30),
    street varchar(100), city varchar(60), country char(2), balance decimal(12,2),
    seq bigint NOT NULL DEFAULT 0) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
MY_TARGET_DDL = """
CREATE TABLE customers (
    id int AUTO_INCREMENT PRIMARY KEY, src_id int UNIQUE, name varchar(100) NOT NULL,
    email varchar(100), phone varchar(30), street varchar(100), city varchar(60),
    country char(2), balance decimal(12,2), seq bigint NOT NULL DEFAULT 0)
    ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

DIRECTIONS = ("pg-mysql", "mysql-pg", "pg-pg")


def row_values(key: int, run: int) -> tuple[object, ...]:
    """The full row of customer ``key`` as version ``run`` writes it (id first)."""
    return (key, f"Customer {key} v{run}", f"c{key}.v{run}@example.org", f"+49 30 {key:07d}",
            f"Street {run} no {key}", f"City {key % 97}", "DE", f"{key % 10000}.{run % 100:02d}",
            run)


PG_FULL_UPDATE = (
    "UPDATE customers SET name = 'Customer ' || id || ' v' || %(r)s,"
    " email = 'c' || id || '.v' || %(r)s || '@example.org',"
    " phone = '+49 30 ' || lpad(id::text, 7, '0'), street = 'Street ' || %(r)s || ' no ' || id,"
    " city = 'City ' || mod(id, 97), country = 'DE',"
    " balance = mod(id, 10000) + mod(%(r)s, 100) / 100.0, seq = %(r)s"
    " WHERE id BETWEEN %(lo)s AND %(hi)s"
)
MY_FULL_UPDATE = (
    "UPDATE customers SET name = CONCAT('Customer ', id, ' v', %(r)s),"
    " email = CONCAT('c', id, '.v', %(r)s, '@example.org'),"
    " phone = CONCAT('+49 30 ', LPAD(id, 7, '0')), street = CONCAT('Street ', %(r)s, ' no ', id),"
    " city = CONCAT('City ', MOD(id, 97)), country = 'DE',"
    " balance = mod(id, 10000) + mod(%(r)s, 100) / 100.0, seq = %(r)s"
    " WHERE id BETWEEN %(lo)s AND %(hi)s"
)


class Side:
    """One database (PostgreSQL or MariaDB) holding a customers table."""

    engine: str
    name: str
    server: ServerProcess

    def execute(self, sql: str, args: Any = None) -> None:
        raise NotImplementedError

    def scalar(self, sql: str, args: Any = None) -> Any:
        raise NotImplementedError

    def system(self, workdir: Path, label: str) -> dict[str, Any]:
        """This database as a ``systems:`` entry of the agent's configuration."""
        raise NotImplementedError

    def full_update_sql(self) -> str:
        return PG_FULL_UPDATE if self.engine == "postgresql" else MY_FULL_UPDATE

    def seq_of(self, key: int, column: str = "id") -> int | None:
        value = self.scalar(f"SELECT seq FROM customers WHERE {column} = %s", (key,))
        return None if value is None else int(value)

    def count_seq(self, seq: int) -> int:
        return int(self.scalar("SELECT count(*) FROM customers WHERE seq = %s", (seq,)))


class PgSide(Side):
    """A database on a PostgreSQL server; one autocommit connection kept open."""

    engine = "postgresql"
    server: PgServer

    def __init__(self, server: PgServer, name: str) -> None:
        self.server = server
        self.name = name
        server.create_database(name)
        self.conn = server.connect(name)

    def execute(self, sql: str, args: Any = None) -> None:
        self.conn.execute(sql, args)

    def scalar(self, sql: str, args: Any = None) -> Any:
        row = self.conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def system(self, workdir: Path, label: str) -> dict[str, Any]:
        secret = write_secret(workdir / f"{label}.secret", self.server.password)
        return {"engine": "postgresql",
                "dsn": f"host={self.server.host} port={self.server.port} dbname={self.name}"
                       f" user={self.server.superuser}",
                "password_file": str(secret)}

    def connect(self, **kwargs: Any) -> Any:
        return self.server.connect(self.name, **kwargs)


class MySide(Side):
    """A database on a MariaDB server; one autocommit connection kept open."""

    engine = "mysql"
    server: MariaServer

    def __init__(self, server: MariaServer, name: str) -> None:
        self.server = server
        self.name = name
        server.create_database(name)
        self.conn = server.connect(name)

    def execute(self, sql: str, args: Any = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)

    def scalar(self, sql: str, args: Any = None) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
        return None if row is None else row[0]

    def system(self, workdir: Path, label: str) -> dict[str, Any]:
        secret = write_secret(workdir / f"{label}.secret", self.server.password)
        return {"engine": "mysql", "host": self.server.host, "port": self.server.port,
                "database": self.name, "user": self.server.user,
                "password_file": str(secret), "server_id": random.randint(1000, 2**31),
                "timezone": "UTC"}

    def connect(self, **kwargs: Any) -> Any:
        return self.server.connect(self.name, **kwargs)


def create_source(side: Side, rows: int) -> None:
    """The source customers table with ``rows`` rows at version 0."""
    if isinstance(side, PgSide):
        side.execute(PG_SOURCE_DDL)
        side.execute("INSERT INTO customers (id, name) SELECT g, 'x' FROM generate_series(1, %s) g",
                     (rows,))
    else:
        side.execute(MY_SOURCE_DDL)
        side.execute(f"INSERT INTO customers (id, name) SELECT seq, 'x' FROM seq_1_to_{rows:d}")
    side.execute(side.full_update_sql(), {"r": 0, "lo": 1, "hi": rows})


def create_target(side: Side, rows: int, *, linked: bool = True) -> None:
    """The target table holding the same rows (``linked``: with src_id = id)."""
    if isinstance(side, PgSide):
        side.execute(PG_TARGET_DDL if linked else PG_SOURCE_DDL)
        link = "src_id, " if linked else ""
        side.execute(f"INSERT INTO customers (id, {link}name)"
                     f" SELECT g, {'g, ' if linked else ''}'x' FROM generate_series(1, %s) g",
                     (rows,))
        if linked:
            side.execute("SELECT setval('customers_id_seq', %s)", (rows,))
    else:
        side.execute(MY_TARGET_DDL)
        side.execute("INSERT INTO customers (id, src_id, name)"
                     f" SELECT seq, seq, 'x' FROM seq_1_to_{rows:d}")
    side.execute(side.full_update_sql(), {"r": 0, "lo": 1, "hi": rows})


def add_latency_audit(side: Side, *, replica: bool = False) -> None:
    """An audit table filled by a trigger with the time the target applied the row.

    clock_timestamp() (PostgreSQL) / SYSDATE(6) (MariaDB) inside the trigger, just before the
    COMMIT. (A commit timestamp would not do: a session with a replication origin, as both
    native replication and the agent use, records the origin's timestamp, not its own.)
    ``replica``: the trigger also fires in native logical replication's apply worker.
    """
    if isinstance(side, PgSide):
        side.execute("CREATE TABLE lat_audit (seq bigint, ts float8)")
        # Qualified: native replication's apply worker runs with an empty search_path.
        side.execute("CREATE FUNCTION lat_audit() RETURNS trigger LANGUAGE plpgsql AS $$"
                     " BEGIN INSERT INTO public.lat_audit"
                     " VALUES (NEW.seq, extract(epoch FROM clock_timestamp()));"
                     " RETURN NULL; END $$")
        side.execute("CREATE TRIGGER lat_audit AFTER UPDATE ON customers FOR EACH ROW"
                     " EXECUTE FUNCTION lat_audit()")
        if replica:
            side.execute("ALTER TABLE customers ENABLE ALWAYS TRIGGER lat_audit")
    else:
        side.execute("CREATE TABLE lat_audit (seq bigint, ts decimal(17,6)) ENGINE=InnoDB")
        side.execute("CREATE TRIGGER lat_audit AFTER UPDATE ON customers FOR EACH ROW"
                     " INSERT INTO lat_audit VALUES (NEW.seq, UNIX_TIMESTAMP(SYSDATE(6)))")


def audit_times(side: Side) -> dict[int, float]:
    """seq -> epoch seconds when the target applied it (the first time)."""
    if isinstance(side, PgSide):
        rows = side.conn.execute("SELECT seq, min(ts) FROM lat_audit GROUP BY seq").fetchall()
    else:
        assert isinstance(side, MySide)
        with side.conn.cursor() as cur:
            cur.execute("SELECT seq, min(ts) FROM lat_audit GROUP BY seq")
            rows = list(cur.fetchall())
    return {int(s): float(t) for s, t in rows}


def entity(src: Side) -> dict[str, Any]:
    """The customer entity: every field owned by (flowing from) the source system."""
    table = "public.customers" if src.engine == "postgresql" else "customers"
    return {
        "src": {"table": table, "key": "id"},
        "dst": {"table": "customers", "key": "id"},
        "link": {"dst_column": "src_id"},
        "fields": {f: {"src": f, "dst": f, "owner": "src"} for f in FIELDS},
    }


@dataclass
class AgentRun:
    """A configured agent between ``src`` and ``dst`` (systems named src and dst)."""

    workdir: Path
    src: Side
    dst: Side
    name: str = field(default_factory=lambda: "b" + secrets.token_hex(4))
    agent_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.yaml"

    def write(self) -> None:
        doc = {
            "agent": {"name": self.name, "state_schema": f"st_{self.name}",
                      "metrics_listen": "127.0.0.1:0", **self.agent_extra},
            "systems": {"src": self.src.system(self.workdir, "src"),
                        "dst": self.dst.system(self.workdir, "dst")},
            "entities": {"customer": entity(self.src)},
        }
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.config_path.chmod(0o600)

    def cli(self, *args: str) -> None:
        done = AgentSetup.cli(self, *args)  # type: ignore[arg-type]
        if done.returncode != 0:
            raise RuntimeError(f"cdc-agent {' '.join(args)} failed:\n{done.stderr}{done.stdout}")

    def start(self) -> AgentProcess:
        proc = AgentProcess(self)  # type: ignore[arg-type]
        proc.wait_streaming(60)
        return proc


@dataclass
class Servers:
    """The servers of one benchmark command; closed (by the PIDs we hold) on exit."""

    pg: list[PgServer] = field(default_factory=list)
    maria: MariaServer | None = None

    def pg_server(self, index: int) -> PgServer:
        while len(self.pg) <= index:
            self.pg.append(PgServer(settings={"shared_buffers": "128MB",
                                               "wal_retrieve_retry_interval": "200ms",
                                               "max_wal_size": "1GB"}).start())
        return self.pg[index]

    def maria_server(self) -> MariaServer:
        if self.maria is None:
            self.maria = MariaServer(options={"innodb_buffer_pool_size": "256M"}).start()
        return self.maria

    def side(self, engine: str, index: int, prefix: str) -> Side:
        name = f"{prefix}_{secrets.token_hex(3)}"
        if engine == "pg":
            return PgSide(self.pg_server(index), name)
        return MySide(self.maria_server(), name)

    def close(self) -> None:
        for server in self.pg:
            with contextlib.suppress(Exception):
                server.close()
        if self.maria is not None:
            with contextlib.suppress(Exception):
                self.maria.close()


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """Servers started on demand and stopped at the end."""
    found = Servers()
    try:
        yield found
    finally:
        found.close()


def pair(found: Servers, direction: str, prefix: str) -> tuple[Side, Side]:
    """(source, target) databases for ``direction`` (pg-pg: two different servers)."""
    src_engine, dst_engine = direction.split("-")
    src = found.side(src_engine, 0, prefix + "_src")
    dst = found.side(dst_engine, 1 if src_engine == dst_engine == "pg" else 0, prefix + "_dst")
    return src, dst


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cdc-bench-"))
