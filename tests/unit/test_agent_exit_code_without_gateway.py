"""The agent's exit code says why it ended, so the supervisor can tell "no gateway yet" (restart until it is back)
from a failure that may never heal (count it toward a crash loop, or leave it down):

- no gateway.json within --gateway-wait, or no reply to Register: EXIT_GATEWAY_ABSENT, only that;
- its CURVE key files missing (a configuration mistake, as a missing credential): EXIT_BAD_CARD, not restarted.
Both used to exit 5, which the supervisor restarts forever shown 'no gateway'. (A gateway that refuses its CURVE
key, or fails its start, still exits 5: tests/integration/test_curve.py, tests/unit/test_history_unavailable.py.)"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from agent.runtime import EXIT_BAD_CARD, EXIT_GATEWAY_ABSENT, EXIT_NO_GATEWAY, AgentRuntime
from common.connection import GatewayInfo, write_info
from tests.conftest import approve
from tools.ops.supervisor import NO_RESTART_CODES, RESTART_REASONS

CARD = 'id = "alone"\nname = "alone"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["005930"]\n'


def _runtime(tmp_path: Path, router: str | None) -> AgentRuntime:
    """An approved agent on a run folder whose gateway.json names `router` (None: no gateway.json at all)."""
    card_path = tmp_path / "alone.toml"
    card_path.write_text(CARD)
    run = tmp_path / "run"
    run.mkdir()
    card = approve(run, card_path)[0]
    if router is not None:
        # a gateway that wrote its file and is not (or no longer) there: nothing binds these endpoints
        info = GatewayInfo(
            router=router, pub=router + "-pub", key="00" * 32, pid=os.getpid(), session="s1", started_ns=time.time_ns()
        )
        write_info(run, info)
    return AgentRuntime(card, run, gateway_wait_s=0.3)


def test_no_gateway_json_exits_gateway_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = _runtime(tmp_path, None)
    with caplog.at_level(logging.ERROR):
        assert rt.run() == EXIT_GATEWAY_ABSENT != EXIT_NO_GATEWAY
    assert "gateway.json" in caplog.text
    assert EXIT_GATEWAY_ABSENT not in NO_RESTART_CODES
    assert RESTART_REASONS[EXIT_GATEWAY_ABSENT].startswith("no gateway answered")


def test_no_reply_to_register_exits_gateway_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = _runtime(tmp_path, f"ipc://{tmp_path}/nobody")
    with caplog.at_level(logging.ERROR):
        assert rt.run() == EXIT_GATEWAY_ABSENT
    assert "did not answer" in caplog.text and "no reply to Register" in caplog.text


def test_missing_curve_key_exits_bad_card_and_is_not_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = _runtime(tmp_path, "tcp://127.0.0.1:9")  # crosses a network: needs keys/clients/alone.key_secret
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert rt.run() == EXIT_BAD_CARD
    assert time.monotonic() - started < 5.0  # no wait: a gateway coming up cannot fix it
    assert "alone.key_secret not found" in caplog.text and "ktrader keys agent alone" in caplog.text
    assert NO_RESTART_CODES[EXIT_BAD_CARD] == "bad card or strategy"  # the supervisor leaves it down


def test_a_stop_asked_while_waiting_for_the_gateway_is_a_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(a hunt) Ctrl-C while the agent waited for a gateway exited 8 (a supervisor restarts it) saying "gateway.json
    not found": a stop asked for is a stop, said as such."""
    import signal
    import threading

    rt = _runtime(tmp_path, None)
    rt.gateway_wait_s = 30.0

    def interrupt() -> None:
        deadline = time.monotonic() + 10
        while signal.getsignal(signal.SIGINT) != rt._on_signal and time.monotonic() < deadline:
            time.sleep(0.01)  # (until the runtime's handler is in place)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with caplog.at_level(logging.INFO):
        t0 = time.monotonic()
        assert rt.run() == 0
    assert time.monotonic() - t0 < 10  # not the whole wait
    assert "stopped (SIGINT) while waiting for the gateway" in caplog.text and "not found" not in caplog.text
