"""A flatten of an agent that is still running: its new orders are refused until it is flat, so the
flatten's sells go out (a re-quoted bid kept them waiting for good, and the operator was told it sold)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.config import AccountLimits, GatewayConfig
from common.enums import Side
from common.errors import ErrorCode
from common.orders import OrderState
from kis.port import BrokerAck, BrokerCancel, BrokerOrder, BrokerRejected, NoticeKind
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, coid, order


async def test_an_agent_being_flattened_cannot_order_and_its_shares_are_sold(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930", "000660"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        assert h.desk.submit(CARD, order(2, qty=5, price=60_000)).accepted  # rests
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.ACCEPTED)

        h.desk.flatten(CARD, "operator flatten")
        again = h.desk.submit(CARD, order(3, qty=5, price=60_000))  # the strategy re-quotes its bid
        assert not again.accepted and again.code is ErrorCode.DENIED_REDUCING and "flattened" in again.message

        def sold() -> bool:
            return any(o.side is Side.SELL and o.state is OrderState.FILLED for o in h.book.orders.values())

        await h.settle(sold)
        assert h.portfolio.positions["alpha"]["005930"].qty == 0
        assert h.book.orders[coid(2)].state is OrderState.CANCELLED
        assert "alpha" not in h.desk._flattening
        # flat again: the agent orders as before
        assert h.desk.submit(CARD, order(4, qty=1, price=60_000)).accepted
    finally:
        await h.close()


class RefusingCancel(FakeBroker):
    """KIS takes the cancel (접수 over REST), the exchange refuses it (거부 notice of the cancel line)."""

    def __init__(self, refusals: int, **kw: int) -> None:
        super().__init__(**kw)
        self.refusals = refusals
        self.cancels = 0

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        self.cancels += 1
        if self.cancels > self.refusals:
            return await super().cancel(req)
        o = self.orders[req.broker_order_id]
        odno = f"{next(self._odno):010d}"
        self._notice(NoticeKind.ACCEPTED, odno, o, orig=req.broker_order_id, is_cancel=True)
        self._notice(NoticeKind.REJECTED, odno, o, orig=req.broker_order_id, is_cancel=True)
        return BrokerAck(broker_order_id=odno, org_no="06010", time=self._time())


async def test_a_refused_flatten_cancel_is_asked_again_and_the_flatten_completes(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", broker=RefusingCancel(refusals=2, ref_price=70_000))
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        assert h.desk.submit(CARD, order(2, qty=5, price=60_000)).accepted
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.ACCEPTED)
        h.desk.flatten(CARD, "operator flatten")
        await h.settle(lambda: h.portfolio.positions["alpha"]["005930"].qty == 0)
        assert h.book.orders[coid(2)].state is OrderState.CANCELLED and h.broker.cancels == 3
        assert "alpha" not in h.desk._flattening
    finally:
        await h.close()


class SlowCancel(FakeBroker):
    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.gate = asyncio.Event()

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        await self.gate.wait()
        return await super().cancel(req)


async def test_orders_refused_during_a_flatten_do_not_use_up_its_rate(tmp_path: Path) -> None:
    """The refusal comes before the gate, whose pass counts in the orders-per-minute windows: a strategy
    re-quoting while the flatten's cancels wait must not leave its sells DENIED_RATE."""
    broker = SlowCancel()
    cfg = GatewayConfig(risk=AccountLimits(max_orders_per_minute=8))
    h = Harness(tmp_path / "gw.sqlite", broker=broker, cfg=cfg)
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        assert h.desk.submit(CARD, order(2, qty=5, price=60_000)).accepted
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.ACCEPTED)
        h.desk.flatten(CARD, "operator flatten")
        for n in range(3, 9):  # the strategy keeps re-quoting: each refused 'being flattened'
            assert not h.desk.submit(CARD, order(n, qty=1, price=60_000)).accepted
        broker.gate.set()
        await h.settle(lambda: h.portfolio.positions["alpha"]["005930"].qty == 0)
    finally:
        await h.close()


class RefuseSells(FakeBroker):
    refuse = False

    async def submit(self, o: BrokerOrder) -> BrokerAck:
        if self.refuse and o.side is Side.SELL:
            self.submits += 1
            raise BrokerRejected("매매정지 종목입니다", code="APBK1234")
        return await super().submit(o)


async def test_a_flatten_sell_the_broker_refuses_stops_the_flatten_and_is_told(tmp_path: Path) -> None:
    """Sold in parts (over the order-value limit), each refused sell closed and the next step sent the
    same sell again at once: a tight loop of refusals. One refusal stops it, alerted."""
    broker = RefuseSells(ref_price=70_000)
    h = Harness(tmp_path / "gw.sqlite", broker=broker)
    await h.start()
    alerts: list[str] = []
    h.desk.alert = alerts.append
    try:
        await h.base_prices.ensure(["005930"])
        for n in (1, 2):
            assert h.desk.submit(CARD, order(n, qty=35, price=70_000)).accepted
            await h.settle(lambda n=n: h.book.orders[coid(n)].state is OrderState.FILLED)  # type: ignore[misc]
        broker.refuse = True
        before = broker.submits
        h.desk.flatten(CARD, "operator flatten")
        await h.settle(lambda: any("flatten stopped" in a for a in alerts))
        assert broker.submits - before == 1 and "alpha" not in h.desk._flattening
        assert h.desk.submit(CARD, order(3, qty=1, price=60_000)).accepted  # no longer refused as flattening
    finally:
        await h.close()
