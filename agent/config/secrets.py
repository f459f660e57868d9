"""Secrets: where they may come from, and the file permissions that keep them secret.

A password is given either as ``password: ${env:NAME}`` or as ``password_file: PATH`` (for
example a systemd ``LoadCredential=`` file under ``$CREDENTIALS_DIRECTORY``). A literal
password in the configuration file is refused: the file is often world-readable, kept in
version control, or copied into tickets. No function here puts a secret into a message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import SecretStr
from pydantic_core import PydanticCustomError

from agent.config.yamlsrc import EnvString

LITERAL_SECRET = (
    "secrets never appear in the file: write password: ${env:NAME} or password_file: PATH"
)


def check_secret_reference(value: object) -> SecretStr | None:
    """Accept a password only if the file said exactly ``${env:NAME}``; never echo the value."""
    if value is None:
        return None
    if not (isinstance(value, EnvString) and value.whole_reference):
        raise PydanticCustomError("config", LITERAL_SECRET)
    return SecretStr(str(value))


def check_password_file(path: Path) -> Path:
    """Check that ``path`` is a readable regular file that only its owner can read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise _error(f"password file {path} does not exist") from None
    except OSError as exc:
        raise _error(f"password file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _error(f"password file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise _error(
            f"password file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o});"
            f" run chmod 600 {path}"
        )
    if not os.access(path, os.R_OK):
        raise _error(f"password file {path} is not readable by this user")
    return path


def read_password_file(path: Path) -> SecretStr:
    """Read the secret in ``path`` (already checked), without one trailing newline."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _error(f"password file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _error(f"password file {path} is not UTF-8 text") from None
    text = text.removesuffix("\n")
    if not text:
        raise _error(f"password file {path} is empty")
    return SecretStr(text)


def config_file_problem(path: Path) -> str | None:
    """Why the configuration file itself must not be used, or None.

    A file that others may write lets them point the agent at another database or password
    file, so a group- or world-writable configuration file is refused. Reading it is not
    refused: it holds no secret (a literal password is an error), and the usual packaging
    is root:cdc-agent 0640.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "configuration file does not exist"
    except OSError as exc:
        return f"configuration file cannot be read: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return "configuration file is not a regular file"
    if mode & 0o002:
        return f"configuration file is writable by everyone; run chmod o-w {path}"
    if mode & 0o020:
        return f"configuration file is writable by its group; run chmod g-w {path}"
    return None


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("config", message)
