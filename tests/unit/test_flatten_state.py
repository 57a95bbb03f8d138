"""What the operator's flatten leaves of the agent's trading state.

- Refused (nothing can be sold: the market is closed), it changes nothing: a paused agent stays paused and
  no loss is accepted for it. It used to accept the loss and set the agent reducing before the sells were
  tried, so at the next open the agent could send its own sells though the operator's flatten had failed.
- Done, it leaves the agent reducing (sells only) until the operator resumes it, as the end of day's
  flatten does: a running agent bought straight back what the flatten sold."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import Side, TradingState
from common.errors import ErrorCode
from common.ids import placed_by_gateway
from common.market_clock import RunningClock
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODE = "005930"
ALPHA = AgentCard(
    id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000, risk=RiskLimits(max_daily_loss=50_000)
)


def _order(n: int, side: Side = Side.BUY, qty: int = 10, price: int = 70_000, day: str = "20261120") -> NewOrder:
    return NewOrder(client_order_id=f"alpha-{day}-{n}", code=CODE, side=side, qty=qty, price=price)


async def _holding(tmp_path: Path, resting: bool = False) -> tuple[Harness, Desk, RunningClock]:
    """alpha holds 10 005930 bought at 70,000 in the session (`resting`: and a buy at 50,000 rests), now
    marked at 60,000 (a loss past its limit)."""
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": ALPHA})
    await h.start()
    assert h.desk.submit(ALPHA, _order(1)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    if resting:
        assert h.desk.submit(ALPHA, _order(2, price=50_000)).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
    h.print(CODE, 60_000)
    return h, Desk(h, tmp_path / "run", [ALPHA]), clock


def _gateway_sells(h: Harness) -> list[str]:
    return [c for c, o in h.book.orders.items() if placed_by_gateway(c) and o.side is Side.SELL]


async def test_a_flatten_refused_for_a_closed_market_leaves_a_paused_agent_paused(tmp_path: Path) -> None:
    h, d, clock = await _holding(tmp_path)
    try:
        d.ack("pause", "alpha")
        assert h.risk.agent_state("alpha") is TradingState.HALTED
        clock.set(dt.datetime(2026, 11, 20, 18, 30))  # after hours

        e = d.error("flatten", "alpha")

        assert e.code is ErrorCode.DENIED_MARKET_CLOSED, e
        assert "nothing sold" in e.message and "still held: 10 005930" in e.message, e.message
        assert "alpha stays paused" in e.message and "now reducing" not in e.message, e.message
        assert "accepted" not in e.message, e.message
        assert h.risk.agent_state("alpha") is TradingState.HALTED and not h.risk.hard_halted("alpha")  # a pause
        assert "alpha" not in h.risk.accepted_loss  # its loss not accepted
        assert h.desk.flattening == []
        (_, _, action, agent, ok, detail) = h.store.operator_log(limit=1)[0]
        assert (action, agent, ok, detail["code"]) == ("flatten", "alpha", False, "DENIED_MARKET_CLOSED")
        # the next session: still paused, its own sell is refused as a paused agent's
        clock.set(dt.datetime(2026, 11, 23, 10, 0))
        r = h.desk.submit(ALPHA, _order(1, Side.SELL, price=60_000, day="20261123"))
        assert not r.accepted and r.code is ErrorCode.DENIED_HALTED, r
    finally:
        await h.close()


async def test_a_refused_flatten_waiting_for_its_cancels_leaves_no_sell_behind(tmp_path: Path) -> None:
    """Its resting buy still open after hours: the sells would wait for the cancel only to be refused. The
    flatten is refused at once, its cancel goes on, no sell follows it and the agent stays paused."""
    h, d, clock = await _holding(tmp_path, resting=True)
    try:
        d.ack("pause", "alpha")
        clock.set(dt.datetime(2026, 11, 20, 18, 30))

        e = d.error("flatten", "alpha")

        assert e.code is ErrorCode.DENIED_MARKET_CLOSED, e
        assert "nothing sold (1 cancels sent: its buys)" in e.message and "alpha stays paused" in e.message, e.message
        assert h.risk.agent_state("alpha") is TradingState.HALTED and "alpha" not in h.risk.accepted_loss
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.CANCELLED)
        assert h.desk.flattening == [] and _gateway_sells(h) == []
    finally:
        await h.close()


async def test_after_the_operators_flatten_an_active_agent_reduces_until_resumed(tmp_path: Path) -> None:
    h, d, _ = await _holding(tmp_path)
    try:
        assert h.risk.agent_state("alpha") is TradingState.ACTIVE

        text = d.ack("flatten", "alpha")

        await h.settle(lambda: h.portfolio.position("alpha", CODE).qty == 0)  # type: ignore[union-attr]
        # its strategy buys back: refused, it is reducing
        r = h.desk.submit(ALPHA, _order(2))
        assert not r.accepted and r.code is ErrorCode.DENIED_REDUCING, r
        assert h.risk.agent_state("alpha") is TradingState.REDUCING
        assert text == "alpha: flatten: 1 market sells sent (10 005930); now reducing (sells only) until resume"
        # a flatten again: nothing to do, still reducing
        assert d.ack("flatten", "alpha") == (
            "alpha: nothing to flatten (no shares, no open orders); still reducing (sells only) until resume"
        )
        # the operator's resume lets it buy again
        d.ack("resume", "alpha")
        assert h.risk.agent_state("alpha") is TradingState.ACTIVE
        assert h.desk.submit(ALPHA, _order(3)).accepted
    finally:
        await h.close()


async def test_a_paused_agent_flattened_in_the_session_reduces_until_resumed(tmp_path: Path) -> None:
    h, d, _ = await _holding(tmp_path)
    try:
        d.ack("pause", "alpha")
        text = d.ack("flatten", "alpha")
        assert text.startswith("alpha: flatten: 1 market sells sent (10 005930)"), text
        assert "it was paused: now reducing (sells only) until resume" in text and "loss" in text, text
        assert h.risk.agent_state("alpha") is TradingState.REDUCING and "alpha" in h.risk.accepted_loss
        await h.settle(lambda: h.portfolio.position("alpha", CODE).qty == 0)  # type: ignore[union-attr]
        r = h.desk.submit(ALPHA, _order(2))
        assert not r.accepted and r.code is ErrorCode.DENIED_REDUCING, r
    finally:
        await h.close()
