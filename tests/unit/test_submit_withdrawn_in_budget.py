"""A submit that waits in KIS's REST budget (a paper account's 2 calls/s) is asked once more, just
before its request leaves, whether it may still go: a cancel asked (or a halt) while it waited means
it never leaves. Before, it was sent and then cancelled: a REST call spent on a 2-calls/s account, and
whatever filled in between was the agent's although it had asked to cancel.

1. The KIS adapter on a real loopback socket: the second of two orders on a 2/s budget is withdrawn
   while it waits for its slot; KIS hears only the first, and the second ends "not sent".
2. The order desk: a submit a slot has taken, held by the venue's wait, whose cancel is asked
   meanwhile, ends REJECTED NOT_SENT; the broker hears neither the submit nor a cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from common.config import BrokerConfig, BrokerEnv
from common.enums import OrderType, Side
from common.orders import OrderState
from common.schema import NewOrder
from kis.adapter import KisBroker
from kis.env import environment_for
from kis.port import NOT_SENT, BrokerAck, BrokerCancel, BrokerOrder, BrokerTemporary
from kis.rest import RetryPolicy
from tests.fakes.broker import FakeBroker
from tests.fakes.kis_http import LoopbackKis, close_all
from tests.unit.test_kis_ambiguous_calls import CREDS, ORDER_PATH, PLACED, TOKEN
from tests.unit.test_oms import CARD, Harness, coid, order


@pytest.fixture(autouse=True)
def _servers() -> Iterator[None]:
    yield
    close_all()


def paced_kis(tmp_path: Path, placed: Callable[[httpx.Request], object]) -> KisBroker:
    """The KIS adapter on a loopback KIS at a paper account's 2 calls/s; `placed` sees each order request."""

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("tokenP"):
            return httpx.Response(200, json=TOKEN)
        placed(req)
        return httpx.Response(200, json=PLACED)

    cfg = BrokerConfig(env=BrokerEnv.SIM, rest_url=LoopbackKis(handler).url, ws_url="ws://127.0.0.1:1", rate_per_s=2)
    return KisBroker(environment_for(cfg), CREDS, tmp_path, retry=RetryPolicy(base_s=0.0, max_s=0.0))


async def test_an_order_withdrawn_while_the_budget_holds_it_never_reaches_kis(tmp_path: Path) -> None:
    orders: list[str] = []
    b = paced_kis(tmp_path, lambda req: orders.append(req.url.path))
    cancelled: set[str] = set()
    asked: list[str] = []

    def why_not(client_order_id: str) -> str:
        asked.append(client_order_id)
        return "its cancel was asked for before it was sent" if client_order_id in cancelled else ""

    b.withdraw_with(why_not)
    first = BrokerOrder(client_order_id="a-20260601-1", code="005930", side=Side.BUY, qty=10, price=70_000)
    second = BrokerOrder(client_order_id="a-20260601-2", code="005930", side=Side.BUY, qty=10, price=70_000)
    kept = BrokerOrder(client_order_id="a-20260601-3", code="005930", side=Side.BUY, qty=10, price=70_000)
    try:
        assert (await b.submit(first)).broker_order_id == "0000000007"
        pending = asyncio.ensure_future(b.submit(second))  # waits ~0.5 s for its slot
        await asyncio.sleep(0)
        assert not pending.done() and len(orders) == 1
        cancelled.add(second.client_order_id)
        with pytest.raises(BrokerTemporary) as err:
            await pending
        assert (await b.submit(kept)).broker_order_id == "0000000007"  # not withdrawn: it goes
    finally:
        await b.close()
    assert err.value.not_sent and "its cancel was asked for before it was sent" in err.value.message
    assert orders == [ORDER_PATH, ORDER_PATH]  # the first and the kept one; the withdrawn one never left
    assert asked == [first.client_order_id, second.client_order_id, kept.client_order_id]


class BudgetHeld(FakeBroker):
    """A broker that, like KIS's adapter on a busy REST budget, holds a submit before it writes it (until
    `budget` is set) and then asks whether it may still go. Records what reached it."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.budget = asyncio.Event()
        self.waiting: list[str] = []
        self.sent: list[str] = []
        self.cancelled: list[str] = []
        self._why_not: Callable[[str], str] = lambda coid: ""

    def withdraw_with(self, why_not: Callable[[str], str]) -> None:
        self._why_not = why_not

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.waiting.append(order.client_order_id)
        await self.budget.wait()
        if why := self._why_not(order.client_order_id):
            raise BrokerTemporary(f"not sent: {why}", code=NOT_SENT)
        self.sent.append(order.client_order_id)
        return await super().submit(order)

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        self.cancelled.append(req.client_order_id)
        return await super().cancel(req)


async def test_a_cancel_asked_while_the_budget_holds_the_submit_sends_nothing(tmp_path: Path) -> None:
    broker = BudgetHeld()
    h = Harness(tmp_path / "gw.sqlite", broker)
    await h.start()
    await h.base_prices.ensure(["005930"])  # a market buy is judged at the day's upper limit
    buy = NewOrder(client_order_id=coid(1), code="005930", side=Side.BUY, qty=10, order_type=OrderType.MARKET)
    assert h.desk.submit(CARD, buy).accepted
    await h.settle(lambda: broker.waiting == [coid(1)])  # a slot took it: the venue waits for the budget
    assert h.store.has_trace(coid(1), "broker.request")  # past its send mark: before, it was sent, then cancelled
    assert h.desk.cancel("alpha", coid(1))[0] is None
    broker.budget.set()
    await h.settle(lambda: h.book.orders[coid(1)].is_terminal)
    o = h.book.orders[coid(1)]
    # cancelled, as the agent asked (and as a backtest ends it), not REJECTED NOT_SENT: KIS refused nothing
    assert o.state is OrderState.CANCELLED and o.filled_qty == 0, o
    assert h.store.has_trace(coid(1), "broker.skipped")
    assert broker.sent == [] and broker.cancelled == []  # KIS heard neither the order nor a cancel
    assert coid(1) not in h.desk._cancel_on_accept
    # an order nobody cancelled goes as before
    assert h.desk.submit(CARD, order(2, qty=1, price=70_000)).accepted
    await h.settle(lambda: broker.sent == [coid(2)] and h.book.orders[coid(2)].state is OrderState.ACCEPTED)
    await h.close()
