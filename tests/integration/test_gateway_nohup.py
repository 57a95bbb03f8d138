"""A gateway started to outlive its terminal (`nohup`: SIGHUP ignored) keeps running when the terminal closes (a
review): handling SIGHUP as a stop request undid nohup, and a gateway started so stopped at the hangup, its
protective orders unwatched. Without nohup a hangup is a clean stop (tests/integration/test_spine.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def test_a_nohup_gateway_outlives_its_terminal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tools", "gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make"]
    log = open(tmp_path / "gateway.log", "wb")
    gw = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
    )
    try:
        wait_for(lambda: (run / "gateway.json").exists(), 30, what="the gateway up")
        wait_for(lambda: fetch_status(run, 2.0) is not None, 20, what="the gateway answering")
        gw.send_signal(signal.SIGHUP)
        # a stop would begin at once (its first line, then the process gone within a second or two): none in 3 s
        with pytest.raises(AssertionError, match="timed out"):
            wait_for(lambda: gw.poll() is not None or b"gateway stopping" in (tmp_path / "gateway.log").read_bytes(), 3)
        assert fetch_status(run, 5.0).gateway_pid == gw.pid
    finally:
        gw.terminate()
        gw.wait(20)
        log.close()
