"""`ktrader reset` archives state, never while the gateway lives, and asks first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.connection import GatewayInfo, write_info
from tests.conftest import ROOT
from tools.reset import ResetRefused, archive_run_dir


def test_archive_and_refusal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    (run / "db" / "gateway.sqlite").write_text("x")
    (run / "README.md").write_text("keep")
    write_info(run, GatewayInfo(router="ipc://x", pub="ipc://y", key="ab" * 32, pid=os.getpid(), session="s" * 32, started_ns=0))
    with pytest.raises(ResetRefused, match="running"):
        archive_run_dir(run)  # this very process plays the live gateway
    (run / "gateway.json").unlink()
    dest = archive_run_dir(run)
    assert dest is not None and (dest / "db" / "gateway.sqlite").read_text() == "x"
    assert sorted(p.name for p in run.iterdir()) == ["README.md"]
    assert archive_run_dir(run) is None


def test_cli_asks_for_confirmation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    no = subprocess.run([sys.executable, "-m", "tools", "reset", "--run-dir", str(run)], cwd=ROOT, input="n\n",
                        capture_output=True, text=True, timeout=30)
    assert no.returncode == 1 and (run / "logs").exists()
    yes = subprocess.run([sys.executable, "-m", "tools", "reset", "--run-dir", str(run)], cwd=ROOT, input="y\n",
                         capture_output=True, text=True, timeout=30)
    assert yes.returncode == 0 and "archived to" in yes.stdout and not (run / "logs").exists()
