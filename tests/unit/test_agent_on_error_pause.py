"""on_error = "pause" is a pause: the orders a callback queued before it raised never leave (leg 1 of a
pair without leg 2); the pause is said in the agent's heartbeats (the operator's status shows it) and
the gateway puts the agent in REDUCING so the operator's `ktrader control resume --agent ID` announces
ACTIVE, which ends the pause. A runtime service failing (ctx.quote() timing out) is not a strategy error:
it neither pauses the agent nor counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard, OnError
from common.enums import AgentState, SystemEventKind, TradingState
from common.errors import ErrorCode, KtraderError
from common.market_clock import WallClock
from common.orders import OrderState
from common.schema import (
    SYSTEM_TOPIC,
    Ack,
    Error,
    FeedHealth,
    HeaderFactory,
    Heartbeat,
    Published,
    SubmitOrders,
    SystemEvent,
)
from server.registry import Registry
from server.sessions import AgentSessions


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def orders(self) -> list[str]:
        return [o.client_order_id for m in self.sent if isinstance(m, SubmitOrders) for o in m.orders]


class _Pair(Strategy):
    """Leg 1, then a bug before leg 2."""

    fail: Exception = ValueError("bug computing leg 2")

    def on_timer(self) -> None:
        self.ctx.buy("005930", 10, 70_000)
        raise self.fail


def _runtime(tmp_path: Path, on_error: OnError = OnError.PAUSE) -> tuple[AgentRuntime, _Wire]:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930", "000660"], on_error=on_error)
    rt = AgentRuntime(card, tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    rt.strategy = _Pair(rt, None)
    return rt, wire


def _system(rt: AgentRuntime, seq: int, kind: SystemEventKind, agent: str, text: str) -> None:
    rt._on_sub([Published(topic=SYSTEM_TOPIC, seq=seq, body=SystemEvent(kind=kind, agent=agent, text=text))])


@pytest.mark.parametrize("on_error", [OnError.PAUSE, OnError.CONTINUE])
def test_a_callback_that_raised_sends_nothing_it_queued(tmp_path: Path, on_error: OnError) -> None:
    rt, wire = _runtime(tmp_path, on_error)
    rt._call("on_timer")
    assert wire.orders() == []  # leg 1 never leaves
    assert rt.open_orders == {}
    (leg1,) = rt.orders.values()
    assert leg1.state is OrderState.DENIED and "raised" in leg1.reason
    assert rt._unanswered == {} and rt.errors == 1
    assert rt.paused is (on_error is OnError.PAUSE)


def test_the_pause_is_reported_and_the_operators_resume_ends_it(tmp_path: Path) -> None:
    rt, wire = _runtime(tmp_path)
    rt._call("on_timer")
    assert rt.paused
    hb = rt._heartbeat_msg()
    assert "ValueError in on_timer: bug computing leg 2" in hb.feed.paused
    with pytest.raises(KtraderError) as e:
        rt.buy("005930", 1, 70_000)
    assert e.value.code is ErrorCode.DENIED_HALTED
    assert hb.feed.pause_n == 1
    # an ACTIVE said before the gateway heard of the pause is not a resume
    _system(rt, 1, SystemEventKind.TRADING_STATE, "alpha", "active")
    assert rt.paused
    # the gateway heard it (REDUCING), then the operator resumes the agent (ACTIVE): the gateway's heartbeat
    # reply names the pause lifted (an ACTIVE event alone cannot tell which pause a resume was for)
    _system(rt, 2, SystemEventKind.TRADING_STATE, "other", "active")  # someone else's: not ours
    _system(rt, 3, SystemEventKind.TRADING_STATE, "alpha", "reducing")
    assert rt.paused and rt.trading_state is TradingState.REDUCING
    _system(rt, 4, SystemEventKind.TRADING_STATE, "alpha", "active")
    assert rt.paused
    rt._on_message(Ack(h=HeaderFactory("gateway")(hb.h.mid), pause_lifted=1))
    assert not rt.paused and rt._heartbeat_msg().feed.paused == ""
    rt.strategy = Strategy(rt, None)
    rt.buy("005930", 1, 70_000)
    rt._flush()
    assert len(wire.orders()) == 1


def test_a_quote_timing_out_is_not_a_strategy_error(tmp_path: Path) -> None:
    rt, wire = _runtime(tmp_path)
    assert isinstance(rt.strategy, _Pair)
    rt.strategy.fail = KtraderError(ErrorCode.TIMEOUT, "no reply to Query within 10s")
    rt._call("on_timer")
    assert not rt.paused and rt.errors == 0
    assert wire.orders() == []  # the callback still did not finish: its half decision stays here
    rt.strategy = Strategy(rt, None)
    rt.buy("005930", 1, 70_000)
    rt._flush()
    assert len(wire.orders()) == 1


class _Risk:
    def __init__(self) -> None:
        self.states: dict[str, TradingState] = {}
        self.calls: list[tuple[str, TradingState]] = []

    def agent_state(self, agent: str) -> TradingState:
        return self.states.get(agent, TradingState.ACTIVE)

    def set_state(self, agent: str, state: TradingState, why: str) -> None:
        assert f"ktrader control resume --agent {agent}" in why
        self.states[agent] = state
        self.calls.append((agent, state))

    def alert(self, text: str, kind: object = None, agent: str = "") -> None:
        pass


def test_the_gateway_puts_a_paused_agent_in_reducing_once(tmp_path: Path) -> None:
    registry = Registry(lease_s=1.0)
    risk = _Risk()
    sessions = AgentSessions(
        registry,
        SimpleNamespace(clock=WallClock()),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        risk,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        HeaderFactory("gateway"),
        lambda *a: None,
        Counter(),
        lease_s=1.0,
        heartbeat_s=0.25,
    )
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"])
    _, rec = registry.register(card, b"r", "sid", 1, "host")
    agent = HeaderFactory("alpha", "sid")

    def beat(paused: str) -> object:
        return sessions.heartbeat(rec, b"r", Heartbeat(h=agent(), feed=FeedHealth(paused=paused, pause_n=1)))

    beat("ValueError in on_timer: bug")
    beat("ValueError in on_timer: bug")
    assert risk.calls == [("alpha", TradingState.REDUCING)] and rec.paused
    risk.states["alpha"] = TradingState.ACTIVE  # the operator resumed it; heartbeats sent before it knew:
    beat("ValueError in on_timer: bug")
    assert risk.calls == [("alpha", TradingState.REDUCING)]  # not paused again
    beat("")
    assert not rec.paused
    # an expired lease: the heartbeat is not taken (the agent registers again, see test_agent_lease_stall)
    rec.state = AgentState.STALE
    reply = beat("")
    assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_REGISTERED
    registry.touch(rec)
    assert rec.state is AgentState.STALE  # a request does not revive an expired lease


def test_a_paused_strategy_still_cancels(tmp_path: Path) -> None:
    """Paused means no new orders: a callback that cancels, then tries to buy (refused: DENIED_HALTED), still
    sends its cancel, and the refusal is not one more strategy error."""

    class CancelThenBuy(Strategy):
        def on_timer(self) -> None:
            self.ctx.cancel(f"alpha-{rt.day:%Y%m%d}-1")
            self.ctx.buy("005930", 1, 70_000)

    rt, wire = _runtime(tmp_path)
    rt._call("on_timer")
    assert rt.paused and rt.errors == 1
    wire.sent.clear()
    rt.strategy = CancelThenBuy(rt, None)
    rt._call("on_timer")
    assert [type(m).__name__ for m in wire.sent] == ["CancelOrder"] and rt.errors == 1
