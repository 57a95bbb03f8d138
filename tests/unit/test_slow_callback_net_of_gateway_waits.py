"""The slow-callback warning ("the gateway may let the agent go") counts the strategy's own time, not the time a
callback spent waiting in gateway calls, which heartbeat and keep the lease (a hunt: the shipped foreign_flow and
value_vol cards, each poll waiting 1-2 s on the card's own REST quota, logged it every minute while online)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard

NOW = [1_000.0]


class _Poller(Strategy):
    """`own` seconds of its own work and `waited` seconds in gateway calls per timer."""

    own, waited = 0.0, 0.0

    def on_timer(self) -> None:
        NOW[0] += self.own + self.waited
        self.ctx.waited_s += self.waited  # type: ignore[attr-defined]  # (what call_gateway adds)


@pytest.mark.parametrize(("own", "waited", "warned"), [(0.1, 2.0, False), (2.0, 0.0, True), (0.6, 1.5, True)])
def test_only_the_strategys_own_time_is_slow(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    own: float,
    waited: float,
    warned: bool,
) -> None:
    monkeypatch.setattr("agent.runtime.time.monotonic", lambda: NOW[0])
    rt = AgentRuntime(AgentCard(id="ff", name="ff", strategy="x:Y", codes=["005930"]), tmp_path)
    rt.lease_s = 1.0
    strategy = _Poller(rt, None)
    strategy.own, strategy.waited = own, waited
    rt.strategy = strategy
    with caplog.at_level(logging.WARNING):
        rt._call("on_timer")
    said = [r.getMessage() for r in caplog.records if "the gateway may let the agent go" in r.getMessage()]
    assert bool(said) is warned, said
    if warned:
        assert f"on_timer took {own:.1f} s" in said[0]
