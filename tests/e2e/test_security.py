"""Security as a DBA checks it: secret files, hostile identifiers, and what the logs never hold.

The log audit covers the whole run: every agent log file the e2e tests wrote (daemon stderr
and one-shot command output, registered in tests/e2e/agentproc.py) is scanned when the
session ends, by a session-scoped fixture's teardown.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import make_conninfo

from agent.events import TableId
from connectors.mysql import MysqlParams
from connectors.mysql import catalog as my_catalog
from connectors.postgres import catalog as pg_catalog
from tests.e2e import agentproc
from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import CUSTOMER_ENTITY, create_schemas, erp_rows
from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase, PgServer

HOSTILE = 'x"; DROP TABLE y;--'
HOSTILE_COLUMN = "na`me\"; DROP TABLE y;--"

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"\+\d[\d -]{2,}\d")


def leaks(text: str) -> list[str]:
    """Passwords of the test servers, e-mail addresses and phone numbers found in ``text``."""
    found = [f"password {PgServer.password[:4]}..." for _ in range(text.count(PgServer.password))]
    found += [f"e-mail {m.group()}" for m in EMAIL.finditer(text)]
    found += [f"phone {m.group()}" for m in PHONE.finditer(text)]
    return found


def audit(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue  # a test's tmp dir may already be gone: nothing to read
        problems += [f"{path}: {leak}" for leak in leaks(text)[:5]]
    return problems


@pytest.fixture(scope="session")
def whole_run_log_audit() -> Iterator[None]:
    """At the end of the session, every agent log of the run must be free of secrets and PII."""
    yield
    problems = audit(list(agentproc.LOG_FILES))
    assert not problems, "secrets or personal data in agent logs:\n" + "\n".join(problems)


def test_logs_of_the_whole_run_hold_no_password_email_or_phone(
        whole_run_log_audit: None, pg_db: PgDatabase, maria_db: MariaDatabase,
        tmp_path: Path) -> None:
    # The scan itself must be able to fail: it finds what a leak would look like.
    assert leaks(f"dsn password={PgServer.password} mail a.b@crm.example tel +49 30 1234") == [
        f"password {PgServer.password[:4]}...", "e-mail a.b@crm.example", "phone +49 30 1234"]
    setup = _setup(tmp_path, pg_db, maria_db)
    assert setup.cli("setup").returncode == 0
    proc = AgentProcess(setup, "--log-level", "debug")
    try:
        proc.wait_streaming()
        with pg_db.connect() as conn:
            conn.execute("INSERT INTO accounts (name, phone, email) VALUES "
                         "('Secret Person', '+49 170 5550100', 'secret.person@crm.example')")
        wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == 1, 10)
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        setup.cli("teardown", "--yes")
    assert audit([proc.log_path]) == []
    assert audit(list(agentproc.LOG_FILES)) == []  # everything so far in this run


def _setup(workdir: Path, crm: PgDatabase, erp: MariaDatabase,
           entities: dict[str, Any] | None = None) -> AgentSetup:
    create_schemas(crm, erp)
    setup = AgentSetup(workdir, "s" + format(random.getrandbits(40), "x"), crm, erp,
                       entities or {"customer": copy.deepcopy(CUSTOMER_ENTITY)})
    setup.write()
    return setup


# -- secret and configuration files ----------------------------------------------------------


def test_secret_file_readable_by_others_exits_78(pg_db: PgDatabase, maria_db: MariaDatabase,
                                                 tmp_path: Path) -> None:
    setup = _setup(tmp_path, pg_db, maria_db)
    secret = tmp_path / "crm.secret"
    secret.chmod(0o644)
    done = setup.cli("run", timeout=60)
    assert done.returncode == 78, done.stderr
    assert str(secret) in done.stderr and "chmod 600" in done.stderr
    assert PgServer.password not in done.stdout + done.stderr


def test_group_writable_config_exits_78(pg_db: PgDatabase, maria_db: MariaDatabase,
                                        tmp_path: Path) -> None:
    setup = _setup(tmp_path, pg_db, maria_db)
    setup.config_path.chmod(0o620)
    done = setup.cli("run", timeout=60)
    assert done.returncode == 78 and "writable by its group" in done.stderr, done.stderr


# -- hostile identifiers ---------------------------------------------------------------------


def _create_y(crm: PgDatabase, erp: MariaDatabase) -> None:
    with crm.connect() as conn:
        conn.execute("CREATE TABLE y (id int PRIMARY KEY)")
    erp_rows(erp, "CREATE TABLE y (id int PRIMARY KEY)")


def _y_exists(crm: PgDatabase, erp: MariaDatabase) -> bool:
    with crm.connect() as conn:
        on_crm = conn.execute("SELECT to_regclass('public.y') IS NOT NULL").fetchone()
    on_erp = erp_rows(erp, "SELECT count(*) FROM information_schema.TABLES "
                           "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'y'")
    return bool(on_crm and on_crm[0]) and on_erp[0][0] == 1


@pytest.mark.parametrize("side", ["crm", "erp"])
def test_unquoted_hostile_table_name_is_rejected(side: str, pg_db: PgDatabase,
                                                 maria_db: MariaDatabase,
                                                 tmp_path: Path) -> None:
    setup = _setup(tmp_path, pg_db, maria_db)
    _create_y(pg_db, maria_db)
    doc = yaml.safe_load(setup.config_path.read_text())
    doc["entities"]["customer"][side]["table"] = HOSTILE
    setup.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for command in ("check", "setup", "run"):
        done = setup.cli(command, timeout=60)
        assert done.returncode == 78, (command, done.stdout, done.stderr)
        assert f"entities.customer.{side}.table" in done.stderr
    assert _y_exists(pg_db, maria_db)


def test_quoted_hostile_names_are_replicated_safely(pg_db: PgDatabase, maria_db: MariaDatabase,
                                                    tmp_path: Path) -> None:
    _create_y(pg_db, maria_db)
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE "x""; DROP TABLE y;--" (id serial PRIMARY KEY, '
                     '"na`me""; DROP TABLE y;--" text)')
    erp_rows(maria_db, "CREATE TABLE `x\"; DROP TABLE y;--` (id int AUTO_INCREMENT PRIMARY KEY,"
                       " crm_id int UNIQUE, `na``me\"; DROP TABLE y;--` varchar(50))")
    quoted = '"' + HOSTILE.replace('"', '""') + '"'
    entity = {
        "crm": {"table": f"public.{quoted}", "key": "id"},
        "erp": {"table": quoted, "key": "id"},
        "link": {"erp_column": "crm_id"},
        "fields": {"name": {"crm": HOSTILE_COLUMN, "erp": HOSTILE_COLUMN, "owner": "crm"}},
    }
    setup = _setup(tmp_path, pg_db, maria_db,
                   {"customer": copy.deepcopy(CUSTOMER_ENTITY), "hostile": entity})
    for command in ("setup", "check"):
        done = setup.cli(command, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    proc = AgentProcess(setup)
    try:
        proc.wait_streaming()
        with pg_db.connect() as conn:
            conn.execute('INSERT INTO "x""; DROP TABLE y;--" ("na`me""; DROP TABLE y;--") '
                         "VALUES (%s)", ("Robert'); DROP TABLE y;--",))
        wait_until(lambda: erp_rows(maria_db, "SELECT `na``me\"; DROP TABLE y;--` FROM "
                                              "`x\"; DROP TABLE y;--`")
                   == [("Robert'); DROP TABLE y;--",)], 10, message="hostile row not replicated")
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        setup.cli("teardown", "--yes")
    assert _y_exists(pg_db, maria_db)


# -- least privilege (the GRANT statements of docs/security.md) ------------------------------


def pg_grants(role: str, database: str, state_schema: str) -> list[str]:
    """docs/security.md, PostgreSQL: what the daemon's role needs (after `setup` by a DBA)."""
    return [
        f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{PgServer.password}'",
        f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.accounts TO {role}",
        f"GRANT USAGE ON SCHEMA {state_schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {state_schema} TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {state_schema} TO {role}",
        f"GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO {role}",
    ]


def maria_grants(user: str, database: str, state_schema: str) -> list[str]:
    """docs/security.md, MariaDB/MySQL: what the agent's user needs (setup included)."""
    who = f"'{user}'@'127.0.0.1'"
    return [
        f"CREATE USER {who} IDENTIFIED BY '{PgServer.password}'",
        f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.`customers` TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX "
        f"ON `{state_schema}`.* TO {who}",
    ]


def test_least_privilege_roles_replicate_and_check_names_a_missing_grant(
        pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> None:
    setup = _setup(tmp_path, pg_db, maria_db)
    assert setup.cli("setup").returncode == 0  # by the DBA (superuser): slot, publication
    role = f"lp_{setup.name}"
    schema = setup.state_schema
    with pg_db.connect() as conn:
        for statement in pg_grants(role, pg_db.name, schema):
            conn.execute(statement)
    for statement in maria_grants(role, maria_db.name, schema):
        erp_rows(maria_db, statement)
    doc = setup.document()
    doc["systems"]["crm"]["dsn"] = doc["systems"]["crm"]["dsn"].replace(
        f"user={pg_db.server.superuser}", f"user={role}")
    doc["systems"]["erp"]["user"] = role
    setup.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        done = setup.cli("check")
        assert done.returncode == 0, done.stderr
        proc = AgentProcess(setup)
        try:
            proc.wait_streaming()
            with pg_db.connect() as conn:
                conn.execute("INSERT INTO accounts (name) VALUES ('least privilege')")
            wait_until(lambda: erp_rows(maria_db, "SELECT name FROM customers")
                       == [("least privilege",)], 10, message="not replicated as least privilege")
            assert proc.stop() == 0
        finally:
            if proc.proc.poll() is None:
                proc.kill()
        with pg_db.connect() as conn:
            conn.execute(f"REVOKE SELECT, UPDATE ON public.accounts FROM {role}")
        erp_rows(maria_db, f"REVOKE SELECT, DELETE ON `{maria_db.name}`.`customers` "
                           f"FROM '{role}'@'127.0.0.1'")
        done = setup.cli("check")
        assert done.returncode == 1
        # Both systems are targets of a direction, so the write grants are named too.
        assert "lacks SELECT, UPDATE on table public.accounts: GRANT SELECT, UPDATE ON" \
            in done.stderr
        assert f"lacks SELECT, DELETE on table {maria_db.name}.customers: GRANT SELECT, DELETE" \
            in done.stderr
        # What the target side needs on top (the catalogs' write_tables).
        accounts, customers = TableId("public", "accounts"), TableId(maria_db.name, "customers")
        found = pg_catalog.check(make_conninfo(pg_db.dsn, user=role), tables=[accounts],
                                 slot="none", publication="none", write_tables=[accounts],
                                 state_schema=schema)
        assert any("lacks SELECT, UPDATE on table public.accounts" in p for p in found), found
        params = MysqlParams(host=maria_db.server.host, port=maria_db.server.port, user=role,
                             password=PgServer.password, database=maria_db.name)
        found = my_catalog.check(params, tables=[customers], write_tables=[customers],
                                 state_schema=schema)
        assert [p for p in found if "lacks" in p] == [
            f"user '{role}'@'127.0.0.1' lacks SELECT, DELETE on table {customers}: GRANT "
            f"SELECT, DELETE ON `{maria_db.name}`.`customers` TO '{role}'@'127.0.0.1'"]
    finally:
        setup.cli("teardown", "--yes")
        with pg_db.connect() as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
        erp_rows(maria_db, f"DROP USER '{role}'@'127.0.0.1'")
