"""A 조건부지정가 (CONDITIONAL) buy rests at its limit but, unfilled at the closing call, turns into a
market order (shared/kis/API.md §7.4) and may fill up to the day's upper limit: the gate and the books
value it there, as a market buy (order value, position value, budget, cash, reservations). A conditional
sell is still valued at its limit."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.orders import Accept, Hold, Order, Submit, apply
from common.portfolio import Portfolio
from common.risk_rules import (
    AccountExposure,
    Check,
    Denial,
    Exposure,
    Mandate,
    MarketView,
    check_order,
    notional_price,
)
from common.schema import NewOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness

CODE = "005930"
BASE = 50_000  # the band: 35,000 .. 65,000
UPPER = 65_000
_C = OrderType.CONDITIONAL


def test_a_conditional_buy_is_judged_at_the_upper_limit_a_sell_at_its_limit() -> None:
    assert notional_price(Side.BUY, 50_000, BASE, order_type=_C) == UPPER
    assert notional_price(Side.BUY, 50_000, BASE, order_type=OrderType.MARKET) == UPPER
    assert notional_price(Side.BUY, 50_000, BASE, order_type=OrderType.LIMIT) == 50_000
    assert notional_price(Side.SELL, 50_000, BASE, order_type=_C) == 50_000


def _check(
    side: Side, order_type: OrderType, mandate: Mandate, exp: Exposure | None = None
) -> tuple[Denial | None, list[Check]]:
    rows: list[Check] = []
    denial = check_order(
        code=CODE,
        side=side,
        qty=19,
        price=50_000,
        order_type=order_type,
        tif=TimeInForce.DAY,
        mandate=mandate,
        market=MarketView(base_price=BASE),
        exp=exp or Exposure(),
        account=AccountExposure(free_cash=1_000_000),
        explain=rows,
    )
    return denial, rows


def test_the_reviewers_conditional_buy_is_denied_by_the_order_value_limit() -> None:
    """19 @ 50,000 is 950,000 at its limit but 1,235,000 at the upper limit, where the closing call may
    buy it: over a 1,000,000 max_order_value."""
    m = Mandate(agent_limits=RiskLimits(max_order_value=1_000_000), account_limits=RiskLimits(), codes={CODE})
    denial, rows = _check(Side.BUY, _C, m)
    assert denial is not None and denial[0] is ErrorCode.DENIED_NOTIONAL, denial
    assert [c.after for c in rows if c.rule == "order value"] == [19 * UPPER]
    assert _check(Side.BUY, OrderType.LIMIT, m)[0] is None  # the same limit buy fits


def test_the_reviewers_conditional_buy_is_denied_by_the_budget() -> None:
    m = Mandate(agent_limits=RiskLimits(), account_limits=RiskLimits(), budget=1_000_000, codes={CODE})
    denial, rows = _check(Side.BUY, _C, m)
    assert denial is not None and denial[0] is ErrorCode.DENIED_BUDGET, denial
    assert [c.after for c in rows if c.rule == "budget"] == [19 * UPPER + m.costs.commission(19 * UPPER)]
    # and the account's cash (1,000,000 free)
    assert [c.denial for c in rows if c.rule == "account cash"] == [ErrorCode.DENIED_CASH_RESERVE]


def test_a_conditional_sell_is_judged_at_its_limit() -> None:
    m = Mandate(agent_limits=RiskLimits(max_order_value=1_000_000), account_limits=RiskLimits(), codes={CODE})
    denial, rows = _check(Side.SELL, _C, m, Exposure(position_qty=19, sellable_qty=19))
    assert denial is None
    assert [c.after for c in rows if c.rule == "order value"] == [19 * 50_000]


def _resting(qty: int, order_type: OrderType, side: Side = Side.BUY) -> Order:
    o = Order(
        client_order_id="alpha-20261120-1",
        agent="alpha",
        code=CODE,
        side=side,
        qty=qty,
        price=50_000,
        order_type=order_type,
    )
    return apply(apply(o, Submit()), Accept(broker_order_id="1"))


def test_a_resting_conditional_buy_is_reserved_at_the_upper_limit() -> None:
    p = Portfolio()
    p.base_prices[CODE] = BASE
    o = _resting(15, _C)
    p.order_changed(None, o)
    assert p.order_value(o) == 15 * UPPER
    e, a = p.exposure("alpha", CODE), p.account_exposure(CODE)
    assert e.open_buy_value == a.open_buy_value == e.gross_value == e.code_value == 15 * UPPER
    assert e.reserved_cash == p.reserved_cash("alpha") == p.held_cash(15 * UPPER)
    p.order_changed(o, None)
    assert p.reserved_cash("alpha") == 0 and p.exposure("alpha", CODE).open_buy_value == 0


def test_a_held_conditional_buy_is_reserved_at_its_sessions_upper_limit() -> None:
    p = Portfolio()
    p.base_prices[CODE] = BASE
    p.session_band = lambda code, day: (60_000, p.rules, None)  # the next session's band: 42,000 .. 78,000
    o = Order(
        client_order_id="alpha-20261120-1",
        agent="alpha",
        code=CODE,
        side=Side.BUY,
        qty=10,
        price=50_000,
        order_type=_C,
        tif=TimeInForce.NEXT_SESSION,
    )
    o = apply(o, Hold(valid_day="20261123"))
    p.order_changed(None, o)
    assert p.order_value(o) == 10 * 78_000
    assert p.exposure("alpha", CODE).open_buy_value == 10 * 78_000


def test_a_conditional_sell_holds_shares_not_cash() -> None:
    p = Portfolio()
    p.base_prices[CODE] = BASE
    o = _resting(15, _C, Side.SELL)
    p.order_changed(None, o)
    assert p.reserved_cash("alpha") == 0 and p.order_value(o) == 15 * 50_000


def _card(budget: int, max_order_value: int = 0) -> AgentCard:
    return AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=[CODE],
        budget=budget,
        risk=RiskLimits(max_order_value=max_order_value),
    )


def _new(n: int, qty: int, order_type: OrderType) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-20261120-{n}", code=CODE, side=Side.BUY, qty=qty, price=50_000, order_type=order_type
    )


async def test_the_gate_denies_a_conditional_buy_over_its_limits(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", broker=FakeBroker(ref_price=52_000))  # a buy at 50,000 rests
    await h.start()
    try:
        h.portfolio.base_prices[CODE] = BASE
        r = h.desk.submit(_card(1_000_000, 1_000_000), _new(1, 19, _C))
        assert not r.accepted and r.code is ErrorCode.DENIED_NOTIONAL, r
        r = h.desk.submit(_card(1_000_000), _new(2, 19, _C))
        assert not r.accepted and r.code is ErrorCode.DENIED_BUDGET, r
        assert h.broker.submits == 0
        assert h.desk.submit(_card(1_000_000, 1_000_000), _new(3, 19, OrderType.LIMIT)).accepted  # control
    finally:
        await h.close()


async def test_a_resting_conditional_buy_holds_its_upper_limit_value_of_the_budget(tmp_path: Path) -> None:
    """15 conditional @ 50,000 hold 975,146 (at 65,000, with commission) of a 1,700,000 budget: 16 more
    @ 50,000 (800,120) do not fit (valued at its limit it held 750,112, and they did)."""
    h = Harness(tmp_path / "gw.sqlite", broker=FakeBroker(ref_price=52_000))
    await h.start()
    try:
        h.portfolio.base_prices[CODE] = BASE
        card = _card(1_700_000)
        assert h.desk.submit(card, _new(1, 15, _C)).accepted
        await h.settle(
            lambda: h.book.orders["alpha-20261120-1"].is_open and h.book.orders["alpha-20261120-1"].broker_order_id
        )
        assert h.portfolio.reserved_cash("alpha") == 975_146
        r = h.desk.submit(card, _new(2, 16, OrderType.LIMIT))
        assert not r.accepted and r.code is ErrorCode.DENIED_BUDGET, r
    finally:
        await h.close()


async def test_a_conditional_buy_waits_for_the_base_price_as_a_market_buy_does(tmp_path: Path) -> None:
    """Before today's base price is known the upper limit is not: the gate asks for a limit order, as
    for a market buy (it used to value it at its limit)."""
    h = Harness(tmp_path / "gw.sqlite", broker=FakeBroker(ref_price=52_000))
    await h.start()
    try:
        h.portfolio.base_prices.pop(CODE, None)
        r = h.desk.submit(_card(1_000_000), _new(1, 1, _C))
        assert not r.accepted and r.code is ErrorCode.BAD_ORDER and "base price" in r.message, r
    finally:
        await h.close()


def test_a_day_order_after_the_close_is_refused_as_market_closed_whatever_the_agents_state() -> None:
    """After its end of day (reducing) a day buy at 15:30 was refused 'agent is reducing': a strategy that answers
    DENIED_MARKET_CLOSED with a next-session order never heard it. A next-session order is weighed by the states."""
    from common.enums import TradingState
    from common.krx import Phase

    reducing = Mandate(
        agent_limits=RiskLimits(), account_limits=RiskLimits(), codes={CODE}, agent_state=TradingState.REDUCING
    )

    def denial(tif: TimeInForce) -> Denial | None:
        return check_order(
            code=CODE,
            side=Side.BUY,
            qty=1,
            price=50_000,
            order_type=OrderType.LIMIT,
            tif=tif,
            mandate=reducing,
            market=MarketView(base_price=BASE, phase=Phase.POST_CLOSE),
            exp=Exposure(),
            account=AccountExposure(free_cash=1_000_000),
        )

    day = denial(TimeInForce.DAY)
    assert day is not None and day[0] is ErrorCode.DENIED_MARKET_CLOSED and "next_session" in day[1]
    nxt = denial(TimeInForce.NEXT_SESSION)
    assert nxt is not None and nxt[0] is ErrorCode.DENIED_REDUCING
