"""An order type and time in force KIS has no order division (ORD_DVSN) for is refused by the gate
(BAD_ORDER, naming the pair) before anything is written or sent: it used to pass, be refused by the
adapter locally, and count as a broker error toward the kill switch. The gate and the adapter read one
table (common/risk_rules.py ORDER_DIVISIONS), so what one accepts the other can send."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from common.clock import KST
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx_rules import rules_for
from common.market_clock import ManualClock, market_ns
from common.risk_rules import HELD_TIFS
from common.schema import NewOrder
from kis import adapter
from kis.port import BrokerRejected
from tests.fakes.harness import Harness
from tools.backtest.broker import SimBroker

CODE = "005930"
CARD = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=5_000_000)


@pytest.mark.parametrize(
    ("order_type", "tif", "price"),
    [
        (OrderType.CONDITIONAL, TimeInForce.IOC, 60_000),
        (OrderType.CONDITIONAL, TimeInForce.FOK, 60_000),
        (OrderType.PRIORITY, TimeInForce.IOC, 0),
    ],
)
async def test_an_unmappable_pair_is_refused_by_the_gate(
    tmp_path: Path, order_type: OrderType, tif: TimeInForce, price: int
) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    h.portfolio.base_prices[CODE] = 70_000
    new = NewOrder(
        client_order_id="alpha-20261120-1", code=CODE, side=Side.BUY, qty=1, price=price, order_type=order_type, tif=tif
    )
    r = h.desk.submit(CARD, new)
    assert r.code is ErrorCode.BAD_ORDER and f"{order_type.value}/{tif.value}" in r.message, r
    assert "KIS has no order division" in r.message
    assert h.broker.submits == 0 and h.risk.recent_broker_errors() == 0  # nothing sent, nothing counted
    await h.close()


def test_the_gate_and_the_adapter_read_one_table() -> None:
    from common.risk_rules import ORDER_DIVISIONS, unsendable

    assert adapter.ORD_DVSN is ORDER_DIVISIONS
    for order_type, tif in itertools.product(OrderType, TimeInForce):
        sent = TimeInForce.DAY if tif in HELD_TIFS else tif  # a held order goes as a DAY order
        try:
            adapter.ord_dvsn(order_type, sent)
            mappable = True
        except BrokerRejected:
            mappable = False
        assert (unsendable(order_type, tif) == "") is mappable, (order_type, tif)


def test_the_backtest_refuses_the_same_pairs() -> None:
    day = dt.date(2024, 3, 5)
    sim = SimBroker(card=CARD, cash=5_000_000)
    sim.base[CODE] = 70_000
    sim.ts_ns = market_ns(ManualClock(dt.datetime.combine(day, dt.time(10, 0), KST)))
    denial = sim._gate(CODE, Side.BUY, 1, 60_000, OrderType.CONDITIONAL, TimeInForce.IOC, rules_for(day))
    assert denial is not None and denial[0] is ErrorCode.BAD_ORDER and "conditional/ioc" in denial[1]
    assert sim._gate(CODE, Side.BUY, 1, 60_000, OrderType.LIMIT, TimeInForce.IOC, rules_for(day)) is None
