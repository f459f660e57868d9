"""Configuration: one YAML file, validated completely, every problem reported at once.

``load_config(path)`` returns a frozen :class:`Config` or raises
:class:`agent.errors.ConfigError` (exit code 78) whose ``problems`` are lines
"FILE:LINE: dotted.path: message", ordered by line. Problems with the file as a whole
(missing, not a regular file, writable by everyone) are "FILE: message".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from agent.config.base import Context
from agent.config.catalog_check import check_catalog, mapped_columns, mapped_tables
from agent.config.durations import ListenAddress, parse_duration
from agent.config.entities import (
    Condition,
    CreateRule,
    DeleteRule,
    EntityConfig,
    FieldConfig,
    FlagSpec,
    LinkConfig,
    Schedule,
    TableRef,
)
from agent.config.models import (
    TWO_SYSTEMS,
    AgentSettings,
    BatchSettings,
    Config,
    Direction,
    MysqlSystem,
    PostgresSystem,
    SystemConfig,
    TlsSettings,
)
from agent.config.problems import from_validation, render, without_masked
from agent.config.reference import reference_markdown
from agent.config.secrets import config_file_problem
from agent.config.yamlsrc import Problem, YamlSyntaxError, dotted, parse
from agent.errors import ConfigError

DEFAULT_PATH = Path("/etc/cdc-agent/agent.yaml")
"""Where the configuration is read from unless ``--config`` / ``CDC_AGENT_CONFIG`` say otherwise."""


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the configuration file at ``path``.

    ``env`` is the environment for ``${env:NAME}`` (default: ``os.environ``). Raises
    ConfigError listing every problem found.
    """
    problem = config_file_problem(path)
    if problem is not None:
        raise ConfigError([f"{path}: {problem}"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: configuration file is not UTF-8 text ({exc.reason})"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{path}: configuration file cannot be read: {exc.strerror}"]) from None
    return config_from_text(text, path, env)


def config_from_text(text: str, path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Validate configuration ``text`` as if read from ``path`` (no file checks)."""
    try:
        doc = parse(text, os.environ if env is None else env)
    except YamlSyntaxError as exc:
        raise ConfigError([f"{path}:{exc.line}: {exc.message}"]) from None
    problems = list(doc.problems) + _system_count(doc.data)
    config: Config | None = None
    try:
        config = Config.model_validate(doc.data, context={"config": Context.from_raw(doc.data)})
    except ValidationError as exc:
        problems += without_masked(from_validation(exc), doc.problems)
    if problems or config is None:
        raise ConfigError(render(path, doc, list(dict.fromkeys(problems))))
    config.attach_source(path, {dotted(p): line for p, line in doc.lines.items()})
    return config


def _system_count(data: object) -> list[Problem]:
    """The count is checked up front too: the model checks it only once every system is valid."""
    systems = data.get("systems") if isinstance(data, dict) else None
    if isinstance(systems, dict) and len(systems) != 2:
        return [Problem(("systems",), TWO_SYSTEMS.format(len(systems)))]
    return []


__all__ = [
    "DEFAULT_PATH",
    "AgentSettings",
    "BatchSettings",
    "Condition",
    "Config",
    "CreateRule",
    "DeleteRule",
    "Direction",
    "EntityConfig",
    "FieldConfig",
    "FlagSpec",
    "LinkConfig",
    "ListenAddress",
    "MysqlSystem",
    "PostgresSystem",
    "Schedule",
    "SystemConfig",
    "TableRef",
    "TlsSettings",
    "check_catalog",
    "config_from_text",
    "load_config",
    "mapped_columns",
    "mapped_tables",
    "parse_duration",
    "reference_markdown",
]
