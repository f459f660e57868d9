"""PostgreSQL connector: pgoutput reader, writer, catalog helpers and value conversion."""

from connectors.postgres.pgoutput import format_lsn, parse_lsn
from connectors.postgres.reader import PgSource
from connectors.postgres.values import JsonText
from connectors.postgres.writer import PgSink

__all__ = ["JsonText", "PgSink", "PgSource", "format_lsn", "parse_lsn"]
