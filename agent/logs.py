"""Logging: one line per record on stderr, journald priority prefixes, optional JSON, redaction.

Under systemd, stderr is a journald stream (``$JOURNAL_STREAM`` names its ``dev:inode``);
journald reads a leading ``<N>`` as the syslog priority (sd-daemon(3)) and stamps the time
itself, so in that case lines carry the prefix and no timestamp.

The rule that keeps secrets and personal data out of the logs is **never pass row values,
passwords or connection strings to the logger**: log keys, table and column names, positions
and counts. The :class:`RedactionFilter` here is only defence in depth for what slips through
anyway (a driver's exception text quoting a conninfo, a URI with a password); it cannot
recognise a customer's phone number, and it is not meant to.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

# sd-daemon.h: SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

_SECRET_KEY = r"[\w.-]*?(?:password|passwd|pwd|secret|token|api_?key|access_?key|private_?key)"
_QUOTED_OR_BARE = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,;&'"}\]]+"""
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # libpq conninfo / URI query: password=... ; YAML/JSON/dict reprs: "password": "..."
    (re.compile(rf"""(\b{_SECRET_KEY}['"]?\s*[=:]\s*)({_QUOTED_OR_BARE})""", re.I), r"\1***"),
    # user:password@host in URIs (postgresql://, mysql://)
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.I), r"\1***@"),
    # HTTP credentials
    (re.compile(r"(\bAuthorization\s*:\s*(?:Basic|Bearer)\s+)\S+", re.I), r"\1***"),
    # PEM private keys, JWTs, bcrypt hashes
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        "***PRIVATE KEY***",
    ),
    (re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"), "***JWT***"),
    (re.compile(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}"), "***BCRYPT***"),
)

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def redact(text: str) -> str:
    """Mask anything in ``text`` that looks like a secret (see the module docstring)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def syslog_priority(levelno: int) -> int:
    """The sd-daemon priority for a logging level (3 err, 4 warning, 6 info, 7 debug)."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no real file descriptor (pytest capture, StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class RedactionFilter(logging.Filter):
    """Rewrites each record's message with :func:`redact` (defence in depth only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, masked; the formatter then sees no raw arguments."""
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class _LineFormatter(logging.Formatter):
    """Shared part: exception text redacted and kept on the same line."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def _exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        text = record.exc_text
        if record.stack_info:
            text = f"{text}\n{record.stack_info}" if text else record.stack_info
        return redact(text) if text else None

    def _prefix(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>" if self.journal else ""


class TextFormatter(_LineFormatter):
    """``2024-05-01T10:00:00.123Z INFO agent.pipeline: msg key=value`` (no time under journald)."""

    def format(self, record: logging.LogRecord) -> str:
        """One line: newlines inside the message or a traceback are escaped as ``\\n``."""
        parts = [] if self.journal else [_timestamp(record)]
        parts += [record.levelname, f"{record.name}:", redact(record.getMessage())]
        parts += [f"{key}={_scalar(value)}" for key, value in _extras(record).items()]
        exc = self._exception_text(record)
        if exc:
            parts.append(exc)
        return self._prefix(record) + _one_line(" ".join(parts))


class JsonFormatter(_LineFormatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record; values json cannot encode are written with ``str()``."""
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        exc = self._exception_text(record)
        if exc:
            doc["exc"] = exc
        line = json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))
        return self._prefix(record) + line


def setup_logging(
    fmt: LogFormat = "text",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Route every logger to one handler on ``stream`` (stderr) and return that handler.

    Replaces handlers a previous call installed, so it is safe to call again on reload.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    out = sys.stderr if stream is None else stream
    journal = stream_is_journal(out, environ)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(journal) if fmt == "json" else TextFormatter(journal))
    handler.addFilter(RedactionFilter())
    handler.set_name("cdc-agent")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "cdc-agent"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Fields passed with ``extra=``; string values and secret-looking keys are redacted."""
    found: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD_ATTRS or key.startswith("_"):
            continue
        if re.fullmatch(_SECRET_KEY, key, re.I):
            found[key] = "***"
        else:
            found[key] = redact(value) if isinstance(value, str) else value
    return found


def _scalar(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "\\n")
