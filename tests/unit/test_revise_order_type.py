"""A revise keeps the order's own type: a conditional order (조건부지정가, ORD_DVSN 02) is revised as
02, not as a plain limit (00) that would lose its switch to market at the closing auction. Market,
best and priority orders have no price of their own and IOC/FOK orders never rest: their revises are
refused at the order desk (BAD_ORDER, with the reason), before anything reaches KIS."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerModify, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.unit.test_kis_adapter import FakeKisRest, aio
from tests.unit.test_kis_adapter import broker as kis_broker
from tests.unit.test_oms import CARD, Harness, coid


class Resting(FakeBroker):
    """Every order rests (a market-like one too, as one would in an auction); revises are recorded."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.modifies: list[BrokerModify] = []

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        return await super().submit(msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=1))

    async def modify(self, req: BrokerModify) -> BrokerAck:
        self.modifies.append(req)
        return await super().modify(req)


def new(n: int, order_type: OrderType, price: int, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(
        client_order_id=coid(n), code="005930", side=Side.BUY, qty=2, price=price, order_type=order_type, tif=tif
    )


async def _started(tmp_path: Path) -> tuple[Harness, Resting]:
    broker = Resting()
    h = Harness(tmp_path / "gw.sqlite", broker)
    await h.start()
    await h.base_prices.ensure(["005930"])  # market-like buys are judged at the day's upper limit
    return h, broker


async def _revised_conditional(tmp_path: Path) -> BrokerModify:
    h, broker = await _started(tmp_path)
    assert h.desk.submit(CARD, new(1, OrderType.CONDITIONAL, 60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.desk.modify(CARD, coid(1), 60_500) == (None, "revise sent")
    await h.settle(
        lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED and h.book.orders[coid(1)].price == 60_500
    )
    o = h.book.orders[coid(1)]
    assert o.order_type is OrderType.CONDITIONAL and len(o.broker_chain) == 2
    [req] = broker.modifies
    await h.close()
    return req


@aio
async def test_a_conditional_order_is_revised_as_conditional_up_to_the_kis_body(tmp_path: Path) -> None:
    req = await _revised_conditional(tmp_path)
    assert (req.order_type, req.price) == (OrderType.CONDITIONAL, 60_500)
    # the same request through the KIS adapter: ORD_DVSN 02 with its price (the submit's table)
    fake = FakeKisRest()
    b = kis_broker(tmp_path, fake)
    await b.modify(req)
    body = json.loads(fake.requests[-1].content)
    assert (body["RVSE_CNCL_DVSN_CD"], body["ORD_DVSN"], body["ORD_UNPR"]) == ("01", "02", "60500")
    await b.rest.aclose()


@pytest.mark.parametrize("order_type", [OrderType.MARKET, OrderType.BEST, OrderType.PRIORITY])
async def test_a_market_like_order_has_no_price_to_revise(tmp_path: Path, order_type: OrderType) -> None:
    h, broker = await _started(tmp_path)
    assert h.desk.submit(CARD, new(1, order_type, 0)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    code, why = h.desk.modify(CARD, coid(1), 60_000)
    assert code is ErrorCode.BAD_ORDER and "no price to revise" in why and "cancel" in why
    assert not broker.modifies and h.book.orders[coid(1)].state is OrderState.ACCEPTED  # nothing asked of KIS
    await h.close()


async def test_an_ioc_order_is_not_revised(tmp_path: Path) -> None:
    h, broker = await _started(tmp_path)
    assert h.desk.submit(CARD, new(1, OrderType.LIMIT, 60_000, TimeInForce.IOC)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    code, why = h.desk.modify(CARD, coid(1), 60_500)
    assert code is ErrorCode.BAD_ORDER and "does not rest" in why
    assert not broker.modifies
    await h.close()
