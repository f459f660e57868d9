"""Classify MySQL/MariaDB errors by errno into the agent's exception hierarchy.

Transient errors (deadlock, lock wait timeout, lost connection, server shutting down) become
:class:`~agent.errors.TransientError` and are retried by the caller. Errors caused by one
row's data become :class:`~agent.errors.RowError` with a short error class; their messages
never carry row values (MySQL quotes the offending value in several messages, e.g. a
duplicate key, so we rebuild the message from column and key names only). Everything else,
including authentication, is a :class:`~agent.errors.PermanentError`.
"""

from __future__ import annotations

import re

import pymysql

from agent.errors import AgentError, PermanentError, RowError, SchemaError, TransientError

TRANSIENT_ERRNOS: frozenset[int] = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1213,  # deadlock
        1290,  # --read-only (a switchover in progress)
        1317,  # query execution was interrupted
        1792,  # read-only transaction
        1927,  # connection killed (MariaDB)
        2002,  # cannot connect through socket
        2003,  # cannot connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (system error)
        3024,  # max_execution_time exceeded
        4031,  # disconnected by the server because of inactivity
    }
)

# errno -> (error class, message template). Templates use names extracted from the server
# message (column, key), never values.
ROW_ERRNOS: dict[int, tuple[str, str]] = {
    1048: ("not_null", "column {column} cannot be NULL"),
    1062: ("duplicate_key", "duplicate entry for key {key}"),
    1264: ("out_of_range", "value out of range for column {column}"),
    1265: ("truncated", "data truncated for column {column}"),
    1292: ("bad_datetime", "incorrect date/time value for column {column}"),
    1364: ("no_default", "column {column} has no default value"),
    1366: ("bad_string", "incorrect value for column {column}"),
    1406: ("too_long", "data too long for column {column}"),
    1451: ("foreign_key", "row is referenced by a foreign key"),
    1452: ("foreign_key", "referenced row does not exist (foreign key)"),
    1690: ("out_of_range", "value out of range"),
    3140: ("bad_json", "invalid JSON text for column {column}"),
    3819: ("check_violation", "check constraint {key} violated"),
    4025: ("check_violation", "check constraint {key} violated"),
    4078: ("bad_value", "illegal value for column {column}"),
}

_TLS_REFUSED = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|hostname mismatch"
                          r"|WRONG_VERSION_NUMBER|TLSV1_ALERT", re.IGNORECASE)
UNKNOWN_COLUMN = 1054

_COLUMN_RE = re.compile(r"column '([^']*)'", re.IGNORECASE)
_KEY_RE = re.compile(r"(?:for key|constraint) '?`?([^'`]*)`?'?", re.IGNORECASE)


def errno_of(exc: BaseException) -> int | None:
    """The MySQL errno carried by a PyMySQL exception, or None."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _server_message(exc: BaseException) -> str:
    if len(exc.args) > 1 and isinstance(exc.args[1], str):
        return exc.args[1]
    return ""


def _names(message: str) -> dict[str, str]:
    column = _COLUMN_RE.search(message)
    key = _KEY_RE.search(message)
    return {
        "column": f"'{column.group(1)}'" if column else "(unknown)",
        "key": f"'{key.group(1)}'" if key else "(unknown)",
    }


def classify(exc: BaseException, *, context: str = "") -> AgentError:
    """Map a PyMySQL error to TransientError, RowError or PermanentError.

    ``context`` (e.g. the table) is prefixed to the message. Exceptions the agent already
    raised are returned unchanged.
    """
    if isinstance(exc, AgentError):
        return exc
    prefix = f"{context}: " if context else ""
    errno = errno_of(exc)
    if isinstance(exc, pymysql.err.InterfaceError | ConnectionError | TimeoutError):
        return TransientError(f"{prefix}connection lost ({type(exc).__name__})")
    if errno is None:
        return PermanentError(f"{prefix}{type(exc).__name__}")
    if errno in TRANSIENT_ERRNOS and _TLS_REFUSED.search(_server_message(exc)):
        # PyMySQL reports a failed certificate check as "cannot connect" (2003): retrying
        # cannot help until someone fixes the certificate or the tls settings.
        return PermanentError(f"{prefix}TLS: {_server_message(exc)}")
    if errno in TRANSIENT_ERRNOS:
        return TransientError(f"{prefix}MySQL error {errno}: {_server_message(exc)}")
    if errno in ROW_ERRNOS:
        error_class, template = ROW_ERRNOS[errno]
        detail = template.format(**_names(_server_message(exc)))
        return RowError(error_class, f"{prefix}{detail} (MySQL error {errno})")
    if errno == UNKNOWN_COLUMN:
        # A mapped column was dropped or renamed: the pipeline pauses that entity.
        column = _COLUMN_RE.search(_server_message(exc))
        name = column.group(1) if column else None
        return SchemaError(f"{prefix}MySQL error {errno}: unknown column {name or '(unknown)'}",
                           column=name)
    if errno == 1064:
        # A syntax error message quotes the statement, which holds interpolated values.
        return PermanentError(f"{prefix}MySQL error 1064: SQL syntax error")
    # Access denied (1044, 1045, 1142, 1227...), unknown table/column: retrying cannot help.
    # These server messages name objects and users, not row values.
    return PermanentError(f"{prefix}MySQL error {errno}: {_server_message(exc)}")


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` is worth retrying after a backoff."""
    return isinstance(classify(exc), TransientError)


class WriteRowError(RowError):
    """A RowError raised by ``MySink.write``: ``index`` is the failing write's position in the
    sequence passed to ``write`` (the writes before it were applied in the open transaction).
    """

    def __init__(self, error_class: str, message: str, index: int) -> None:
        self.index = index
        super().__init__(error_class, message)
