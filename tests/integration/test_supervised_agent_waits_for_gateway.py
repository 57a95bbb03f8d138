"""A supervised agent started while its gateway is down (real processes: `ktrader agent run --gateway-wait`, a
gateway on the fake broker): each run waits `--gateway-wait` seconds and exits EXIT_GATEWAY_ABSENT; the supervisor
starts it again, past its crash-loop limit, shown as waiting for the gateway, and the agent registers once the
gateway is up. It used to give up after `max_restarts` such exits and stay down for good."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime import EXIT_GATEWAY_ABSENT
from tests.conftest import Procs, approve, holds_for, wait_for
from tools.ops.procs import child_env, ktrader_cmd
from tools.ops.status import fetch_status
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor

pytestmark = pytest.mark.integration

CARD = 'id = "early"\nname = "early"\nstrategy = "tests.strategies.subprobe:SubProbe"\ncodes = ["005930"]\n'
POLICY = RestartPolicy(base_s=0.05, cap_s=0.2, max_restarts=2, window_s=60, stable_s=30, stop_grace_s=5)


def _online(run: Path, agent_id: str) -> bool:
    try:
        agents = fetch_status(run, 2.0).agents
    except Exception:  # the gateway is starting: ask again
        return False
    return any(a.id == agent_id and a.state == "online" for a in agents)


def test_a_supervised_agent_started_before_its_gateway_joins_it_when_it_is_up(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    card = tmp_path / "early.toml"
    card.write_text(CARD)
    approve(run, card)

    def command(c: Path, run_dir: Path) -> list[str]:
        return ktrader_cmd("agent", "run", str(c), "--run-dir", str(run_dir), "--gateway-wait", "0.3")

    sup = Supervisor(run, policy=POLICY, command=command, env=child_env())
    try:
        s = sup.start(card)
        # more restarts than the crash-loop limit, each a run that found no gateway
        wait_for(
            lambda: s.restarts > 2 * POLICY.max_restarts or s.state is ProcState.GAVE_UP,
            60,
            what="restarts while the gateway is down",
        )
        assert s.state is not ProcState.GAVE_UP, s.reason
        assert s.last_exit == EXIT_GATEWAY_ABSENT and sup.is_supervised("early"), (s.last_exit, s.reason)
        wait_for(lambda: s.state is ProcState.NO_GATEWAY, 10, what="shown waiting for the gateway")
        procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
        wait_for(lambda: _online(run, "early"), 30, interval=0.1, what="the agent registered with the gateway")
        assert s.state is ProcState.RUNNING, (s.state, s.reason)
    finally:
        sup.stop_all()


def test_an_agent_waiting_for_its_gateway_registers_once(tmp_path: Path, procs: Procs) -> None:
    """(a hunt) Started before its gateway, the agent took the gateway's first connection file for 'a new gateway'
    and registered a second time with it."""
    run = tmp_path / "run"
    card = tmp_path / "early.toml"
    card.write_text(CARD)
    approve(run, card)
    agent = procs.start("agent", "run", str(card), "--run-dir", str(run), "--gateway-wait", "30", log_name="early")
    wait_for(lambda: (run / "locks" / "early.pid").exists(), 15, what="the agent waiting for a gateway")
    gateway = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: _online(run, "early"), 30, interval=0.1, what="the agent registered with the gateway")
    wait_for(lambda: "registered" in procs.log(gateway), 5, what="the gateway's registration line")
    holds_for(
        lambda: (
            procs.log(gateway).count("agent early registered") == 1
            and "a new gateway wrote its connection file" not in procs.log(agent)
        ),
        3.0,
        what="one registration (a heartbeat or more later)",
    )
