"""The agent as a user runs it: a config file, secret files, and `cdc-agent` subprocesses."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.polling import wait_until
from tests.servers import MariaDatabase, PgDatabase

BIN = Path(sys.executable).with_name("cdc-agent")

LOG_FILES: list[Path] = []
"""Every agent log this test process wrote (daemon stderr and one-shot command output), for
the whole-run audit in tests/e2e/test_security.py."""


def write_secret(path: Path, secret: str) -> Path:
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


@dataclass
class AgentSetup:
    """Everything needed to run one agent between a CRM (PostgreSQL) and an ERP (MariaDB)."""

    workdir: Path
    name: str
    crm: PgDatabase
    erp: MariaDatabase
    entities: dict[str, Any]
    agent_extra: dict[str, Any] = field(default_factory=dict)
    erp_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state_schema(self) -> str:
        return f"st_{self.name}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.yaml"

    def document(self) -> dict[str, Any]:
        pg = self.crm.server
        maria = self.erp.server
        crm_secret = write_secret(self.workdir / "crm.secret", pg.password)
        erp_secret = write_secret(self.workdir / "erp.secret", maria.password)
        return {
            "agent": {"name": self.name, "state_schema": self.state_schema,
                      "metrics_listen": "127.0.0.1:0", "heartbeat_interval": "1s",
                      **self.agent_extra},
            "systems": {
                "crm": {"engine": "postgresql",
                        "dsn": f"host={pg.host} port={pg.port} dbname={self.crm.name} "
                               f"user={pg.superuser}",
                        "password_file": str(crm_secret)},
                "erp": {"engine": "mysql", "host": maria.host, "port": maria.port,
                        "database": self.erp.name, "user": maria.user,
                        "password_file": str(erp_secret),
                        "server_id": random.randint(1000, 2**31), "timezone": "Europe/Berlin",
                        **self.erp_extra},
            },
            "entities": self.entities,
        }

    def write(self) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.document(), sort_keys=False))
        self.config_path.chmod(0o600)
        return self.config_path

    def prepare(self) -> AgentSetup:
        """Write the configuration and run `cdc-agent setup` (which must succeed)."""
        self.write()
        done = self.cli("setup")
        assert done.returncode == 0, done.stdout + done.stderr
        return self

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command (`setup`, `check`...) and return what it printed.

        The output is also kept in a file of the work directory (see :data:`LOG_FILES`).
        """
        done = subprocess.run([str(BIN), "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=_env())
        kept = self.workdir / f"cli-{random.getrandbits(32):08x}.log"
        kept.write_text(f"$ cdc-agent {' '.join(args)}\n{done.stdout}{done.stderr}")
        LOG_FILES.append(kept)
        return done


class AgentProcess:
    """A running `cdc-agent run`, its stderr in a file.

    ``env`` adds environment variables (e.g. NOTIFY_SOCKET); ``journal`` sets JOURNAL_STREAM
    to the log file, as systemd does when stderr goes to journald.
    """

    def __init__(self, setup: AgentSetup, *extra: str, env: Mapping[str, str] | None = None,
                 journal: bool = False) -> None:
        self.setup = setup
        self.log_path = setup.workdir / f"agent-{os.getpid()}-{random.randint(0, 1 << 30)}.log"
        self._log = self.log_path.open("w")
        LOG_FILES.append(self.log_path)
        environ = {**_env(), **(env or {})}
        if journal:
            st = os.fstat(self._log.fileno())
            environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        self.proc = subprocess.Popen(
            [str(BIN), "--config", str(setup.config_path), *extra, "run"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=environ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_streaming(self, timeout: float = 30) -> None:
        wait_until(lambda: "streaming" in self.log() or self.proc.poll() is not None,
                   timeout, message="agent did not start streaming")
        assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.log()}"

    def peak_rss_mb(self) -> float:
        """Peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the agent finishes its batch and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the agent (crash simulation)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CDC_AGENT_CONFIG")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def running(setup: AgentSetup, *extra: str) -> Iterator[AgentProcess]:
    """A streaming `cdc-agent run` for the body; stopped after, its log printed (pytest shows
    it when the test failed)."""
    proc = AgentProcess(setup, *extra)
    try:
        proc.wait_streaming()
        yield proc
    finally:
        proc.stop()
        print(proc.log())
