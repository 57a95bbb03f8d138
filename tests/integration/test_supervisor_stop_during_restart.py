"""A stop (x in the console, or its quit) that lands while the supervisor starts a crashed agent again stops the new
process too (a hunt): the stop found the old process gone and the new one not yet there, said "stopped", and the
agent ran on. Real processes: a stand-in agent that fails once, then runs; its second start is held until the stop is
asked, so the stop always lands in that window."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tools.ops import supervisor as supervisor_module
from tools.ops.supervisor import ProcState, RestartPolicy, Supervised, Supervisor

pytestmark = pytest.mark.integration

CARD = 'id = "flaky"\nname = "flaky"\nstrategy = "agent.strategies.ma_cross:MaCross"\ncodes = ["005930"]\n'


def _held_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str, crash_first: bool
) -> tuple[Supervisor, Supervised, list[int]]:
    """A supervisor of `agent` (a process that fails once first when `crash_first`, then runs), whose second
    process is held at its start until the operator's stop has been asked: the stop always lands in that window."""
    card = tmp_path / f"{agent}.toml"
    card.write_text(CARD.replace("flaky", agent))
    runs: list[int] = []

    def command(card_path: Path, run_dir: Path) -> list[str]:
        runs.append(1)
        code = "import sys; sys.exit(1)" if crash_first and len(runs) == 1 else "import time; time.sleep(60)"
        return [sys.executable, "-c", code]

    sup = Supervisor(tmp_path / "run", policy=RestartPolicy(base_s=0.05, stop_grace_s=2.0), command=command)
    real_popen = subprocess.Popen

    def popen(*a, **k):  # type: ignore[no-untyped-def]
        if len(runs) >= 2:  # the restart's new process: held until the operator's stop has been asked
            wait_for(lambda: sup.agents[agent]._stop.is_set(), 10, what="the stop asked")
        return real_popen(*a, **k)

    monkeypatch.setattr(supervisor_module.subprocess, "Popen", popen)
    return sup, sup.start(card), runs


def _stopped_in_the_window(
    sup: Supervisor, s: Supervised, runs: list[int], restart: Callable[[], None] = lambda: None
) -> None:
    try:
        restart()
        wait_for(lambda: len(runs) >= 2, 10, what="the restart under way")
        stopper = threading.Thread(target=sup.stop, args=(s.id,))
        stopper.start()
        stopper.join(20)
        wait_for(lambda: s._proc is not None and s._proc.poll() is not None, 10, what="the new process stopped")
        assert s.state is ProcState.STOPPED, (s.state, s.reason)
    finally:
        if s._proc is not None and s._proc.poll() is None:
            s._proc.kill()
            s._proc.wait(5)


def test_a_stop_during_a_restart_stops_the_new_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sup, s, runs = _held_restart(tmp_path, monkeypatch, "flaky", crash_first=True)
    _stopped_in_the_window(sup, s, runs)


def test_a_stop_during_an_operators_restart_stops_the_new_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a review) The same window in the operator's restart (r, then x or a quit while the new process starts)."""
    sup, s, runs = _held_restart(tmp_path, monkeypatch, "steady", crash_first=False)

    def restart() -> None:
        wait_for(lambda: s.state is ProcState.RUNNING and s._proc is not None, 10, what="the agent running")
        sup.restart("steady")

    _stopped_in_the_window(sup, s, runs, restart)


SLOW_STOP = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_stop_while_a_restarts_old_process_still_stops_is_not_undone(tmp_path: Path) -> None:
    """(a review) The operator's restart (r), then a stop (x, the console's quit, a hangup) while the old process still
    runs its stop (its on_stop, its unregister): the watcher's restart cleared the stop and started a new process,
    which ran on with the console gone. The stop stands: no new process."""
    card = tmp_path / "slow.toml"
    card.write_text(CARD.replace("flaky", "slow"))
    runs: list[int] = []

    def command(card_path: Path, run_dir: Path) -> list[str]:
        runs.append(1)
        return [sys.executable, "-c", SLOW_STOP]

    run = tmp_path / "run"
    sup = Supervisor(run, policy=RestartPolicy(base_s=0.05, stop_grace_s=5.0), command=command)
    s = sup.start(card)
    try:
        log = run / "logs" / "agent-slow.log"
        wait_for(lambda: log.exists() and "up" in log.read_text(), 15, what="the agent up, its SIGTERM handler set")
        threading.Thread(target=sup.restart, args=("slow",)).start()  # the old one takes 1.5 s to stop
        wait_for(lambda: s._restart_now, 5, what="the restart asked")
        sup.stop_all()  # the console quits while the old process is still stopping
        assert s._proc is not None and s._proc.poll() is not None and s.state is ProcState.STOPPED, (s.state, s.reason)
        assert len(runs) == 1  # no new process after the stop
    finally:
        if s._proc is not None and s._proc.poll() is None:
            s._proc.kill()
            s._proc.wait(5)
