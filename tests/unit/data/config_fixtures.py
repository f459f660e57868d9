"""A small valid configuration and helpers shared by the test_config_* modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, config_from_text
from agent.errors import ConfigError

FILE = Path("/etc/cdc-agent/agent.yaml")
ENV = {"CRM_PW": "crm-secret-value"}

# Line numbers matter: tests replace text in place and assert on FILE:LINE.
BASE = """\
agent:
  name: t
systems:
  crm:
    engine: postgresql
    dsn: "host=localhost dbname=crm"
    password: ${env:CRM_PW}
  erp:
    engine: mysql
    host: localhost
    database: erp
    user: agent
    server_id: 7
entities:
  customer:
    crm: {table: accounts, key: id}
    erp: {table: customers, key: customer_no}
    link: {crm_column: erp_no}
    fields:
      phone: {crm: phone, erp: phone_main, owner: both}
      name: {crm: name, erp: name, owner: erp}
"""


def load(text: str = BASE, env: dict[str, str] | None = None) -> Config:
    """Validate ``text`` as if read from FILE."""
    return config_from_text(text, FILE, ENV if env is None else env)


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problems ConfigError lists for ``text``."""
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    assert caught.value.exit_code == 78
    return caught.value.problems


def edit(old: str, new: str, text: str = BASE) -> str:
    """``text`` with ``old`` (which must occur exactly once) replaced by ``new``."""
    assert text.count(old) == 1, old
    return text.replace(old, new)
