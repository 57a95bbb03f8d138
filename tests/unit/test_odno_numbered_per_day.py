"""KIS numbers each day's orders anew (order numbers restart every day). An earlier day's order still open in the
books (the gateway was down over its close, and that day's list is not read yet, or cannot be) keeps its order
number; today's first orders get the same numbers. A notice of today's order that comes before its REST reply
(API.md 8.13) must wait for that reply, not land on the old order: it did, booking the new order's fill on another
agent's expired order (phantom shares it could sell)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import msgspec

from common.market_clock import ManualClock
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, order
from tests.unit.test_reconcile_days import FRI, MON, DayBroker, kst

BETA = msgspec.structs.replace(CARD, id="beta")
FRIDAYS = "alpha-20261120-1"
MONDAYS = "beta-20261123-1"


class PerDayBroker(DayBroker):
    """Order numbers that restart each day; each fill's notice before the REST reply; an earlier day's list kept
    as KIS keeps it (`archive`)."""

    slow_ack = False
    archive: dict[object, dict[str, dict[str, object]]] = {}

    async def order_reports(self, day, *, open_only: bool = False):  # type: ignore[no-untyped-def]
        if day in self.archive:
            if day in self.fail:
                raise RuntimeError("EGW00201 too many requests")
            live, self.orders = self.orders, self.archive[day]  # type: ignore[assignment]
            try:
                return await FakeBroker.order_reports(self, day, open_only=open_only)
            finally:
                self.orders = live
        return await super().order_reports(day, open_only=open_only)

    async def submit(self, o: BrokerOrder) -> BrokerAck:
        ack = await super().submit(o)
        self.day_of[ack.broker_order_id] = self.clock.now().date()
        if self.slow_ack:
            for _ in range(20):
                await asyncio.sleep(0)  # the notice pump runs first
        return ack


async def test_a_notice_of_todays_order_never_lands_on_an_earlier_days_order_with_its_number(tmp_path: Path) -> None:
    clock = ManualClock(kst(FRI, 15))
    db = tmp_path / "db.sqlite"
    b = PerDayBroker(clock)
    h = Harness(db, b, clock=clock)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted  # alpha's buy rests
    await h.settle(lambda: h.book.orders[FRIDAYS].state is OrderState.ACCEPTED)
    await h.close()  # the gateway is down over Friday's close
    while not b._queue.empty():
        b._queue.get_nowait()
    clock.set(kst(MON, 9, 5))
    b.fail.add(FRI)  # Friday's list cannot be read yet
    b.archive = {FRI: {k: dict(v, open=False) for k, v in b.orders.items()}}  # it expired unfilled at the close
    b.orders, b._odno = {}, itertools.count(1)  # Monday at KIS: the numbers start again
    b.day_of.clear()
    b.slow_ack = True
    h = Harness(db, b, clock=clock)
    await h.start()
    assert h.book.orders[FRIDAYS].state is OrderState.ACCEPTED  # kept open: its day's list not read
    # beta buys 3 (marketable): KIS numbers it as Friday's order was, fills it, and its notice comes first
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=3, price=70_000)
    assert h.desk.submit(BETA, new).accepted
    await h.settle(lambda: h.book.orders[MONDAYS].filled_qty == 3)
    assert h.book.orders[MONDAYS].broker_order_id == h.book.orders[FRIDAYS].broker_order_id  # (the same number)
    assert h.book.orders[FRIDAYS].filled_qty == 0 and h.portfolio.position("alpha", "005930") is None
    assert h.portfolio.position("beta", "005930").qty == 3  # type: ignore[union-attr]
    b.fail.clear()  # Friday's list read at the next pass: the order expired there, unfilled
    clock.advance(61)
    await h.recon.run("periodic")
    assert FRIDAYS not in h.book.orders or h.book.orders[FRIDAYS].state is OrderState.EXPIRED
    assert h.portfolio.position("beta", "005930").qty == 3  # type: ignore[union-attr]
    await h.close()
