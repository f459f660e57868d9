"""MySQL 8 / MariaDB 10.6+ connector: binlog reader, writer and catalog.

The connector takes plain parameters (:class:`MysqlParams`); the core wires it from the
configuration. Modules: ``binlog`` (the only user of mysql-replication), ``reader``
(:class:`~connectors.mysql.reader.MySource`), ``writer`` (:class:`~connectors.mysql.writer.MySink`),
``catalog`` (setup, teardown, describe, preflight check), ``values`` (type conversion) and
``errors`` (MySQL errno classification).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MysqlParams:
    """How to reach one MySQL/MariaDB server.

    ``database`` is the application database; ``timezone`` (an IANA name) is how DATETIME
    values are interpreted (TIMESTAMP values are UTC instants). ``tls_ca`` enables TLS with
    that CA file; ``tls_verify_identity`` also checks the server's host name.
    """

    host: str
    port: int
    user: str
    password: str
    database: str
    timezone: str = "UTC"
    tls_ca: str | None = None
    tls_verify_identity: bool = False
    connect_timeout: float = 10.0
    tls_cert: str | None = None  # client certificate and key, for servers that require one
    tls_key: str | None = None

    def __repr__(self) -> str:
        # Never show the password (this object ends up in logs and tracebacks).
        return (
            f"MysqlParams(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"database={self.database!r}, timezone={self.timezone!r})"
        )


def connect_kwargs(params: MysqlParams, *, database: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``pymysql.connect`` (utf8mb4, TLS when configured).

    ``database`` overrides the default database (None: no default database).
    """
    kwargs: dict[str, Any] = {
        "host": params.host,
        "port": params.port,
        "user": params.user,
        "password": params.password,
        "charset": "utf8mb4",
        "connect_timeout": params.connect_timeout,
    }
    if database is not None:
        kwargs["database"] = database
    if params.tls_ca is not None:
        kwargs["ssl_ca"] = params.tls_ca
        kwargs["ssl_verify_cert"] = True
        kwargs["ssl_verify_identity"] = params.tls_verify_identity
    if params.tls_cert is not None:
        kwargs["ssl_cert"] = params.tls_cert
        kwargs["ssl_key"] = params.tls_key
    return kwargs


__all__ = ["MysqlParams", "connect_kwargs"]
