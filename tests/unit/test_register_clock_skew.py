"""A Register refused as stale (this machine's clock and the gateway's disagree by more than the freshness
window) is not a bad card: a clock step while it flew passes on a second try; a lasting skew exits with a code
the supervisor restarts, saying to synchronise the clocks. (It exited EXIT_BAD_CARD: the supervisor showed
"bad card or strategy" and never restarted the agent.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent import runtime as runtime_module
from agent.runtime import EXIT_NO_GATEWAY, AgentExit, AgentRuntime
from common.errors import ErrorCode
from common.schema import Error, HeaderFactory
from tests.unit.test_agent_restart_edges import _card

SKEW = "sent 31.0s before the gateway's clock (window 30s)"


def _gateway(monkeypatch: pytest.MonkeyPatch, stale_answers: int) -> list[Any]:
    """A gateway answering the first `stale_answers` Registers STALE_MESSAGE, then BAD_CARD (a stand-in for
    'the next answer': this test only follows the stale ones)."""
    asked: list[Any] = []

    class Client:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.sub = None

        def request(self, msg: Any, timeout_s: float = 5.0) -> Any:
            asked.append(msg)
            code = ErrorCode.STALE_MESSAGE if len(asked) <= stale_answers else ErrorCode.BAD_CARD
            return Error(h=HeaderFactory("gateway")(msg.h.mid), code=code, message=SKEW)

        def close(self, linger_ms: int = 0) -> None:
            pass

    info = SimpleNamespace(session="g2", router="ipc://router", pub="ipc://pub", lease_s=0.0)
    monkeypatch.setattr(runtime_module, "read_info", lambda run_dir: info)
    monkeypatch.setattr(runtime_module, "load_credential", lambda run_dir, agent: None)
    monkeypatch.setattr(runtime_module, "client_pair_for", lambda *a: None)
    monkeypatch.setattr(runtime_module, "GatewayClient", Client)
    return asked


def test_a_lasting_clock_skew_exits_to_be_restarted_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.ops.supervisor import NO_RESTART_CODES

    asked = _gateway(monkeypatch, stale_answers=100)
    rt = AgentRuntime(_card(), tmp_path / "run", gateway_wait_s=0.0)
    with pytest.raises(AgentExit) as e:
        rt._first_registration()
    assert e.value.code == EXIT_NO_GATEWAY and EXIT_NO_GATEWAY not in NO_RESTART_CODES
    assert "clock" in str(e.value) and "NTP" in str(e.value) and "STALE_MESSAGE" in str(e.value)
    assert len(asked) == 1 + runtime_module.STALE_REGISTER_RETRIES


def test_a_clock_step_in_flight_passes_on_a_second_try(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _gateway(monkeypatch, stale_answers=1)
    rt = AgentRuntime(_card(), tmp_path / "run", gateway_wait_s=0.0)
    with pytest.raises(AgentExit) as e:  # (the stand-in's second answer: BAD_CARD, so the test ends here)
        rt._first_registration()
    assert len(asked) == 2 and "BAD_CARD" in str(e.value)  # asked again after the stale one
