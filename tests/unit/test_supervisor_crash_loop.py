"""The supervisor's restart rules at their edges (real child processes standing in for `ktrader agent run`):

- a crash loop whose runs are longer than the window's pace (each run ~9 s with the default policy: back-off
  capped at 30 s, 5 restarts in 60 s) is still a crash loop: it gives up after `max_restarts` restarts in a
  row without a run of `stable_s`, and a run that lasted `stable_s` starts that count again;
- a stop after a strategy error (EXIT_STRATEGY) is not restarted, and says why;
- an agent whose card the gateway refused while it ran (EXIT_CARD_REFUSED) is restarted, and a fresh start
  refused again (EXIT_BAD_CARD) stays down: no loop."""

from __future__ import annotations

from pathlib import Path

import agent.runtime as runtime_module
from agent.runtime import EXIT_BAD_CARD, EXIT_STRATEGY
from tests.conftest import holds_for, wait_for
from tests.fakes.scripted_agent import card_file, scripted, start_times
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor


def test_a_crash_loop_of_long_runs_gives_up(tmp_path: Path) -> None:
    """The default policy divided by ~20: each run crashes 0.5 s after it started (the window of 1.5 s never
    holds max_restarts restarts): it used to restart for ever."""
    policy = RestartPolicy(base_s=0.05, cap_s=0.3, max_restarts=3, window_s=1.5, stable_s=2.0, stop_grace_s=2)
    starts = tmp_path / "starts"
    sup = Supervisor(tmp_path / "run", policy=policy, command=scripted([(0.5, 1)], starts))
    try:
        s = sup.start(card_file(tmp_path, "looper"))
        wait_for(lambda: s.state is ProcState.GAVE_UP, 20, what="the supervisor gave up")
        assert s.restarts == policy.max_restarts and len(start_times(starts)) == 1 + policy.max_restarts
        assert s.last_exit == 1 and "3 restarts in a row" in s.reason and "gave up" in s.reason, s.reason
        assert "2s" in s.reason  # says what a stable run is
    finally:
        sup.stop_all()


def test_a_run_that_lasted_stable_s_starts_the_count_again(tmp_path: Path) -> None:
    policy = RestartPolicy(base_s=0.05, cap_s=0.1, max_restarts=3, window_s=0.3, stable_s=2.0, stop_grace_s=2)
    starts = tmp_path / "starts"
    runs = [(0.3, 1), (0.3, 1), (2.4, 1), (0.3, 1)]  # two crashes, a stable run, then crashes for good
    sup = Supervisor(tmp_path / "run", policy=policy, command=scripted(runs, starts))
    try:
        s = sup.start(card_file(tmp_path, "steady"))
        wait_for(lambda: s.state is ProcState.GAVE_UP, 30, what="the supervisor gave up")
        # 2 restarts, the stable run, then 3 more in a row: 6 starts (without the reset it gave up at 4)
        assert len(start_times(starts)) == 6 and s.restarts == 5, (len(start_times(starts)), s.restarts, s.reason)
        assert "3 restarts in a row" in s.reason
    finally:
        sup.stop_all()


def test_a_stop_after_a_strategy_error_is_not_restarted(tmp_path: Path) -> None:
    policy = RestartPolicy(base_s=0.05, cap_s=0.1, max_restarts=3, window_s=30, stable_s=30, stop_grace_s=2)
    starts = tmp_path / "starts"
    sup = Supervisor(tmp_path / "run", policy=policy, command=scripted([(0.0, EXIT_STRATEGY)], starts))
    try:
        s = sup.start(card_file(tmp_path, "stopper"))
        wait_for(lambda: s.state is ProcState.EXITED, 10, what="the exit recorded")
        holds_for(lambda: len(start_times(starts)) == 1, 0.5, what="no restart")
        assert s.last_exit == EXIT_STRATEGY and s.restarts == 0
        assert s.reason.startswith(f"exit {EXIT_STRATEGY}: stopped after a strategy error (on_error = stop)"), s.reason
    finally:
        sup.stop_all()


def test_a_card_refused_while_running_is_restarted_once_and_a_fresh_refusal_stays_down(tmp_path: Path) -> None:
    refused = runtime_module.EXIT_CARD_REFUSED
    policy = RestartPolicy(base_s=0.05, cap_s=0.1, max_restarts=3, window_s=30, stable_s=30, stop_grace_s=2)
    starts = tmp_path / "starts"
    seen: list[str] = []
    sup = Supervisor(
        tmp_path / "run",
        policy=policy,
        command=scripted([(0.0, refused), (0.0, EXIT_BAD_CARD)], starts),
        on_change=lambda s: seen.append(s.reason),
    )
    try:
        s = sup.start(card_file(tmp_path, "reapproved"))
        wait_for(lambda: s.state is ProcState.EXITED, 10, what="the fresh start's refusal recorded")
        holds_for(lambda: len(start_times(starts)) == 2, 0.5, what="no restart after the fresh refusal")
        assert s.restarts == 1 and s.last_exit == EXIT_BAD_CARD
        assert any(r.startswith(f"exit {refused} (the gateway refused the card it ran with") for r in seen), seen
    finally:
        sup.stop_all()
