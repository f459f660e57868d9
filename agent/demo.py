"""`cdc-agent demo`: a CRM and an ERP on throwaway servers, and the agent keeping them in sync.

Starts PostgreSQL (the CRM) and MariaDB (the ERP) on 127.0.0.1 in temporary directories,
loads the sample company (:mod:`agent.demo_data`), runs ``cdc-agent setup`` and ``cdc-agent
run`` with ``config/demo.yaml`` as subprocesses, the way a user would, and tells the story
(:mod:`agent.demo_story`). Then it waits for Ctrl-C (or, with ``--scripted``, exits) and
removes everything it started: the agent, both servers and their directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

import click

from agent.demo_data import generate, load_crm, load_erp
from agent.demo_story import Narrator, Story
from agent.localservers import MariaServer, PgServer
from agent.polling import WaitTimeout, free_port, wait_until
from agent.serverprocess import HOST, WATCHDOG, is_root

TEMPLATE = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


class DemoPg(PgServer):
    """The CRM's server; its directories are named cdc-demo-*."""

    temp_prefix = "cdc-demo-"


class DemoMaria(MariaServer):
    """The ERP's server; its directories are named cdc-demo-*."""

    temp_prefix = "cdc-demo-"


class DemoWorld:
    """The two servers, the agent's files and its running process."""

    def __init__(self, workdir: Path, crm: PgServer, erp: MariaServer, template: Path) -> None:
        self.workdir, self.crm, self.erp = workdir, crm, erp
        self.metrics = f"{HOST}:{free_port()}"
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        self.agent: subprocess.Popen[bytes] | None = None
        # A private copy: the agent refuses a configuration file others may write.
        shutil.copyfile(template, self.config_path)
        self.config_path.chmod(0o600)
        for name, password in (("crm", crm.password), ("erp", erp.password)):
            secret = workdir / f"{name}.secret"
            secret.write_text(password + "\n")
            secret.chmod(0o600)
        self.env = {
            "CDC_DEMO_DIR": str(workdir), "CDC_DEMO_CRM_PORT": str(crm.port),
            "CDC_DEMO_ERP_PORT": str(erp.port), "CDC_DEMO_METRICS_LISTEN": self.metrics,
            "CDC_AGENT_CONFIG": str(self.config_path),
        }
        self._write_env_sh()

    @property
    def metrics_url(self) -> str:
        """Where the running agent serves Prometheus metrics."""
        return f"http://{self.metrics}/metrics"

    def _write_env_sh(self) -> None:
        exports = {**self.env, "PGHOST": HOST, "PGPORT": str(self.crm.port),
                   "PGUSER": self.crm.superuser, "PGDATABASE": "crm",
                   "PGPASSWORD": self.crm.password}
        lines = [f"export {key}='{value}'" for key, value in exports.items()]
        lines.append(f"alias erp='mariadb -h {HOST} -P {self.erp.port} -u {self.erp.user} "
                     f"-p{self.erp.password} erp'")
        path = self.workdir / "env.sh"
        path.write_text("# The demo's throwaway servers: source this file to explore.\n"
                        + "\n".join(lines) + "\n")
        path.chmod(0o600)

    def command(self) -> list[str]:
        """How to call cdc-agent: the script next to this Python, else this Python itself."""
        script = Path(sys.executable).with_name("cdc-agent")
        if script.exists():
            return [str(script)]
        return [sys.executable, "-c", "from agent.cli import entry; entry()"]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``cdc-agent`` command against the demo's configuration."""
        return subprocess.run([*self.command(), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env=self._environ())

    def start_agent(self) -> None:
        """Start ``cdc-agent run`` in its own session, its output in agent.log."""
        with open(self.log_path, "ab") as log:
            self.agent = subprocess.Popen(
                [*self.command(), "run"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self._environ(), start_new_session=True)
        WATCHDOG.send(f"+g {self.agent.pid}")  # killed with us if we die without cleaning up

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until /readyz says both directions stream (or the agent exits)."""

        def ready() -> bool:
            if self.agent is None or self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited; its log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.metrics}/readyz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout, interval=0.1, message="the agent did not become ready")

    def stop_agent(self, timeout: float = 30) -> int | None:
        """SIGTERM the agent (it finishes its batch) and wait; SIGKILL if it hangs."""
        if self.agent is None:
            return None
        if self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGCONT)  # in case a step left it stopped
            self.agent.terminate()
            try:
                self.agent.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.agent.pid, signal.SIGKILL)
                self.agent.wait(timeout)
        WATCHDOG.send(f"-g {self.agent.pid}")
        return self.agent.returncode

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the agent's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        return {**env, **self.env, "PYTHONUNBUFFERED": "1"}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM/SIGHUP clean up like Ctrl-C


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cdc-demo-"))
    WATCHDOG.send(f"+d {path}")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        WATCHDOG.send(f"-d {path}")


def _build(out: Narrator, stack: ExitStack, accounts: int, template: Path) -> DemoWorld:
    """Start both servers, load the sample data, configure and start the agent."""
    workdir = stack.enter_context(_workdir())
    who = " (as the postgres user)" if is_root() else ""
    with out.doing(f"starting PostgreSQL 15, the CRM{who}"):
        crm = stack.enter_context(DemoPg())
        crm.create_database("crm")
    with out.doing("starting MariaDB, the ERP"):
        erp = stack.enter_context(DemoMaria())
        erp.create_database("erp")
    out.info(f"CRM: PostgreSQL on {HOST}:{crm.port}, files in {crm.root}")
    out.info(f"ERP: MariaDB on {HOST}:{erp.port}, files in {erp.root}")
    data = generate(accounts)
    with out.doing("loading the sample company"):
        load_crm(crm.dsn("crm"), data)
        load_erp(erp.connect_kwargs("erp"), data)
    out.info(data.summary())
    world = DemoWorld(workdir, crm, erp, template)
    stack.callback(_stop_agent, world, out)
    with out.doing("cdc-agent setup (state schema, publication, slot, origins)"):
        done = world.cli("setup")
        if done.returncode != 0:
            raise click.ClickException(f"cdc-agent setup failed:\n{done.stdout}{done.stderr}")
    with out.doing("cdc-agent run (streaming in both directions)"):
        world.start_agent()
        world.wait_ready()
    out.info(f"agent log: {world.log_path}")
    return world


def _stop_agent(world: DemoWorld, out: Narrator) -> None:
    code = world.stop_agent()
    if code is not None:
        out.info(f"agent stopped (exit status {code})")


def _explore(world: DemoWorld, out: Narrator, scripted: bool) -> None:
    out.heading("Explore")
    out.info(f"metrics:   {world.metrics_url}   (health: /livez, /readyz)")
    out.info(f"agent log: {world.log_path}")
    out.info(f"config:    {world.config_path}   (a copy of config/demo.yaml)")
    out.info(f"shell:     source {world.workdir / 'env.sh'}   then: cdc-agent status, "
             "cdc-agent conflicts list, psql, erp")
    if scripted:
        return
    out.info("The agent keeps running: edit either database and watch the other. "
             "Press Ctrl-C to stop and remove everything.")
    while world.agent is not None and world.agent.poll() is None:
        time.sleep(0.5)  # nothing to synchronise with: we only wait for Ctrl-C
    out.info(f"the agent exited by itself; its log:\n{world.log_tail()}")


@click.command()
@click.option("--scripted", is_flag=True,
              help="Exit when the story is done (status 1 if a step's outcome did not happen).")
@click.option("--accounts", default=3000, show_default=True, type=click.IntRange(10, 200000),
              help="How many CRM accounts the sample company has.")
@click.option("--template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=TEMPLATE, show_default=True, help="The demo's configuration file.")
@click.pass_context
def demo(ctx: click.Context, scripted: bool, accounts: int, template: Path) -> None:
    """Start a throwaway CRM and ERP and show the agent keeping them in sync."""
    # A shell may start us with SIGINT ignored (a background job): Ctrl-C must still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    out = Narrator(color=sys.stdout.isatty())
    out.heading("cdc-agent demo: a CRM (PostgreSQL) and an ERP (MariaDB), kept in sync")
    ok = False
    with ExitStack() as stack:
        stack.callback(out.info, "removed the servers, their data and the demo directory")
        try:
            world = _build(out, stack, accounts, template)
            ok = Story(world, out).tell()
            _explore(world, out, scripted)
        except KeyboardInterrupt:
            out.heading("Stopping: the agent, then both servers")
        except (WaitTimeout, RuntimeError) as error:
            out.info(f"the demo could not run: {error}")
            ok = False
    ctx.exit(0 if ok else 1)


commands: list[click.Command] = [demo]
