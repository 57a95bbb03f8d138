"""An agent that exits because no gateway answered (EXIT_GATEWAY_ABSENT: the gateway is down, or slow to start) is
restarted until the gateway is back, shown as waiting for it: it used to count toward the crash-loop limit, so
the supervisor gave up (GAVE_UP after ~77 s with the default policy) and the agent stayed down once the gateway
was back. Crashes around such exits still count, and so does exit 5 (EXIT_NO_GATEWAY: a gateway that did not serve
the start, or refused the agent's key): it was restarted forever, shown 'no gateway' while the gateway was healthy
(real child processes stand in for `ktrader agent run`)."""

from __future__ import annotations

from pathlib import Path

from agent.runtime import EXIT_GATEWAY_ABSENT, EXIT_NO_GATEWAY
from tests.conftest import wait_for
from tests.fakes.scripted_agent import card_file, scripted, start_times
from tools.ops.supervisor import ProcState, RestartPolicy, Supervised, Supervisor

POLICY = RestartPolicy(base_s=0.02, cap_s=0.1, max_restarts=3, window_s=60, stable_s=30, stop_grace_s=2)


def test_an_agent_without_a_gateway_is_restarted_until_the_gateway_is_back(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # twice max_restarts runs find no gateway; then it is back: the agent runs
    runs = [(0.0, EXIT_GATEWAY_ABSENT)] * (2 * POLICY.max_restarts) + [(60.0, 0)]
    seen: list[tuple[ProcState, str]] = []

    def changed(s: Supervised) -> None:
        seen.append((s.state, s.reason))

    sup = Supervisor(tmp_path / "run", policy=POLICY, command=scripted(runs, starts), on_change=changed)
    try:
        s = sup.start(card_file(tmp_path, "patient"))
        wait_for(
            lambda: len(start_times(starts)) == len(runs) or s.state is ProcState.GAVE_UP,
            20,
            what="the gateway's return",
        )
        assert s.state is ProcState.RUNNING, (s.state, s.reason)
        assert s.restarts == len(runs) - 1 and sup.is_supervised("patient")
        waiting = [r for st, r in seen if st is ProcState.NO_GATEWAY]
        assert len(waiting) == len(runs) - 1, seen
        assert waiting[0].startswith(f"exit {EXIT_GATEWAY_ABSENT} (no gateway answered: it is down or starting"), (
            waiting
        )
        assert str(ProcState.NO_GATEWAY) == "no gateway"  # what the console's supervisor column shows
    finally:
        sup.stop_all()


def test_a_crash_loop_around_exits_without_a_gateway_still_gives_up(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    runs = [(0.0, 1), (0.0, 1)] + [(0.0, EXIT_GATEWAY_ABSENT)] * 4 + [(0.0, 1)]  # crashes, no gateway, crashes again
    sup = Supervisor(tmp_path / "run", policy=POLICY, command=scripted(runs, starts))
    try:
        s = sup.start(card_file(tmp_path, "crashy"))
        wait_for(lambda: s.state is ProcState.GAVE_UP, 20, what="the supervisor gave up")
        # 2 crash restarts, 4 that waited for the gateway, the third crash restart, then the give-up
        assert len(start_times(starts)) == 8, (len(start_times(starts)), s.reason)
        assert s.last_exit == 1 and "3 restarts" in s.reason and "gave up" in s.reason, s.reason
    finally:
        sup.stop_all()


def test_exit_5_counts_toward_giving_up_and_is_not_shown_no_gateway(tmp_path: Path) -> None:
    """A start the gateway failed (on_start's history timed out, GetState failed, its CURVE key refused) with the
    gateway up: restarted like a crash, given up after max_restarts, never shown as waiting for a gateway."""
    starts = tmp_path / "starts"
    seen: list[tuple[ProcState, str]] = []

    def changed(s: Supervised) -> None:
        seen.append((s.state, s.reason))

    sup = Supervisor(
        tmp_path / "run", policy=POLICY, command=scripted([(0.0, EXIT_NO_GATEWAY)], starts), on_change=changed
    )
    try:
        s = sup.start(card_file(tmp_path, "failing"))
        wait_for(
            lambda: s.state is ProcState.GAVE_UP or len(start_times(starts)) > 3 * POLICY.max_restarts,
            20,
            what="give-up",
        )
        assert s.state is ProcState.GAVE_UP and not sup.is_supervised("failing"), (s.state, s.reason)
        assert len(start_times(starts)) == POLICY.max_restarts + 1 and s.last_exit == EXIT_NO_GATEWAY
        assert "gave up" in s.reason, s.reason
        assert not [r for st, r in seen if st is ProcState.NO_GATEWAY], seen
        backing_off = [r for st, r in seen if st is ProcState.BACKOFF]
        assert backing_off[0].startswith(f"exit {EXIT_NO_GATEWAY} (the gateway did not serve its start"), backing_off
    finally:
        sup.stop_all()
