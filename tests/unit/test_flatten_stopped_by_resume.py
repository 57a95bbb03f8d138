"""The operator stops a flatten with resume: the agent orders again, a cancel of its resting sell sends
no new one, and a restart does not bring the flatten back (it was persisted to survive one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from common.config import AgentCard, RiskLimits
from common.enums import OrderType, Side
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerOrder
from server.trading_day import BasePrices
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tests.unit.test_crash_halt_cancels import crash

CODE = "005930"
SPLIT = AgentCard(
    id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000, risk=RiskLimits(max_order_value=2_000_000)
)


class AuctionBroker(FakeBroker):
    """Market sells rest (an opening auction, a VI): not filled at once."""

    rest_market = False

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if self.rest_market and order.order_type is OrderType.MARKET:
            order = msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=999_999)
        return await super().submit(order)


def sells(h: Any) -> list[str]:
    return [c for c, o in h.book.orders.items() if placed_by_gateway(c) and o.side is Side.SELL]


async def test_resume_stops_a_flatten_for_good(tmp_path: Path) -> None:
    broker = AuctionBroker(ref_price=70_000)
    h = Harness(tmp_path / "g.sqlite", broker=broker, clock=trading_clock(), cards={"alpha": SPLIT})
    await h.start()
    await BasePrices(h.book, h.broker.base_price).ensure([CODE])
    buy = NewOrder(client_order_id="alpha-20261120-1", code=CODE, side=Side.BUY, qty=70, price=70_000)
    assert h.desk.submit(msgspec.structs.replace(SPLIT, risk=RiskLimits()), buy).accepted
    await h.settle(lambda: h.portfolio.positions.get("alpha", {}).get(CODE) is not None)
    broker.rest_market = True
    d = Desk(h, tmp_path / "run", [SPLIT])
    d.ack("flatten", "alpha")
    await h.settle(lambda: len(sells(h)) == 1 and h.book.orders[sells(h)[0]].state is OrderState.ACCEPTED)
    assert "flatten stopped" in d.ack("resume", "alpha")
    again = NewOrder(client_order_id="alpha-20261120-2", code=CODE, side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(SPLIT, again).accepted  # no longer refused as being flattened
    d.ack("cancel_all", "alpha")
    await h.settle(lambda: h.book.orders[sells(h)[0]].state is OrderState.CANCELLED)
    assert len(sells(h)) == 1  # no new sell sent for the cancelled one
    await h.store.durable()
    await crash(h)
    h2 = Harness(tmp_path / "g.sqlite", broker=broker, clock=trading_clock(), cards={"alpha": SPLIT})
    await h2.start()
    try:
        assert h2.desk.flattening == []
    finally:
        await h2.close()


async def test_resume_all_never_stops_an_end_of_day_flatten(tmp_path: Path) -> None:
    """The card's end-of-day flatten is the gateway's: a resume (of all, after a kill switch, or of the
    agent) leaves it selling."""
    broker = AuctionBroker(ref_price=70_000)
    h = Harness(tmp_path / "g.sqlite", broker=broker, clock=trading_clock(), cards={"alpha": SPLIT})
    await h.start()
    try:
        await BasePrices(h.book, h.broker.base_price).ensure([CODE])
        buy = NewOrder(client_order_id="alpha-20261120-1", code=CODE, side=Side.BUY, qty=70, price=70_000)
        assert h.desk.submit(msgspec.structs.replace(SPLIT, risk=RiskLimits()), buy).accepted
        await h.settle(lambda: h.portfolio.positions.get("alpha", {}).get(CODE) is not None)
        broker.rest_market = True
        h.desk.flatten(SPLIT, "end of day: flatten")
        d = Desk(h, tmp_path / "run", [SPLIT])
        d.ack("pause", all=True)
        assert "flatten stopped" not in d.ack("resume", all=True)
        assert "flatten stopped" not in d.ack("resume", "alpha")
        assert h.desk.flattening == ["alpha"]
    finally:
        await h.close()
