"""Throwaway PostgreSQL 15 and MariaDB 10.11 servers, configured as a DBA would.

For the demo (``cdc-agent demo``) and the tests. Each server listens on 127.0.0.1 on a free
port, keeps everything in its own temporary directory and requires a password over TCP.
Data directories are copied from a pristine one built once per process. See
:mod:`agent.serverprocess` for the lifecycle (start, stop, kill, restart, pause, resume,
close).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pymysql
from psycopg import sql
from psycopg.conninfo import make_conninfo

from agent.polling import WaitTimeout, free_port, wait_until
from agent.serverprocess import HOST, ServerProcess, is_root

__all__ = [
    "HOST",
    "MariaDatabase",
    "MariaServer",
    "PgDatabase",
    "PgServer",
    "WaitTimeout",
    "free_port",
    "wait_until",
]

# The CDC_TEST_ names predate the demo; they configure both.
PG_BIN = Path(os.environ.get("CDC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
MARIADBD = os.environ.get("CDC_TEST_MARIADBD", "/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = os.environ.get("CDC_TEST_MARIADB_INSTALL_DB", "mariadb-install-db")

# One password per process; every server copied from the same template shares it.
_PASSWORD = "t-" + secrets.token_hex(12)

Setting = str | int | float | bool


def _pg_value(value: Setting) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "'" + str(value).replace("'", "''") + "'"


class PgServer(ServerProcess):
    """A PostgreSQL 15 server with logical decoding enabled.

    ``max_slot_wal_keep_size`` bounds the WAL a lagging slot may hold ("-1": unlimited, the
    default; e.g. "64MB"); ``settings`` adds or overrides postgresql.conf parameters.
    """

    kind = "pg"
    os_user = "postgres"
    superuser = "postgres"
    password = _PASSWORD
    shutdown_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients
    # "immediate": ends the walsenders too (a fast shutdown waits for logical replication
    # clients to confirm the end of WAL); the next start runs crash recovery.
    immediate_signal = signal.SIGQUIT

    BASE_SETTINGS: ClassVar[dict[str, Setting]] = {
        "listen_addresses": HOST,
        "wal_level": "logical",
        "max_replication_slots": 20,
        "max_wal_senders": 20,
        "max_connections": 100,
        "fsync": True,
        "synchronous_commit": True,
        "track_commit_timestamp": True,
        "password_encryption": "scram-sha-256",
        "shared_buffers": "64MB",
        "logging_collector": False,
        "log_min_messages": "warning",
        "log_line_prefix": "%m [%p] ",
    }

    def __init__(
        self,
        *,
        max_slot_wal_keep_size: str = "-1",
        settings: Mapping[str, Setting] | None = None,
    ) -> None:
        self.settings: dict[str, Setting] = {
            **self.BASE_SETTINGS,
            "max_slot_wal_keep_size": max_slot_wal_keep_size,
            **(settings or {}),
        }
        super().__init__()

    @classmethod
    def build_template(cls, datadir: Path) -> None:
        """initdb with a scram-sha-256 superuser password and our pg_hba.conf."""
        pwfile = datadir.parent / "pwfile"
        pwfile.write_text(cls.password + "\n")
        if is_root():
            os.chown(pwfile, *_ids(cls.os_user))
        _run_as(
            cls.os_user,
            [str(PG_BIN / "initdb"), "-D", str(datadir), "-U", cls.superuser,
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
             "--no-sync"],
        )
        pwfile.unlink()
        (datadir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE     USER  ADDRESS       METHOD\n"
            "local   all          all                 scram-sha-256\n"
            "host    all          all   127.0.0.1/32  scram-sha-256\n"
            "local   replication  all                 scram-sha-256\n"
            "host    replication  all   127.0.0.1/32  scram-sha-256\n"
        )
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'harness.conf'\n")

    def write_config(self) -> None:
        """Write harness.conf: port, socket directory and settings (ALTER SYSTEM still wins)."""
        sockets = self.root / "sock"
        sockets.mkdir(exist_ok=True)
        values = {**self.settings, "port": self.port, "unix_socket_directories": str(sockets)}
        conf = self.datadir / "harness.conf"
        conf.write_text("".join(f"{k} = {_pg_value(v)}\n" for k, v in values.items()))
        if is_root():
            for path in (sockets, conf):
                os.chown(path, *_ids(self.os_user))

    def update_settings(self, settings: Mapping[str, Setting]) -> None:
        """Change settings in harness.conf; call :meth:`reload` or :meth:`restart` to apply."""
        self.settings.update(settings)
        self.write_config()

    def reload(self) -> None:
        """Make the running server re-read its configuration (SIGHUP, like pg_ctl reload)."""
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")

    def argv(self) -> list[str]:
        return [str(PG_BIN / "postgres"), "-D", str(self.datadir)]

    def probe(self) -> None:
        with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        # Another server may answer on this port (taken meanwhile): it is not ours.
        if row is None or Path(row[0]).resolve() != self.datadir.resolve():
            raise ConnectionError(f"port {self.port} is served by another server")

    def dsn(self, dbname: str = "postgres", **params: str | int) -> str:
        """libpq conninfo string (with the password) for ``dbname``; ``params`` are added."""
        return make_conninfo(
            "", host=self.host, port=self.port, user=self.superuser, password=self.password,
            dbname=dbname, **params,
        )

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """An autocommit psycopg connection as the superuser (pass autocommit=False to change)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` and return its conninfo string."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` with its subscriptions and replication slots, disconnecting users."""
        with self.connect() as conn:
            subs = conn.execute(
                "SELECT s.subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
                " WHERE d.datname = %s", (name,),
            ).fetchall()
        if subs:
            with self.connect(name) as conn:
                for (sub,) in subs:
                    ident = sql.Identifier(sub)
                    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)")
                                 .format(ident))
                    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
        with self.connect() as conn:
            self._drop_slots(conn, name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    def replication_origins(self) -> set[str]:
        """Names of the replication origins (cluster-wide, unlike slots and databases)."""
        with self.connect() as conn:
            rows = conn.execute("SELECT roname FROM pg_replication_origin").fetchall()
        return {str(row[0]) for row in rows}

    def drop_replication_origins(self, names: set[str]) -> None:
        """Drop these origins, waiting for sessions that still use one to end.

        Origins outlive the database whose sessions set them up, and each one that was used
        holds one of max_replication_slots tracking states: tests must not leak them.
        """
        with self.connect() as conn:
            for name in sorted(names):
                _drop_origin(conn, name)

    @staticmethod
    def _drop_slots(conn: psycopg.Connection[Any], dbname: str) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL", (dbname,),
        )

        def dropped() -> bool:
            # A terminated walsender releases its slot a moment later: retry until it can go.
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s", (dbname,),
            )
            return True

        wait_until(dropped, 30, interval=0.05, message=f"slots of {dbname} dropped",
                   ignore=(psycopg.errors.ObjectInUse,))


class MariaServer(ServerProcess):
    """A MariaDB 10.11 server with a full-image, full-metadata row binlog.

    ``options`` adds or overrides mariadbd options (``{"max_binlog_size": "4096"}`` becomes
    ``--max-binlog-size=4096``). The admin user ``admin``@127.0.0.1 has ALL PRIVILEGES WITH
    GRANT OPTION.
    """

    kind = "maria"
    os_user = "mysql"
    user = "admin"
    password = _PASSWORD

    # Given to both mariadb-install-db and mariadbd so InnoDB files match.
    STORAGE_OPTIONS: ClassVar[dict[str, str]] = {
        "innodb_buffer_pool_size": "64M",
        "innodb_log_file_size": "32M",
    }
    BASE_OPTIONS: ClassVar[dict[str, str]] = {
        "bind_address": HOST,
        "skip_name_resolve": "ON",
        "log_bin": "mysql-bin",
        "server_id": "1",
        "binlog_format": "ROW",
        "binlog_row_image": "FULL",
        "binlog_row_metadata": "FULL",
        "character_set_server": "utf8mb4",
        "collation_server": "utf8mb4_unicode_ci",
        "sync_binlog": "1",
        "innodb_flush_log_at_trx_commit": "1",
        "max_connections": "200",
    }

    def __init__(self, *, options: Mapping[str, str | int] | None = None) -> None:
        self.options: dict[str, str] = {
            **self.STORAGE_OPTIONS,
            **self.BASE_OPTIONS,
            **{k: str(v) for k, v in (options or {}).items()},
        }
        super().__init__()

    @classmethod
    def build_template(cls, datadir: Path) -> None:
        """mariadb-install-db, creating the admin user in the same bootstrap run."""
        extra = datadir.parent / "admin.sql"
        quoted = cls.password.replace("\\", "\\\\").replace("'", "\\'")
        # Bootstrap mode starts with --skip-grant-tables; FLUSH PRIVILEGES loads them so
        # CREATE USER works. The password is random per run and never leaves this file.
        extra.write_text(
            "FLUSH PRIVILEGES;\n"
            f"CREATE USER '{cls.user}'@'{HOST}' IDENTIFIED BY '{quoted}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{cls.user}'@'{HOST}' WITH GRANT OPTION;\n"
        )
        argv = [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
                "--skip-name-resolve", f"--extra-file={extra}",
                *_maria_flags(cls.STORAGE_OPTIONS)]
        if is_root():
            argv.append(f"--user={cls.os_user}")
        try:
            _run_as(None, argv)
        finally:
            extra.unlink()

    def popen_user(self) -> str | None:
        # mariadbd drops privileges itself (--user=mysql), as a packaged server does.
        return None

    def write_config(self) -> None:
        """Nothing to write: mariadbd gets everything on its command line."""
        (self.root / "tmp").mkdir(exist_ok=True)
        if is_root():
            os.chown(self.root / "tmp", *_ids(self.os_user))

    def update_options(self, options: Mapping[str, str | int]) -> None:
        """Change mariadbd options; they apply at the next :meth:`start`/:meth:`restart`."""
        self.options.update({k: str(v) for k, v in options.items()})

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket (root may connect through it without a password)."""
        return self.root / "mysqld.sock"

    def argv(self) -> list[str]:
        argv = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                f"--socket={self.socket_path}", f"--pid-file={self.root / 'mysqld.pid'}",
                f"--tmpdir={self.root / 'tmp'}", *_maria_flags(self.options)]
        if is_root():
            argv.append(f"--user={self.os_user}")
        return argv

    def probe(self) -> None:
        conn = pymysql.connect(**self.connect_kwargs(), connect_timeout=2, read_timeout=5)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT @@datadir")
            row = cur.fetchone()
        # Another server may answer on this port (taken meanwhile): it is not ours.
        if row is None or Path(str(row[0])).resolve() != self.datadir.resolve():
            raise ConnectionError(f"port {self.port} is served by another server")

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` (also valid as mysql-replication settings)."""
        kwargs: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": self.user,
            "password": self.password, "charset": "utf8mb4",
        }
        if database is not None:
            kwargs["database"] = database
        return kwargs

    def connect(self, database: str | None = None, **kwargs: Any) -> pymysql.Connection[Any]:
        """An autocommit PyMySQL connection as the admin user."""
        kwargs.setdefault("autocommit", True)
        return pymysql.connect(**self.connect_kwargs(database), **kwargs)

    def create_database(self, name: str) -> dict[str, Any]:
        """CREATE DATABASE ``name`` (utf8mb4) and return its ``connect_kwargs``."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {quote_maria(name)}"
                        " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return self.connect_kwargs(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name``."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_maria(name)}")


def _drop_origin(conn: psycopg.Connection[Any], name: str) -> None:
    def dropped() -> bool:
        with contextlib.suppress(psycopg.errors.UndefinedObject):  # already gone
            conn.execute("SELECT pg_replication_origin_drop(%s)", (name,))
        return True

    wait_until(dropped, 30, interval=0.05, message=f"origin {name} dropped",
               ignore=(psycopg.errors.ObjectInUse,))


def quote_maria(identifier: str) -> str:
    """Quote a MariaDB identifier with backticks (embedded backticks doubled)."""
    return "`" + identifier.replace("`", "``") + "`"


@dataclass(frozen=True)
class PgDatabase:
    """A database on a local PostgreSQL server."""

    server: PgServer
    name: str
    dsn: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """An autocommit connection to this database as the superuser."""
        return self.server.connect(self.name, **kwargs)


@dataclass(frozen=True)
class MariaDatabase:
    """A database on a local MariaDB server."""

    server: MariaServer
    name: str
    connect_kwargs: dict[str, Any]

    def connect(self, **kwargs: Any) -> pymysql.Connection[Any]:
        """An autocommit connection with this database selected."""
        return self.server.connect(self.name, **kwargs)


def _maria_flags(options: Mapping[str, str]) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _run_as(user: str | None, argv: list[str]) -> None:
    """Run a set-up command (as ``user`` when we are root), raising with its output on failure."""
    switch = user if user and is_root() else None
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/",
        user=switch, group=switch, extra_groups=[] if switch else None,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
