"""Log lines: text and JSON formats, journald priority prefixes, redaction."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from typing import TextIO

import pytest

from agent.logs import redact, setup_logging, stream_is_journal, syslog_priority


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture
def pipe() -> Iterator[tuple[TextIO, int]]:
    """A stream with a real dev:inode, standing in for journald's stream socket."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", buffering=1)
    try:
        yield stream, read_fd
    finally:
        stream.close()
        os.close(read_fd)


def _journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_text_line_has_time_level_logger_message() -> None:
    out = io.StringIO()
    setup_logging("text", "INFO", stream=out, environ={})
    logging.getLogger("agent.pipeline").info(
        "applied %d rows", 12, extra={"direction": "crm_to_erp"}
    )
    logging.getLogger("agent.pipeline").debug("hidden")
    [line] = _lines(out)
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z") and "T" in stamp
    assert rest == "INFO agent.pipeline: applied 12 rows direction=crm_to_erp"


def test_journal_stream_gets_priority_prefixes_and_no_timestamp(
    pipe: tuple[TextIO, int],
) -> None:
    stream, read_fd = pipe
    setup_logging("text", logging.DEBUG, stream=stream, environ=_journal_env(stream))
    log = logging.getLogger("agent.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    lines = os.read(read_fd, 65536).decode().splitlines()
    assert lines == [
        "<7>DEBUG agent.x: d",
        "<6>INFO agent.x: i",
        "<4>WARNING agent.x: w",
        "<3>ERROR agent.x: e",
        "<2>CRITICAL agent.x: c",
    ]


def test_journal_stream_of_another_file_is_not_ours(pipe: tuple[TextIO, int]) -> None:
    stream, _ = pipe
    assert stream_is_journal(stream, _journal_env(stream))
    assert not stream_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
    assert not stream_is_journal(stream, {})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_priorities_follow_sd_daemon() -> None:
    assert [syslog_priority(lv) for lv in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 6, 4, 3, 2]


def test_json_one_object_per_line_with_extras() -> None:
    out = io.StringIO()
    setup_logging("json", "DEBUG", stream=out, environ={})
    logging.getLogger("agent.rules").warning(
        "conflict on %s", "phone", extra={"entity": "customer", "rows": 3}
    )
    [line] = _lines(out)
    doc = json.loads(line)
    assert doc["level"] == "warning"
    assert doc["logger"] == "agent.rules"
    assert doc["msg"] == "conflict on phone"
    assert doc["entity"] == "customer" and doc["rows"] == 3
    assert doc["ts"].endswith("Z")


def test_json_under_journal_is_prefixed(pipe: tuple[TextIO, int]) -> None:
    stream, read_fd = pipe
    setup_logging("json", "INFO", stream=stream, environ=_journal_env(stream))
    logging.getLogger("a").error("boom")
    line = os.read(read_fd, 65536).decode().rstrip("\n")
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["msg"] == "boom"


def test_traceback_stays_on_one_line() -> None:
    out = io.StringIO()
    setup_logging("text", "INFO", stream=out, environ={})
    try:
        raise RuntimeError("connection to password=hunter2 failed\nsecond line")
    except RuntimeError:
        logging.getLogger("agent").exception("cycle failed")
    [line] = _lines(out)
    assert "Traceback" in line and "RuntimeError" in line
    assert "hunter2" not in line


def test_json_exception_field_is_redacted() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out, environ={})
    try:
        raise ValueError("dsn postgresql://agent:s3cret@db/crm")
    except ValueError:
        logging.getLogger("agent").exception("failed")
    [line] = _lines(out)
    doc = json.loads(line)
    assert "s3cret" not in line
    assert "postgresql://agent:***@db/crm" in doc["exc"]


def test_message_arguments_and_extras_are_redacted() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out, environ={})
    conninfo = "host=db port=5432 user=agent password='p w' sslmode=require"
    logging.getLogger("a").info(
        "connecting %s", conninfo, extra={"password": "x1", "dsn": conninfo}
    )
    [line] = _lines(out)
    doc = json.loads(line)
    assert "p w" not in line and "x1" not in line
    assert doc["msg"] == "connecting host=db port=5432 user=agent password=*** sslmode=require"
    assert doc["password"] == "***"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("host=h password=abc dbname=d", "host=h password=*** dbname=d"),
        ("PASSWORD = 'a b\\'c' x", "PASSWORD = *** x"),
        ('{"password": "abc", "user": "u"}', '{"password": ***, "user": "u"}'),
        ("mysql_password: abc", "mysql_password: ***"),
        ("mysql://u:pa:ss@h:3306/db", "mysql://u:***@h:3306/db"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("api_key=XYZ&x=1", "api_key=***&x=1"),
        ("hash $2b$12$" + "a" * 53 + " end", "hash ***BCRYPT*** end"),
        ("tok eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeKKF2Q", "tok ***JWT***"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "***PRIVATE KEY***",
        ),
    ],
)
def test_redact_masks_secrets(raw: str, expected: str) -> None:
    assert redact(raw) == expected


@pytest.mark.parametrize(
    "harmless",
    [
        "password_file: /run/credentials/cdc-agent.service/crm",
        "applied 12 rows to erp.customers (customer_no) at 0/16B3748",
        "binlog mysql-bin.000003:4711",
        "skipped 3 tokens; secrets_dir=/etc/cdc-agent/credentials",
    ],
)
def test_redact_leaves_ordinary_text(harmless: str) -> None:
    assert redact(harmless) == harmless


def test_setup_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "INFO", stream=first, environ={})
    setup_logging("json", "INFO", stream=second, environ={})
    logging.getLogger("a").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="log format"):
        setup_logging("xml", "INFO", stream=io.StringIO())  # type: ignore[arg-type]
