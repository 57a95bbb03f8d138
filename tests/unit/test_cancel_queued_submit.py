"""A submit still queued for a send slot is decided again when its turn comes: a cancel asked for
while it waited, or a halt (the agent's or the gateway's) since it passed the gate, means it is never
sent. The order ends CANCELLED (as the agent, or the kill switch's cancel, asked, and as a backtest ends
it: not REJECTED, nothing was refused); KIS hears neither the submit nor a cancel, and nothing fills. A
submit already handed to the broker is still cancelled after its acknowledgement."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.enums import AlertKind, OrderType, Side, TradingState
from common.orders import OrderState
from common.schema import NewOrder, OrderUpdate
from kis.port import BrokerAck, BrokerCancel, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, coid, order


class OneSlotGated(FakeBroker):
    """One call at a time (as a REST budget spent on a burst); the first submit hangs until released,
    so the orders after it wait in the queue. Records what reached it."""

    max_in_flight = 1

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.gate = asyncio.Event()
        self.sent: list[str] = []
        self.cancelled: list[str] = []

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.sent.append(order.client_order_id)
        if order.client_order_id == coid(1):
            await self.gate.wait()
        return await super().submit(order)

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        self.cancelled.append(req.client_order_id)
        return await super().cancel(req)


async def started(tmp_path: Path) -> tuple[Harness, OneSlotGated]:
    broker = OneSlotGated()
    h = Harness(tmp_path / "gw.sqlite", broker)
    await h.start()
    await h.base_prices.ensure(["005930"])  # a market buy is judged at the day's upper limit
    return h, broker


def market_buy(n: int, qty: int = 10) -> NewOrder:
    return NewOrder(client_order_id=coid(n), code="005930", side=Side.BUY, qty=qty, order_type=OrderType.MARKET)


def updates(h: Harness, c: str) -> list[OrderState]:
    return [
        e.body.order.state for a, e in h.events if isinstance(e.body, OrderUpdate) and e.body.order.client_order_id == c
    ]


async def test_a_queued_market_buy_cancelled_while_it_waits_is_never_sent(tmp_path: Path) -> None:
    h, broker = await started(tmp_path)
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted  # takes the only slot, hangs
    await h.settle(lambda: broker.sent == [coid(1)])
    assert h.desk.submit(CARD, market_buy(2)).accepted  # waits behind it
    assert h.book.orders[coid(2)].state is OrderState.PENDING_SUBMIT
    err, _ = h.desk.cancel("alpha", coid(2))
    assert err is None  # the agent's cancel is taken, not an error
    broker.gate.set()
    await h.settle(lambda: h.book.orders[coid(2)].is_terminal and h.core.live_queue.depth == 0)
    await h.store.durable()
    o = h.book.orders[coid(2)]
    assert o.state is OrderState.CANCELLED and o.filled_qty == 0, o
    assert broker.sent == [coid(1)]  # KIS never saw the market buy
    assert coid(2) not in broker.cancelled  # nor a cancel for an order it never had
    pos = h.portfolio.position("alpha", "005930")
    assert pos is None or pos.qty == 0  # nothing bought
    # what the agent sees: its order cancelled as it asked (not a refusal: nothing placed, nothing to repair)
    assert updates(h, coid(2))[-1] is OrderState.CANCELLED
    assert not h.store.has_trace(coid(2), "broker.request")  # no send mark: provably never sent
    assert coid(2) not in h.desk._cancel_on_accept
    await h.close()


async def test_a_submit_already_with_the_broker_is_still_cancelled_after_its_ack(tmp_path: Path) -> None:
    h, broker = await started(tmp_path)
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.settle(lambda: broker.sent == [coid(1)])  # in flight: the broker has it
    assert h.desk.cancel("alpha", coid(1))[0] is None
    broker.gate.set()
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED)
    assert broker.cancelled == [coid(1)]
    await h.close()


@pytest.mark.parametrize("who", ["alpha", ""])  # the agent halted, the gateway halted
async def test_a_submit_queued_before_a_halt_is_not_sent(tmp_path: Path, who: str) -> None:
    h, broker = await started(tmp_path)
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.settle(lambda: broker.sent == [coid(1)])
    assert h.desk.submit(CARD, market_buy(2)).accepted  # passed the gate while trading was active
    h.core.risk.set_state(who, TradingState.HALTED, "kill switch (test)", automatic=AlertKind.HALT)
    broker.gate.set()
    await h.settle(lambda: h.book.orders[coid(2)].is_terminal and h.core.live_queue.depth == 0)
    o = h.book.orders[coid(2)]
    assert o.state is OrderState.CANCELLED, o  # the kill switch cancels it, as it does the resting ones
    assert broker.sent == [coid(1)]  # the halt stopped it before the broker
    await h.close()


@pytest.mark.parametrize("who", ["alpha", ""])  # the agent paused, the gateway paused
async def test_a_submit_queued_before_a_pause_is_sent(tmp_path: Path, who: str) -> None:
    """(a hunt) A pause refuses new orders; one it took before goes, as its reply counts it among the orders that
    keep working (4 of 8 queued were refused "not sent: trading is halted" under a pause)."""
    h, broker = await started(tmp_path)
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.settle(lambda: broker.sent == [coid(1)])
    assert h.desk.submit(CARD, market_buy(2)).accepted  # passed the gate while trading was active
    h.core.risk.set_state(who, TradingState.HALTED, "the operator's pause")
    assert not h.core.risk.hard_halted(who or "*")
    broker.gate.set()
    await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.FILLED)
    assert broker.sent == [coid(1), coid(2)]
    await h.close()
