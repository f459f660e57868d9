"""The health endpoint over real HTTP: /metrics, /livez, /readyz, basic auth and TLS."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from agent.errors import ConfigError
from agent.health import HealthServer, LoopWatch, WebConfig, load_web_config
from agent.metrics import Metrics


class State:
    """What the daemon would report; tests flip it."""

    def __init__(self) -> None:
        self.alive = True
        self.not_ready: str | None = "crm_to_erp: starting"

    def liveness(self) -> bool:
        return self.alive

    def readiness(self) -> str | None:
        return self.not_ready


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(("crm", "erp"), ("crm_to_erp", "erp_to_crm"))


@pytest.fixture
def state() -> State:
    return State()


ServerFactory = Callable[..., HealthServer]


@pytest.fixture
def serve(metrics: Metrics, state: State) -> Iterator[ServerFactory]:
    """Start HealthServers on free loopback ports; stop all at the end."""
    started: list[HealthServer] = []

    def start(web_config: WebConfig | None = None, host: str = "127.0.0.1") -> HealthServer:
        server = HealthServer(metrics, state.liveness, state.readiness, web_config)
        server.start(host, 0)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def get(
    server: HealthServer,
    path: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.address
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_metrics_are_served_and_pass_promtool(serve: ServerFactory, metrics: Metrics) -> None:
    metrics.record_apply("crm_to_erp", 3, 12, [0.004, 0.2, 1.5])
    metrics.skipped("erp_to_crm", "loop", 4)
    metrics.conflict("customer", "phone", "newest")
    metrics.set_slot_retained_wal_bytes("crm", 65536)
    metrics.config_loaded(True)
    server = serve()
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b'cdc_agent_applied_rows_total{direction="crm_to_erp"} 12.0' in body
    promtool = _tool("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert check.stdout.strip() == b"", check.stdout.decode()  # promtool prints lint findings


def test_livez_follows_the_liveness_check(serve: ServerFactory, state: State) -> None:
    server = serve()
    assert get(server, "/livez")[0] == 200
    state.alive = False
    status, _, body = get(server, "/livez")
    assert (status, body) == (503, b"main loop stalled\n")


def test_readyz_reports_the_reason(serve: ServerFactory, state: State) -> None:
    server = serve()
    status, headers, body = get(server, "/readyz")
    assert (status, body) == (503, b"crm_to_erp: starting\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    state.not_ready = None
    assert get(server, "/readyz")[:3:2] == (200, b"ok\n")


def test_a_failing_check_is_unhealthy_not_an_error(serve: ServerFactory, state: State) -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    state.readiness = broken  # type: ignore[method-assign]
    server = serve()
    assert get(server, "/readyz")[:3:2] == (503, b"readiness check failed\n")


def test_unknown_path_and_head(serve: ServerFactory) -> None:
    server = serve()
    assert get(server, "/")[0] == 404
    status, headers, body = get(server, "/livez", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "3"


def test_loop_watch() -> None:
    now = [100.0]
    watch = LoopWatch(30, clock=lambda: now[0])
    now[0] = 129.0
    assert watch()
    now[0] = 131.0
    assert not watch()
    watch.tick()
    assert watch()


def test_stop_frees_the_port(serve: ServerFactory) -> None:
    server = serve()
    host, port = server.address
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()


def test_ipv6_loopback(serve: ServerFactory) -> None:
    if not socket.has_ipv6 or not _can_bind("::1"):
        pytest.skip("no IPv6 loopback on this machine")
    assert get(serve(host="::1"), "/livez")[0] == 200


# -- web config: basic auth and TLS -----------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth(serve: ServerFactory, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    server = serve(load_web_config(web))
    status, headers, _ = get(server, "/metrics")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="cdc-agent"'
    assert get(server, "/livez", _basic("prometheus", "wrong"))[0] == 401
    assert get(server, "/livez", _basic("nobody", "scrape-secret"))[0] == 401
    assert get(server, "/livez", {"Authorization": "Basic !!!"})[0] == 401
    assert get(server, "/livez", _basic("prometheus", "x" * 100))[0] == 401
    assert get(server, "/metrics", _basic("prometheus", "scrape-secret"))[0] == 200
    assert get(server, "/livez", _basic("prometheus", "scrape-secret"))[0] == 200  # cached path


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls(serve: ServerFactory, tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    server = serve(load_web_config(web))  # relative paths: from the web config's directory
    # A plain-HTTP client on the TLS port gets nothing, and the server keeps serving.
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        get(server, "/livez")
    client = ssl.create_default_context(cafile=str(cert))
    assert get(server, "/livez", context=client)[0] == 200
    assert get(server, "/metrics", context=client)[0] == 200
    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        get(server, "/livez", context=untrusting)


def test_tls13_only(serve: ServerFactory, tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS13\n"
    )
    server = serve(load_web_config(web))
    old_client = ssl.create_default_context(cafile=str(cert))
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        get(server, "/livez", context=old_client)
    assert get(server, "/livez", context=ssl.create_default_context(cafile=str(cert)))[0] == 200


def test_web_config_problems_are_reported_together(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: x.crt\n  cipher_suites: [a]\n  min_version: TLS10\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "basic_auth_users:\n  prometheus: plaintext\n"
        "http_server_config: {http2: true}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(web)
    text = str(caught.value)
    for expected in (
        "http_server_config: unknown or unsupported key",
        "tls_server_config.cipher_suites: unknown or unsupported key",
        "tls_server_config.key_file: required",
        "TLS version 'TLS10'",
        "tls_server_config.client_ca_file: required",
        "basic_auth_users.prometheus: expected a bcrypt hash",
    ):
        assert expected in text
    assert len(caught.value.problems) == 6


def test_web_config_missing_certificate_file(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        load_web_config(web)


def _can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def _tool(name: str) -> str:
    """Path of an ops tool; in CI (where bootstrap installs it) its absence is a failure."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; scripts/install-ops-tools.sh installs it")
        pytest.skip(f"{name} is not installed (bash scripts/install-ops-tools.sh)")
    return path
