"""The agent supervisor: restart with growing back-off, give up after too many restarts in a window,
never restart a "do not restart" exit (duplicate id, bad card), clean stop, immediate restart.

Real child processes (tiny python commands standing in for `ktrader agent run`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.runtime import EXIT_BAD_CARD, EXIT_DUPLICATE
from tests.conftest import holds_for, wait_for
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor

CARD = 'id = "{id}"\nname = "t"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["005930"]\n'
FAST = RestartPolicy(base_s=0.1, factor=2.0, cap_s=0.4, max_restarts=4, window_s=30, stable_s=30, stop_grace_s=2)


def card(tmp_path: Path, agent_id: str) -> Path:
    p = tmp_path / f"{agent_id}.toml"
    p.write_text(CARD.format(id=agent_id))
    return p


def child(code: str, starts: Path):
    """A command that logs each start time to `starts`, then runs `code`."""
    prog = f"import sys, time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); {code}"
    return lambda card, run_dir: [sys.executable, "-c", prog]


def start_times(starts: Path) -> list[float]:
    return [float(x) for x in starts.read_text().split()] if starts.exists() else []


def test_crashing_agent_backs_off_then_gives_up(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    sup = Supervisor(tmp_path / "run", policy=FAST, command=child("sys.exit(1)", starts))
    s = sup.start(card(tmp_path, "crasher"))
    wait_for(lambda: s.state is ProcState.GAVE_UP, 10, what="supervisor gave up")
    t = start_times(starts)
    assert len(t) == 1 + FAST.max_restarts and s.restarts == FAST.max_restarts
    gaps = [b - a for a, b in zip(t, t[1:])]
    # back-off 0.1, 0.2, 0.4, 0.4 (capped): each gap at least its delay, and growing until the cap
    for gap, want in zip(gaps, [0.1, 0.2, 0.4, 0.4]):
        assert gap >= want * 0.9, gaps
    assert gaps[2] > gaps[0] and s.last_exit == 1 and "gave up" in s.reason


def test_duplicate_or_bad_card_exit_is_never_restarted(tmp_path: Path) -> None:
    for code in (EXIT_DUPLICATE, EXIT_BAD_CARD):
        starts = tmp_path / f"starts{code}"
        sup = Supervisor(tmp_path / "run", policy=FAST, command=child(f"sys.exit({code})", starts))
        s = sup.start(card(tmp_path, f"dup{code}"))
        wait_for(lambda s=s: s.state is ProcState.EXITED, 5, what=f"exit {code} recorded")
        holds_for(lambda starts=starts: len(start_times(starts)) == 1, 0.5, what=f"no restart after exit {code}")
        assert s.last_exit == code and s.restarts == 0


def test_stop_and_restart_leave_other_agents_alone(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    sup = Supervisor(tmp_path / "run", policy=FAST, command=child("time.sleep(60)", starts))
    a = sup.start(card(tmp_path, "aa"))
    b = sup.start(card(tmp_path, "bb"))
    b_pid = b.pid
    wait_for(lambda: len(start_times(starts)) == 2, 5, what="both started")

    first = a.pid
    sup.restart("aa")
    wait_for(lambda: a.pid != first and a.state is ProcState.RUNNING, 5, what="a restarted")
    assert a.restarts == 0  # an operator restart is not a crash
    wait_for(lambda: len(start_times(starts)) == 3, 5, what="the new copy of aa running")
    os.kill(a.pid, 0)

    sup.stop("aa")
    assert a.state is ProcState.STOPPED
    wait_for(lambda: _gone(a.pid), 5, what="a's process gone")
    holds_for(lambda: a.state is ProcState.STOPPED and len(start_times(starts)) == 3, 0.5, what="a stays stopped")
    assert b.state is ProcState.RUNNING and b.pid == b_pid and not _gone(b_pid)

    sup.stop_all()
    assert b.state is ProcState.STOPPED and _gone(b_pid)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): reaped children are gone for good
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def test_an_agent_whose_process_cannot_start_is_exited_with_why_and_can_be_started_again(tmp_path: Path) -> None:
    """Popen failing (no such interpreter, no file descriptors left) leaves the agent EXITED with the
    reason, not listed as running with no process (every later start was refused 'already supervised')."""
    from tools.ops.supervisor import SupervisorError

    card = tmp_path / "alpha.toml"
    card.write_text('id = "alpha"\nname = "alpha"\nstrategy = "x:Y"\ncodes = ["005930"]\n')
    broken = Supervisor(tmp_path / "run", command=lambda c, r: [str(tmp_path / "no-such-python")])
    with pytest.raises(SupervisorError, match="could not start its process"):
        broken.start(card)
    sup = broken.agents["alpha"]
    assert sup.state is ProcState.EXITED and "could not start" in sup.reason and not broken.is_supervised("alpha")
    with pytest.raises(SupervisorError, match="could not start its process"):  # asked again: tried again, said again
        broken.start(card)
    broken.stop_all()
