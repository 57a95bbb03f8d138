"""The gateway's own loop held (a long commit, a swapped-out process, SIGSTOP): its agents' heartbeats wait in
its socket, unread. Their silence was counted as theirs: every lease ran out after a 1.6 s stall, and a 12 s one
paged "silent for 13s (crashed or cut off)" for live agents -- with no all-clear when they came back. Now the
stall is not counted; and an agent a person was told is offline is said back when it registers again.

Real processes on loopback: a gateway (in-process fake broker), a real agent with a resting order."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Procs, approve, holds_for, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CARD = """
id = "rest"
name = "rest"
strategy = "tests.strategies.scripted:Scripted"
codes = ["005930"]
budget = 10_000_000
[params]
orders = [{code="005930", side="buy", qty=5, price=60000}]
"""


def _start(tmp_path: Path, procs: Procs) -> tuple[Path, object, object]:
    run = tmp_path / "run"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("lease_s = 1.0\noffline_after_s = 2.0\n")
    gw = procs.start(
        "gateway", "--config", str(cfg), "--run-dir", str(run), "--broker", "tests.fakes.broker:make",
        log_name="gateway",
    )  # fmt: skip
    wait_for(lambda: (run / "gateway.json").exists(), 20, what="gateway.json")
    card = tmp_path / "rest.toml"
    card.write_text(CARD)
    approve(run, card)
    agent = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="rest")
    wait_for(lambda: any(a.open_orders == 1 for a in fetch_status(run, 3.0).agents), 20, what="the resting order")
    return run, gw, agent


def test_a_stalled_gateway_does_not_take_its_live_agents_for_dead(tmp_path: Path, procs: Procs) -> None:
    run, gw, agent = _start(tmp_path, procs)
    os.kill(gw.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        # the stall itself (its length is the scenario, nothing to wait for): longer than the lease and than
        # offline_after_s, shorter than the agent's own patience (3 leases)
        time.sleep(2.5)
    finally:
        os.kill(gw.pid, signal.SIGCONT)  # type: ignore[attr-defined]
    wait_for(lambda: "the gateway's loop was held for" in procs.log(gw), 10, what="the stall seen")
    holds_for(lambda: [a.state for a in fetch_status(run, 3.0).agents] == ["online"], 2.0, what="the agent online")
    log = procs.log(gw)
    assert "lease expired" not in log and "silent for" not in log, log[-3000:]


def test_an_agent_said_offline_is_said_back(tmp_path: Path, procs: Procs) -> None:
    run, gw, agent = _start(tmp_path, procs)
    os.kill(agent.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        wait_for(lambda: "agent rest silent for" in procs.log(gw), 20, what="the offline alert")
    finally:
        os.kill(agent.pid, signal.SIGCONT)  # type: ignore[attr-defined]
    wait_for(
        lambda: any("agent rest is back: registered again" in a for a in fetch_status(run, 3.0).alerts),
        20,
        what="the all-clear",
    )


def test_a_control_the_stalled_gateway_answers_late_is_outcome_unknown_not_error(tmp_path: Path, procs: Procs) -> None:
    """`ktrader control pause` to a stalled gateway printed "error: TIMEOUT" and exited 1 (the README's refusal)
    while a busy gateway applied the pause once it read it. No answer in time is "outcome unknown", exit 5."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tools.cli import EXIT_OUTCOME_UNKNOWN

    run, gw, agent = _start(tmp_path, procs)
    os.kill(gw.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tools", "control", "pause", "--agent", "rest", "--run-dir", str(run)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.kill(gw.pid, signal.SIGCONT)  # type: ignore[attr-defined]
    assert done.returncode == EXIT_OUTCOME_UNKNOWN, (done.returncode, done.stderr)
    assert done.stderr.startswith("outcome unknown:") and "check `ktrader status`" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # (a stopped process read nothing: here the request died with the tool's socket; a busy one reads it and
    # applies it late: either way the tool cannot know)
    assert [a.id for a in fetch_status(run, 5.0).agents] == ["rest"]
