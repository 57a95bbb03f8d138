"""Best (최유리) and priority (최우선) orders execute at the market: KIS takes them with ORD_UNPR "0", so
the gate refuses one that carries a price (it would misstate the order's size to every limit) and
values them as it values a market order — a buy at the day's upper limit, a sell at the lower — in its
notional, the reservations and the exposure; a buy with no base price known is refused as a market
buy is."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import AgentCard, RiskLimits
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.orders import Accept, Order, OrderState, Submit, apply
from common.portfolio import Portfolio
from common.risk_rules import notional_price
from common.schema import NewOrder
from kis.adapter import PRICELESS
from tests.fakes.harness import Harness

CODE = "005930"
BASE, UPPER, LOWER = 70_000, 91_000, 49_000  # the day's band around the base (±30 %)
CARD = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=[CODE],
    budget=5_000_000,
    risk=RiskLimits(max_order_value=3_000_000),
)
PEGGED = [OrderType.BEST, OrderType.PRIORITY]


def new(n: int, order_type: OrderType, qty: int, price: int = 0, side: Side = Side.BUY) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-20261120-{n}", code=CODE, side=side, qty=qty, price=price, order_type=order_type
    )


@pytest.mark.parametrize("order_type", PEGGED)
async def test_a_best_or_priority_order_with_a_price_is_refused_before_it_is_sent(
    tmp_path: Path, order_type: OrderType
) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    # 2,000,000 shares "at 1 won" would have passed a 3,000,000 order-value limit: KIS fills it at the market
    r = h.desk.submit(CARD, new(1, order_type, 2_000_000, price=1))
    assert r.code is ErrorCode.BAD_ORDER and f"a {order_type.value} order carries no price (send price=0)" in r.message
    h.portfolio.base_prices[CODE] = BASE
    r = h.desk.submit(CARD, new(2, order_type, 61, price=LOWER))  # inside the band: still refused
    assert r.code is ErrorCode.BAD_ORDER and "send price=0" in r.message
    assert h.portfolio.reserved_cash("alpha") == 0 and h.broker.submits == 0
    await h.close()


@pytest.mark.parametrize("order_type", PEGGED)
async def test_a_best_or_priority_buy_is_valued_at_the_upper_limit_as_a_market_buy(
    tmp_path: Path, order_type: OrderType
) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    r = h.desk.submit(CARD, new(1, order_type, 10))  # the day's base price is not known yet
    assert r.code is ErrorCode.BAD_ORDER and f"a {order_type.value} buy needs today's base price" in r.message
    h.portfolio.base_prices[CODE] = BASE
    r = h.desk.submit(CARD, new(2, order_type, 33))  # 33 x 91,000 = 3,003,000 > 3,000,000
    assert r.code is ErrorCode.DENIED_NOTIONAL and "3,003,000" in r.message, r
    assert h.desk.submit(CARD, new(3, order_type, 32)).accepted  # 2,912,000
    # reserved (with its commission) at the upper limit, as a market buy is: the budget sees it
    assert h.portfolio.reserved_cash("alpha") == 32 * UPPER + 32 * UPPER * 150 // 1_000_000
    assert h.portfolio.exposure("alpha", CODE).open_buy_value == 32 * UPPER
    r = h.desk.submit(CARD, new(4, OrderType.LIMIT, 30, price=BASE))  # 2,100,315 > 5,000,000 - 2,912,436
    assert r.code is ErrorCode.DENIED_BUDGET, r
    await h.close()


def test_every_valuation_treats_the_market_like_types_alike() -> None:
    from common.risk_rules import MARKET_LIKE

    assert MARKET_LIKE == {OrderType.MARKET, OrderType.BEST, OrderType.PRIORITY}
    assert PRICELESS is MARKET_LIKE  # what the adapter sends with ORD_UNPR "0"
    for t in MARKET_LIKE:
        # a price it carries (an order journaled before the gate refused them) is not what it is judged at
        assert notional_price(Side.BUY, 1, BASE, order_type=t) == UPPER
        assert notional_price(Side.SELL, 1, BASE, order_type=t) == LOWER
    assert notional_price(Side.BUY, 60_000, BASE, order_type=OrderType.LIMIT) == 60_000
    p = Portfolio()
    p.base_prices[CODE] = BASE
    o = Order(
        client_order_id="alpha-20261120-1",
        agent="alpha",
        code=CODE,
        side=Side.BUY,
        qty=10,
        price=1,
        order_type=OrderType.BEST,
        tif=TimeInForce.DAY,
    )
    o = apply(apply(o, Submit()), Accept(broker_order_id="1"))
    assert o.state is OrderState.ACCEPTED
    p.order_changed(None, o)
    assert p.order_value(o) == 10 * UPPER
    assert p.account_exposure(CODE).open_buy_value == 10 * UPPER  # not 10 won
    assert p.reserved_cash("alpha") == 10 * UPPER + 10 * UPPER * 150 // 1_000_000
    p.order_changed(o, None)
    assert p.reserved_cash("alpha") == 0 and p.account_exposure(CODE).open_buy_value == 0
