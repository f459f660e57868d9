"""Bad configuration: the agent exits 78 and names file:line, or the table and column."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agentproc import AgentSetup
from tests.e2e.schema import CUSTOMER_ENTITY, create_schemas
from tests.servers import MariaDatabase, PgDatabase


@pytest.fixture
def good(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> AgentSetup:
    create_schemas(pg_db, maria_db)
    setup = AgentSetup(tmp_path, "c" + format(random.getrandbits(40), "x"), pg_db, maria_db,
                       {"customer": copy.deepcopy(CUSTOMER_ENTITY)})
    setup.write()
    return setup


def run_with_text(setup: AgentSetup, text: str, command: str = "run") -> tuple[int, str]:
    setup.config_path.write_text(text)
    done = setup.cli(command, timeout=60)
    return done.returncode, done.stdout + done.stderr


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_invalid_yaml_names_file_and_line(good: AgentSetup) -> None:
    text = good.config_path.read_text().replace("entities:", "entities: [unclosed", 1)
    code, out = run_with_text(good, text)
    assert code == 78
    assert f"{good.config_path}:" in out


def test_unknown_key(good: AgentSetup) -> None:
    text = good.config_path.read_text().replace("agent:\n", "agent:\n  colour: blue\n", 1)
    code, out = run_with_text(good, text)
    assert code == 78
    assert f"{good.config_path}:{line_of(text, 'colour')}" in out and "agent.colour" in out


def test_duplicate_key(good: AgentSetup) -> None:
    text = good.config_path.read_text().replace("agent:\n", "agent:\n  name: one\n", 1)
    code, out = run_with_text(good, text)
    assert code == 78
    assert "agent.name" in out and "duplicate" in out.lower()


def test_wrong_type(good: AgentSetup) -> None:
    doc: dict[str, Any] = yaml.safe_load(good.config_path.read_text())
    doc["agent"]["batch"] = {"max_rows": "many"}
    text = yaml.safe_dump(doc, sort_keys=False)
    code, out = run_with_text(good, text)
    assert code == 78
    assert f"{good.config_path}:{line_of(text, 'max_rows')}" in out
    assert "agent.batch.max_rows" in out


def test_missing_table(good: AgentSetup) -> None:
    doc: dict[str, Any] = yaml.safe_load(good.config_path.read_text())
    doc["entities"]["customer"]["erp"]["table"] = "no_such_table"
    code, out = run_with_text(good, yaml.safe_dump(doc, sort_keys=False))
    assert code == 78
    assert "no_such_table" in out and "entities.customer.erp.table" in out


def test_missing_column(good: AgentSetup) -> None:
    doc: dict[str, Any] = yaml.safe_load(good.config_path.read_text())
    doc["entities"]["customer"]["fields"]["phone"]["crm"] = "telephone"
    text = yaml.safe_dump(doc, sort_keys=False)
    code, out = run_with_text(good, text)
    assert code == 78
    assert "accounts.telephone" in out
    assert f"{good.config_path}:{line_of(text, 'telephone')}" in out


def test_check_exits_78_too(good: AgentSetup) -> None:
    text = good.config_path.read_text().replace("agent:\n", "agent:\n  colour: blue\n", 1)
    code, _ = run_with_text(good, text, command="check")
    assert code == 78
