"""The kill switch's scope: session-level broker failures (server errors, unknown outcomes, auth) halt
the gateway as before; the broker's business refusals of one agent's orders (a halted stock, a
warning-designated one, not enough cash at KIS) halt that agent alone — every other agent, and every
protective stop, keeps trading. The operator's resume of the agent clears its count."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard, GatewayConfig
from common.enums import AlertKind, Side, TradingState
from common.errors import ErrorCode
from common.market_clock import market_ns
from common.schema import NewOrder
from tests.fakes.harness import Harness

CODE = "005930"
ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=5_000_000)
BRAVO = AgentCard(id="bravo", name="B", strategy="x:Y", codes=[CODE], budget=5_000_000)


def buy(agent: str, n: int) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261120-{n}", code=CODE, side=Side.BUY, qty=1, price=60_000)


async def test_one_agents_refused_orders_halt_that_agent_not_the_gateway(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(kill_errors=3))
    await h.start()
    risk, now = h.risk, market_ns(h.core.book.clock)
    for i in range(3):  # three orders on a halted stock, refused by KIS
        risk.broker_error(now + i, agent="alpha", rejected=True)
    risk.sweep([ALPHA, BRAVO])
    assert risk.agent_state("alpha") is TradingState.HALTED
    assert risk.global_state is TradingState.ACTIVE and risk.agent_state("bravo") is TradingState.ACTIVE
    (text,) = h.alerted(AlertKind.KILL_SWITCH)
    assert "3 of alpha's orders refused by the broker" in text and "alpha halted" in text
    assert h.desk.submit(ALPHA, buy("alpha", 1)).code is ErrorCode.DENIED_HALTED
    assert h.desk.submit(BRAVO, buy("bravo", 1)).accepted  # the rest of the account trades on
    # the operator resumes alpha (what `ktrader control resume --agent alpha` does): its count is forgiven
    notes = risk.accept("alpha", ALPHA)
    risk.set_state("alpha", TradingState.ACTIVE, why="resume by test")
    assert any("3 recent broker refusals of alpha's orders forgiven" in n for n in notes)
    risk.sweep([ALPHA, BRAVO])
    assert risk.agent_state("alpha") is TradingState.ACTIVE
    assert h.desk.submit(ALPHA, buy("alpha", 2)).accepted
    await h.close()


async def test_refusals_below_the_threshold_or_spread_over_agents_halt_nobody(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(kill_errors=3))
    await h.start()
    risk, now = h.risk, market_ns(h.core.book.clock)
    for agent in ("alpha", "bravo"):
        for i in range(2):
            risk.broker_error(now + i, agent=agent, rejected=True)
    risk.sweep([ALPHA, BRAVO])
    assert risk.states == {} and not h.alerted(AlertKind.KILL_SWITCH)
    await h.close()


async def test_session_failures_still_halt_the_gateway(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(kill_errors=3))
    await h.start()
    risk, now = h.risk, market_ns(h.core.book.clock)
    risk.broker_error(now)  # an existing caller: no agent, not a refusal
    risk.broker_error(now, agent="alpha")  # a server error while sending alpha's order: the session's
    risk.broker_error(now, rejected=True)  # a refusal nobody owns counts for the gateway
    risk.sweep([ALPHA, BRAVO])
    assert risk.global_state is TradingState.HALTED and risk.agent_state("alpha") is TradingState.ACTIVE
    (text,) = h.alerted(AlertKind.KILL_SWITCH)
    assert "3 broker errors" in text and "trading halted" in text
    await h.close()


async def test_an_automatic_halt_cancels_the_open_orders_it_covers(tmp_path: Path) -> None:
    """A halt that leaves orders working is not one: the agent's kill switch cancels its resting orders
    (another agent's stay), the gateway's cancels every agent's."""
    from common.orders import OrderState

    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(kill_errors=3))
    await h.start()
    assert h.desk.submit(ALPHA, buy("alpha", 1)).accepted and h.desk.submit(BRAVO, buy("bravo", 1)).accepted
    await h.settle(lambda: all(o.state is OrderState.ACCEPTED for o in h.book.orders.values()))
    risk, now = h.risk, market_ns(h.core.book.clock)
    for i in range(3):
        risk.broker_error(now + i, agent="alpha", rejected=True)
    risk.sweep([ALPHA, BRAVO])
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.CANCELLED)
    assert h.book.orders["bravo-20261120-1"].state is OrderState.ACCEPTED
    (text,) = h.alerted(AlertKind.KILL_SWITCH)
    assert "1 open orders cancelled" in text
    for i in range(3):  # session failures: the gateway's kill switch
        risk.broker_error(now + 10 + i)
    risk.sweep([ALPHA, BRAVO])
    await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.CANCELLED)
    assert risk.global_state is TradingState.HALTED
    await h.close()
