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


class PositionLostError(AgentError):
    """The source lost the position the agent must resume from (slot lost, binlog purged)."""

    exit_code = 69
