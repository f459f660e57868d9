"""`cdc-agent conflicts list|resolve`: the record of rejected values, and deciding parked ones."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from agent import records
from agent.codec import decode_value
from agent.config import Config
from agent.errors import UsageError
from agent.ports import Write, WriteKind
from agent.wiring import compile_route


def _config(ctx: click.Context) -> Config:
    from agent.cli import _load

    return _load(ctx.find_root())


def _run(ctx: click.Context, action: Any) -> None:
    from agent.cli import _guarded

    ctx.exit(_guarded(action))


@click.group()
def conflicts() -> None:
    """Conflicts and rejected changes (sovereignty violations), on both systems."""


@conflicts.command("list")
@click.option("--entity", help="Only this entity.")
@click.option("--open", "only_open", is_flag=True, help="Only conflicts waiting for a person.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_conflicts(ctx: click.Context, entity: str | None, only_open: bool,
                   as_json: bool) -> None:
    """List conflicts (IDs are SYSTEM:N: each system keeps its own record)."""

    def action() -> int:
        config = _config(ctx)
        where: dict[str, object] = {"status": "open"} if only_open else {}
        if entity:
            where["entity"] = entity
        for system in config.systems:
            for row in records.select(config, system, "conflicts", where):
                _print(system, row, as_json)
        return 0

    _run(ctx, action)


def _print(system: str, row: dict[str, Any], as_json: bool) -> None:
    ident = f"{system}:{row['id']}"
    if as_json:
        click.echo(json.dumps({"id": ident, **{k: v for k, v in row.items() if k != "id"}},
                              default=str))
        return
    # Values are shown only here, to the operator who asked; they never go to the logs.
    click.echo(f"{ident:<10} {row['entity']:<12} {row['record']:<10} {row['field']:<14} "
               f"{row['direction']:<14} winner={row['winner']:<6} {row['resolution']:<8} "
               f"{row['status']:<6} {row['created_at']}  source={row['source_value']} "
               f"target={row['target_value']}")


@conflicts.command("resolve")
@click.argument("conflict_id")
@click.option("--take", "take", required=True, help="The system whose value wins (e.g. crm).")
@click.pass_context
def resolve(ctx: click.Context, conflict_id: str, take: str) -> None:
    """Decide a conflict: write the value of the side TAKE to the other side."""

    def action() -> int:
        config = _config(ctx)
        system, _, number = conflict_id.partition(":")
        if system not in config.systems or not number.isdigit() or take not in config.systems:
            raise UsageError(f"expected ID as SYSTEM:N and --take one of {list(config.systems)}")
        rows = records.select(config, system, "conflicts", {"id": int(number)})
        if not rows:
            raise UsageError(f"no conflict {conflict_id}")
        row = rows[0]
        _apply_decision(config, row, take)
        # Both directions may have recorded the same conflict: close every open record of it
        # (through a key map, each direction names the record by its own target's key).
        source = row["direction"].split("_to_", 1)[0]
        names = {row["record"], _mapped_key(config, row["entity"], source, row["record"])}
        for each in config.systems:
            for record in names - {None}:
                same = {"entity": row["entity"], "record": record, "field": row["field"],
                        "status": "open"}
                records.update(config, each, "conflicts", same,
                               {"status": "closed", "winner": take, "resolved_by": "cli",
                                "resolved_at": datetime.now(UTC).replace(tzinfo=None)})
        click.echo(f"{conflict_id}: {take} wins; written to {config.other(take)}")
        return 0

    _run(ctx, action)


def _mapped_key(config: Config, entity: str, system: str, other_key: str) -> str | None:
    """``system``'s key paired with the other system's key in a key-map entity (None: no
    key map, or no pair)."""
    if config.entities[entity].link.kind != "map":
        return None
    ident = f"{entity}:{other_key}"
    found = records.select(config, system, "key_map", {"ident": ident}, order="ident")
    if found:
        return str(found[0]["local_key"])
    other = records.select(config, config.other(system), "key_map", {"local_ident": ident},
                           order="ident")
    return str(other[0]["remote_key"]) if other else None


def _apply_decision(config: Config, row: dict[str, Any], take: str) -> None:
    """Write the chosen side's value into the other side's row."""
    from agent.manual import write_now

    source = row["direction"].split("_to_", 1)[0]
    chosen = row["source_value"] if take == source else row["target_value"]
    into = config.other(take)
    value = decode_value(chosen)
    entity = config.entities[row["entity"]]
    direction = next(d for d in config.directions() if d.target == into)
    route = compile_route(config, row["entity"], entity, direction)
    field = next(f for f in route.fields if f.name == row["field"])
    converted = field.convert(value)  # the chosen value is in TAKE's representation
    record = row["record"]  # the key of the recording direction's target
    if into == source:  # through a key map, the source's own key is another one
        record = _mapped_key(config, row["entity"], source, record) or record
    write = Write(route.target_table, WriteKind.UPDATE, {route.locator: record},
                  {field.target_column: converted}, {}, row["entity"], row["record"])
    write_now(config, into, [write])


@click.group("dead-letters")
def dead_letters() -> None:
    """Rows that could not be applied, and the later changes of their keys waiting behind them."""


@dead_letters.command("list")
@click.option("--all", "everything", is_flag=True, help="Also retried and discarded ones.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_letters(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """List dead letters (IDs are SYSTEM:N, on the system the rows were meant for)."""

    def action() -> int:
        config = _config(ctx)
        where: dict[str, object] = {} if everything else {"status": "pending"}
        for system in config.systems:
            for row in records.select(config, system, "dead_letters", where):
                ident = f"{system}:{row['id']}"
                if as_json:
                    click.echo(json.dumps({"id": ident, **{k: v for k, v in row.items()
                                                          if k != "id"}}, default=str))
                    continue
                click.echo(f"{ident:<10} {row['direction']:<14} {row['entity']:<12} "
                           f"{row['key']:<10} {row['status']:<9} {row['error_class']:<28} "
                           f"{row['message']}")
        return 0

    _run(ctx, action)


@dead_letters.command("retry")
@click.argument("letter_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Every pending letter, oldest first.")
@click.pass_context
def retry(ctx: click.Context, letter_id: str | None, everything: bool) -> None:
    """Apply pending letters again, in order, once the data is fixed (exactly once)."""

    def action() -> int:
        from agent.quarantine_cli import retry_letters

        config = _config(ctx)
        selection = _selection(config, letter_id, everything)
        for line in retry_letters(config, selection):
            click.echo(line)
        return 0

    _run(ctx, action)


@dead_letters.command("discard")
@click.argument("letter_id")
@click.pass_context
def discard(ctx: click.Context, letter_id: str) -> None:
    """Give up on a letter: it is kept for the record, but no longer blocks its key."""

    def action() -> int:
        config = _config(ctx)
        [(system, number)] = _selection(config, letter_id, False)
        changed = records.update(config, system, "dead_letters",
                                 {"id": number, "status": "pending"},
                                 {"status": "discarded",
                                  "resolved_at": datetime.now(UTC).replace(tzinfo=None)})
        if not changed:
            raise UsageError(f"no pending dead letter {letter_id}")
        click.echo(f"{letter_id}: discarded")
        return 0

    _run(ctx, action)


def _selection(config: Config, letter_id: str | None, everything: bool) -> list[tuple[str, int]]:
    """(system, id) pairs: one letter, or every system's (with None as id) for --all."""
    if everything:
        return [(system, 0) for system in config.systems]
    system, _, number = (letter_id or "").partition(":")
    if system not in config.systems or not number.isdigit():
        raise UsageError("expected a letter ID as SYSTEM:N, or --all")
    return [(system, int(number))]


commands = [conflicts, dead_letters]
