"""Sort psycopg errors into the agent's hierarchy by SQLSTATE.

- transient (retry with backoff): serialization failure 40001, deadlock 40P01, lock not
  available 55P03, object in use 55006 (a slot or origin still held by a dying session),
  query canceled 57014 (statement timeout), admin/crash shutdown and cannot-connect-now
  57P01-57P03, connection exceptions 08*, insufficient resources 53*,
  and any error without SQLSTATE raised by a lost connection;
- a refused connection (authentication, TLS verification, missing database or role) has no
  SQLSTATE either; it is recognised by libpq's text and is permanent: fail fast;
- row errors (quarantine the row): data exceptions 22*, integrity violations 23*;
- undefined column 42703: :class:`~agent.errors.SchemaError` (a mapped column was dropped or
  renamed; the pipeline pauses that entity);
- everything else is permanent (authentication 28*, privileges, missing objects, ...).

Messages never carry row values: they are built from the diagnostic fields that name
objects (table, column, constraint, type), not from the server's message text, which often
quotes the offending value.
"""

from __future__ import annotations

import re

import psycopg

from agent.errors import AgentError, PermanentError, RowError, SchemaError, TransientError

_TRANSIENT_STATES = frozenset(
    {"40001", "40P01", "55P03", "55006", "57014", "57P01", "57P02", "57P03"}
)
_TRANSIENT_CLASSES = frozenset({"08", "53"})
_ROW_CLASSES = frozenset({"22", "23"})
_UNDEFINED_COLUMN = "42703"
# 'column "x" of relation "t" does not exist' / 'column t.x does not exist': identifiers only.
_COLUMN_RE = re.compile(r'column (?:"((?:[^"]|"")*)"|(\S+))')

# libpq reports a refused connection without a SQLSTATE, only its text (the server's FATAL
# message or libpq's own TLS check). These refusals stay until someone changes the server, the
# certificates or the configuration: fail fast instead of retrying forever. English texts: a
# server answering in another lc_messages falls back to "transient" (retried, as before).
_REFUSED = re.compile(
    r"password authentication failed|authentication failed for user|no pg_hba\.conf entry"
    r"|pg_hba\.conf rejects|(database|role) \"[^\"]*\" does not exist"
    r"|certificate verify failed|does not match host name|root certificate file"
    r"|server does not support SSL|permission denied for database"
    r"|must be superuser or replication role|SSL error: (tlsv1 alert|certificate|sslv3 alert)",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same work later can succeed."""
    if not isinstance(exc, psycopg.Error):
        return isinstance(exc, OSError)
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the client side failed (connection lost, server gone, broken pipe),
        # or the server refused the connection (then the text says why).
        if _REFUSED.search(str(exc)):
            return False
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state in _TRANSIENT_STATES or state[:2] in _TRANSIENT_CLASSES


def is_row_error(exc: BaseException) -> bool:
    """True when the error is about the values of one row."""
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _ROW_CLASSES


def condition_name(exc: psycopg.Error) -> str:
    """A stable error class such as ``23505 unique_violation``."""
    name = type(exc).__name__
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return f"{exc.sqlstate or '-----'} {snake}"


def safe_message(exc: psycopg.Error) -> str:
    """Describe the error by the objects it names, never by the values involved."""
    diag = exc.diag
    parts = [condition_name(exc)]
    for label, value in (
        ("schema", diag.schema_name),
        ("table", diag.table_name),
        ("column", diag.column_name),
        ("constraint", diag.constraint_name),
        ("type", diag.datatype_name),
    ):
        if value:
            parts.append(f"{label} {value}")
    if (exc.sqlstate or "")[:2] == "23" and diag.message_primary:
        # Integrity messages name the constraint/column only; the values are in the detail.
        parts.append(diag.message_primary)
    return "; ".join(parts)


def translate(exc: BaseException, context: str = "") -> AgentError:
    """The agent error to raise for ``exc`` (chain it with ``raise ... from exc``)."""
    prefix = f"{context}: " if context else ""
    if is_transient(exc):
        return TransientError(prefix + _transient_detail(exc))
    if isinstance(exc, psycopg.DataError) and exc.sqlstate is None:
        # Rejected by psycopg before sending (e.g. a NUL character in a text value).
        return RowError("22000 data_exception", f"{prefix}{type(exc).__name__} in a value")
    if isinstance(exc, psycopg.Error):
        if is_row_error(exc):
            return RowError(condition_name(exc), prefix + safe_message(exc))
        if exc.sqlstate is None:
            # A refused connection: libpq's text names host, user and reason, no values.
            return PermanentError(f"{prefix}connection refused: {str(exc).strip()}")
        if exc.sqlstate == _UNDEFINED_COLUMN:
            column = _undefined_column(exc.diag.message_primary or "")
            return SchemaError(f"{prefix}{condition_name(exc)}: column {column or '(unknown)'}"
                               " does not exist", column=column)
        return PermanentError(prefix + safe_message(exc))
    return PermanentError(f"{prefix}{type(exc).__name__}")


def _undefined_column(message: str) -> str | None:
    """The column an undefined_column message names (the last part of a qualified name)."""
    found = _COLUMN_RE.search(message)
    if found is None:
        return None
    if found.group(1) is not None:
        return found.group(1).replace('""', '"')
    return found.group(2).rsplit(".", 1)[-1]


def _transient_detail(exc: BaseException) -> str:
    if not isinstance(exc, psycopg.Error):
        return f"{type(exc).__name__}: {exc}"
    if exc.sqlstate is None:
        # libpq's own text (host, port, reason): no row values, no password.
        return f"connection: {str(exc).strip()}"
    return f"{condition_name(exc)}: {exc.diag.message_primary or ''}"
