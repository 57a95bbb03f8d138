"""The operator's flatten under pressure (a hunt, on the twin with a busy REST budget):
- a second flatten (a double click; the CLI and the web page at once) cancelled the first one's sells still
  waiting for a send slot; never sent, they ended NOT_SENT, which the flatten read as 'the broker refused the
  sell' and stopped: the agent was left reducing with its shares and no order at all;
- a flatten while a protective stop was firing cancelled the stop's exit the same way, stopped, and the other
  code was never sold (the stop placed its exit again a second later, beside the flatten's);
- the operator's cancel_all during a flatten pulled its sells, as documented, but the flatten goes on: the reply
  now says so, and how to stop it (resume)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from common.config import AgentCard
from common.enums import Side
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.protection import ProtectionSpec, ProtectionState as PS
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerCancel, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODES = ("000660", "005930")
ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=list(CODES), budget=50_000_000)


class Busy(FakeBroker):
    """One call at a time (a REST budget spent); once `hold` is set, the next sell hangs in the slot until
    `release`, so the sells after it wait in the queue, unsent."""

    max_in_flight = 1

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.hold = False
        self.release = asyncio.Event()
        self.sells: list[tuple[str, int]] = []

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        if self.hold:
            self.hold = False
            await self.release.wait()
        return await super().cancel(req)

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if order.side is Side.SELL:
            self.sells.append((order.code, order.qty))
            if self.hold:
                self.hold = False
                await self.release.wait()
        return await super().submit(order)


def buy(n: int, code: str, protect: ProtectionSpec | None = None) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-20261120-{n}", code=code, side=Side.BUY, qty=10, price=70_000, protect=protect
    )


async def holding(
    tmp_path: Path, protect: ProtectionSpec | None = None, broker: FakeBroker | None = None
) -> tuple[Harness, Desk, Any]:
    """alpha holds 10 of each code (000660 with `protect`), its prints past their grace; `broker`: a Busy one by
    default (returned as given, to drive)."""
    broker = broker if broker is not None else Busy()
    clock = trading_clock()
    h = Harness(tmp_path / "db", broker=broker, clock=clock, cards={"alpha": ALPHA})
    await h.start()
    for n, code in enumerate(CODES, 1):
        order = buy(n, code, protect if code == "000660" else None)
        assert (h.protection.submit(ALPHA, order) if order.protect else h.desk.submit(ALPHA, order)).accepted
    await h.settle(lambda: all((p := h.portfolio.position("alpha", c)) is not None and p.qty == 10 for c in CODES))
    for code in CODES:
        h.print(code, 70_000)
    clock.set(clock.now() + dt.timedelta(minutes=5))  # (a protection judges prints once its fill's grace is over)
    return h, Desk(h, tmp_path / "run", [ALPHA]), broker


async def resting_buy(h: Harness) -> str:
    """alpha's buy of 1 005930 at 60,000, resting at the broker: its client order id."""
    resting = NewOrder(client_order_id="alpha-20261120-3", code="005930", side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(ALPHA, resting).accepted
    await h.settle(lambda: h.book.orders[resting.client_order_id].state is OrderState.ACCEPTED)
    return resting.client_order_id


def flat(h: Harness) -> bool:
    return all((p := h.portfolio.position("alpha", c)) is None or p.qty == 0 for c in CODES)


def refused_alerts(h: Harness) -> list[str]:
    return [t for _, t, _ in h.alerts if "flatten stopped" in t]


async def test_a_second_flatten_keeps_the_first_ones_sells(tmp_path: Path) -> None:
    h, d, broker = await holding(tmp_path)
    try:
        broker.hold = True
        assert d.ack("flatten", "alpha").startswith("alpha: flatten: 2 market sells sent (10 000660, 10 005930)")
        await h.settle(lambda: len(broker.sells) == 1)  # 000660's in the slot, 005930's queued behind it
        d.ack("flatten", "alpha")  # the second click
        broker.release.set()
        await h.settle(lambda: flat(h))
        assert sorted(broker.sells) == [("000660", 10), ("005930", 10)] and not refused_alerts(h)
    finally:
        await h.close()


async def test_a_flatten_while_a_stop_fires_sells_everything_once(tmp_path: Path) -> None:
    h, d, broker = await holding(tmp_path, ProtectionSpec(stop=65_000))
    try:
        broker.hold = True
        own = NewOrder(client_order_id="alpha-20261120-3", code="005930", side=Side.SELL, qty=1, price=90_000)
        assert h.desk.submit(ALPHA, own).accepted  # the agent's own sell takes the slot and hangs
        await h.settle(lambda: len(broker.sells) == 1)
        broker.ref_price = 64_000
        h.print("000660", 64_000)  # the stop is met: its exit waits in the queue, unsent
        await h.settle(lambda: any(placed_by_gateway(c) for c in h.book.orders))
        d.ack("flatten", "alpha")
        broker.release.set()
        await h.settle(lambda: flat(h) and not h.protection.active)
        await h.settle(lambda: not any(o.is_open for o in h.book.orders.values()))
        sold = {
            c: sum(o.filled_qty for o in h.book.orders.values() if o.code == c and o.side is Side.SELL) for c in CODES
        }
        assert sold == {"000660": 10, "005930": 10}, sold  # every share once: none left, none oversold
        assert not refused_alerts(h)
        [p] = h.protection.ended.values()
        assert p.state in (PS.CANCELLED, PS.DONE), p
    finally:
        await h.close()


async def test_cancel_all_during_a_flatten_says_it_goes_on(tmp_path: Path) -> None:
    h, d, broker = await holding(tmp_path)
    try:
        await resting_buy(h)
        broker.hold = True  # the flatten's cancel of it hangs: the flatten waits for it
        d.ack("flatten", "alpha")
        assert h.desk.is_flattening("alpha")
        text = d.ack("cancel_all", "alpha")
        assert "the flatten of alpha goes on" in text and "resume --agent alpha stops it" in text, text
        broker.release.set()
        await h.settle(lambda: flat(h))
        assert sorted(broker.sells) == [("000660", 10), ("005930", 10)] and not refused_alerts(h)
    finally:
        await h.close()


class SlowCancel(FakeBroker):
    """A cancel hangs until `release` (a slow exchange, a cancel in doubt): every cancel, or (`slow`) those of these
    broker order numbers."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.release = asyncio.Event()
        self.slow: set[str] | None = None

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        if self.slow is None or req.broker_order_id in self.slow:
            await self.release.wait()
        return await super().cancel(req)


async def test_a_stop_met_while_a_flatten_waits_for_a_cancel_sells_at_once(tmp_path: Path) -> None:
    """A review: holding every protective exit while the agent was flattened kept a met stop from selling for as
    long as the flatten waited on an unrelated buy's cancel."""
    h, d, broker = await holding(tmp_path, ProtectionSpec(stop=65_000), SlowCancel())
    try:
        await resting_buy(h)
        d.ack("flatten", "alpha")
        assert h.desk.is_flattening("alpha")  # waiting for the buy's cancel
        broker.ref_price = 60_000
        h.print("000660", 60_000)  # the stop 65,000 is met meanwhile
        await h.settle(lambda: h.portfolio.position("alpha", "000660").qty == 0)  # type: ignore[union-attr]
        broker.release.set()
        await h.settle(lambda: flat(h))
    finally:
        broker.release.set()
        await h.close()


async def test_a_second_flatten_leaves_the_first_ones_sells_resting_at_the_lower_limit(tmp_path: Path) -> None:
    """A review: once the first flatten's sells were out (resting: the stock locked at its lower limit), a second
    click cancelled them, losing their place in the queue, and placed them again behind it."""
    from tests.unit.test_protection_follows_split import Locked

    h, d, _ = await holding(tmp_path, broker=Locked(ref_price=70_000))
    try:
        d.ack("flatten", "alpha")

        def sells() -> list[str]:
            return sorted(c for c, o in h.book.orders.items() if placed_by_gateway(c) and o.side is Side.SELL)

        await h.settle(
            lambda: len(sells()) == 2 and all(h.book.orders[c].state is OrderState.ACCEPTED for c in sells())
        )
        first = sells()
        d.ack("flatten", "alpha")  # the second click
        assert sells() == first and all(h.book.orders[c].state is OrderState.ACCEPTED for c in first)
    finally:
        await h.close()


async def test_a_limit_exit_resting_above_the_market_does_not_hold_the_flatten_for_good(tmp_path: Path) -> None:
    """A review: the flatten cancelled a protective limit exit resting above the market; its protection placed it
    again at once, and the flatten, which sells once the agent has no open order, waited on it for good. While the
    agent is flattened its exits go at market."""
    from common.protection import ExitType

    h, d, broker = await holding(tmp_path, ProtectionSpec(stop=65_000, exit=ExitType.LIMIT), SlowCancel())
    try:
        broker.slow = {h.book.orders[await resting_buy(h)].broker_order_id}
        broker.ref_price = 60_000
        h.print("000660", 64_000)  # the stop is met: its limit exit (63,360) rests, the market being lower

        def rests() -> bool:
            return any(
                placed_by_gateway(c) and o.side is Side.SELL and o.state is OrderState.ACCEPTED
                for c, o in h.book.orders.items()
            )

        await h.settle(rests)
        d.ack("flatten", "alpha")
        # the exit's cancel ends first (the buy's hangs): its protection places it again
        await h.settle(lambda: sum(placed_by_gateway(c) and o.side is Side.SELL for c, o in h.book.orders.items()) >= 2)
        broker.release.set()  # the buy's cancel ends
        await h.settle(lambda: flat(h))
        assert not h.desk.is_flattening("alpha")
    finally:
        broker.release.set()
        await h.close()
