"""A supervised agent killed -9 comes back although the gateway's lease outlives the old fixed 4 s
takeover wait: the restarted copy outwaits the crashed copy's lease (gateway.json states lease_s),
instead of exiting 'duplicate', which the supervisor used to take as "never restart".

Real processes: a gateway (in-process fake broker) with lease_s = 6, the agent under the supervisor."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import Procs, approve, wait_for
from tests.integration.test_spine import CARD_B
from tools.ops.procs import child_env
from tools.ops.status import fetch_status
from tools.ops.supervisor import ProcState, Supervisor


def _online(run: Path, agent_id: str, pid: int = 0) -> bool:
    try:
        agents = fetch_status(run, 2.0).agents
    except Exception:  # the gateway is busy or not answering yet: ask again
        return False
    return any(a.id == agent_id and a.state == "online" and (not pid or a.pid == pid) for a in agents)


def test_crashed_agent_is_back_when_the_lease_outlives_the_old_takeover_wait(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    run, cards = tmp_path / "run", tmp_path / "cards"
    cards.mkdir()
    (cards / "bravo.toml").write_text(CARD_B)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("lease_s = 6.0\n")
    sup = Supervisor(run, env=child_env())
    try:
        procs.start(
            "gateway",
            "--config",
            str(cfg),
            "--run-dir",
            str(run),
            "--broker",
            "tests.fakes.broker:make",
            log_name="gateway",
        )
        wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
        approve(run, cards / "bravo.toml")
        s = sup.start(cards / "bravo.toml")
        wait_for(lambda: _online(run, "bravo"), 20, what="bravo online")
        first = s.pid
        os.kill(first, signal.SIGKILL)  # a crash: its lease stays live at the gateway for up to 6 s
        wait_for(lambda: s.pid != first, 10, what="the supervisor restarted it")
        # the new copy waits out the 6 s lease and takes over (it exited 4 after 4 s, for good)
        wait_for(lambda: _online(run, "bravo", s.pid), 30, what="bravo online again, the new process")
        assert s.state is ProcState.RUNNING and s.restarts == 1, (s.state, s.restarts, s.last_exit, s.reason)
    finally:
        sup.stop_all()
        procs.stop_all()
