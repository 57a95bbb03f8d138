"""A gateway that stalls (SIGSTOP, a long GC pause, a disk that hangs) longer than an agent's patience: the
agent's Register times out after 3 s and stays queued on its socket; the gateway, running again, takes it
late and answers the agent's heartbeats. The agent then looked healthy (online, heartbeats answered, orders
taken) with no market data subscribed, no snapshot and no replay: prints stopped and its strategy went on
deciding on the last one, and nothing told anyone. It must register again and get its prints back.

Real processes on loopback: the KIS twin, the gateway on it, one agent; read from the agent's log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Procs, approve, holds_for, start_gateway_on_twin, start_twin, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CODE = "000660"
CARD = f"""
id = "late"
name = "late"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["{CODE}"]
budget = 1_000_000
[subscriptions]
trades = true
[params]
every_s = 0.2
churn_s = 0.3
"""


def _on_twin(
    tmp_path: Path, procs: Procs, name: str, card_text: str
) -> tuple[Path, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The twin (prints every 0.2 s), the gateway on it, and the agent of `card_text` (approved): run dir, both."""
    run, gateway = start_gateway_on_twin(procs, tmp_path, start_twin(procs, tmp_path, "--tick-interval", "0.2"))
    card = tmp_path / f"{name}.toml"
    card.write_text(card_text)
    approve(run, card)
    return run, gateway, procs.start("agent", "run", str(card), "--run-dir", str(run), log_name=name)


def test_an_agent_whose_registration_the_stalled_gateway_took_late_gets_its_prints_back(
    tmp_path: Path, procs: Procs
) -> None:
    run, gateway, agent = _on_twin(tmp_path, procs, "late", CARD)

    def trades_since(offset: int) -> bool:
        return re.search(rf"SUBPROBE trade {CODE} \d+", procs.log(agent)[offset:]) is not None

    wait_for(lambda: trades_since(0), 30, what="trades reach the agent")
    snapshots = procs.log(agent).count("SNAPSHOT")
    os.kill(gateway.pid, signal.SIGSTOP)
    try:
        # the agent gives up on the gateway (3 leases of silence), registers, and that Register times out
        wait_for(lambda: "gateway not back yet" in procs.log(agent), 30, what="the agent's Register times out")
    finally:
        os.kill(gateway.pid, signal.SIGCONT)  # ... and the gateway takes it late
    resumed_at = len(procs.log(agent))
    wait_for(lambda: procs.log(agent).count("SNAPSHOT") > snapshots, 20, what="the agent registers again")
    wait_for(lambda: trades_since(resumed_at), 20, what="trades reach the agent again")
    assert "the last registration did not complete" in procs.log(agent)
    assert agent.poll() is None and gateway.poll() is None


SLOW_CARD = f"""
id = "slow"
name = "slow"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["{CODE}"]
[subscriptions]
trades = true
[params]
every_s = 0.2
slow_s = 0.7
"""


def test_a_strategy_slower_than_its_prints_keeps_its_lease_and_is_told_why(tmp_path: Path, procs: Procs) -> None:
    """on_trade taking 0.7 s against a 1 s lease, prints every 0.2 s: each drain of the SUB socket took several
    seconds, the heartbeat went out only after it, and the gateway let the agent go (its market data released)
    and took it back, over and over, the agent's log blaming the gateway. Heartbeats go between deliveries, and
    the log says which callback is slow; behind its prints, it gets the newest of each drain (a lease kept while
    delivering every print one by one let it fall behind without bound)."""
    run, gateway, agent = _on_twin(tmp_path, procs, "slow", SLOW_CARD)
    wait_for(lambda: "on_trade took" in procs.log(agent), 30, what="the slow callback is said")
    holds_for(lambda: "lease expired" not in procs.log(gateway), 5.0, interval=0.2, what="the agent's lease")
    log = procs.log(agent)
    assert "the gateway's lease is 1.0 s" in log and "conflate" in log
    assert log.count("on_trade took") == 1  # said once a minute, not per call
    assert "reconnecting" not in log
    # ... and it does not fall behind without bound: once behind, the newest print of each drain is delivered
    assert log.count("FEED the strategy falls behind its prints") == 1
    wait_for(lambda: (a := fetch_status(run, 3.0).agents) and a[0].feed.conflated > 0, 10, what="conflated prints")
    from tools.ops.status import market_data_lines

    wait_for(
        lambda: any("BEHIND their prints" in ln and "slow" in ln for ln in market_data_lines(fetch_status(run, 3.0))),
        10,
        what="the status says it is behind",
    )
