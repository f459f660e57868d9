"""Read the configuration YAML into plain values plus the line of every node.

PyYAML's loaders silently keep the last of two equal keys and forget where values came
from, so this module composes the node graph and builds the values itself:

* every mapping key and list item is recorded by path with its 1-based line;
* duplicate keys are reported (both lines), never silently resolved;
* scalars follow the YAML 1.2 core schema: only ``true``/``false`` are booleans, so
  ``on``, ``no``, ``yes`` or a country code ``NO`` stay strings, ``010`` is ten and
  ``1:30`` is text (YAML 1.1 would make them booleans, octal and sexagesimal numbers);
* ``${env:NAME}`` is expanded in every string value (``$${`` writes a literal ``${``);
* merge keys (``<<: *anchor``) are supported; explicit keys win over merged ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

PathElem = str | int
NodePath = tuple[PathElem, ...]

_TAG = "tag:yaml.org,2002:"
_ENV_REF = re.compile(r"\$\$\{|\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
_WHOLE_REF = re.compile(r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*\}$")


class EnvString(str):
    """A string value that contained ``${env:NAME}`` references, after expansion.

    ``whole_reference`` says the value was exactly one reference: the only form allowed
    where a secret is expected, so that secrets never appear in the file itself.
    """

    whole_reference: bool = False


def dotted(path: NodePath) -> str:
    """Render a path as the user reads it: ``entities.customer.fields`` / ``list[0]``."""
    text = ""
    for elem in path:
        text += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if text else str(elem))
    return text or "(top level)"


class Problem(NamedTuple):
    """A finding at ``path``; ``line`` overrides the path's line (e.g. a repeated key)."""

    path: NodePath
    message: str
    line: int | None = None
    masks: bool = True  # the value at path is unusable: hide validation errors below it


@dataclass
class Document:
    """A parsed file: plain ``data``, the line of every path, and problems found."""

    data: Any
    lines: dict[NodePath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, path: NodePath) -> int:
        """Line of ``path``, or of its nearest existing parent (1 for the root)."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1


class YamlSyntaxError(Exception):
    """The text is not YAML; ``line`` is where the parser stopped."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"{line}: {message}")


class _CoreResolver(yaml.resolver.Resolver):
    """Implicit scalar types of the YAML 1.2 core schema (see the module docstring)."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


for _tag, _regexp, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("merge", r"^<<$", "<"),
):
    _CoreResolver.add_implicit_resolver(_TAG + _tag, re.compile(_regexp), list(_first))


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    yaml.constructor.SafeConstructor,
    _CoreResolver,
):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _CoreResolver.__init__(self)


def parse(text: str, env: Mapping[str, str]) -> Document:
    """Parse ``text``; raise YamlSyntaxError if it is not one YAML document."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(line, _yaml_message(exc)) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, str(exc)) from None
    finally:
        loader.dispose()
    if root is None:
        raise YamlSyntaxError(1, "the file is empty")
    builder = _Builder(env)
    data = builder.value(root, ())
    return Document(data, builder.lines, builder.problems)


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    return "invalid YAML: " + ("; ".join(parts) if parts else "syntax error")


class _Builder:
    """Turns composed nodes into values, recording lines and problems."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[NodePath, int] = {(): 1}
        self.problems: list[Problem] = []
        self._active: set[int] = set()  # nodes being built: an alias to one is a cycle

    def value(self, node: Node, path: NodePath) -> Any:
        if id(node) in self._active:
            self.problems.append(Problem(path, "recursive alias"))
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            assert isinstance(node, ScalarNode)
            return self._scalar(node, path, expand=True)
        finally:
            self._active.discard(id(node))

    def _sequence(self, node: SequenceNode, path: NodePath) -> list[Any]:
        items = []
        for index, item in enumerate(node.value):
            self.lines[(*path, index)] = item.start_mark.line + 1
            items.append(self.value(item, (*path, index)))
        return items

    def _mapping(self, node: MappingNode, path: NodePath) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                merges.append(value_node)
                continue
            line = key_node.start_mark.line + 1
            key = self._key(key_node, path)
            if key is _BAD_KEY:
                continue
            if key in first_line:
                self.problems.append(
                    Problem(
                        (*path, key),
                        f"duplicate key (first defined on line {first_line[key]})",
                        line,
                        masks=False,
                    )
                )
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.value(value_node, (*path, key))
        for merged in merges:
            self._merge(merged, path, result)
        return result

    def _merge(self, node: Node, path: NodePath, result: dict[Any, Any]) -> None:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                line = source.start_mark.line + 1
                self.lines.setdefault((*path, "<<"), line)
                self.problems.append(
                    Problem((*path, "<<"), "a merge key needs a mapping or an alias")
                )
                continue
            merged = self.value(source, (*path, "<<"))
            for key, value in merged.items():
                if key not in result:
                    result[key] = value
                    self._copy_lines((*path, "<<", key), (*path, key))
        # drop the lines recorded under the pseudo key: only real paths remain addressable
        for recorded in [p for p in self.lines if p[: len(path) + 1] == (*path, "<<")]:
            del self.lines[recorded]

    def _copy_lines(self, old: NodePath, new: NodePath) -> None:
        for recorded, line in list(self.lines.items()):
            if recorded[: len(old)] == old:
                self.lines.setdefault(new + recorded[len(old) :], line)

    def _key(self, node: Node, path: NodePath) -> Any:
        if not isinstance(node, ScalarNode):
            self.lines.setdefault(path, node.start_mark.line + 1)
            self.problems.append(
                Problem(path, "a key must be a plain value, not a list or mapping")
            )
            return _BAD_KEY
        key = self._scalar(node, path, expand=False)
        return _BAD_KEY if key is _BAD_KEY else key

    def _scalar(self, node: ScalarNode, path: NodePath, *, expand: bool) -> Any:
        tag = node.tag.removeprefix(_TAG)
        text = node.value
        try:
            if tag == "str":
                return self._expand(text, path) if expand else text
            if tag == "null":
                return None
            if tag == "bool":
                return text.lower() == "true"
            if tag == "int":
                return _int(text)
            if tag == "float":
                return _float(text)
        except ValueError:
            self.problems.append(Problem(path, f"not a valid {tag}"))
            return _BAD_KEY
        self.problems.append(Problem(path, f"unsupported YAML tag {node.tag}"))
        return _BAD_KEY

    def _expand(self, text: str, path: NodePath) -> str:
        if "$" not in text:
            return text
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            token, name = match.group(0), match.group(1)
            if token == "$${":
                return "${"
            if name is None:
                missing.append("")
                return token
            if name not in self.env:
                missing.append(name)
                return token
            return self.env[name]

        expanded = _ENV_REF.sub(substitute, text)
        if "" in missing:
            self.problems.append(
                Problem(path, "malformed reference: write ${env:NAME} (or $${ for ${)")
            )
        for name in dict.fromkeys(n for n in missing if n):
            self.problems.append(Problem(path, f"environment variable {name} is not set"))
        if expanded == text and "${env:" not in text:
            return expanded
        result = EnvString(expanded)
        result.whole_reference = bool(_WHOLE_REF.match(text))
        return result


_BAD_KEY: Any = object()


def _int(text: str) -> int:
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)
