"""The risk gate as the operator reads it (a hunt): `risk --explain` judges what the gate would judge, the risk
multiplier scales the card's cash reserve with its budget (and rounds, never a won short)."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import OrderType, Side, TimeInForce
from common.orders import OrderState
from common.risk_rules import scale_krw
from common.schema import NewOrder
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODE = "005930"


def card(budget: int = 10_000_000, **risk: object) -> AgentCard:
    return AgentCard(
        id="alpha",
        name="alpha",
        strategy="x:Y",
        codes=[CODE],
        budget=budget,
        risk=RiskLimits(**risk),  # type: ignore[arg-type]
    )


def new(n: int, side: Side, qty: int, price: int, **kw: object) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-20261120-{n}", code=CODE, side=side, qty=qty, price=price, **kw)  # type: ignore[arg-type]


async def test_an_explained_sell_is_judged_as_the_agents_own(tmp_path: Path) -> None:
    """The what-if's number was in the gateway's range: every explained sell was taken for the gateway's own exit,
    which passes the agent's open-orders limit and its pause: 'would pass' for sells the gate denied."""
    a = card(max_open_orders=1)
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": a})
    await h.start()
    d = Desk(h, tmp_path / "run", [a])
    try:
        assert h.desk.submit(a, new(1, Side.BUY, 10, 70_000)).accepted  # filled
        await h.settle(lambda: h.portfolio.position("alpha", CODE) is not None)
        assert h.desk.submit(a, new(2, Side.BUY, 1, 60_000)).accepted  # rests: the one open order allowed
        text = d.ack("risk_explain", agent="alpha", value="sell 5 005930 @ 70000")
        r = h.desk.submit(a, new(3, Side.SELL, 5, 70_000))
        assert not r.accepted and r.code is not None
        assert f"DENIED {r.code.value}" in text, text
        d.ack("pause", agent="alpha")
        assert "DENIED DENIED_HALTED" in d.ack("risk_explain", agent="alpha", value="sell 5 005930 @ 70000")
    finally:
        await h.close()


async def test_an_order_explained_by_its_id_keeps_its_type_tif_and_own_reservation(tmp_path: Path) -> None:
    a = card(budget=1_000_000, max_order_value=1_000_000, max_open_orders=1)
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": a})
    await h.start()
    d = Desk(h, tmp_path / "run", [a])
    try:
        h.portfolio.base_prices[CODE] = 70_000  # (a conditional buy is valued at the day's upper limit)
        # a conditional buy the gate denies (valued at the upper limit, 91,000 × 19 > 1,000,000)
        r = h.desk.submit(a, new(1, Side.BUY, 19, 50_000, order_type=OrderType.CONDITIONAL))
        assert not r.accepted and r.code is not None
        text = d.ack("risk_explain", value="alpha-20261120-1")
        assert f"DENIED {r.code.value}" in text and "conditional" in text, text
        # a resting buy the gate took: explained as it stands, not beside a copy of itself
        assert h.desk.submit(a, new(2, Side.BUY, 10, 60_000)).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
        text = d.ack("risk_explain", value="alpha-20261120-2")
        assert "would pass" in text and "DENIED" not in text, text
        # a next-session order keeps its time in force
        assert h.desk.submit(a, new(3, Side.SELL, 1, 70_000, tif=TimeInForce.NEXT_SESSION)).code is not None
        text = d.ack("risk_explain", value="alpha-20261120-3")
        assert "next_session" in text and "send it with tif=next_session" not in text, text
    finally:
        await h.close()


async def test_the_risk_multiplier_scales_the_cash_reserve_with_the_budget(tmp_path: Path) -> None:
    """A quarter of a 4,000,000 budget with a 1,000,000 reserve kept whole denied every buy, unsaid."""
    a = card(budget=4_000_000, cash_reserve=1_000_000)
    h = Harness(tmp_path / "db", cards={"alpha": a})
    await h.start()
    try:
        h.risk.set_multiplier(0.25, why="test")
        assert h.desk.submit(a, new(1, Side.BUY, 1, 60_000)).accepted
    finally:
        await h.close()
    assert scale_krw(10_000_000, 0.57) == 5_700_000  # (it was 5,699,999: the float product truncated)


async def test_an_open_exit_a_held_order_and_a_resting_one_explained_by_id_read_as_the_gate_judges_them(
    tmp_path: Path,
) -> None:
    """(a review) A flatten's resting sell read DENIED_REDUCING / DENIED_NO_SHARES (judged as the agent's sell beside a
    copy of itself), DENIED_HALTED once the agent was paused; a resting order DENIED_RATE (counted again); a held one
    DENIED_REDUCING after the card's end of day (which restricts today's session only)."""
    import datetime as dt

    from common.clock import KST
    from common.market_clock import ManualClock
    from tests.fakes.core import TODAY
    from tests.unit.test_agent_gateway_exits import RestingSells, _holding, exit_resting, open_exit

    h, d = await _holding(tmp_path / "exit", RestingSells())
    try:
        d.ack("flatten", "alpha")
        await h.settle(lambda: exit_resting(h))
        x = open_exit(h)
        assert "would pass" in d.ack("risk_explain", value=x)
        d.ack("pause", agent="alpha")
        assert "would pass" in d.ack("risk_explain", value=x)
    finally:
        await h.close()

    a = card(max_orders_per_minute=1)
    h = Harness(tmp_path / "rate" / "db", clock=trading_clock(), cards={"alpha": a})
    await h.start()
    d = Desk(h, tmp_path / "rate" / "run", [a])
    try:
        assert h.desk.submit(a, new(1, Side.BUY, 10, 60_000)).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
        assert "would pass" in d.ack("risk_explain", value="alpha-20261120-1")
    finally:
        await h.close()

    b = card()
    clock = ManualClock(dt.datetime.combine(TODAY, dt.time(16, 0), KST))
    h = Harness(tmp_path / "held" / "db", clock=clock, cards={"alpha": b})
    await h.start()
    d = Desk(h, tmp_path / "held" / "run", [b])
    try:
        h.risk.end_of_day = {"alpha"}  # its card's end of day ran today
        held = NewOrder(
            client_order_id=f"alpha-{TODAY:%Y%m%d}-1",
            code=CODE,
            side=Side.BUY,
            qty=2,
            price=60_000,
            tif=TimeInForce.NEXT_SESSION,
        )
        assert h.desk.submit(b, held).accepted
        assert "would pass" in d.ack("risk_explain", value=held.client_order_id)
    finally:
        await h.close()
