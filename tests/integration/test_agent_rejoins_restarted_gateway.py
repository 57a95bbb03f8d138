"""A gateway killed and started again after the running agent noticed it was gone (real processes on the fake
broker, over ipc): the agent's Register, queued on its socket while the gateway was down, is answered by the new
gateway, signed with its new key. The agent reads the new gateway.json at once and registers again: it is back
within a second, and the new gateway never expires its lease on the way (it used to drop the reply as a bad frame,
time out after 3 s, and in between the gateway expired its lease: AGENT_OFFLINE, its market data released)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Procs, approve, holds_for, wait_for

pytestmark = pytest.mark.integration

CARD = """
id = "comeback"
name = "comeback"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["005930"]
"""


def _gateway(procs: Procs, run: Path, name: str):
    return procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name=name)


def test_an_agent_whose_register_waited_for_a_new_gateway_is_back_without_losing_its_lease(
    tmp_path: Path, procs: Procs
) -> None:
    run = tmp_path / "run"
    gw = _gateway(procs, run, "gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 20, what="gateway.json")
    card = tmp_path / "comeback.toml"
    card.write_text(CARD)
    approve(run, card)
    agent = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="agent")
    wait_for(lambda: "SUBPROBE start" in procs.log(agent), 20, what="the agent runs")

    os.killpg(gw.pid, signal.SIGKILL)  # gateway.json stays: the agent's next Register uses the old key
    gw.wait(10)
    wait_for(lambda: "no reply from the gateway" in procs.log(agent), 15, interval=0.02, what="the agent reconnects")
    gw2 = _gateway(procs, run, "gateway2")  # while that Register waits for an answer
    registered = re.compile(r"agent comeback registered")
    wait_for(lambda: registered.search(procs.log(gw2)), 20, interval=0.02, what="the agent registered with gw2")
    t0 = time.monotonic()
    wait_for(
        lambda: len(re.findall(r"\bSNAPSHOT ", procs.log(agent))) >= 2,
        10,
        interval=0.02,
        what="the agent's registration with the new gateway completed",
    )
    took = time.monotonic() - t0
    # a lease is 1 s: past it, the agent's heartbeats are what keep it
    holds_for(lambda: "lease expired" not in procs.log(gw2), 2.0, what="the agent's lease on the new gateway")
    assert "no reply to Register" not in procs.log(agent), procs.log(agent)[-3000:]
    # (the Register answered, not timed out and sent again: that is the log line above; the bound is loose for a
    # loaded machine)
    assert took < 3.0, (took, procs.log(agent)[-3000:])
    assert agent.poll() is None and gw2.poll() is None
