"""An agent supervised while no gateway runs (it exits EXIT_GATEWAY_ABSENT, restarted with a back-off of up to
cap_s = 30 s) is restarted as soon as a gateway writes the run dir's gateway.json: it used to sit out the rest of
its back-off, shown 'no gateway' up to 30 s after the gateway was ready. A stale gateway.json (a gateway that
died) does not end the back-off, nor does a new one end a crash's back-off: a crash loop still backs off
(real child processes stand in for `ktrader agent run`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agent.runtime import EXIT_GATEWAY_ABSENT
from common.connection import connection_path
from tests.conftest import holds_for, wait_for
from tests.fakes.scripted_agent import card_file, scripted, start_times
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor

# the first back-off alone is far longer than the test: only the gateway's file can end it early
LONG = RestartPolicy(base_s=30.0, cap_s=30.0, max_restarts=5, window_s=60, stable_s=30, stop_grace_s=2)


def _gateway_writes_its_file(run: Path, session: str) -> float:
    """What a gateway does once ready: gateway.json replaced atomically (the content does not matter here)."""
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "gateway.json.tmp"
    tmp.write_text(f'{{"session": "{session}"}}')
    tmp.replace(connection_path(run))
    return time.monotonic()


def test_an_agent_waiting_for_its_gateway_restarts_as_soon_as_the_gateway_is_ready(tmp_path: Path) -> None:
    run, starts = tmp_path / "run", tmp_path / "starts"
    # no gateway: exit 8; then the gateway is there: the agent runs
    sup = Supervisor(run, policy=LONG, command=scripted([(0.0, EXIT_GATEWAY_ABSENT), (60.0, 0)], starts))
    try:
        s = sup.start(card_file(tmp_path, "patient"))
        wait_for(lambda: s.state is ProcState.NO_GATEWAY, 10, what="the agent found no gateway")
        assert "restarting in 30.0s" in s.reason, s.reason
        time.sleep(0.3)  # (well into its back-off)
        ready = _gateway_writes_its_file(run, "new")
        wait_for(lambda: len(start_times(starts)) == 2, 10, what="the agent restarted for the new gateway")
        # (a Python start under load takes seconds; the back-off it must not sit out is 30 s)
        assert start_times(starts)[1] - ready < 5.0, "joined the gateway promptly, not at the end of its back-off"
        assert s.state is ProcState.RUNNING and s.restarts == 1, (s.state, s.reason)
    finally:
        sup.stop_all()


def test_a_gateway_ready_as_the_agent_gave_up_is_joined_at_once(tmp_path: Path) -> None:
    """The gateway wrote gateway.json during the run's last moments, after the agent had stopped looking."""
    run, starts = tmp_path / "run", tmp_path / "starts"
    run.mkdir()
    # its first run: the gateway writes its file just before the agent exits "no gateway"
    late = (
        f"import os, sys; p = {str(run)!r}; open(p + '/gateway.json.tmp', 'w').write('{{}}'); "
        f"os.replace(p + '/gateway.json.tmp', p + '/gateway.json'); sys.exit({EXIT_GATEWAY_ABSENT})"
    )
    runs = 0

    def command(card: Path, run_dir: Path) -> list[str]:
        nonlocal runs
        runs += 1
        return [sys.executable, "-c", late] if runs == 1 else scripted([(60.0, 0)], starts)(card, run_dir)

    sup = Supervisor(run, policy=LONG, command=command)
    try:
        s = sup.start(card_file(tmp_path, "patient"))
        wait_for(lambda: len(start_times(starts)) == 1, 10, what="the agent restarted for the gateway")
        assert s.state is ProcState.RUNNING and s.restarts == 1, (s.state, s.reason)
    finally:
        sup.stop_all()


def test_a_stale_gateway_file_does_not_end_the_back_off(tmp_path: Path) -> None:
    """gateway.json left by a gateway that died: the agent found it and no gateway answered; it is not news."""
    run, starts = tmp_path / "run", tmp_path / "starts"
    _gateway_writes_its_file(run, "dead")
    sup = Supervisor(run, policy=LONG, command=scripted([(0.0, EXIT_GATEWAY_ABSENT)], starts))
    try:
        s = sup.start(card_file(tmp_path, "patient"))
        wait_for(lambda: s.state is ProcState.NO_GATEWAY, 10, what="the agent found no gateway")
        holds_for(lambda: len(start_times(starts)) == 1, 0.8, what="the back-off")
        assert s.state is ProcState.NO_GATEWAY
        sup.stop("patient")  # a stop still ends the back-off at once
        assert s.state is ProcState.STOPPED and len(start_times(starts)) == 1, (s.state, s.reason)
    finally:
        sup.stop_all()


def test_a_new_gateway_does_not_shorten_a_crash_back_off(tmp_path: Path) -> None:
    run, starts = tmp_path / "run", tmp_path / "starts"
    sup = Supervisor(run, policy=LONG, command=scripted([(0.0, 1)], starts))
    try:
        s = sup.start(card_file(tmp_path, "crashy"))
        wait_for(lambda: s.state is ProcState.BACKOFF, 10, what="the crash's back-off")
        _gateway_writes_its_file(run, "new")
        holds_for(lambda: len(start_times(starts)) == 1, 0.8, what="the crash's back-off")
        assert s.state is ProcState.BACKOFF and s.restarts == 0, (s.state, s.reason)
    finally:
        sup.stop_all()
