"""The agent's HTTP endpoint: ``/metrics``, ``/livez``, ``/readyz``.

A small ``ThreadingHTTPServer`` on daemon threads, so a slow scraper never blocks replication
and never delays shutdown. Optional TLS and basic auth come from a web-config file in the
Prometheus exporter-toolkit format (the same file node_exporter takes with
``--web.config.file``)::

    tls_server_config:
      cert_file: /etc/cdc-agent/tls/server.crt     # relative paths: from this file's directory
      key_file: /etc/cdc-agent/tls/server.key
      min_version: TLS12                            # TLS12 (default) or TLS13
      client_auth_type: RequireAndVerifyClientCert  # optional mutual TLS, with:
      client_ca_file: /etc/cdc-agent/tls/clients-ca.crt
    basic_auth_users:
      prometheus: $2b$12$...                        # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':')

When configured, auth applies to all three endpoints. Unknown or unsupported keys are errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import yaml

from agent.errors import ConfigError
from agent.metrics import Metrics

log = logging.getLogger(__name__)

Liveness = Callable[[], bool]
"""True while the main loop ticked recently."""

Readiness = Callable[[], str | None]
"""None when every direction streams, else a short reason (plain text, no secrets)."""

_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "min_version",
    "max_version",
    "client_auth_type",
    "client_ca_file",
}
_T = TypeVar("_T")
_REQUEST_TIMEOUT = 10.0  # seconds for a client to send its request (and finish TLS)


class LoopWatch:
    """A :data:`Liveness` check: alive while :meth:`tick` was called within ``max_silence``."""

    def __init__(self, max_silence: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``max_silence`` in seconds; the clock must be monotonic."""
        self._max_silence = max_silence
        self._clock = clock
        self._last = clock()

    def tick(self) -> None:
        """The main loop completed a cycle."""
        self._last = self._clock()

    def __call__(self) -> bool:
        """True while the last tick is recent enough."""
        return self._clock() - self._last <= self._max_silence


@dataclass(frozen=True)
class WebConfig:
    """TLS context and basic-auth users loaded from a web-config file."""

    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)


def load_web_config(path: str | Path) -> WebConfig:
    """Read an exporter-toolkit web-config file; every problem is reported at once."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read web config: {exc}"]) from exc
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}: web config must be a mapping"])
    for key in sorted(set(doc) - {"tls_server_config", "basic_auth_users"}):
        problems.append(f"{path}: {key}: unknown or unsupported key")
    tls = _tls_context(doc.get("tls_server_config"), path, problems)
    users = _users(doc.get("basic_auth_users"), path, problems)
    if problems:
        raise ConfigError(problems)
    return WebConfig(tls=tls, users=users)


def _tls_context(section: Any, path: Path, problems: list[str]) -> ssl.SSLContext | None:
    if section is None:
        return None
    where = f"{path}: tls_server_config"
    if not isinstance(section, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    problems += [
        f"{where}.{k}: unknown or unsupported key" for k in sorted(set(section) - _TLS_KEYS)
    ]
    for required in ("cert_file", "key_file"):
        if not section.get(required):
            problems.append(f"{where}.{required}: required")
    auth = section.get("client_auth_type", "NoClientCert")
    versions = [section.get(k) for k in ("min_version", "max_version")]
    bad = [v for v in versions if v is not None and v not in _TLS_VERSIONS]
    problems += [f"{where}: TLS version {v!r}: expected TLS12 or TLS13" for v in bad]
    if auth not in _CLIENT_AUTH:
        problems.append(
            f"{where}.client_auth_type: {auth!r}: expected one of {sorted(_CLIENT_AUTH)}"
        )
    elif auth != "NoClientCert" and not section.get("client_ca_file"):
        problems.append(f"{where}.client_ca_file: required with client_auth_type {auth}")
    if problems:
        return None
    base = path.parent
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = _TLS_VERSIONS[versions[0] or "TLS12"]
    if versions[1]:
        ctx.maximum_version = _TLS_VERSIONS[versions[1]]
    try:
        ctx.load_cert_chain(base / section["cert_file"], base / section["key_file"])
        if auth != "NoClientCert":
            ctx.load_verify_locations(cafile=base / section["client_ca_file"])
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{where}: cannot load certificate or key: {exc}")
        return None
    ctx.verify_mode = _CLIENT_AUTH[auth]
    return ctx


def _users(section: Any, path: Path, problems: list[str]) -> dict[str, bytes]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.append(f"{path}: basic_auth_users: must be a mapping of user to bcrypt hash")
        return {}
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not (isinstance(user, str) and isinstance(hashed, str) and hashed.startswith("$2")):
            problems.append(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2...)")
        else:
            users[user] = hashed.encode("ascii")
    return users


class _Authenticator:
    """Checks basic-auth credentials against bcrypt hashes; remembers successes.

    A bcrypt check costs tens of milliseconds on purpose; a scrape every 15 s would pay it
    each time, so verified (user, password) pairs are remembered as a salted digest.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        # Compared against for unknown users; made only when auth is on (it costs ~70 ms).
        self._dummy = bcrypt.hashpw(b"-", bcrypt.gensalt(rounds=10)) if users else b""
        self._salt = bcrypt.gensalt()
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        user, password = _parse_basic(header)
        if user is None or password is None:
            return False
        hashed = self._users.get(user)
        digest = hashlib.sha256(self._salt + user.encode() + b"\0" + password).digest()
        with self._lock:
            if hashed is not None and digest in self._verified:
                return True
        # Unknown users cost a bcrypt check too, so timing does not reveal who exists.
        try:
            ok = bcrypt.checkpw(password, hashed or self._dummy) and hashed is not None
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes; so do we
            return False
        if ok:
            with self._lock:
                self._verified.add(digest)
        return ok


def _parse_basic(header: str | None) -> tuple[str | None, bytes | None]:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None, None
    return user.decode("utf-8", "replace"), password


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    health: HealthServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Port scanners and plain-HTTP clients on a TLS port are not worth a traceback.
        log.debug("health endpoint: request from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "cdc-agent"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # here, on this thread, not in the accept loop

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health endpoint: " + format, *args)

    def _respond(self, head: bool) -> None:
        health = self.server.health
        if health.auth.enabled and not health.auth.check(self.headers.get("Authorization")):
            challenge = {"WWW-Authenticate": 'Basic realm="cdc-agent"'}
            self._send(HTTPStatus.UNAUTHORIZED, b"unauthorized\n", head, extra=challenge)
            return
        route = self.path.split("?", 1)[0]
        if route == "/metrics":
            body, content_type = health.metrics.exposition(self.headers.get("Accept"))
            self._send(HTTPStatus.OK, body, head, content_type)
        elif route == "/livez":
            alive = _safely(health.liveness, False)
            status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, b"ok\n" if alive else b"main loop stalled\n", head)
        elif route == "/readyz":
            failed: str | None = "readiness check failed"
            reason = _safely(health.readiness, failed)
            status = HTTPStatus.OK if reason is None else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, f"{reason or 'ok'}\n".encode(), head)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found: try /metrics, /livez, /readyz\n", head)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        head: bool,
        content_type: str = "text/plain; charset=utf-8",
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _safely(check: Callable[[], _T], fallback: _T) -> _T:
    """A failing check means 'not healthy', not a 500 with a traceback."""
    try:
        return check()
    except Exception:
        log.warning("health check %r raised", check, exc_info=True)
        return fallback


class HealthServer:
    """Serves the metrics and health endpoints on a background thread."""

    def __init__(
        self,
        metrics: Metrics,
        liveness: Liveness,
        readiness: Readiness,
        web_config: WebConfig | None = None,
    ) -> None:
        """Nothing listens until :meth:`start`."""
        self.metrics = metrics
        self.liveness = liveness
        self.readiness = readiness
        self.web_config = web_config or WebConfig()
        self.auth = _Authenticator(self.web_config.users)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); port 0 at start picks a free one."""
        if self._httpd is None:
            raise RuntimeError("health server not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve; raises OSError if the address is taken. Returns the bound address."""
        if self._httpd is not None:
            raise RuntimeError("health server already started")
        server_class = _Server6 if ":" in host else _Server
        httpd = server_class((host, port), _Handler)
        httpd.health = self
        if self.web_config.tls is not None:
            httpd.socket = self.web_config.tls.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="health", daemon=True
        )
        self._thread.start()
        tls = " with TLS" if self.web_config.tls else ""
        log.info("serving /metrics, /livez, /readyz on %s port %d%s", *self.address, tls)
        return self.address

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)


__all__ = [
    "HealthServer",
    "Liveness",
    "LoopWatch",
    "Readiness",
    "WebConfig",
    "load_web_config",
]
