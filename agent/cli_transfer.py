"""`cdc-agent push` and `cdc-agent reconcile` (also the initial load)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from agent.config import Config


def _config(ctx: click.Context) -> Config:
    from agent.cli import _load

    return _load(ctx.find_root())


def _run(ctx: click.Context, action: Any) -> None:
    from agent.cli import _guarded

    ctx.exit(_guarded(action))


@click.command()
@click.argument("entity")
@click.argument("keys", nargs=-1, required=True)
@click.option("--from", "source", metavar="SYSTEM",
              help="The system whose current rows are transferred (default: the first system).")
@click.pass_context
def push(ctx: click.Context, entity: str, keys: tuple[str, ...], source: str | None) -> None:
    """Transfer records' current state to the other system now (any schedule, manual too).

    Fields the source owns or shares are written; the target's own fields are left alone.
    Exits 1 if some record could not be transferred.
    """

    def action() -> int:
        from agent.transfer import push as do_push

        config = _config(ctx)
        started = time.monotonic()
        outcome = do_push(config, entity, list(keys), source)
        elapsed = time.monotonic() - started
        for key, reason in outcome.items():
            click.echo(f"{entity} {key}: {'done' if reason is None else 'failed: ' + reason}")
        click.echo(f"transferred in {elapsed:.2f} s")
        return 0 if all(r is None for r in outcome.values()) else 1

    _run(ctx, action)


@click.command()
@click.argument("entity")
@click.option("--apply", "apply_", is_flag=True,
              help="Repair by ownership: the owner's value wins; missing rows are created "
                   "under the create rules (on an empty side: the initial load).")
@click.option("--where", "where", multiple=True, metavar="FIELD=VALUE",
              help="Only rows with this value (FIELD of the entity, or SYSTEM.COLUMN); "
                   "repeatable.")
@click.option("--restart", is_flag=True, help="Start over instead of resuming an unfinished run.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.option("--chunk", default=2000, show_default=True, hidden=True, type=click.IntRange(1))
@click.pass_context
def reconcile(ctx: click.Context, entity: str, apply_: bool, where: tuple[str, ...],
              restart: bool, as_json: bool, chunk: int) -> None:
    """Compare ENTITY on both systems through the link; report (and repair) differences.

    Chunked (keyset pagination), resumable, and safe while the daemon streams.
    """

    def action() -> int:
        from agent.reconcile import Options, Reconciler, report

        config = _config(ctx)
        reconciler = Reconciler(config, Options(entity, apply_, where, chunk))
        total = reconciler.totals()
        with click.progressbar(length=total, label=f"reconcile {entity}", file=sys.stderr,
                               show_pos=True) as bar:
            reconciler.tick = bar.update
            result = reconciler.run(restart=restart)
        if as_json:
            click.echo(json.dumps({"entity": entity, "seconds": round(result.seconds, 3),
                                   "rows_per_second": round(result.rows_per_second),
                                   "resumed": result.resumed,
                                   **json.loads(result.counts.to_json())}))
        else:
            for line in report(entity, result, apply_):
                click.echo(line)
        return 0

    _run(ctx, action)


commands: list[click.Command] = [push, reconcile]
