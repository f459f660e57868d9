"""The test servers start, are configured as promised, and are cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pymysql
import pytest

from tests.conftest import MariaServerFactory, PgServerFactory
from tests.server_process import group_alive, pid_alive
from tests.servers import MariaDatabase, MariaServer, PgDatabase, PgServer, wait_until

REPO = Path(__file__).resolve().parents[2]


def pg_show(conn: psycopg.Connection[tuple[str]], name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return row[0]


def maria_variables(server: MariaServer) -> dict[str, str]:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES")
        return {str(name): str(value) for name, value in cur.fetchall()}


def test_pg_server_has_dba_settings(pg_server: PgServer) -> None:
    with pg_server.connect() as conn:
        settings = {name: pg_show(conn, name) for name in (
            "wal_level", "max_replication_slots", "max_wal_senders", "fsync",
            "listen_addresses", "track_commit_timestamp", "max_slot_wal_keep_size",
            "password_encryption", "server_version_num", "port",
        )}
    assert settings["wal_level"] == "logical"
    assert settings["max_replication_slots"] == "20"
    assert settings["max_wal_senders"] == "20"
    assert settings["fsync"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["track_commit_timestamp"] == "on"
    assert settings["max_slot_wal_keep_size"] == "-1"
    assert settings["password_encryption"] == "scram-sha-256"
    assert settings["server_version_num"].startswith("15")
    assert settings["port"] == str(pg_server.port)


def test_pg_server_requires_password(pg_server: PgServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn().replace(pg_server.password, "wrong"), connect_timeout=5)


def test_pg_server_accepts_replication_connections(pg_db: PgDatabase) -> None:
    with psycopg.connect(pg_db.dsn, replication="database", autocommit=True) as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None
    assert row[3] == pg_db.name  # dbname column


def test_pg_db_is_fresh_and_unique(pg_db: PgDatabase, pg_server: PgServer) -> None:
    assert pg_db.server is pg_server
    with pg_db.connect() as conn:
        assert pg_show(conn, "server_encoding") == "UTF8"
        row = conn.execute("SELECT current_database(), count(*) FROM pg_tables"
                           " WHERE schemaname = 'public'").fetchone()
    assert row == (pg_db.name, 0)


def test_pg_db_is_dropped_with_its_slot(pg_server: PgServer) -> None:
    name = "t_drop_with_slot"
    dsn = pg_server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('t_drop_slot', 'pgoutput')")
    pg_server.drop_database(name)
    with pg_server.connect() as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        assert found.fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 't_drop_slot'"
                            ).fetchone() is None


def test_maria_server_has_dba_settings(maria_server: MariaServer) -> None:
    variables = maria_variables(maria_server)
    expected = {
        "log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL",
        "binlog_row_metadata": "FULL", "server_id": "1", "character_set_server": "utf8mb4",
        "collation_server": "utf8mb4_unicode_ci", "sync_binlog": "1",
        "innodb_flush_log_at_trx_commit": "1", "skip_name_resolve": "ON",
        "bind_address": "127.0.0.1", "port": str(maria_server.port),
    }
    assert {key: variables.get(key) for key in expected} == expected
    assert variables["version"].startswith("10.11")


def test_maria_admin_has_all_privileges_with_grant_option(maria_server: MariaServer) -> None:
    with maria_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW GRANTS")
        grants = " ".join(str(row[0]) for row in cur.fetchall())
    assert "GRANT ALL PRIVILEGES ON *.*" in grants
    assert "WITH GRANT OPTION" in grants


def test_maria_server_requires_password(maria_server: MariaServer) -> None:
    kwargs = {**maria_server.connect_kwargs(), "password": "wrong"}
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(**kwargs)


def test_maria_db_is_fresh_utf8mb4(maria_db: MariaDatabase) -> None:
    with maria_db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT DATABASE(), @@character_set_database, @@collation_database")
        assert cur.fetchone() == (maria_db.name, "utf8mb4", "utf8mb4_unicode_ci")
        cur.execute("SHOW TABLES")
        assert cur.fetchall() == ()
    assert maria_db.connect_kwargs["database"] == maria_db.name


def test_dedicated_pg_server_survives_restart_kill_and_pause(
    pg_server_factory: PgServerFactory,
) -> None:
    server = pg_server_factory(max_slot_wal_keep_size="64MB", settings={"wal_sender_timeout": "5s"})
    with server.connect() as conn:
        assert pg_show(conn, "max_slot_wal_keep_size") == "64MB"
        assert pg_show(conn, "wal_sender_timeout") == "5s"
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
    first_pid = server.pid
    server.restart()
    assert server.pid != first_pid
    server.kill()  # crash: committed rows must survive (fsync on)
    assert first_pid is not None and not pid_alive(first_pid)
    server.start()
    with server.connect() as conn:
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]

    server.pause()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(), connect_timeout=1)
    server.resume()
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)

    pid = server.pid
    server.stop()
    assert pid is not None and not pid_alive(pid) and not group_alive(pid)
    assert server.pid is None and not server.running


def test_dedicated_maria_server_survives_restart_kill_and_pause(
    maria_server_factory: MariaServerFactory,
) -> None:
    server = maria_server_factory(options={"max_binlog_size": 4096})
    assert maria_variables(server)["max_binlog_size"] == "4096"
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE d")
        cur.execute("CREATE TABLE d.t (id int PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO d.t VALUES (1)")
    server.restart()
    server.kill()
    server.start()
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM d.t")
        assert cur.fetchall() == ((1,),)

    server.pause()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**server.connect_kwargs(), connect_timeout=1, read_timeout=1)
    server.resume()
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM d.t")
        assert cur.fetchone() == (1,)

    pid = server.pid
    root = server.root
    server.close()
    assert pid is not None and not pid_alive(pid)
    assert not root.exists()


def test_servers_of_a_killed_test_process_do_not_linger(tmp_path: Path) -> None:
    """A test process that dies by SIGKILL (no finalizers, no atexit) leaves nothing behind."""
    script = textwrap.dedent("""
        import os, signal, sys
        from tests.servers import MariaServer, PgServer
        pg, maria = PgServer().start(), MariaServer().start()
        print(pg.pid, maria.pid, pg.root, maria.root, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == -9, result.stderr
    pg_pid, maria_pid, pg_root, maria_root = result.stdout.split()
    wait_until(lambda: not group_alive(int(pg_pid)) and not pid_alive(int(maria_pid)), 30,
               message="servers of the killed process gone")
    wait_until(lambda: not Path(pg_root).exists() and not Path(maria_root).exists(), 30,
               message="temporary directories removed")


def test_wait_until_returns_value_and_times_out() -> None:
    calls = iter(range(10))
    assert wait_until(lambda: next(calls) >= 3, 5, interval=0.001)
    with pytest.raises(AssertionError, match=r"never \(waited 0.05s\)"):
        wait_until(lambda: False, 0.05, message="never")


def test_pg_origins_used_by_a_test_can_be_dropped(pg_db: PgDatabase) -> None:
    server = pg_db.server
    before = server.replication_origins()
    with pg_db.connect() as conn:
        conn.execute("SELECT pg_replication_origin_create('t_origin_of_test')")
        conn.execute("SELECT pg_replication_origin_session_setup('t_origin_of_test')")
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("SELECT pg_replication_origin_xact_setup('0/10', now())")
        conn.execute("INSERT INTO t VALUES (1)")  # autocommit: the origin's state is now used
    created = server.replication_origins() - before
    assert created == {"t_origin_of_test"}
    server.drop_replication_origins(created)
    assert "t_origin_of_test" not in server.replication_origins()


def test_first_start_moves_off_a_port_taken_meanwhile(
    pg_server: PgServer, maria_server: MariaServer,
    pg_server_factory: PgServerFactory, maria_server_factory: MariaServerFactory,
) -> None:
    pg = pg_server_factory(start=False)
    maria = maria_server_factory(start=False)
    pg.port, maria.port = pg_server.port, maria_server.port  # as if someone took them
    pg.write_config()
    pg.start()
    maria.start()
    assert pg.port != pg_server.port and maria.port != maria_server.port
    with pg.connect() as conn:
        assert pg_show(conn, "port") == str(pg.port)
    assert maria_variables(maria)["port"] == str(maria.port)


def test_pg_refused_connection_is_permanent_and_lost_server_transient(pg_server: PgServer) -> None:
    from agent.errors import PermanentError, TransientError
    from connectors.postgres.errors import translate

    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(pg_server.dsn().replace(pg_server.password, "wrong"), connect_timeout=5)
    assert isinstance(translate(refused.value), PermanentError)
    assert pg_server.password not in str(translate(refused.value))
    with pytest.raises(psycopg.OperationalError) as missing:
        psycopg.connect(pg_server.dsn(dbname="no_such_db"), connect_timeout=5)
    assert isinstance(translate(missing.value), PermanentError)
    with pytest.raises(psycopg.OperationalError) as nobody:
        psycopg.connect(f"host={pg_server.host} port=1 connect_timeout=5")
    assert isinstance(translate(nobody.value), TransientError)
