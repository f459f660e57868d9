"""One exception hierarchy: configuration, retriable and permanent failures."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    exit_code = 1


class UsageError(AgentError):
    """The command line was wrong."""

    exit_code = 2


class ConfigError(AgentError):
    """Invalid configuration; ``problems`` lists each finding as 'file:line: path: message'."""

    exit_code = 78

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TransientError(AgentError):
    """Retry with backoff: deadlock, lock timeout, lost connection, restarting server."""


class PermanentError(AgentError):
    """Retrying cannot help: a constraint, a type, an encoding, authentication."""


class RowError(PermanentError):
    """One row cannot be applied; it is quarantined, the rest flows."""

    def __init__(self, error_class: str, message: str) -> None:
        self.error_class = error_class
        super().__init__(f"{error_class}: {message}")


class SchemaError(PermanentError):
    """A table lacks a column the configuration maps (dropped or renamed while streaming).

    ``table`` and ``column`` name them when the server said which (identifiers, no values).
    The pipeline pauses the entity of that table instead of stopping (agent.schema_pause).
    """

    def __init__(self, message: str, table: str | None = None,
                 column: str | None = None) -> None:
        self.table = table
        self.column = column
        super().__init__(message)


class PositionLostError(AgentError):
    """The source lost the position the agent must resume from (slot lost, binlog purged)."""

    exit_code = 69
