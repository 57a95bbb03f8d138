"""Two agents on one account must not trade with each other (a self-trade: commission and the sell tax
for nothing, and a print with the same owner on both sides, which market surveillance reads as a wash
trade, 가장매매): the risk gate denies a buy that would trade with another agent's open sell on the same
code and session (DENIED_SELF_TRADE), new, revised or released (a sell, which may be an exit, goes: a limit one
that crosses is told); the gateway's own exits for an agent (flatten, protective exits) go whatever rests; the
owner's orders placed outside ktrader ('external') are weighed, an agent's own are not. On the gateway's order
core around the in-process broker (a limit buy below its 70,000 reference price, or a sell above it, rests)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import msgspec

from common.clock import KST
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.market_clock import ManualClock
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.risk_rules import RestingOrder, self_trade
from common.schema import NewOrder
from kis.port import BrokerNotice
from tests.fakes.broker import FakeBroker
from tests.fakes.core import TODAY, make_core

AT_10 = dt.datetime.combine(TODAY, dt.time(10, 0), KST)
CODE = "005930"


def card(agent: str) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", codes=[CODE], budget=40_000_000)


def order(
    agent: str,
    n: int,
    qty: int,
    price: int,
    side: Side = Side.BUY,
    order_type: OrderType = OrderType.LIMIT,
    tif: TimeInForce = TimeInForce.DAY,
) -> NewOrder:
    return NewOrder(
        client_order_id=f"{agent}-{TODAY:%Y%m%d}-{n}",
        code=CODE,
        side=side,
        qty=qty,
        price=price,
        order_type=order_type,
        tif=tif,
    )


class Desk:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock(AT_10)
        self.broker = FakeBroker(ref_price=70_000)
        self.core, self.store, _, _ = make_core(tmp / "gw.sqlite", self.broker, clock=self.clock)

    async def __aenter__(self) -> Desk:
        await self.broker.start()
        self.core.start()
        self._pump = asyncio.get_running_loop().create_task(self._notices())
        await self.core.recon.run("start")
        return self

    async def _notices(self) -> None:
        async for ev in self.broker.events():
            if isinstance(ev, BrokerNotice):
                self.core.notices.on_notice(ev)

    async def __aexit__(self, *exc: object) -> None:
        self._pump.cancel()
        await self.core.stop()
        self.store.close()

    async def until(self, cond: Callable[[], object]) -> None:
        async def wait() -> None:
            while not cond():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(wait(), 5)

    def state(self, coid: str) -> OrderState:
        return self.core.book.orders[coid].state

    async def holding(self, c: AgentCard, n: int, qty: int) -> None:
        """`c` buys `qty` at the reference price (it fills at once)."""
        assert self.core.desk.submit(c, order(c.id, n, qty, 70_000)).accepted
        await self.until(lambda: (p := self.core.portfolio.position(c.id, CODE)) is not None and p.qty >= qty)

    async def resting(self, c: AgentCard, new: NewOrder) -> None:
        r = self.core.desk.submit(c, new)
        assert r.accepted, r
        await self.until(lambda: self.state(new.client_order_id) is OrderState.ACCEPTED)


def test_a_sell_that_would_meet_another_agents_resting_buy_goes_and_is_told(tmp_path: Path) -> None:
    """alpha's limit buy 100 @ 50,000 rests; bravo's sell would match it on the same account. A sell only reduces a
    position held and may be an exit (refused, a strategy's limit exit waited a session, a review): it goes; a limit
    one that crosses is told once a day (a wash print passed without a word before, a hunt)."""

    async def main() -> None:
        a, b = card("alpha"), card("bravo")
        async with Desk(tmp_path) as d:
            told: list[str] = []
            d.core.risk.alert = lambda text, kind=None, agent="", subject="": (
                "cash unknown" in text or told.append(text)  # (the account is not read here)
            )
            await d.holding(b, 1, 100)
            await d.resting(a, order("alpha", 1, 100, 50_000))
            assert d.core.desk.submit(b, order("bravo", 2, 10, 50_000, Side.SELL)).accepted
            assert d.core.desk.submit(b, order("bravo", 3, 10, 49_000, Side.SELL)).accepted
            assert d.core.desk.submit(b, order("bravo", 4, 10, 0, Side.SELL, OrderType.MARKET)).accepted
            assert d.core.desk.submit(b, order("bravo", 5, 10, 50_100, Side.SELL)).accepted  # priced apart
            assert len(told) == 1 and "would trade with alpha's open buy alpha-20261120-1 (at 50,000)" in told[0], told

    asyncio.run(main())


def test_a_buy_that_would_meet_another_agents_resting_sell_is_denied_new_or_revised(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = card("alpha"), card("bravo")
        async with Desk(tmp_path) as d:
            await d.holding(b, 1, 10)
            await d.resting(b, order("bravo", 2, 10, 80_000, Side.SELL))  # above the market: rests
            assert d.core.desk.submit(a, order("alpha", 1, 10, 80_000)).code is ErrorCode.DENIED_SELF_TRADE
            r = d.core.desk.submit(a, order("alpha", 2, 10, 0, order_type=OrderType.MARKET))
            assert r.code is ErrorCode.DENIED_SELF_TRADE, r
            # a CONDITIONAL buy turns into a market buy at the closing call: it may meet the sell then
            r = d.core.desk.submit(a, order("alpha", 3, 10, 60_000, order_type=OrderType.CONDITIONAL))
            assert r.code is ErrorCode.DENIED_SELF_TRADE, r
            await d.resting(a, order("alpha", 4, 10, 60_000))  # below the sell: no trade between them
            # a revise up to the sell's price would meet it: denied as a new order would be
            code, why = d.core.desk.modify(a, "alpha-20261120-4", 80_000)
            assert code is ErrorCode.DENIED_SELF_TRADE and "bravo-20261120-2" in why, (code, why)
            assert d.core.book.orders["alpha-20261120-4"].price == 60_000

    asyncio.run(main())


def test_the_gateways_exit_for_an_agent_is_not_blocked(tmp_path: Path) -> None:
    """A flatten sells at the market: it would meet alpha's resting buy, but an exit the gateway places for
    an agent must get out."""

    async def main() -> None:
        a, b = card("alpha"), card("bravo")
        async with Desk(tmp_path) as d:
            await d.holding(b, 1, 100)
            await d.resting(a, order("alpha", 1, 100, 50_000))
            assert d.core.desk.flatten(b, "flatten by ops") == 1
            exits = [o for o in d.core.book.orders.values() if o.agent == "bravo" and o.side is Side.SELL]
            assert len(exits) == 1 and exits[0].state is not OrderState.DENIED, exits
            await d.until(lambda: d.core.portfolio.position("bravo", CODE).qty == 0)  # type: ignore[union-attr]

    asyncio.run(main())


def test_an_agents_own_orders_and_other_sessions_are_not_weighed(tmp_path: Path) -> None:
    """This rule is between agents: an agent's sell at or below its own resting buy is not denied by it
    (the gate does not check an agent against itself; the order goes to the broker as before). A buy held
    for the next session does not meet today's sells, and a sell held for the same session does."""

    async def main() -> None:
        a, b = card("alpha"), card("bravo")
        async with Desk(tmp_path) as d:
            await d.holding(a, 1, 10)
            await d.holding(b, 2, 10)
            await d.resting(a, order("alpha", 3, 10, 50_000))
            r = d.core.desk.submit(a, order("alpha", 4, 5, 50_000, Side.SELL))
            assert r.accepted, r  # its own buy: not this rule's
            nxt = order("alpha", 5, 10, 60_000, tif=TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(a, nxt).accepted
            assert d.state(nxt.client_order_id) is OrderState.HELD
            d.core.desk.cancel("alpha", "alpha-20261120-3")
            await d.until(lambda: d.state("alpha-20261120-3") is OrderState.CANCELLED)
            # today's sell at 60,000 meets no buy of today's session (alpha's is held for tomorrow's) ...
            assert d.core.desk.submit(b, order("bravo", 3, 1, 60_000, Side.SELL)).accepted
            # ... but a buy held for the same session as a held sell would meet it there
            held_sell = order("bravo", 4, 5, 70_000, Side.SELL, tif=TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(b, held_sell).accepted  # (a sell is never blocked by this rule)
            r = d.core.desk.submit(a, order("alpha", 6, 5, 70_000, tif=TimeInForce.NEXT_SESSION))
            assert r.code is ErrorCode.DENIED_SELF_TRADE and "bravo-20261120-4" in r.message, r

    asyncio.run(main())


def _order(agent: str, n: int, side: Side, price: int, state: OrderState = OrderState.ACCEPTED) -> Order:
    return Order(
        client_order_id=f"{agent}-20261120-{n}", agent=agent, code=CODE, side=side, qty=10, price=price, state=state
    )


def test_the_portfolio_keeps_a_small_index_of_open_orders_per_code() -> None:
    """What the gate reads for an order: other agents' open orders of the other side on the code, kept as orders
    change (no scan of every open order: a buy's check never reads the resting buys); the owner's own orders placed
    outside ktrader ('external') are weighed, shadow orders are not, a closed one leaves."""
    p = Portfolio()
    sell = _order("alpha", 1, Side.SELL, 50_000)
    p.order_changed(None, sell)
    p.order_changed(None, _order(EXTERNAL_AGENT, 1, Side.SELL, 45_000))
    p.order_changed(None, _order("ghost", 1, Side.SELL, 44_000))
    p.set_virtual("ghost", True)
    for n in range(2, 1_000):  # resting buys: never read by a buy's check
        p.order_changed(None, _order("alpha", n, Side.BUY, 40_000))
    got = p.opposite("bravo", CODE, Side.BUY, "20261120", "20261120")
    assert [(o.client_order_id, o.price) for o in got] == [
        ("alpha-20261120-1", 50_000),
        ("external-20261120-1", 45_000),
    ]
    assert [o.agent for o in p.opposite("alpha", CODE, Side.BUY, "20261120", "20261120")] == [EXTERNAL_AGENT]
    assert len(p.opposite("bravo", CODE, Side.SELL, "20261120", "20261120")) == 998  # alpha's buys, for a sell
    # a revise in flight: the order may rest at either price, the more marketable (the lower) counts
    revising = msgspec.structs.replace(sell, state=OrderState.PENDING_REPLACE, pending_price=48_000)
    p.order_changed(sell, revising)
    assert {o.agent: o.price for o in p.opposite("bravo", CODE, Side.BUY, "20261120", "20261120")}["alpha"] == 48_000
    done = msgspec.structs.replace(revising, state=OrderState.CANCELLED)
    p.order_changed(revising, done)
    assert [o.agent for o in p.opposite("bravo", CODE, Side.BUY, "20261120", "20261120")] == [EXTERNAL_AGENT]
    # (a shadow sell stays indexed, never weighed)
    assert list(p._resting[Side.SELL][CODE]) == ["external-20261120-1", "ghost-20261120-1"]


def test_an_order_the_owner_placed_in_the_kis_app_is_weighed_too() -> None:
    """The owner's resting sell, placed in the KIS app and booked as 'external': an agent's buy that would meet it is
    denied as for another agent's (it matched on the twin before: ~490 KRW of fees and tax for nothing, a hunt)."""
    app = RestingOrder("external-20261120-1", EXTERNAL_AGENT, Side.SELL, 71_000)
    denial = self_trade(CODE, Side.BUY, 71_000, OrderType.LIMIT, [app])
    assert denial is not None and denial[0] is ErrorCode.DENIED_SELF_TRADE
    assert "the order placed outside ktrader (the KIS app) external-20261120-1 (at 71,000)" in denial[1]
    assert self_trade(CODE, Side.BUY, 70_900, OrderType.LIMIT, [app]) is None  # priced away from it
