"""libpq connection strings: checked without a driver, completed with the password.

The agent keeps the driver inside the connectors, so this module reads the two libpq
forms itself: ``key=value`` pairs (values optionally single-quoted, backslash escapes) and
``postgresql://`` URIs.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, urlsplit

_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_URI_PREFIXES = ("postgresql://", "postgres://")


def is_uri(dsn: str) -> bool:
    """True for the ``postgresql://`` form."""
    return dsn.startswith(_URI_PREFIXES)


def parse_conninfo(dsn: str) -> dict[str, str]:
    """Parse the ``key=value`` form into a dict; raise ValueError naming the problem."""
    params: dict[str, str] = {}
    pos = 0
    while pos < len(dsn):
        if dsn[pos:].strip() == "":
            break
        match = _KEY.match(dsn, pos)
        if match is None:
            raise ValueError(f"expected key=value at character {pos + 1}")
        value, pos = _read_value(dsn, match.end())
        params[match.group(1)] = value
    return params


def _read_value(dsn: str, pos: int) -> tuple[str, int]:
    quoted = pos < len(dsn) and dsn[pos] == "'"
    pos += quoted
    chars: list[str] = []
    while pos < len(dsn):
        char = dsn[pos]
        if char == "\\" and pos + 1 < len(dsn):
            chars.append(dsn[pos + 1])
            pos += 2
            continue
        if (quoted and char == "'") or (not quoted and char.isspace()):
            return "".join(chars), pos + 1
        chars.append(char)
        pos += 1
    if quoted:
        raise ValueError("unterminated quoted value")
    return "".join(chars), pos


def conninfo_problem(dsn: str) -> str | None:
    """Why ``dsn`` cannot be used as configured, or None. Never includes the DSN itself."""
    if is_uri(dsn):
        parts = urlsplit(dsn)
        if "@" in parts.netloc and ":" in parts.netloc.rsplit("@", 1)[0]:
            return "must not contain a password: use password_file or password: ${env:NAME}"
        if "password" in parse_qs(parts.query):
            return "must not contain password=: use password_file or password: ${env:NAME}"
        return None
    try:
        params = parse_conninfo(dsn)
    except ValueError as exc:
        return f"is not a libpq connection string: {exc}"
    if "password" in params:
        return "must not contain password=: use password_file or password: ${env:NAME}"
    return None


def with_password(dsn: str, password: str | None) -> str:
    """``dsn`` with the password added (for connecting only: never log the result)."""
    if password is None:
        return dsn
    if is_uri(dsn):
        return f"{dsn}{'&' if '?' in dsn else '?'}password={quote(password, safe='')}"
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"{dsn} password='{escaped}'"
