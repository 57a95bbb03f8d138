"""A gateway started where the previous one was killed says so (real processes on the fake broker): the
restart after a crash read like a routine start ("GATEWAY STARTED", nothing on the screens), so nobody went to
find out why it died. A clean stop followed by a start says nothing of the kind."""

from __future__ import annotations

import os
import socket
import signal
from pathlib import Path

import pytest

from common.connection import read_info
from tests.conftest import Procs, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

UNCLEAN = "ended without its clean stop"


def _gateway(procs: Procs, run: Path, name: str, old_session: str = ""):
    gw = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name=name)
    wait_for(
        lambda: (run / "gateway.json").exists() and read_info(run).session != old_session,
        20,
        what=f"{name} is up",
    )
    return gw


def _unclean(run: Path) -> list[str]:
    return [a for a in fetch_status(run, 5.0).alerts if UNCLEAN in a]


def test_a_restart_after_a_kill_is_told_and_a_clean_restart_is_not(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    gw = _gateway(procs, run, "gateway")
    first = read_info(run)
    assert _unclean(run) == []  # a first start

    os.killpg(gw.pid, signal.SIGKILL)
    gw.wait(10)
    gw2 = _gateway(procs, run, "gateway2", first.session)
    told = wait_for(lambda: _unclean(run), 10, what="the unclean stop told")
    assert len(told) == 1 and f"pid {first.pid}" in told[0] and "0 open orders" in told[0], told
    assert UNCLEAN in procs.log(gw2)  # the alert's log line

    second = read_info(run)
    gw2.send_signal(signal.SIGTERM)
    assert gw2.wait(20) == 0
    assert not (run / "gateway.json").exists()  # what a clean stop leaves
    _gateway(procs, run, "gateway3", second.session)
    assert len(_unclean(run)) == 1  # the kill's, kept from before; none for the clean stop


def test_a_restart_loop_is_one_message_per_start_and_said(tmp_path: Path, procs: Procs) -> None:
    """(a hunt) A gateway killed right after each start (a service manager restarting it) sent GATEWAY STARTED and
    GATEWAY RESTARTED at every start: ten messages in ten seconds on a phone. An unclean start is one message, and
    from the third in ten minutes it says it is a restart loop."""
    run = tmp_path / "run"
    session = ""
    for n in range(4):
        gw = _gateway(procs, run, f"gateway{n}", session)
        session = read_info(run).session
        if n < 3:
            os.killpg(gw.pid, signal.SIGKILL)
            gw.wait(10)
    # (the earlier starts' alerts are there already: wait for the last start's own)
    loop = "3 unclean starts in 10 min: a restart loop?"
    told = wait_for(lambda: [a for a in _unclean(run) if loop in a], 10, what="the restart loop told")
    assert len(told) == 1 and "gateway started on" in told[0], told


def test_a_gateway_killed_during_its_stop_is_told_at_the_next_start(tmp_path: Path, procs: Procs) -> None:
    """(a hunt) The stop removed gateway.json first, then cancelled its tasks, drained the notifier (up to seconds on
    a slow channel), settled the broker calls and closed the store: a gateway killed meanwhile (a service manager's
    stop timeout on a hung stop, an OOM kill) started again as a routine start, with no word of what it left in
    doubt. The file is removed last: a stop that never ended is an unclean one."""
    run = tmp_path / "run"
    hung = socket.socket()  # a webhook that takes the connection and never answers: the notifier's stop waits on it
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    try:
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(
            f'[notify]\n[[notify.webhooks]]\nshape = "json"\nurl = "http://127.0.0.1:{hung.getsockname()[1]}/k"\n'
        )
        gw = procs.start(
            "gateway", "--run-dir", str(run), "--config", str(cfg), "--broker", "tests.fakes.broker:make", log_name="gw"
        )
        wait_for(lambda: (run / "gateway.json").exists(), 20, what="the gateway is up")
        first = read_info(run)
        gw.send_signal(signal.SIGTERM)
        wait_for(lambda: "gateway stopping" in procs.log(gw), 10, what="its stop under way")
        os.killpg(gw.pid, signal.SIGKILL)
        gw.wait(10)
    finally:
        hung.close()
    _gateway(procs, run, "gateway2", first.session)
    told = wait_for(lambda: _unclean(run), 10, what="the unclean stop told")
    assert len(told) == 1 and f"pid {first.pid}" in told[0], told
