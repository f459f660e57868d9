"""Turn validation errors into "FILE:LINE: dotted.path: message" lines."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from agent.config.yamlsrc import Document, NodePath, Problem, dotted

_ENGINE_TAGS = ("postgresql", "mysql")

_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dataclass_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "path_type": "must be a file path",
    "union_tag_not_found": "is required: postgresql or mysql",
}


def doc_path(loc: Iterable[str | int]) -> NodePath:
    """Map a pydantic error location to the path in the file.

    Internal inputs (``@sides``, ``@columns``...), dict-key markers and the engine tag that
    pydantic inserts for the systems union are not in the file, so they are dropped.
    """
    path: list[str | int] = []
    for index, elem in enumerate(loc):
        if isinstance(elem, str) and (elem.startswith("@") or elem == "[key]"):
            continue
        if index == 2 and path[:1] == ["systems"] and elem in _ENGINE_TAGS:
            continue
        path.append(elem)
    return tuple(path)


def _message(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "literal_error":
        return "must be one of " + ", ".join(re.findall(r"'([^']*)'", str(ctx["expected"])))
    if kind == "union_tag_invalid":
        return "must be one of postgresql, mysql"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    for name, sign in bounds.items():
        if kind == name:
            bound = next(iter(ctx.values()))
            return (
                f"must be {sign} {bound:g}"
                if isinstance(bound, float)
                else f"must be {sign} {bound}"
            )
    if kind == "string_too_short":
        return "must not be empty"
    return str(error["msg"])


def _expand(error: ErrorDetails) -> Iterator[Problem]:
    base = doc_path(error["loc"])
    if error["type"] == "config_problems":
        problems: Any = (error.get("ctx") or {})["problems"]
        for sub, message in problems:
            yield Problem((*base, *sub), message)
        return
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        base = (*base, "engine")
    yield Problem(base, _message(error))


def from_validation(error: ValidationError) -> list[Problem]:
    """Every problem in ``error`` with its path in the file, without duplicates."""
    found: dict[Problem, None] = {}
    for detail in error.errors(include_url=False, include_input=False):
        for problem in _expand(detail):
            found[problem] = None
    return list(found)


def render(file: Path, doc: Document, problems: Iterable[Problem]) -> list[str]:
    """Format problems, ordered by line, as "FILE:LINE: dotted.path: message"."""
    located = [(p.line or doc.line_of(p.path), p) for p in problems]
    located.sort(key=lambda item: item[0])
    return [f"{file}:{line}: {dotted(p.path)}: {p.message}" for line, p in located]


def without_masked(problems: Iterable[Problem], found: Iterable[Problem]) -> list[Problem]:
    """Drop ``problems`` at or below a path whose value ``found`` says is unusable.

    A value with an unset variable would otherwise also be reported as, say, not a number.
    """
    roots = [p.path for p in found if p.masks]
    return [p for p in problems if not any(p.path[: len(r)] == r for r in roots)]
