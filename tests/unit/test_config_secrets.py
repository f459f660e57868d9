"""Environment expansion, secrets, password files and the configuration file's own mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.conninfo import conninfo_problem, parse_conninfo, with_password
from agent.errors import ConfigError
from tests.unit.data.config_fixtures import BASE, edit, load, problems

F = "/etc/cdc-agent/agent.yaml"
ERP_PW_FILE = "    server_id: 7\n    password_file: ${env:CREDS}/erp\n"


def test_env_expands_in_any_string_value() -> None:
    text = edit("host: localhost", "host: ${env:ERP_HOST}")
    text = edit("server_id: 7", "server_id: ${env:SID}", text)
    config = load(text, {"CRM_PW": "x", "ERP_HOST": "erp-db.example", "SID": "42"})
    erp = config.systems["erp"]
    assert (erp.host, erp.server_id) == ("erp-db.example", 42)  # type: ignore[union-attr]


def test_env_expands_inside_text_and_dollar_escape() -> None:
    text = edit("dbname=crm", "dbname=${env:DB}_$${x}")
    config = load(text, {"CRM_PW": "x", "DB": "sales"})
    assert config.systems["crm"].dsn == "host=localhost dbname=sales_${x}"  # type: ignore[union-attr]


def test_unset_variable_is_named_and_masks_follow_up_errors() -> None:
    text = edit("server_id: 7", "server_id: ${env:SID}")
    assert problems(text, {"CRM_PW": "x"}) == [
        f"{F}:13: systems.erp.server_id: environment variable SID is not set"
    ]


def test_malformed_reference() -> None:
    text = edit("host: localhost", "host: ${ENV:HOST}")
    assert problems(text) == [
        f"{F}:10: systems.erp.host: malformed reference: write ${{env:NAME}} (or $${{ for ${{)"
    ]


def test_literal_password_is_refused_without_echoing_it() -> None:
    text = edit("password: ${env:CRM_PW}", "password: hunter2")
    found = problems(text)
    assert found == [
        f"{F}:7: systems.crm.password: secrets never appear in the file: write password: "
        "${env:NAME} or password_file: PATH"
    ]
    assert "hunter2" not in "\n".join(found)
    # a reference embedded in other text is still a literal password
    assert problems(edit("password: ${env:CRM_PW}", "password: x${env:CRM_PW}"))[0].endswith(
        "secrets never appear in the file: write password: ${env:NAME} or password_file: PATH"
    )


def test_password_from_env_is_secret() -> None:
    config = load()
    crm = config.systems["crm"]
    assert crm.password is not None
    assert crm.password.get_secret_value() == "crm-secret-value"
    assert "crm-secret-value" not in repr(config) + str(config)
    assert crm.conninfo() == "host=localhost dbname=crm password='crm-secret-value'"  # type: ignore[union-attr]


def _secret_file(directory: Path, content: str, mode: int) -> Path:
    path = directory / "erp"
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def test_password_file_is_read_without_one_trailing_newline(tmp_path: Path) -> None:
    _secret_file(tmp_path, "pa ss\n\n", 0o600)
    config = load(edit("    server_id: 7\n", ERP_PW_FILE), {"CRM_PW": "x", "CREDS": str(tmp_path)})
    erp = config.systems["erp"]
    assert erp.password is not None and erp.password.get_secret_value() == "pa ss\n"
    assert erp.password_file == tmp_path / "erp"
    assert "pa ss" not in repr(config)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path, "s3cret", mode)
    found = problems(
        edit("    server_id: 7\n", ERP_PW_FILE), {"CRM_PW": "x", "CREDS": str(tmp_path)}
    )
    assert found == [
        f"{F}:14: systems.erp.password_file: password file {path} is readable by others "
        f"(mode {mode:04o}); run chmod 600 {path}"
    ]
    assert "s3cret" not in "\n".join(found)


def test_password_file_missing_empty_or_a_directory(tmp_path: Path) -> None:
    env = {"CRM_PW": "x", "CREDS": str(tmp_path)}
    text = edit("    server_id: 7\n", ERP_PW_FILE)
    assert problems(text, env) == [
        f"{F}:14: systems.erp.password_file: password file {tmp_path}/erp does not exist"
    ]
    _secret_file(tmp_path, "\n", 0o400)
    assert problems(text, env) == [
        f"{F}:8: systems.erp.password: password file {tmp_path}/erp is empty"
    ]
    (tmp_path / "dir").mkdir(mode=0o700)
    assert problems(text.replace("/erp\n", "/dir\n"), env) == [
        f"{F}:14: systems.erp.password_file: password file {tmp_path}/dir is not a regular file"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_password_file(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, "x", 0o000)
    found = problems(
        edit("    server_id: 7\n", ERP_PW_FILE), {"CRM_PW": "x", "CREDS": str(tmp_path)}
    )
    assert found == [
        f"{F}:14: systems.erp.password_file: password file {path} is not readable by this user"
    ]


def test_password_and_password_file_together(tmp_path: Path) -> None:
    _secret_file(tmp_path, "x", 0o600)
    text = edit("    server_id: 7\n", ERP_PW_FILE + "    password: ${env:CRM_PW}\n")
    assert problems(text, {"CRM_PW": "x", "CREDS": str(tmp_path)}) == [
        f"{F}:15: systems.erp.password: give password or password_file, not both"
    ]


def test_config_file_must_not_be_world_writable(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE, encoding="utf-8")
    path.chmod(0o646)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"CRM_PW": "x"})
    assert caught.value.problems == [
        f"{path}: configuration file is writable by everyone; run chmod o-w {path}"
    ]
    path.chmod(0o644)
    assert load_config(path, {"CRM_PW": "x"}).path == path


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml", {})
    assert caught.value.problems == [f"{tmp_path}/nope.yaml: configuration file does not exist"]


def test_dsn_with_password_is_refused_without_echoing_it() -> None:
    for dsn in (
        "host=x password=hunter2",
        "postgresql://u:hunter2@x/db",
        "postgresql://u@x/db?password=hunter2",
    ):
        found = problems(edit('"host=localhost dbname=crm"', f'"{dsn}"'))
        assert len(found) == 1 and found[0].startswith(f"{F}:6: systems.crm.dsn: must not contain")
        assert "hunter2" not in found[0]


def test_conninfo_parsing_and_password_quoting() -> None:
    assert parse_conninfo("host=a  dbname = 'my db' user=it\\'s") == {
        "host": "a",
        "dbname": "my db",
        "user": "it's",
    }
    assert conninfo_problem("host='unterminated") == (
        "is not a libpq connection string: unterminated quoted value"
    )
    completed = with_password("host=a", "it's \\ odd")
    assert parse_conninfo(completed)["password"] == "it's \\ odd"
    assert with_password("postgresql://u@h/db", "p@ss") == "postgresql://u@h/db?password=p%40ss"
    assert with_password("host=a", None) == "host=a"
