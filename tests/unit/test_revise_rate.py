"""A revise is an order request to KIS: it counts against the orders-per-minute limit and is checked by
it, like a new order, live and in the backtest. Cancels stay exempt (they only reduce risk), and so
does the release of a held order (it was counted when it was placed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from common.clock import KST
from common.config import AccountLimits, AgentCard, GatewayConfig, RiskLimits
from common.enums import OrderType, SessionState, Side, TimeInForce
from common.errors import ErrorCode
from common.market_clock import ManualClock, market_ns
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.harness import Harness
from tools.backtest.broker import Note, SimBroker

CODE = "005930"


def card(limit: int = 0) -> AgentCard:
    return AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=[CODE],
        budget=5_000_000,
        risk=RiskLimits(max_orders_per_minute=limit),
    )


def buy(n: int, price: int = 60_000) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-20261120-{n}", code=CODE, side=Side.BUY, qty=1, price=price)


async def test_revises_count_against_the_agents_order_rate(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    c = card(limit=2)
    assert h.desk.submit(c, buy(1)).accepted  # 1 of 2 this minute
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    assert h.desk.modify(c, "alpha-20261120-1", 59_900) == (None, "revise sent")  # 2 of 2
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    code, why = h.desk.modify(c, "alpha-20261120-1", 59_800)
    assert code is ErrorCode.DENIED_RATE and "limit of 2 orders per minute" in why
    assert h.desk.submit(c, buy(2)).code is ErrorCode.DENIED_RATE  # the revise used the minute up too
    assert h.desk.cancel("alpha", "alpha-20261120-1")[0] is None  # a cancel is never held back by the rate
    await h.close()


async def test_revises_count_against_the_gateways_order_rate(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(risk=AccountLimits(max_orders_per_minute=2)))
    await h.start()
    c = card()
    assert h.desk.submit(c, buy(1)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    assert h.desk.modify(c, "alpha-20261120-1", 59_900)[0] is None
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    code, why = h.desk.modify(c, "alpha-20261120-1", 59_800)
    assert code is ErrorCode.DENIED_RATE and why == "account limit of 2 orders per minute"
    await h.close()


async def test_a_held_orders_release_weighs_no_rate(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    c = card(limit=1)
    assert h.desk.submit(c, buy(1)).accepted  # the minute is used up
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    held = msgspec.structs.replace(
        h.book.orders["alpha-20261120-1"], client_order_id="alpha-20261120-2", state=OrderState.HELD
    )
    # the check at a held order's release (order_desk._release) is not a new request of the agent's
    assert h.risk.check_revise(c, held, held.price, (SessionState.READY, "")) is None
    assert h.desk.modify(c, "alpha-20261120-1", 59_900)[0] is ErrorCode.DENIED_RATE
    await h.close()


def test_backtest_revises_count_against_the_rate_as_live() -> None:
    c = card(limit=2)
    sim = SimBroker(card=c, cash=5_000_000)
    sim.base[CODE] = 60_000
    sim.ts_ns = market_ns(ManualClock(dt.datetime(2024, 3, 5, 10, 0, tzinfo=KST)))
    sim.entry_session = "2024-03-05"
    notes: list[Note] = []
    sim.submit("alpha-20240305-1", CODE, Side.BUY, 1, 60_000, OrderType.LIMIT, TimeInForce.DAY, "r", notes)
    assert sim.orders["alpha-20240305-1"].state is OrderState.ACCEPTED
    assert sim.modify("alpha-20240305-1", 59_900, notes)  # 2 of 2
    assert not sim.modify("alpha-20240305-1", 59_800, notes)  # the third request of the minute
    assert sim.orders["alpha-20240305-1"].reason_code == ErrorCode.DENIED_RATE


async def test_one_agents_revises_never_hold_back_anothers_sell_of_held_shares(tmp_path: Path) -> None:
    """The account's window refuses no sell of held shares: alpha re-quoting by revise fills it, and
    beta's stop-loss sell still goes out (its own window would still count)."""
    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(risk=AccountLimits(max_orders_per_minute=4)))
    await h.start()
    beta = msgspec.structs.replace(card(), id="beta", name="B")
    held = NewOrder(client_order_id="beta-20261120-1", code=CODE, side=Side.BUY, qty=10, price=70_000)
    assert h.desk.submit(beta, held).accepted
    await h.settle(lambda: h.book.orders["beta-20261120-1"].state is OrderState.FILLED)
    c = card()
    assert h.desk.submit(c, buy(1)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    for price in (60_100, 60_200):
        assert h.desk.modify(c, "alpha-20261120-1", price)[0] is None
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    assert h.desk.submit(c, buy(2)).code is ErrorCode.DENIED_RATE  # the account's minute is used up ...
    stop = NewOrder(
        client_order_id="beta-20261120-2", code=CODE, side=Side.SELL, qty=10, price=0, order_type=OrderType.MARKET
    )
    assert h.desk.submit(beta, stop).accepted  # ... but not for a sell of held shares
    await h.close()
