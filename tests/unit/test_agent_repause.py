"""A self-pause (card on_error = "pause") reaches a person, and each one can be lifted.

Before: the gateway took a pause once (it remembered the agent as paused until a heartbeat said
otherwise), so the same error on the tick after the operator's resume paused the agent again before its
next heartbeat, the gateway never put it in REDUCING again, and a resume of an agent already ACTIVE
published nothing: the agent stayed paused while status showed it ACTIVE. Nor was the pause alerted to
anyone. Now each pause has a number; the gateway takes each new one (REDUCING, an OPERATOR alert) and
its heartbeat reply names the pause the operator's resume lifted (publishing ACTIVE again), which is
what ends it. A paused agent may still sell shares it holds and protect them (the gateway decides)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.config import AgentCard
from common.enums import AlertKind, SystemEventKind, TradingState
from common.errors import ErrorCode, KtraderError
from common.market_clock import WallClock
from common.schema import HeaderFactory, Heartbeat, PositionView, Protect, SubmitOrders
from server.registry import Registry
from server.sessions import AgentSessions
from tests.unit.test_agent_on_error_pause import _Pair, _runtime, _system


class _Risk:
    """server/risk.py's trading state as the sessions use it: a state set again publishes nothing."""

    def __init__(self, publish: object) -> None:
        self.states: dict[str, TradingState] = {}
        self.publish = publish
        self.alerts: list[tuple[str, AlertKind | None, str]] = []

    def agent_state(self, agent: str) -> TradingState:
        return self.states.get(agent, TradingState.ACTIVE)

    def set_state(self, agent: str, state: TradingState, why: str) -> None:
        if self.agent_state(agent) is state:
            return
        self.states[agent] = state
        self.publish(SystemEventKind.TRADING_STATE, agent, state.value)  # type: ignore[operator]

    def alert(self, text: str, kind: AlertKind | None = None, agent: str = "") -> None:
        self.alerts.append((text, kind, agent))


class _Loop:
    """One agent and the gateway's sessions: heartbeats and their replies, the published states."""

    def __init__(self, tmp_path: Path) -> None:
        self.rt, self.wire = _runtime(tmp_path)
        self.seq = 0
        self.published: list[tuple[str, str]] = []
        self.risk = _Risk(self._publish)
        self.registry = Registry(lease_s=1.0)
        self.sessions = AgentSessions(
            self.registry,
            SimpleNamespace(clock=WallClock()),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            self.risk,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            HeaderFactory("gateway"),
            self._publish,
            Counter(),
            lease_s=1.0,
            heartbeat_s=0.25,
        )
        card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"])
        _, self.rec = self.registry.register(card, b"r", "sid", 1, "host")
        self.deliver_events = True

    def _publish(self, kind: SystemEventKind, agent: str, text: str) -> None:
        self.published.append((agent, text))
        if self.deliver_events:
            self.seq += 1
            _system(self.rt, self.seq, kind, agent, text)

    def beat(self, hb: Heartbeat | None = None) -> None:
        """A heartbeat reaches the gateway and its reply the agent."""
        hb = hb or self.rt._heartbeat_msg()
        self.rt._on_message(self.sessions.heartbeat(self.rec, b"r", hb))

    def resume(self) -> None:
        """`ktrader control resume --agent alpha` (server/operator.py: risk.set_state)."""
        self.risk.set_state("alpha", TradingState.ACTIVE, "resume by op")

    def bug(self) -> None:
        self.rt.strategy = _Pair(self.rt, None)
        self.rt._call("on_timer")


@pytest.mark.parametrize("events", [True, False], ids=["events-seen", "events-lost"])
def test_a_second_pause_is_taken_again_and_lifted_by_the_next_resume(tmp_path: Path, events: bool) -> None:
    loop = _Loop(tmp_path)
    loop.deliver_events = events  # the agent's SUB may drop the TRADING_STATE events: the replies suffice
    rt, risk = loop.rt, loop.risk
    loop.bug()
    loop.beat()
    assert risk.agent_state("alpha") is TradingState.REDUCING and rt.paused
    loop.resume()
    loop.bug()  # the same bug on the next tick, before the agent's next heartbeat
    loop.beat()
    loop.bug()
    loop.beat()
    assert risk.agent_state("alpha") is TradingState.REDUCING and loop.rec.paused  # the new pause is taken
    assert rt.paused
    loop.beat()
    assert rt.paused  # REDUCING is no resume
    loop.resume()
    loop.beat()
    assert not rt.paused and rt._heartbeat_msg().feed.paused == ""
    loop.beat()
    assert not loop.rec.paused and risk.agent_state("alpha") is TradingState.ACTIVE
    # each pause paged a person, saying how to resume it
    kinds = [(kind, agent) for _, kind, agent in risk.alerts]
    assert kinds == [(AlertKind.OPERATOR, "alpha")] * 2
    assert all("ktrader control resume --agent alpha" in text for text, _, _ in risk.alerts)
    # the gateway published ACTIVE with each lift (an agent that missed the resume's event gets it again)
    assert loop.published.count(("alpha", "active")) >= 2


def test_a_resume_meant_for_an_earlier_pause_does_not_end_a_later_one(tmp_path: Path) -> None:
    loop = _Loop(tmp_path)
    rt, risk = loop.rt, loop.risk
    loop.bug()
    loop.beat()
    stale = rt._heartbeat_msg()  # says pause 1; it reaches the gateway late
    loop.resume()
    loop.beat()
    assert not rt.paused
    loop.bug()  # pause 2
    loop.beat(stale)  # the gateway answers pause 1 lifted (it is ACTIVE): not this pause
    assert rt.paused
    loop.beat()
    assert risk.agent_state("alpha") is TradingState.REDUCING and rt.paused
    loop.beat()
    assert rt.paused


def test_a_pause_while_reducing_already_is_still_told_to_a_person(tmp_path: Path) -> None:
    loop = _Loop(tmp_path)
    loop.risk.states["alpha"] = TradingState.REDUCING  # its daily loss limit, say
    loop.bug()
    loop.beat()
    ((text, kind, agent),) = loop.risk.alerts
    assert kind is AlertKind.OPERATOR and agent == "alpha" and "stays reducing" in text
    assert loop.rt.paused
    loop.resume()
    loop.beat()
    assert not loop.rt.paused


def test_a_paused_agent_may_sell_what_it_holds_and_protect_it(tmp_path: Path) -> None:
    rt, wire = _runtime(tmp_path)
    rt._call("on_timer")
    assert rt.paused
    rt._positions = {"005930": PositionView(code="005930", qty=10, cost=600_000, realized_pnl=0)}
    wire.sent.clear()
    sell = rt.sell("005930", 10, 0)
    pid = rt.protect("005930", stop=55_000)
    rt._flush()
    assert [o.client_order_id for m in wire.sent if isinstance(m, SubmitOrders) for o in m.orders] == [sell]
    assert [m.id for m in wire.sent if isinstance(m, Protect)] == [pid]
    for refused in (lambda: rt.buy("005930", 1, 60_000), lambda: rt.sell("000660", 1, 0)):  # not held
        with pytest.raises(KtraderError) as e:
            refused()
        assert e.value.code is ErrorCode.DENIED_HALTED


def test_a_restarted_agents_first_pause_is_a_new_pause(tmp_path: Path) -> None:
    """The process that paused died before it heard of the resume; its successor pauses (numbering from 1
    again) before its first heartbeat: taken as a new pause, not lifted by the earlier resume."""
    loop = _Loop(tmp_path)
    loop.bug()
    loop.beat()
    loop.resume()  # the agent process is gone before its next heartbeat
    successor, _ = _runtime(tmp_path / "again")
    loop.rt = successor
    loop.bug()  # on_start, say: pause 1 of the new process
    loop.beat()
    assert loop.risk.agent_state("alpha") is TradingState.REDUCING and successor.paused
    loop.beat()
    assert successor.paused
