"""Command line: ``cdc-agent run|check|setup|teardown|status|demo``.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 69 source position lost, 78 config error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agent import __version__
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError

log = logging.getLogger("agent")

DEFAULT_CONFIG = "/etc/cdc-agent/agent.yaml"


def _load(ctx: click.Context) -> Config:
    path: Path = ctx.obj["config_path"]
    return load_config(path)


def _guarded(action: Callable[[], int]) -> int:
    """Run an action; turn the agent's errors into their exit codes and one clear message."""
    try:
        return action()
    except ConfigError as error:
        click.echo("configuration error:\n" + "\n".join(f"  {p}" for p in error.problems),
                   err=True)
        return error.exit_code
    except AgentError as error:
        log.error("%s", error)
        click.echo(f"error: {error}", err=True)
        return error.exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="CDC_AGENT_CONFIG", default=DEFAULT_CONFIG,
              show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The agent's YAML configuration (env CDC_AGENT_CONFIG).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="One line per record on stderr, as text or JSON.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.version_option(__version__, prog_name="cdc-agent")
@click.pass_context
def main(ctx: click.Context, config_path: Path, log_format: str, log_level: str) -> None:
    """cdc-agent: replicate customer data between a CRM and an ERP database."""
    from agent.logs import setup_logging

    setup_logging(log_format, log_level.upper())  # type: ignore[arg-type]
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon until SIGTERM (which finishes the current batch)."""
    from agent.service import run_service

    ctx.exit(_guarded(lambda: run_service(_load(ctx), ctx.obj["config_path"])))


@main.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the configuration and check both servers (settings, tables, columns)."""
    from agent import admin

    def action() -> int:
        from agent.wiring import route_table

        config = _load(ctx)
        for direction in config.directions():
            route_table(config, direction)  # what the config says but the agent cannot do
        missing = admin.catalog_problems(config)
        if missing:
            raise ConfigError(missing)
        problems = admin.server_problems(config)
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        if problems:
            return 1
        click.echo(f"{config.path}: configuration and servers OK")
        return 0

    ctx.exit(_guarded(action))


@main.command()
@click.pass_context
def setup(ctx: click.Context) -> None:
    """Create the state schema, publication, slot and origins (idempotent)."""
    from agent import admin

    def action() -> int:
        for line in admin.setup(_load(ctx)):
            click.echo(line)
        return 0

    ctx.exit(_guarded(action))


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask; the slot's position is lost.")
@click.pass_context
def teardown(ctx: click.Context, yes: bool) -> None:
    """Drop the state schema, publication, slot and origins (idempotent)."""
    from agent import admin

    if not yes and sys.stdin.isatty():
        click.confirm("This drops the replication slot and positions. Continue?", abort=True)

    def action() -> int:
        for line in admin.teardown(_load(ctx)):
            click.echo(line)
        return 0

    ctx.exit(_guarded(action))


def _register_command_modules() -> None:
    """Add commands kept in their own modules (each exposes ``commands``, a list)."""
    import importlib

    for module in ("agent.cli_status", "agent.cli_records", "agent.cli_transfer", "agent.demo"):
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            continue
        for command in loaded.commands:
            main.add_command(command)


_register_command_modules()


def entry(argv: list[str] | None = None) -> Any:
    """Console-script entry with the project's exit-code mapping for usage errors (2)."""
    return main.main(args=argv, prog_name="cdc-agent")
