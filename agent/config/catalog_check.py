"""Compare the configuration with a system's catalog: do the mapped tables and columns exist?

``described`` is what a connector's describe() returns: each table mapped to its columns
and their type names. Problems use the same "FILE:LINE: dotted.path: message" form as the
configuration loader, located with :meth:`Config.where`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

from agent.config.models import Config
from agent.events import TableId


class ColumnRef(NamedTuple):
    """A column the configuration names on one system, and where it is named."""

    table: TableId
    column: str
    path: str  # dotted path in the file


def mapped_tables(config: Config, side: str) -> list[TableId]:
    """The tables mapped on ``side``, in entity order."""
    return [entity.table(side) for entity in config.entities.values()]


def mapped_columns(config: Config, side: str) -> dict[TableId, list[str]]:
    """Every column the agent reads or writes on ``side``, per table, in a stable order."""
    result: dict[TableId, list[str]] = {table: [] for table in mapped_tables(config, side)}
    for ref in column_refs(config, side):
        if ref.column not in result[ref.table]:
            result[ref.table].append(ref.column)
    return result


def column_refs(config: Config, side: str) -> Iterator[ColumnRef]:
    """Each column named for ``side``: key, link column, fields, predicates, flags, defaults."""
    other = config.other(side)
    for name, entity in config.entities.items():
        table, at = entity.table(side), f"entities.{name}"
        yield ColumnRef(table, entity.key(side), f"{at}.{side}.key")
        link = entity.link
        if link.kind == "column" and link.side == side and link.column:
            yield ColumnRef(table, link.column, f"{at}.link.{side}_column")
        for field_name, field in entity.fields.items():
            yield ColumnRef(table, field.columns[side], f"{at}.fields.{field_name}.{side}")
        # create.<other>.when is evaluated on the source row, i.e. on this side
        for column in entity.create[other].when if other in entity.create else {}:
            yield ColumnRef(table, column, f"{at}.create.{other}.when.{column}")
        rule = entity.delete.get(f"{other}_to_{side}")
        if rule is not None and rule.flag is not None:
            yield ColumnRef(table, rule.flag.column, f"{at}.delete.{other}_to_{side}.flag.column")
        for column in entity.defaults.get(side, {}):
            yield ColumnRef(table, column, f"{at}.defaults.{side}.{column}")


def check_catalog(
    config: Config, side: str, described: Mapping[TableId, Mapping[str, str]]
) -> list[str]:
    """Problems with the tables and columns the configuration names on ``side``, by line."""
    problems: list[str] = []
    missing_tables: set[TableId] = set()
    for name, entity in config.entities.items():
        table = entity.table(side)
        if table not in described:
            missing_tables.add(table)
            path = f"entities.{name}.{side}.table"
            hint = _similar(str(table), [str(t) for t in described])
            problems.append(f"{config.where(path)}: {path}: table {table} does not exist{hint}")
    for ref in column_refs(config, side):
        if ref.table in missing_tables:
            continue
        columns = described[ref.table]
        if ref.column not in columns:
            hint = _similar(ref.column, list(columns))
            problems.append(
                f"{config.where(ref.path)}: {ref.path}: column {ref.table}.{ref.column} "
                f"does not exist{hint}"
            )
    return sorted(problems, key=_line)


def _line(problem: str) -> int:
    """The line in "FILE:LINE: ..." (the file name may itself contain colons)."""
    location = problem.split(": ", 1)[0]
    return int(location.rsplit(":", 1)[1])


def _similar(name: str, candidates: list[str]) -> str:
    """A hint for names that differ only in letter case (MySQL vs PostgreSQL habits)."""
    for candidate in candidates:
        if candidate.lower() == name.lower():
            return f" (did you mean {candidate}?)"
    return ""
