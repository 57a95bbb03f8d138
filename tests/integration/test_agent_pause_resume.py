"""on_error = "pause" end to end: a callback that raised after queueing leg 1 of a pair sends nothing; the
agent pauses, says so in its heartbeats (the operator's status shows why, and the agent REDUCING); the
operator's `ktrader control resume --agent ID` reaches it (a TRADING_STATE event) and it trades again.
Real processes: a gateway on the in-process fake broker and one agent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.schema import AgentStatus
from tests.conftest import ROOT, Procs, approve, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CARD = """
id = "pp"
name = "pp"
strategy = "tests.strategies.pause_probe:PauseProbe"
codes = ["005930"]
budget = 10_000_000
on_error = "pause"
"""


def _start(tmp_path: Path, procs: Procs, name: str, card_text: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """A gateway (in-process fake broker) and the agent of `card_text` (approved): its run dir and process."""
    run = tmp_path / "run"
    procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 20, what="gateway.json")
    card = tmp_path / f"{name}.toml"
    card.write_text(card_text)
    approve(run, card)
    return run, procs.start("agent", "run", str(card), "--run-dir", str(run), log_name=name)


def _agent(run: Path) -> AgentStatus:
    return next(a for a in fetch_status(run, 3.0).agents if a.id == "pp")


def test_a_paused_agent_sends_nothing_until_the_operator_resumes_it(tmp_path: Path, procs: Procs) -> None:
    run, agent = _start(tmp_path, procs, "pp", CARD)
    wait_for(lambda: "PAUSED (" in procs.log(agent), 20, what="the agent pauses")
    assert "PAUSEPROBE leg1" in procs.log(agent)
    wait_for(lambda: _agent(run).feed.paused, 10, what="the pause in the operator's status")
    status = _agent(run)
    assert "bug computing leg 2" in status.feed.paused and status.trading_state == "reducing"
    assert status.orders_today == 0 and status.open_orders == 0  # leg 1 never left the agent
    assert "PAUSEPROBE placed" not in procs.log(agent)
    resume = subprocess.run(
        [sys.executable, "-m", "tools.cli", "control", "resume", "--agent", "pp", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert resume.returncode == 0, resume.stderr
    wait_for(lambda: "RESUMED by the operator" in procs.log(agent), 10, what="the resume reaches the agent")
    wait_for(lambda: "PAUSEPROBE placed" in procs.log(agent), 10, what="the agent trades again")
    wait_for(lambda: _agent(run).orders_today == 1 and not _agent(run).feed.paused, 10, what="status after resume")
    assert _agent(run).trading_state == "active" and agent.poll() is None
    # the operator's journal is shown (it was written only): who did what, when, and its outcome
    [line] = [a for a in fetch_status(run, 3.0).operator_actions if " resume " in a]
    from tools.ops.status import operator_id

    assert f"ktrader-control ({operator_id()}) resume pp: " in line, line


STORM_CARD = """
id = "storm"
name = "storm"
strategy = "tests.strategies.deny_storm:DenyStorm"
codes = ["005930"]
budget = 100_000
"""


def test_a_strategy_retrying_a_denied_order_on_every_tick_is_held_back_at_the_source(
    tmp_path: Path, procs: Procs
) -> None:
    """A buy over the budget retried every 10 ms: each denial was journaled (intent, context, reason) and logged
    twice, without end (the hunt measured ~5 MB/s of store). From STORM denials of one code and side the agent
    refuses such orders itself (the strategy hears them denied) and lets one through every PROBE_S; it is not
    paused, and its other orders go."""
    from agent.denials import PROBE_S, STORM

    run, agent = _start(tmp_path, procs, "storm", STORM_CARD)
    wait_for(lambda: "not sent: the gateway denied" in procs.log(agent), 30, what="the storm held back")
    log = procs.log(agent)
    said = re.search(
        r"buy 005930 orders \(limit, qty 10\) not sent: the gateway denied (\d+) of them within 60 s \(DENIED_BUDGET",
        log,
    )
    assert said is not None and int(said.group(1)) >= STORM, log[-2000:]
    wait_for(lambda: "DENYSTORM sent 300" in procs.log(agent), 30, what="the strategy retrying on")
    st = _agent_named(run, "storm")
    assert st.trading_state == "active" and not st.feed.paused
    stored = st.orders_today
    assert STORM <= stored < STORM + 10 + 300 * 0.01 / PROBE_S + 2  # (a few in flight, then a probe each PROBE_S)
    wait_for(lambda: "DENYSTORM sent 600" in procs.log(agent), 30, what="the strategy retrying on")
    assert _agent_named(run, "storm").orders_today <= stored + 2  # ~3 s of retries: at most a probe or two
    assert procs.log(agent).count("not sent: the gateway denied") == 1  # said once a minute, not per order
    wait_for(lambda: _agent_named(run, "storm").feed.held_back > 100, 10, what="the count in its status")
    assert agent.poll() is None


def _agent_named(run: Path, agent: str) -> AgentStatus:
    return next(a for a in fetch_status(run, 3.0).agents if a.id == agent)


RAISER_CARD = """
id = "raiser"
name = "raiser"
strategy = "tests.strategies.deny_storm:Raiser"
codes = ["005930"]
on_error = "continue"
"""


def test_a_strategy_raising_on_every_call_shows_in_the_status_and_logs_one_traceback(
    tmp_path: Path, procs: Procs
) -> None:
    """A callback raising every time: the status and the console's "last error" were empty (the count only in
    `status --json`), and the agent's log took a full traceback per call. Now the status names the error and
    how often, and the log has its traceback once, then a line a minute."""
    run, agent = _start(tmp_path, procs, "raiser", RAISER_CARD)
    wait_for(lambda: _agent_named(run, "raiser").errors >= 20, 30, what="the errors counted in the status")
    last = _agent_named(run, "raiser").last_error
    assert last.startswith("strategy error (") and "so far)" in last
    assert "ValueError in on_timer: my signal divided by a zero" in last
    log = procs.log(agent)
    assert log.count("Traceback") == 1 and log.count("strategy error in on_timer") == 1, log[-3000:]
    assert agent.poll() is None
