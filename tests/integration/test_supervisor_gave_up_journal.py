"""A crash loop the supervisor gives up is in `ktrader status` (README: "given up and shown in ktrader status").

(a hunt) Only the console that ran the supervisor said "gave up": status showed a plain offline row, as for an
agent stopped on purpose, and the gateway alerted nothing (a crash sends no Unregister). The supervisor now writes
it to the gateway's operator journal, which status shows.

Real processes: the KIS twin, the gateway, a supervised stand-in agent that fails at once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import Procs, start_gateway_on_twin, start_twin, wait_for
from tools.ops.status import fetch_status
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor

pytestmark = pytest.mark.integration

CARD = """
id = "crashy"
name = "crashy"
strategy = "agent.strategies.ma_cross:MaCross"
codes = ["005930"]
"""


def crashing(card: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; print('RuntimeError: no quotes for 005930'); sys.exit(1)"]


def test_a_crash_loop_given_up_is_in_the_operator_journal_status_shows(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path)
    run, _ = start_gateway_on_twin(procs, tmp_path, info)
    card = tmp_path / "crashy.toml"
    card.write_text(CARD)
    sup = Supervisor(run, policy=RestartPolicy(base_s=0.05, cap_s=0.1, max_restarts=2), command=crashing)
    try:
        sup.start(card)
        wait_for(lambda: sup.agents["crashy"].state is ProcState.GAVE_UP, 30, what="the supervisor gives up")
        wait_for(
            lambda: any("crash loop given up" in t for t in fetch_status(run, timeout_s=3.0).operator_actions),
            15,
            what="the crash loop in status's operator journal",
        )
        [line] = [t for t in fetch_status(run, timeout_s=3.0).operator_actions if "crash loop" in t]
        assert "restarts" in line and "ktrader-supervisor" in line and "crashy" in line, line
    finally:
        sup.stop_all()
