"""`cdc-agent status [--json]`: where each direction stands, read from the servers.

Per direction: the stored position (the checkpoint in the target), when it was applied, the
lag (from the running agent's ``/metrics`` when it answers on ``agent.metrics_listen``), the
WAL the PostgreSQL slot retains or the binlog bytes not yet read, and the staged,
quarantined and conflict counts. State tables that do not exist yet count as 0.

Exit code 0 when both systems answered, 1 when one could not be reached (what could be read
is still shown).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import click

from agent.config import Config, load_config
from agent.daemon import running_directions
from agent.errors import AgentError, ConfigError
from agent.gauges import DirectionStatus, Snapshot, snapshot

_SCRAPE_TIMEOUT = 2.0  # seconds


def agent_lag(config: Config) -> dict[str, float] | None:
    """``cdc_agent_lag_seconds`` per direction from the running agent, None if unreachable.

    Only plain HTTP on a fixed port: with port 0, TLS or basic auth the lag is not shown.
    """
    listen = config.agent.metrics_listen
    if listen.port == 0 or config.agent.web_config_file is not None:
        return None
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    try:
        with urllib.request.urlopen(f"http://{host}:{listen.port}/metrics",
                                    timeout=_SCRAPE_TIMEOUT) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None
    return _lag_samples(text)


def _lag_samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    prefix = 'cdc_agent_lag_seconds{direction="'
    for line in text.splitlines():
        if line.startswith(prefix):
            direction, _, rest = line[len(prefix):].partition('"}')
            try:
                found[direction] = float(rest.strip())
            except ValueError:
                continue
    return found


def report(config: Config) -> dict[str, Any]:
    """The status as a JSON-ready document."""
    found = snapshot(config, running_directions(config))
    lag = agent_lag(config)
    return _document(config, found, lag)


def _document(config: Config, found: Snapshot, lag: dict[str, float] | None) -> dict[str, Any]:
    return {
        "agent": config.agent.name,
        "agent_running": lag is not None,
        "systems": {
            name: {"connected": up, "error": found.errors.get(name)}
            for name, up in found.connected.items()
        },
        "directions": [_direction(d, lag) for d in found.directions],
    }


def _direction(status: DirectionStatus, lag: dict[str, float] | None) -> dict[str, Any]:
    return {
        "direction": status.direction,
        "source": status.source,
        "target": status.target,
        "position": status.position,
        "source_commit_ts": _iso(status.source_commit_ts),
        "applied_at": _iso(status.applied_at),
        "lag_seconds": None if lag is None else lag.get(status.direction),
        "retained_wal_bytes": status.retained_wal_bytes,
        "binlog_bytes_behind": status.binlog_bytes_behind,
        **status.counts,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def render_text(doc: dict[str, Any]) -> str:
    """The human-readable form of :func:`report`."""
    lines = [f"agent {doc['agent']}: "
             + ("running" if doc["agent_running"] else "metrics endpoint not reachable")]
    for name, system in doc["systems"].items():
        state = "connected" if system["connected"] else f"NOT REACHABLE ({system['error']})"
        lines.append(f"  {name}: {state}")
    for d in doc["directions"]:
        lines.append(f"{d['direction']} ({d['source']} -> {d['target']})")
        lines.append(f"  position      {d['position'] or '(none stored yet)'}")
        lines.append(f"  applied at    {d['applied_at'] or '-'}")
        lag = d["lag_seconds"]
        lines.append(f"  lag           {'unknown' if lag is None else f'{lag:.3f} s'}")
        if d["retained_wal_bytes"] is not None:
            lines.append(f"  retained WAL  {_size(d['retained_wal_bytes'])}")
        if d["binlog_bytes_behind"] is not None:
            lines.append(f"  binlog behind {_size(d['binlog_bytes_behind'])}")
        lines.append(f"  staged {d['staged']}, quarantined {d['quarantined']}, "
                     f"conflicts {d['conflicts']} ({d['conflicts_open']} open)")
    return "\n".join(lines)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit} ({size} B)"
        value /= 1024
    return f"{size} B"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per direction: position, lag, retained WAL/binlog, staged, quarantined, conflicts."""
    try:
        doc = report(load_config(ctx.obj["config_path"]))
    except ConfigError as error:
        click.echo("configuration error:\n" + "\n".join(f"  {p}" for p in error.problems),
                   err=True)
        ctx.exit(error.exit_code)
    except AgentError as error:
        click.echo(f"error: {error}", err=True)
        ctx.exit(error.exit_code)
    click.echo(json.dumps(doc, indent=2) if as_json else render_text(doc))
    ctx.exit(0 if all(s["connected"] for s in doc["systems"].values()) else 1)


commands: list[click.Command] = [status]
