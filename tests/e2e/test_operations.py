"""Operating the agent: systemd notifications, health endpoints, Prometheus, reload, logs, status.

Issue 7's acceptance, as an operator sees it. The watchdog policy under test (agent/daemon.py):
a controlled retry with backoff while the target is down keeps the watchdog fed (a restart
would not help; /readyz says 503), a target that accepts work but never answers (SIGSTOP)
wedges the apply loop and the pings stop until it answers again.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agentproc import AgentProcess, AgentSetup
from tests.e2e.schema import CUSTOMER_ENTITY, create_schemas, crm_rows, erp_rows
from tests.polling import free_port, wait_until
from tests.servers import MariaDatabase, MariaServer, PgDatabase

WATCHDOG_SEC = 4.0  # the agent stops pinging after WATCHDOG_SEC / 2 without loop progress


# -- helpers -----------------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on the agent's endpoint (errors are answers too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(port: int, name: str, labels: str = "") -> float | None:
    """One sample from /metrics, e.g. metric(p, "cdc_agent_applied_rows_total",
    'direction="crm_to_erp"')."""
    _, body = http_get(port, "/metrics")
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in body.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None


@dataclass
class NotifyListener:
    """The service manager's side of sd_notify: an abstract AF_UNIX datagram socket."""

    address: str = field(default_factory=lambda: f"@cdc-agent-test-{random.getrandbits(48):x}")
    received: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        """Read every datagram that arrived so far; returns all of them."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append((time.monotonic(), fields))

    def times(self, key: str) -> list[float]:
        return [at for at, fields in self.drain() if key in fields]

    def close(self) -> None:
        self.sock.close()


def new_setup(workdir: Path, crm: PgDatabase, erp: MariaDatabase,
              entities: dict[str, Any] | None = None) -> AgentSetup:
    create_schemas(crm, erp)
    setup = AgentSetup(workdir, "o" + format(random.getrandbits(40), "x"), crm, erp,
                       entities or {"customer": copy.deepcopy(CUSTOMER_ENTITY)},
                       agent_extra={"metrics_listen": f"127.0.0.1:{free_port()}"})
    setup.write()
    done = setup.cli("setup")
    assert done.returncode == 0, done.stderr
    return setup


def metrics_port(setup: AgentSetup) -> int:
    return int(setup.agent_extra["metrics_listen"].rsplit(":", 1)[1])


def insert_account(crm: PgDatabase, name: str, phone: str | None = None,
                   email: str | None = None) -> int:
    with crm.connect() as conn:
        row = conn.execute("INSERT INTO accounts (name, phone, email) VALUES (%s, %s, %s) "
                           "RETURNING id", (name, phone, email)).fetchone()
    assert row is not None
    return int(row[0])


def in_erp(erp: MariaDatabase, crm_id: int) -> bool:
    return bool(erp_rows(erp, "SELECT 1 FROM customers WHERE crm_id = %s", (crm_id,)))


@pytest.fixture
def agent_setup(pg_db: PgDatabase, maria_db: MariaDatabase, tmp_path: Path) -> Iterator[AgentSetup]:
    setup = new_setup(tmp_path, pg_db, maria_db)
    yield setup
    setup.cli("teardown", "--yes")


@pytest.fixture
def agent(agent_setup: AgentSetup) -> Iterator[AgentProcess]:
    proc = AgentProcess(agent_setup)
    proc.wait_streaming()
    yield proc
    proc.stop()
    print(proc.log())


# -- systemd notifications, /livez and /readyz -------------------------------------------------


def test_notify_ready_only_when_streaming_watchdog_stops_while_the_target_is_wedged(
        pg_db: PgDatabase, maria_server_factory: Callable[..., MariaServer],
        tmp_path: Path) -> None:
    maria = maria_server_factory()
    erp_name = "ops_erp"
    erp = MariaDatabase(maria, erp_name, maria.create_database(erp_name))
    setup = new_setup(tmp_path, pg_db, erp)
    port = metrics_port(setup)
    listener = NotifyListener()
    maria.stop()  # the target is down when the agent starts
    proc = AgentProcess(setup, env={"NOTIFY_SOCKET": listener.address,
                                    "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6))})
    try:
        # Down target: alive, not ready, no READY=1, and the retry keeps the watchdog fed.
        wait_until(lambda: http_get(port, "/livez")[0] == 200, 30, interval=0.1,
                   ignore=(OSError,), message="/livez did not answer 200")
        status, body = http_get(port, "/readyz")
        assert status == 503 and "crm_to_erp" in body, body
        wait_until(lambda: len(listener.times("WATCHDOG")) >= 3, 15,
                   message="no watchdog pings while retrying (a retry is not a wedge)")
        assert listener.times("READY") == [], "READY=1 before streaming"
        assert http_get(port, "/readyz")[0] == 503
        assert http_get(port, "/livez")[0] == 200

        maria.start()
        wait_until(lambda: listener.times("READY"), 60, message="no READY=1 after recovery")
        assert "streaming after position" in proc.log()
        assert http_get(port, "/readyz")[0] == 200
        first = insert_account(pg_db, "before the wedge")
        wait_until(lambda: in_erp(erp, first), 10, message="row did not arrive")

        # Wedge: the target accepts the connection but never answers.
        maria.pause()
        try:
            paused_at = time.monotonic()
            stuck = insert_account(pg_db, "during the wedge")
            wait_until(lambda: time.monotonic() - max(listener.times("WATCHDOG")) > WATCHDOG_SEC,
                       30, interval=0.1, message="watchdog pings went on while wedged")
            assert max(listener.times("WATCHDOG")) - paused_at < WATCHDOG_SEC
            assert http_get(port, "/livez")[0] == 200, "/livez must not depend on databases"
        finally:
            maria.resume()
        resumed_at = time.monotonic()
        wait_until(lambda: max(listener.times("WATCHDOG")) > resumed_at, 15,
                   message="watchdog pings did not resume after SIGCONT")
        wait_until(lambda: in_erp(erp, stuck), 15, message="row stuck after SIGCONT")

        # The target goes down while streaming: still alive, not ready, watchdog fed.
        maria.stop()
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 20,
                   message="/readyz stayed 200 with the target down")
        assert http_get(port, "/livez")[0] == 200
        down_at = time.monotonic()
        wait_until(lambda: max(listener.times("WATCHDOG")) > down_at + WATCHDOG_SEC, 20,
                   message="watchdog starved while retrying against a stopped target")
        maria.start()
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60,
                   message="not ready again after the target came back")
        statuses = [f["STATUS"] for _, f in listener.drain() if "STATUS" in f]
        assert any("crm_to_erp streaming, lag" in s for s in statuses), statuses
        assert proc.stop() == 0
        assert listener.times("STOPPING")
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        listener.close()
        print(proc.log())


# -- Prometheus ---------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: scripts/install-ops-tools.sh installs it")
        pytest.skip("promtool not installed (bash scripts/install-ops-tools.sh)")
    return path


class Prometheus:
    """A real Prometheus server scraping the agent every second."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("prometheus missing: scripts/install-ops-tools.sh installs it")
            pytest.skip("prometheus not installed (bash scripts/install-ops-tools.sh)")
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "cdc_agent",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=5) as response:
            doc = json.load(response)
        assert doc["status"] == "success", doc
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def prometheus(agent_setup: AgentSetup, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path / "prometheus", metrics_port(agent_setup))
    yield server
    server.close()


def test_prometheus_scrapes_the_agent_and_series_stay_flat(
        agent: AgentProcess, agent_setup: AgentSetup, prometheus: Prometheus,
        pg_db: PgDatabase, maria_db: MariaDatabase) -> None:
    port = metrics_port(agent_setup)
    _, exposition = http_get(port, "/metrics")
    lint = subprocess.run([promtool(), "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint

    job = 'job="cdc_agent"'
    wait_until(lambda: prometheus.value(f"up{{{job}}}") == 1, 30, interval=0.5,
               ignore=(OSError,), message="Prometheus did not scrape the agent")
    applied = f'cdc_agent_applied_rows_total{{{job},direction="crm_to_erp"}}'
    lag = f'cdc_agent_lag_seconds{{{job},direction="crm_to_erp"}}'
    before = prometheus.value(applied) or 0.0
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name) SELECT 'p' || g FROM generate_series(1, 50) g")
    wait_until(lambda: (prometheus.value(applied) or 0) >= before + 50, 30, interval=0.5,
               message="applied rows did not move in Prometheus")
    wait_until(lambda: (prometheus.value(f"changes({lag}[1m])") or 0) > 0, 30, interval=0.5,
               message="lag never moved")
    assert prometheus.value(f'cdc_agent_connected{{{job},system="erp"}}') == 1
    series = f'count({{{job},__name__=~"cdc_agent_.*"}})'
    count_before = prometheus.value(series)

    keys = 100_000
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO accounts (name, phone, email) SELECT 'k' || g, '+49 ' || g, "
                     "'k' || g || '@example.org' FROM generate_series(1, %s) g", (keys,))
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers")[0][0] == keys + 50,
               180, interval=0.5, message="100,000 keys were not applied")
    scraped_at = time.time()
    wait_until(lambda: prometheus.query(f"timestamp(up{{{job}}})")
               and float(prometheus.query(f"timestamp(up{{{job}}})")[0]["value"][1]) > scraped_at,
               10, interval=0.3)
    assert prometheus.value(applied) == pytest.approx(before + 50 + keys)
    assert prometheus.value(series) == count_before, "series count grew with distinct keys"
    _, exposition = http_get(port, "/metrics")
    assert "k99999" not in exposition and "example.org" not in exposition


def test_status_reports_position_retention_and_counts(
        agent: AgentProcess, agent_setup: AgentSetup, pg_db: PgDatabase,
        maria_db: MariaDatabase) -> None:
    crm_id = insert_account(pg_db, "status")
    wait_until(lambda: in_erp(maria_db, crm_id), 10)
    port = metrics_port(agent_setup)
    wait_until(lambda: (metric(port, "cdc_agent_slot_retained_wal_bytes", 'system="crm"')
                        or 0) > 0, 15, message="retained-WAL gauge never set")
    done = agent_setup.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    found = {d["direction"]: d for d in doc["directions"]}
    direction = found["crm_to_erp"]
    assert doc["agent_running"] is True
    assert direction["position"] and re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", direction["position"])
    assert isinstance(direction["retained_wal_bytes"], int)
    assert direction["binlog_bytes_behind"] is None  # the source is PostgreSQL
    assert isinstance(direction["lag_seconds"], float)
    assert (direction["staged"], direction["quarantined"], direction["conflicts"]) == (0, 0, 0)
    if "erp_to_crm" in found:  # runs when the ERP side has something to send back
        back = found["erp_to_crm"]
        assert back["retained_wal_bytes"] is None
        assert back["position"] is None or isinstance(back["binlog_bytes_behind"], int)
    text = agent_setup.cli("status")
    assert text.returncode == 0 and "crm_to_erp (crm -> erp)" in text.stdout


# -- reload ----------------------------------------------------------------------------------


def test_sighup_bad_config_keeps_running_good_config_changes_rules(
        agent: AgentProcess, agent_setup: AgentSetup, pg_db: PgDatabase,
        maria_db: MariaDatabase) -> None:
    port = metrics_port(agent_setup)
    good_text = agent_setup.config_path.read_text()
    agent_setup.config_path.write_text(good_text.replace("agent:\n", "agent:\n  colour: blue\n"))
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(port, "cdc_agent_config_reload_success") == 0, 15,
               message="reload metric did not drop to 0")
    assert re.search(r"reload failed.*agent\.colour", agent.log()), agent.log()
    survivor = insert_account(pg_db, "after the bad reload")
    wait_until(lambda: in_erp(maria_db, survivor), 10, message="old config stopped running")

    # A good config: e-mail no longer flows. Rows written around the reload arrive once.
    doc = yaml.safe_load(good_text)
    del doc["entities"]["customer"]["fields"]["email"]
    agent_setup.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    stop = threading.Event()
    written: list[int] = []

    def keep_inserting() -> None:
        while not stop.is_set():
            written.append(insert_account(pg_db, f"reload {len(written)}"))

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        wait_until(lambda: len(written) > 20, 10)
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: metric(port, "cdc_agent_config_reload_success") == 1, 30,
                   message="good reload not reported")
        wait_until(lambda: len(written) > 60, 10)
    finally:
        stop.set()
        writer.join()
    assert "configuration reloaded" in agent.log()
    wait_until(lambda: erp_rows(maria_db, "SELECT count(*) FROM customers WHERE crm_id >= %s",
                                (written[0],))[0][0] == len(written), 20,
               message="rows written around the reload were lost")
    twice = erp_rows(maria_db, "SELECT crm_id FROM customer_audit WHERE op = 'I' "
                               "GROUP BY crm_id HAVING count(*) > 1")
    assert twice == [], f"applied twice: {twice}"

    with pg_db.connect() as conn:
        conn.execute("UPDATE accounts SET email = 'new@mail.example', phone = 'p-new' "
                     "WHERE id = %s", (survivor,))
    wait_until(lambda: erp_rows(maria_db, "SELECT phone_main FROM customers WHERE crm_id = %s",
                                (survivor,)) == [("p-new",)], 10)
    assert erp_rows(maria_db, "SELECT email FROM customers WHERE crm_id = %s",
                    (survivor,)) == [(None,)]
    assert crm_rows(pg_db, "SELECT count(*) FROM accounts")[0][0] == len(written) + 1


# -- logs ------------------------------------------------------------------------------------


def test_json_logs_and_journald_priority_prefixes(agent_setup: AgentSetup) -> None:
    proc = AgentProcess(agent_setup, "--log-format", "json")
    proc.wait_streaming()
    assert proc.stop() == 0
    lines = proc.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("streaming after position" in r["msg"] for r in records)
    assert {"ts", "level", "logger", "msg"} <= set(records[0])

    proc = AgentProcess(agent_setup, journal=True)
    proc.wait_streaming()
    assert proc.stop() == 0
    lines = proc.log().splitlines()
    assert lines and all(re.match(r"<[0-7]>[A-Z]+ ", line) for line in lines), lines[:5]
    assert any(line.startswith("<6>INFO agent.pipeline: crm_to_erp: streaming") for line in lines)
