"""`ktrader demo --headless`: the gateway on its embedded KIS twin (real HTTP + websocket through the
KIS adapter), every sample card as its own agent process, and a healthy summary."""

from __future__ import annotations

import subprocess
import sys
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_headless_demo_is_healthy(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools", "demo", "--headless", "--duration", "12", "--run-dir", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "healthy: every agent online" in out
    assert "sim:EmbeddedTwinBroker" in out and "session ready" in out
    assert re.search(r"gateway pid \d+  up \d+s", out), out  # its uptime (not "?")
    cards = sorted(p.stem for p in (ROOT / "cards").glob("*.toml"))
    for card in cards:
        assert card[:6] in out  # each sample agent is in the summary
    logs = tmp_path / "run" / "logs"
    assert (logs / "gateway.log").exists()
    # no process was left behind holding the agent locks
    for card in cards:
        lock_pid = tmp_path / "run" / "locks" / f"{card}.pid"
        assert not lock_pid.exists()
