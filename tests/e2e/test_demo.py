"""The scripted demo (`cdc-agent demo --scripted`) tells the whole story and cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).with_name("cdc-agent")
TEMPLATE = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
RESULT = re.compile(r"^\[(ok|FAILED|skipped)\] (\d)\. [^:]+: (.*)$", re.MULTILINE)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CDC_AGENT_CONFIG")}
    return subprocess.run([str(BIN), "demo", "--scripted", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)


def results(output: str) -> dict[int, tuple[str, str]]:
    return {int(n): (status, detail) for status, n, detail in RESULT.findall(output)}


def has_push() -> bool:
    done = subprocess.run([str(BIN), "push", "--help"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return done.returncode == 0


def leftovers(paths: list[str]) -> list[str]:
    """Processes whose command line or environment mention one of ``paths``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = ((entry / "cmdline").read_bytes() + (entry / "environ").read_bytes())
        except OSError:
            continue
        if any(path.encode() in text for path in paths):
            found.append(entry.name)
    return found


def places(output: str) -> list[str]:
    """The demo's directory and both servers' directories, as it printed them."""
    found = re.findall(r"(?:files in|agent log:) (/\S+)", output)
    return sorted({str(Path(p).parent) if p.endswith(".log") else p for p in found})


def test_the_scripted_demo_tells_the_story_and_removes_everything() -> None:
    done = run_demo()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    steps = results(output)
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], output
    assert all(status == "ok" for status, _ in (steps[n] for n in range(1, 6))), output

    assert re.fullmatch(r"account (\d+) \(Nordlicht Bäckerei GmbH\) is in the CRM only",
                        steps[1][1])
    created = re.fullmatch(r"ERP customer (\d+) created, number written back to the CRM",
                           steps[2][1])
    assert created and int(created[1]) > 10001, steps[2]
    assert steps[3][1] == "accounts.phone = '+49 40 5550999'"
    assert steps[4][1].startswith("billing_street back to 'Hafenstraße 12'")
    assert re.search(r"conflict \w+:\d+: customer \d+, field street, crm_to_erp: winner erp, "
                     r"resolution revert", output), output
    assert steps[5][1] == "phone = '+49 40 2222222' on both sides; winner erp"
    assert re.search(r"conflict \w+:\d+: customer \d+, field phone, \w+: winner erp, "
                     r"resolution newest", output), output
    if has_push():
        assert steps[6][0] == "ok", output
    else:
        assert steps[6] == ("skipped", "this build has no `cdc-agent push` yet"), output

    assert re.search(r"metrics: +http://127\.0\.0\.1:\d+/metrics", output), output
    assert "agent stopped (exit status 0)" in output
    started = places(output)
    assert len(started) == 3, output  # the demo directory and one per server
    assert not [p for p in started if Path(p).exists()], output
    assert not leftovers(started)


def test_a_step_whose_outcome_does_not_happen_fails_the_scripted_demo(tmp_path: Path) -> None:
    # The CRM's street edit is kept instead of reverted: step 4 must report it, exit 1.
    template = tmp_path / "demo.yaml"
    text = TEMPLATE.read_text()
    assert "on_foreign_change: revert" in text
    template.write_text(text.replace("on_foreign_change: revert", "on_foreign_change: keep"))
    done = run_demo("--template", str(template), "--accounts", "100")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    steps = results(output)
    assert steps[4][0] == "FAILED", output
    assert steps[5][0] == "ok", output  # the story goes on after a failed step


@pytest.mark.parametrize("argv", [["demo", "--help"]])
def test_the_demo_is_a_cli_command(argv: list[str]) -> None:
    done = subprocess.run([str(BIN), *argv], capture_output=True, text=True)
    assert done.returncode == 0 and "--scripted" in done.stdout
