"""TLS to both engines with a test CA made by the ``openssl`` command line tool.

A server certificate issued for another host must be rejected, the right one accepted:
PostgreSQL with ``sslmode=verify-full sslrootcert=...`` in the dsn, MySQL/MariaDB with
``tls: {ca, verify_identity: true}``. Each engine runs as a dedicated server whose
certificate is swapped in place (PostgreSQL re-reads it on reload, MariaDB on FLUSH SSL).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import AgentError, PermanentError
from connectors.mysql import MysqlParams
from connectors.mysql.catalog import MyInspector
from connectors.postgres.catalog import PgInspector
from tests.server_process import chown_tree, is_root
from tests.servers import HOST, MariaServer, PgServer


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path) -> Path:
    """A self-signed CA; returns its certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", directory / "ca.key", "-out", directory / "ca.crt",
             "-days", "2", "-subj", "/CN=cdc-agent test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return directory / "ca.crt"


def issue(ca_dir: Path, name: str, alt_names: str) -> tuple[Path, Path]:
    """A server certificate signed by the CA in ``ca_dir`` for ``alt_names``; (cert, key)."""
    key, csr, cert = (ca_dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    extensions = ca_dir / f"{name}.ext"
    extensions.write_text(f"subjectAltName={alt_names}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_dir / "ca.crt", "-CAkey", ca_dir / "ca.key",
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions)
    return cert, key


def install(cert: Path, key: Path, into: Path, owner: str) -> None:
    """Copy a certificate and key where the server reads them (owner-only key, as required)."""
    into.mkdir(exist_ok=True)
    shutil.copyfile(cert, into / "server.crt")
    shutil.copyfile(key, into / "server.key")
    (into / "server.key").chmod(0o600)
    if is_root():
        chown_tree(into, owner)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, tuple[Path, Path] | Path]:
    ca = make_ca(tmp_path / "ca")
    return {
        "ca": ca,
        "right": issue(ca.parent, "right", f"IP:{HOST},DNS:localhost"),
        "wrong": issue(ca.parent, "wrong", "DNS:erp.wrong.example,DNS:crm.wrong.example"),
    }


def _pair(certs: dict[str, tuple[Path, Path] | Path], which: str) -> tuple[Path, Path]:
    pair = certs[which]
    assert isinstance(pair, tuple)
    return pair


def test_postgresql_verify_full(pg_server_factory: Callable[..., PgServer],
                                certificates: dict[str, tuple[Path, Path] | Path]) -> None:
    server = pg_server_factory(start=False)
    tls = server.root / "tls"
    install(*_pair(certificates, "wrong"), tls, server.os_user)
    server.update_settings({"ssl": True, "ssl_cert_file": str(tls / "server.crt"),
                            "ssl_key_file": str(tls / "server.key")})
    server.start()
    conninfo = server.dsn(sslmode="verify-full", sslrootcert=str(certificates["ca"]))

    with pytest.raises(AgentError) as refused:
        PgInspector(conninfo).close()
    assert "does not match host name" in str(refused.value), refused.value
    assert isinstance(refused.value, PermanentError)  # fail fast: retrying cannot help
    assert server.password not in str(refused.value)

    install(*_pair(certificates, "right"), tls, server.os_user)
    server.reload()
    with PgInspector(conninfo) as inspector:
        assert inspector.ssl_in_use()


def test_mariadb_ca_and_identity(maria_server_factory: Callable[..., MariaServer],
                                 certificates: dict[str, tuple[Path, Path] | Path]) -> None:
    server = maria_server_factory(start=False)
    tls = server.root / "tls"
    install(*_pair(certificates, "wrong"), tls, server.os_user)
    server.update_options({"ssl_cert": str(tls / "server.crt"),
                           "ssl_key": str(tls / "server.key")})
    server.start()
    params = MysqlParams(host=server.host, port=server.port, user=server.user,
                         password=server.password, database="mysql",
                         tls_ca=str(certificates["ca"]), tls_verify_identity=True)

    with pytest.raises(AgentError) as refused:
        MyInspector(params).close()
    assert "certificate" in str(refused.value).lower(), refused.value
    assert isinstance(refused.value, PermanentError)  # fail fast: retrying cannot help
    assert server.password not in str(refused.value)

    install(*_pair(certificates, "right"), tls, server.os_user)
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("FLUSH SSL")
    finally:
        conn.close()
    with MyInspector(params) as inspector:
        assert (inspector.tls_version() or "").startswith("TLSv1.")
