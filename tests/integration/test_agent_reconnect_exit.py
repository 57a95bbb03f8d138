"""A running agent whose reconnect fails for good (its credential became unusable, or its CURVE keys)
exits with one plain line saying why and the exit code for it; it used to crash on the next loop with an
AttributeError traceback (its client was gone)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.runtime import EXIT_BAD_CARD
from common.credentials import credential_path
from tests.conftest import Procs, approve, wait_for

pytestmark = pytest.mark.integration

CARD = """
id = "lone"
name = "lone"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["005930"]
"""


def test_an_agent_that_cannot_reconnect_exits_with_one_line(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    gateway = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 20, what="gateway.json")
    card = tmp_path / "lone.toml"
    card.write_text(CARD)
    approve(run, card)
    agent = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="lone")
    wait_for(lambda: "SUBPROBE start" in procs.log(agent), 20, what="the agent runs")
    # its credential becomes unusable (readable by others: refused), then the gateway's connection file
    # changes (a new gateway, as the agent sees it): the agent reconnects and cannot
    credential_path(run, "lone").chmod(0o644)
    os.utime(run / "gateway.json")
    wait_for(lambda: agent.poll() is not None, 20, what="the agent exits")
    log = procs.log(agent)
    assert agent.returncode == EXIT_BAD_CARD, log[-2000:]
    assert "Traceback" not in log and "AttributeError" not in log
    assert re.search(r"ERROR .*lone has no credential: .* is readable by others", log)
    assert gateway.poll() is None
