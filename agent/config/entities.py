"""Entity mappings: which table on each system, how rows are linked, which fields flow.

The file uses system names as keys (``crm: {table: ..., key: ...}``, ``phone: {crm: phone,
erp: phone_main, ...}``) and short forms (``create: {crm: always}``, ``schedule:
continuous``). Before validation these are moved into fields whose input names start with
``@`` (a character a YAML key cannot start with unquoted), so unknown keys are still
reported and error locations are mapped back to what the file says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from agent.config.base import (
    DirectionKey,
    FrozenModel,
    Identifier,
    Name,
    Scalar,
    ScalarValue,
    Subproblem,
    SystemKey,
    check_system,
    context,
    fail,
    fail_many,
)
from agent.events import TableId


def parse_table(text: str) -> tuple[str | None, str]:
    """Split ``schema.name`` / ``name``; double quotes allow dots: ``"my.schema"."a.b"``."""
    parts: list[str] = []
    pos = 0
    while True:
        if text.startswith('"', pos):
            end = pos + 1
            chars: list[str] = []
            while True:
                quote = text.find('"', end)
                if quote < 0:
                    raise ValueError("unterminated double quote")
                chars.append(text[end:quote])
                if text.startswith('"', quote + 1):  # "" is a quote inside a quoted name
                    chars.append('"')
                    end = quote + 2
                    continue
                break
            parts.append("".join(chars))
            pos = quote + 1
        else:
            dot = text.find(".", pos)
            end = len(text) if dot < 0 else dot
            if '"' in text[pos:end]:
                raise ValueError("a double quote may only enclose a whole name")
            parts.append(text[pos:end])
            pos = end
        if pos == len(text):
            break
        if text[pos] != ".":
            raise ValueError("expected . after a quoted name")
        pos += 1
    if len(parts) > 2:
        raise ValueError('too many dots: quote names that contain dots ("schema"."na.me")')
    if any(not part for part in parts):
        raise ValueError("empty schema or table name")
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


class TableRef(FrozenModel):
    """Where an entity lives on one system."""

    system: str = Field(alias="@system", description="The system this table is on.")
    table: TableId = Field(
        description='"schema.name" on PostgreSQL (bare name: schema public); "name" or '
        '"database.name" on MySQL (bare name: the system\'s database). Double-quote names '
        'that contain dots: \'"odd.schema"."a.b"\'.'
    )
    key: Identifier = Field(description="The column that identifies a row (its primary key).")

    @field_validator("table", mode="before")
    @classmethod
    def _resolve_table(cls, value: object, info: ValidationInfo) -> TableId:
        if isinstance(value, TableId):
            return value
        if not isinstance(value, str):
            fail('must be a table name like "schema.name"')
        if "\x00" in value:
            fail("must not contain a NUL character")
        try:
            schema, name = parse_table(value)
        except ValueError as exc:
            fail(str(exc))
        if schema is None:
            ctx, system = context(info), info.data.get("system", "")
            engine = ctx.engines.get(system)
            schema = "public" if engine == "postgresql" else ctx.databases.get(system, "")
        return TableId(schema, name)


class LinkConfig(FrozenModel):
    """How a row on one side finds its counterpart on the other side.

    ``{<system>_column: COLUMN}``: the table on that system keeps the other side's key in
    COLUMN. ``{map: <system>}``: an agent-managed key map table in the state schema holds
    both keys (on both systems; that system's copy is the reference).
    """

    kind: Literal["column", "map"] = Field(alias="@kind", description="column or map.")
    side: str = Field(alias="@side", description="The system holding the column or map.")
    column: Identifier | None = Field(None, alias="@column", description="The link column.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: object, info: ValidationInfo) -> object:
        systems = context(info).systems
        forms = " or ".join([*(f"{{{s}_column: COLUMN}}" for s in systems), "{map: SYSTEM}"])
        if not isinstance(data, dict) or len(data) != 1:
            fail(f"must be one of {forms}")
        ((key, value),) = data.items()
        if key == "map":
            check_system(value, info) if isinstance(value, str) else fail("must be a system")
            return {"@kind": "map", "@side": value}
        side = key.removesuffix("_column") if isinstance(key, str) else ""
        if side not in systems or side == key:
            fail(f"must be one of {forms}")
        return {"@kind": "column", "@side": side, "@column": value}


class Condition(FrozenModel):
    """A predicate on one source column: a list of values, or ``{not: null}``."""

    kind: Literal["in", "not_null"] = Field(alias="@kind", description="in or not_null.")
    any_of: tuple[Scalar, ...] = Field((), alias="@any_of", description="Accepted values.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: object) -> object:
        if isinstance(data, list):
            if not data:
                fail("must list at least one value")
            return {"@kind": "in", "@any_of": data}
        if data == {"not": None}:
            return {"@kind": "not_null"}
        fail("must be a list of values ([a, b]) or {not: null}")

    def holds(self, value: object) -> bool:
        """Whether a source column value satisfies the condition."""
        return value is not None if self.kind == "not_null" else value in self.any_of


class CreateRule(FrozenModel):
    """When a row missing on a side is created there: ``always``, ``never`` or ``{when: ...}``."""

    mode: Literal["always", "never", "when"] = Field(alias="@mode", description="The rule.")
    when: dict[Identifier, Condition] = Field(
        default_factory=dict,
        description="Source-row predicate, all must hold: {column: [values]} or "
        "{column: {not: null}}. The update that makes it true becomes an INSERT.",
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: object) -> object:
        if data in ("always", "never"):
            return {"@mode": data}
        if isinstance(data, dict) and "when" in data:
            return {"@mode": "when", **data}
        fail("must be always, never or {when: {column: [values]}}")

    @field_validator("when")
    @classmethod
    def _not_empty(cls, value: dict[str, Condition]) -> dict[str, Condition]:
        if not value:
            fail("must name at least one column")
        return value


class FlagSpec(FrozenModel):
    """Mark a row instead of deleting it."""

    column: Identifier = Field(description="Column set on the target row.")
    value: Scalar = Field(description="Value written into it (e.g. false).")


class DeleteRule(FrozenModel):
    """What a delete on the source does: ``propagate``, ``ignore`` or ``{flag: ...}``."""

    mode: Literal["propagate", "ignore", "flag"] = Field(alias="@mode", description="The rule.")
    flag: FlagSpec | None = Field(None, description="{column: C, value: V}: set C = V instead.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: object) -> object:
        return _delete_short_form(data)


def _delete_short_form(data: object) -> object:
    if data in ("propagate", "ignore"):
        return {"@mode": data}
    if isinstance(data, dict) and "flag" in data:
        return {"@mode": "flag", **data}
    fail("must be propagate, ignore or {flag: {column: C, value: V}}")


class Schedule(FrozenModel):
    """When a direction applies changes: ``continuous``, ``manual`` or a cron expression."""

    mode: Literal["continuous", "manual", "cron"] = Field(alias="@mode", description="The kind.")
    cron: str | None = Field(None, alias="@cron", description="The cron expression.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: object) -> object:
        return _schedule_short_form(data)


def _schedule_short_form(data: object) -> object:
    if data in ("continuous", "manual"):
        return {"@mode": data}
    if isinstance(data, str) and croniter.is_valid(data):
        return {"@mode": "cron", "@cron": data}
    fail('must be continuous, manual or a cron expression like "0 2 * * *"')


def _check_owner(value: str, info: ValidationInfo) -> str:
    choices = (*context(info).systems, "both")
    if value not in choices:
        fail(f"must be one of {', '.join(choices)}")
    return value


def _check_conflict(value: str, info: ValidationInfo) -> str:
    choices = ("newest", *context(info).systems, "manual")
    if value not in choices:
        fail(f"must be one of {', '.join(choices)}")
    return value


class FieldConfig(FrozenModel):
    """One mapped field: its column on each system and who has the final say."""

    columns: dict[SystemKey, Identifier] = Field(
        alias="@columns", description="The field's column on each system (keys: system names)."
    )
    owner: Annotated[str, AfterValidator(_check_owner)] = Field(
        description="The system whose value is final (the field flows only from it), or "
        "both (it flows both ways). Required: no default."
    )
    conflict: Annotated[str, AfterValidator(_check_conflict)] = Field(
        "newest",
        description="owner both only: who wins when both sides changed the field since it "
        "was last in sync: newest (latest commit), a system name, or manual (park it).",
    )
    tie: SystemKey | None = Field(
        None,
        description="owner both only: who wins an exact commit-time tie under conflict: "
        "newest. Default: the system listed first.",
    )
    on_foreign_change: Literal["revert", "keep"] = Field(
        "revert",
        description="owner a system only: a change on the other system is recorded as a "
        "conflict and then reverted (the owner's value is written back) or kept.",
    )
    values: dict[Scalar, Scalar] = Field(
        default_factory=dict,
        description="Value map: keys are values on the system listed first under systems, "
        "values are the other system's values. Unlisted values pass unchanged. Must be "
        "reversible (no value twice) when the field flows to the first system.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_columns(cls, data: object, info: ValidationInfo) -> object:
        if not isinstance(data, dict):
            return data
        systems = context(info).systems
        out = {k: v for k, v in data.items() if k not in systems}
        out["@columns"] = {k: v for k, v in data.items() if k in systems}
        if out.get("owner") == "both" and "tie" not in out and systems:
            out["tie"] = systems[0]
        return out

    @field_validator("columns")
    @classmethod
    def _every_system(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        missing = [s for s in context(info).systems if s not in value]
        if missing:
            fail_many([((s,), f"is required: the field's column on {s}") for s in missing])
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> FieldConfig:
        problems: list[Subproblem] = []
        if self.owner != "both":
            problems += [
                ((key,), "only applies when owner is both")
                for key in ("conflict", "tie")
                if key in self.model_fields_set
            ]
        elif "on_foreign_change" in self.model_fields_set:
            problems.append((("on_foreign_change",), "only applies when owner is a system"))
        systems = context(info).systems
        if len(systems) > 1 and self.flows_from(systems[1]):
            twice = [v for v, n in Counter(self.values.values()).items() if n > 1]
            problems += [
                (
                    ("values",),
                    f"maps several values to {v!r}; it must be reversible "
                    f"because the field flows from {systems[1]} to {systems[0]}",
                )
                for v in twice
            ]
        if problems:
            fail_many(problems)
        return self

    def flows_from(self, source: str) -> bool:
        """Whether changes on ``source`` are replicated for this field."""
        return self.owner in (source, "both")

    def value_map(self, source: str, first_system: str) -> Mapping[ScalarValue, ScalarValue]:
        """The map from ``source`` values to the other side's values (empty: no mapping)."""
        if source == first_system:
            return self.values
        return {target: origin for origin, target in self.values.items()}


def _fill_per_direction(value: object, default: str, info: ValidationInfo) -> object:
    """A scalar applies to every direction; missing directions get ``default``."""
    directions = context(info).directions
    if isinstance(value, str):
        return dict.fromkeys(directions, value)
    if isinstance(value, dict):
        return {**value, **{d: default for d in directions if d not in value}}
    return value


class EntityConfig(FrozenModel):
    """One replicated entity: a table on each system, a link, fields and rules."""

    sides: dict[SystemKey, TableRef] = Field(
        alias="@sides",
        description="<system>: {table: TABLE, key: COLUMN} for each system (keys: system names).",
    )
    link: LinkConfig = Field(
        description="{<system>_column: COLUMN}: that system's table keeps the other side's key "
        "in COLUMN; or {map: <system>}: an agent-managed key map (<state_schema>.key_map, "
        "kept on both systems; that system's copy is the reference)."
    )
    fields: dict[Name, FieldConfig] = Field(description="Mapped fields by name ([a-z0-9_]).")
    create: dict[SystemKey, CreateRule] = Field(
        default_factory=dict,
        validate_default=True,
        description="Per system: always, never or {when: {column: [values]}}. Default: always "
        "on each system that receives fields, never on the others.",
    )
    delete: dict[DirectionKey, DeleteRule] = Field(
        default_factory=dict,
        validate_default=True,
        description="propagate, ignore or {flag: {column: C, value: V}}, for all directions "
        "or per direction (<source>_to_<target>). Default: propagate.",
    )
    defaults: dict[SystemKey, dict[Identifier, Scalar]] = Field(
        default_factory=dict,
        description="Per system: column values written when the agent creates a row there.",
    )
    schedule: dict[DirectionKey, Schedule] = Field(
        default_factory=dict,
        validate_default=True,
        description='continuous, manual (on demand only) or a cron expression ("0 2 * * *"), '
        "for all directions or per direction. Default: continuous.",
    )
    on_error: Literal["quarantine", "stop"] = Field(
        "quarantine",
        description="A row that cannot be applied is quarantined (other keys keep flowing) or "
        "stops the direction.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_sides(cls, data: object, info: ValidationInfo) -> object:
        if not isinstance(data, dict):
            return data
        systems = context(info).systems
        out = {k: v for k, v in data.items() if k not in systems}
        out["@sides"] = {
            k: {"@system": k, **v} if isinstance(v, dict) else v
            for k, v in data.items()
            if k in systems
        }
        return out

    @field_validator("sides")
    @classmethod
    def _every_side(cls, value: dict[str, TableRef], info: ValidationInfo) -> dict[str, TableRef]:
        missing = [s for s in context(info).systems if s not in value]
        if missing:
            fail_many(
                [((s,), f"is required: {{table: TABLE, key: COLUMN}} on {s}") for s in missing]
            )
        return value

    @field_validator("fields")
    @classmethod
    def _some_fields(cls, value: dict[str, FieldConfig]) -> dict[str, FieldConfig]:
        if not value:
            fail("must map at least one field")
        return value

    @field_validator("create", mode="before")
    @classmethod
    def _default_create(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, dict):
            return value
        systems = context(info).systems
        fields: Any = info.data.get("fields")
        receiving = set(systems)
        if isinstance(fields, dict):
            receiving = {
                t
                for t in systems
                for f in fields.values()
                if any(f.flows_from(s) for s in systems if s != t)
            }
        missing = {s: "always" if s in receiving else "never" for s in systems if s not in value}
        return {**value, **missing}

    @field_validator("delete", mode="before")
    @classmethod
    def _default_delete(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            _delete_short_form(value)  # one error for the scalar, not one per direction
        return _fill_per_direction(value, "propagate", info)

    @field_validator("schedule", mode="before")
    @classmethod
    def _default_schedule(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            _schedule_short_form(value)
        return _fill_per_direction(value, "continuous", info)

    @model_validator(mode="after")
    def _columns_used_once(self) -> EntityConfig:
        problems: list[Subproblem] = []
        for side in self.sides:
            seen: dict[str, str] = {}
            if self.link.kind == "column" and self.link.side == side and self.link.column:
                seen[self.link.column] = f"link.{side}_column"
            for name, field in self.fields.items():
                column = field.columns.get(side)
                if column is not None and column in seen:
                    message = f"column {column} is already used by {seen[column]}"
                    problems.append((("fields", name, side), message))
                elif column is not None:
                    seen[column] = f"fields.{name}.{side}"
        if problems:
            fail_many(problems)
        return self

    def table(self, side: str) -> TableId:
        """The entity's table on ``side``."""
        return self.sides[side].table

    def key(self, side: str) -> str:
        """The key column of the entity's table on ``side``."""
        return self.sides[side].key
