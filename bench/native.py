"""The references: PostgreSQL native logical replication and pg_recvlogical."""

from __future__ import annotations

import subprocess
import time

from psycopg import sql

from bench.env import PgSide
from bench.stats import poll
from tests.servers import PG_BIN


class Native:
    """CREATE SUBSCRIPTION from ``src`` into a copy of its table on ``dst`` (another server)."""

    def __init__(self, src: PgSide, dst: PgSide, name: str = "bench_native") -> None:
        self.src, self.dst, self.name = src, dst, name
        src.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE customers").format(
            sql.Identifier(name)).as_string(src.conn))
        conninfo = src.server.dsn(src.name)
        dst.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}"
                            " WITH (copy_data = false, enabled = false)").format(
            sql.Identifier(name), sql.Literal(conninfo), sql.Identifier(name)
        ).as_string(dst.conn))

    def enable(self) -> None:
        self.dst.execute(f"ALTER SUBSCRIPTION {self.name} ENABLE")

    def disable(self) -> None:
        self.dst.execute(f"ALTER SUBSCRIPTION {self.name} DISABLE")
        poll(lambda: not self.src.scalar(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (self.name,)),
            30, 0.05, "native slot released")

    def streaming(self) -> None:
        poll(lambda: self.src.scalar(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (self.name,)),
            60, 0.05, "native subscription streaming")

    def close(self) -> None:
        self.disable()
        self.dst.execute(f"ALTER SUBSCRIPTION {self.name} SET (slot_name = NONE)")
        self.dst.execute(f"DROP SUBSCRIPTION {self.name}")
        self.src.execute("SELECT pg_drop_replication_slot(%s)", (self.name,))


def recvlogical(src: PgSide, slot: str, publication: str, end_lsn: str) -> float:
    """Seconds pg_recvlogical takes to drain ``slot`` up to ``end_lsn`` (pgoutput, to /dev/null)."""
    server = src.server
    argv = [str(PG_BIN / "pg_recvlogical"), "-h", server.host, "-p", str(server.port),
            "-U", server.superuser, "-d", src.name, "-S", slot, "--start", "-f", "/dev/null",
            "-E", end_lsn, "-o", "proto_version=1", "-o", f"publication_names={publication}",
            "--no-loop"]
    env = {"PGPASSWORD": server.password, "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL, timeout=300,
                   capture_output=True)
    return time.monotonic() - started
