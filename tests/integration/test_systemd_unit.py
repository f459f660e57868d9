"""The systemd unit, sysusers and tmpfiles files, checked offline with systemd's own tools.

No systemd runs as PID 1 here: ``systemd-analyze verify`` and ``security --offline=yes``,
``systemd-sysusers --root`` and ``systemd-tmpfiles --root`` all work on files alone.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "cdc-agent.service"
SYSUSERS = ROOT / "systemd" / "cdc-agent.sysusers.conf"
TMPFILES = ROOT / "systemd" / "cdc-agent.tmpfiles.conf"
INSTALLED_BINARY = "/opt/cdc-agent/bin/cdc-agent"
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    """Path of a systemd tool; in CI (where bootstrap installs it) its absence is a failure."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; scripts/install-ops-tools.sh installs it")
        pytest.skip(f"{name} is not installed (bash scripts/install-ops-tools.sh)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _testable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart's binary swapped for one that exists on this machine.

    verify checks that the command is executable; the agent is installed under /opt only on
    a real host. Everything else in the unit stays as shipped.
    """
    text = UNIT.read_text() if text is None else text
    assert f"ExecStart={INSTALLED_BINARY} run --config /etc/cdc-agent/agent.yaml" in text
    local = Path(sys.executable).parent / "cdc-agent"
    binary = str(local) if local.exists() else "/bin/true"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY}", f"ExecStart={binary}"))
    return copy


def _findings(result: subprocess.CompletedProcess[str], unit: Path) -> list[str]:
    """verify exits 0 even for unknown keys; what it says about our file is what counts."""
    output = (result.stdout + result.stderr).splitlines()
    return [line for line in output if unit.name in line or str(unit.parent) in line]


def test_verify_is_clean(tmp_path: Path) -> None:
    unit = _testable_copy(tmp_path)
    result = _run(_tool("systemd-analyze"), "verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert _findings(result, unit) == []


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    unit = _testable_copy(tmp_path, broken)
    result = _run(_tool("systemd-analyze"), "verify", str(unit))
    assert any("NoNewPrivilege" in line for line in _findings(result, unit))


def _exposure(unit: Path) -> float:
    result = _run(_tool("systemd-analyze"), "security", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_security_exposure_is_low(tmp_path: Path) -> None:
    assert _exposure(_testable_copy(tmp_path)) <= MAX_EXPOSURE


def test_security_score_reacts_to_hardening(tmp_path: Path) -> None:
    """The score is really parsed from this unit: dropping the hardening raises it."""
    bare = "\n".join(
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    )
    assert _exposure(_testable_copy(tmp_path, bare)) > MAX_EXPOSURE


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#") and not line.startswith("["):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_contract_directives() -> None:
    """What DESIGN.md section 6 and the daemon rely on."""
    unit = _directives(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["78 69"]
    assert unit["User"] == ["cdc-agent"]
    assert unit["LoadCredential"] == [
        "crm:/etc/cdc-agent/credentials/crm",
        "erp:/etc/cdc-agent/credentials/erp",
    ]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "IPAddressDeny" not in unit  # the agent must reach its databases


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = _run(_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    [entry] = [line for line in passwd.splitlines() if line.startswith("cdc-agent:")]
    fields = entry.split(":")
    assert int(fields[2]) < 1000  # a system user
    assert fields[6] == "/usr/sbin/nologin"


def test_tmpfiles_creates_a_root_only_credentials_directory(tmp_path: Path) -> None:
    result = _run(_tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    credentials = tmp_path / "etc" / "cdc-agent" / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o755
