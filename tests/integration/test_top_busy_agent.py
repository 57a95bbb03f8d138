"""The console's stop and restart of an agent started by hand that is busy in a long callback (hunt).

"offline" is the gateway's view of the agent's lease, not proof that its process is gone: a process blocked in a
callback holds its agent lock. The console's restart said "restarted under the supervisor" while the copy it
started exited at once (the lock held) and, once the old one honoured its SIGTERM, nothing ran; its stop said
"is not running" about a live process. Now the stop signals the lock's holder, and a restart whose old process
has not exited says so and starts nothing.

Real processes: the KIS twin, the gateway, one agent started by hand (blocked 30 s in each on_trade)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import Procs, approve, start_gateway_on_twin, start_twin, wait_for
from tools.ops.procs import signal_group
from tools.ops.status import fetch_status
from tools.ops.supervisor import Supervisor
from tools.top import model as model_module
from tools.top.model import ActionError, ConsoleModel

pytestmark = pytest.mark.integration

CARD = """
id = "slow"
name = "slow"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["000660"]
[subscriptions]
trades = true
[params]
slow_s = 30.0
"""


def test_stop_and_restart_of_a_hand_started_agent_busy_in_a_callback(
    tmp_path: Path, procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_module, "STOP_WAIT_S", 2.0)  # (the console's wait, shortened: the callback takes 30 s)
    info = start_twin(procs, tmp_path, "--tick-interval", "0.2")
    run, _ = start_gateway_on_twin(procs, tmp_path, info, gateway_toml="offline_after_s = 2.0\n")  # (quicker)
    cards = tmp_path / "cards"
    cards.mkdir()
    card = cards / "slow.toml"
    card.write_text(CARD)
    approve(run, card)
    agent = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="slow")
    wait_for(lambda: "SUBPROBE start" in procs.log(agent), 30, what="the agent started")

    def state() -> str:
        return next((a.state for a in fetch_status(run, timeout_s=3.0).agents if a.id == "slow"), "")

    wait_for(lambda: state() == "offline", 60, what="the busy agent offline at the gateway")  # blocked in on_trade
    assert agent.poll() is None  # ... its process alive
    sup = Supervisor(run)
    try:
        model = ConsoleModel(run, supervisor=sup, cards_dir=cards)
        with pytest.raises(ActionError, match="has not exited after 2s.*not restarted") as err:
            model.restart_agent("slow")
        assert f"SIGTERM sent to pid {agent.pid}" in str(err.value)
        assert "slow" not in sup.agents  # no copy started to exit on the held lock
        assert agent.poll() is None or agent.returncode == 0
        if agent.poll() is None:  # (still in its callback) a stop is not "not running"
            assert f"SIGTERM sent to pid {agent.pid}" in model.stop_agent("slow")
        signal_group(agent, signal.SIGKILL)  # (it leaves once its callbacks return: not waited for here)
        agent.wait(10)
        with pytest.raises(ActionError, match="is not running"):
            model.stop_agent("slow")
    finally:
        sup.stop_all()
