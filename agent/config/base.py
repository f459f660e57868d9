"""Shared pieces of the configuration models: the base model, names, scalars, context.

Validators that need to know the configured system names read them from the pydantic
validation context (:class:`Context`), built from the raw file before validation so that
references are checked even when another part of the file is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainValidator, ValidationInfo
from pydantic_core import PydanticCustomError

NAME_PATTERN = re.compile(r"^[a-z0-9_]+$")
NAME_HELP = "may only contain a-z, 0-9 and _"

# Keys that have a fixed meaning where system names are also used as keys.
RESERVED_NAMES = frozenset(
    {
        "link",
        "create",
        "delete",
        "fields",
        "defaults",
        "schedule",
        "on_error",
        "owner",
        "conflict",
        "tie",
        "on_foreign_change",
        "values",
        "both",
        "newest",
        "manual",
        "map",
        "always",
        "never",
        "columns",
        "sides",
        "system",
    }
)


class FrozenModel(BaseModel):
    """Base of every configuration model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)


def fail(message: str) -> NoReturn:
    """Report a problem at the location being validated."""
    raise PydanticCustomError("config", message)


Subproblem = tuple[tuple[str | int, ...], str]


def fail_many(problems: Sequence[Subproblem]) -> NoReturn:
    """Report several problems below the location being validated (relative paths)."""
    raise PydanticCustomError(
        "config_problems", "{count} problems", {"count": len(problems), "problems": problems}
    )


def check_name(value: str, what: str = "names", limit: int = 63) -> str:
    """A name the agent derives database objects or labels from: [a-z0-9_], bounded length."""
    if not NAME_PATTERN.match(value):
        fail(f"{what} {NAME_HELP}")
    if len(value) > limit:
        fail(f"{what} may be at most {limit} characters long")
    return value


def _check_identifier(value: str) -> str:
    if not value:
        fail("must not be empty")
    if "\x00" in value:
        fail("must not contain a NUL character")
    return value


def _check_plain_name(value: str) -> str:
    return check_name(value)


Name = Annotated[str, AfterValidator(_check_plain_name)]
"""A name made of a-z, 0-9 and _ (entities, fields, systems)."""

Identifier = Annotated[str, AfterValidator(_check_identifier)]
"""A table or column name as the database spells it (quoted when used; NUL is refused)."""

ScalarValue = str | int | float | bool | None


def _check_scalar(value: Any) -> ScalarValue:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    fail("must be a single value (text, number, true/false or null)")


Scalar = Annotated[ScalarValue, PlainValidator(_check_scalar)]
"""A column value written in the file: text, number, true/false or null."""


@dataclass(frozen=True)
class Context:
    """What validators need to know about the whole file."""

    systems: tuple[str, ...] = ()
    engines: Mapping[str, str] = field(default_factory=dict)
    databases: Mapping[str, str] = field(default_factory=dict)

    @property
    def directions(self) -> tuple[str, ...]:
        """Direction names ``<source>_to_<target>`` for every ordered pair of systems."""
        return tuple(f"{s}_to_{t}" for s in self.systems for t in self.systems if s != t)

    @classmethod
    def from_raw(cls, data: object) -> Context:
        """Best-effort context from the unvalidated file contents."""
        systems = data.get("systems") if isinstance(data, dict) else None
        if not isinstance(systems, dict):
            return cls()
        names = tuple(k for k in systems if isinstance(k, str))
        engines = {k: v.get("engine") for k, v in systems.items() if isinstance(v, dict)}
        databases = {k: v.get("database") for k, v in systems.items() if isinstance(v, dict)}
        return cls(
            names,
            {k: v for k, v in engines.items() if isinstance(v, str)},
            {k: v for k, v in databases.items() if isinstance(v, str)},
        )


def context(info: ValidationInfo) -> Context:
    """The :class:`Context` passed to validation (empty if none was given)."""
    ctx = info.context
    if isinstance(ctx, dict) and isinstance(ctx.get("config"), Context):
        return ctx["config"]  # type: ignore[no-any-return]
    return Context()


def check_system(value: str, info: ValidationInfo) -> str:
    """``value`` must name a configured system."""
    systems = context(info).systems
    if value not in systems:
        fail(f"must be one of {', '.join(systems)}" if systems else "no systems are configured")
    return value


def check_direction(value: str, info: ValidationInfo) -> str:
    """``value`` must name a direction ``<source>_to_<target>`` between configured systems."""
    directions = context(info).directions
    if value not in directions:
        fail(f"must be one of {', '.join(directions)}" if directions else "no directions exist")
    return value


SystemKey = Annotated[str, AfterValidator(check_system)]
DirectionKey = Annotated[str, AfterValidator(check_direction)]
