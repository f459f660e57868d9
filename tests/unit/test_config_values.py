"""Durations, listen addresses, table names and YAML reading details."""

from __future__ import annotations

import math

import pytest
from pydantic_core import PydanticCustomError

from agent.config.durations import ListenAddress, parse_duration, parse_listen
from agent.config.entities import parse_table
from agent.config.yamlsrc import YamlSyntaxError, parse
from tests.unit.data.config_fixtures import edit, load, problems

F = "/etc/cdc-agent/agent.yaml"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        (" 20 ms ", 0.02),
        (3, 3.0),
        (0.25, 0.25),
        ("7", 7.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds)


@pytest.mark.parametrize(
    "text", ["", "10 parsecs", "-1s", "1d", "s", True, None, [1], "inf", float("nan"), -2]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(PydanticCustomError):
        parse_duration(text)


def test_durations_in_the_file() -> None:
    text = edit("  name: t\n", "  name: t\n  heartbeat_interval: 1m\n  batch: {max_delay: 5ms}\n")
    agent = load(text).agent
    assert (agent.heartbeat_interval, agent.batch.max_delay, agent.batch.max_rows) == (
        60.0,
        0.005,
        5000,
    )
    assert problems(edit("  name: t\n", "  name: t\n  heartbeat_interval: 0s\n")) == [
        f"{F}:3: agent.heartbeat_interval: must be > 0"
    ]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("[::1]:80", "::1", 80),
        ("metrics.local:0", "metrics.local", 0),
    ],
)
def test_listen_addresses(text: str, host: str, port: int) -> None:
    address = parse_listen(text)
    assert address == ListenAddress(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    "text", ["localhost", ":9464", "::1:80", "[::1:80", "h:70000", "h:x", 9464]
)
def test_bad_listen_addresses(text: object) -> None:
    with pytest.raises(PydanticCustomError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("accounts", (None, "accounts")),
        ("public.accounts", ("public", "accounts")),
        ('"my.schema"."a.b"', ("my.schema", "a.b")),
        ('s."say ""hi"""', ("s", 'say "hi"')),
        ("Mixed Case.Tbl", ("Mixed Case", "Tbl")),
    ],
)
def test_table_names(text: str, parsed: tuple[str | None, str]) -> None:
    assert parse_table(text) == parsed


@pytest.mark.parametrize("text", ["a.b.c", ".a", "a.", '"a', 'a"b"', '"a"b'])
def test_bad_table_names(text: str) -> None:
    with pytest.raises(ValueError):
        parse_table(text)


def test_default_schemas_per_engine() -> None:
    text = edit("{table: customers,", "{table: sales.customers,")
    customer = load(text).entities["customer"]
    assert str(customer.table("crm")) == "public.accounts"
    assert str(customer.table("erp")) == "sales.customers"
    assert str(load().entities["customer"].table("erp")) == "erp.customers"


def test_merge_keys_and_anchors_keep_lines() -> None:
    doc = parse("base: &b\n  owner: erp\n  conflict: newest\nfield:\n  <<: *b\n  owner: crm\n", {})
    assert doc.data["field"] == {"owner": "crm", "conflict": "newest"}
    assert doc.lines[("field", "owner")] == 6
    assert doc.lines[("field", "conflict")] == 3  # where the merged value is written
    assert doc.problems == []


def test_recursive_alias_and_unsupported_tag_and_complex_key() -> None:
    doc = parse("a: &x [1, *x]\nb: !!binary aGk=\n? [k]\n: v\n", {})
    assert [(p.path, p.message) for p in doc.problems] == [
        (("a", 1), "recursive alias"),
        (("b",), "unsupported YAML tag tag:yaml.org,2002:binary"),
        ((), "a key must be a plain value, not a list or mapping"),
    ]


def test_yaml_errors_have_lines() -> None:
    with pytest.raises(YamlSyntaxError) as caught:
        parse("a: 1\nb: [\n", {})
    assert caught.value.line == 3
    with pytest.raises(YamlSyntaxError) as caught:
        parse("a: 1\n---\nb: 2\n", {})
    assert caught.value.line == 2
    with pytest.raises(YamlSyntaxError):
        parse("a: *nothing\n", {})


def test_scalar_types() -> None:
    doc = parse(
        "a: [true, False, ~, null, '', 0x1f, 0o17, 010, 1.5e3, .inf, 1:30, 2024-01-01]\n", {}
    )
    assert doc.data["a"][:10] == [True, False, None, None, "", 31, 15, 10, 1500.0, math.inf]
    assert doc.data["a"][10:] == ["1:30", "2024-01-01"]
