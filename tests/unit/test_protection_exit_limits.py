"""A protective exit is a stop: the limits that throttle the strategy do not hold it (a hunt). A stop met in a fall
past the agent's `halt_drawdown_pct`, or while its other orders fill its `max_open_orders`, or after a busy minute
under `max_orders_per_minute`, was denied every 5 s and never sold. And the card's end-of-day cancel leaves a
working exit in its place in the queue (it pulled it, and the protection placed it again at the back)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common.config import AgentCard, EndOfDay, RiskLimits
from common.enums import Side
from common.orders import OrderState
from common.protection import ProtectionSpec
from common.protection import ProtectionState as PS
from common.schema import HeaderFactory, NewOrder, Protect
from tests.fakes.harness import Harness
from tests.fakes.trading_day_rig import Rig, on, policy_card
from tests.unit.test_protection import buy, exits

Before = Callable[[Harness, AgentCard], Awaitable[None]]


def card(**risk: object) -> AgentCard:
    return AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=["005930", "000660"],
        budget=1_000_000,
        risk=RiskLimits(**risk),  # type: ignore[arg-type]
    )


async def rest_a_buy(h: Harness, c: AgentCard) -> None:
    new = NewOrder(client_order_id="alpha-20261120-2", code="000660", side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(c, new).accepted  # (below the market: rests)
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].broker_order_id)


async def busy_minute(h: Harness, c: AgentCard) -> None:
    new = NewOrder(client_order_id="alpha-20261120-2", code="000660", side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(c, new).accepted
    h.desk.cancel("alpha", "alpha-20261120-2")
    await h.settle(lambda: not h.book.orders["alpha-20261120-2"].is_open)


async def peak(h: Harness, c: AgentCard) -> None:
    h.print("005930", 70_000)
    h.risk._drawdowns([c])  # (the gateway's periodic sweep: the agent's equity peak)


@pytest.mark.parametrize(
    "risk, before",
    [
        ({"halt_drawdown_pct": 5.0}, peak),  # the fall to 64,000 is 6 % of the peak: the agent's drawdown halt
        ({"max_open_orders": 1}, rest_a_buy),
        ({"max_orders_per_minute": 2}, busy_minute),
    ],
)
async def test_a_stops_exit_passes_the_limits_that_throttle_the_strategy(
    tmp_path: Path, risk: dict[str, float], before: Before
) -> None:
    c = card(**risk)
    h = Harness(tmp_path / "db", cards={"alpha": c})
    await h.start()
    try:
        assert h.protection.submit(c, buy(1, qty=10, stop=65_000)).accepted
        await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
        await before(h, c)
        h.broker.ref_price = 64_000
        h.print("005930", 64_000)
        await h.settle(lambda: [(o.qty, o.state) for o in exits(h)] == [(10, OrderState.FILLED)])
        assert h.portfolio.position("alpha", "005930") is None or h.portfolio.position("alpha", "005930").qty == 0  # type: ignore[union-attr]
        # the strategy's own orders are still throttled
        more = NewOrder(client_order_id="alpha-20261120-3", code="000660", side=Side.BUY, qty=1, price=60_000)
        if "halt_drawdown_pct" not in risk:
            assert not h.desk.submit(c, more).accepted
    finally:
        await h.close()


async def test_the_end_of_days_cancel_leaves_a_working_exit_in_its_place(tmp_path: Path) -> None:
    friday = dt.date(2026, 12, 4)
    cx = policy_card("cx", EndOfDay.CANCEL)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(friday, "14:00"), [cx])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        b = NewOrder(client_order_id="cx-20261204-1", code="005930", side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(cx, b).accepted
        await h.settle(lambda: (p := h.portfolio.position("cx", "005930")) is not None and p.qty == 10)
        code, _ = h.protection.protect(
            cx, Protect(h=HeaderFactory("cx")(), id="cx-20261204-2", code="005930", spec=ProtectionSpec(stop=65_000))
        )
        assert code is None
        h.broker.no_buyers.add("005930")  # locked at the lower limit: the market exit rests in the queue
        h.print("005930", 64_000)
        (x,) = exits(h)
        await h.settle(lambda: h.book.orders[x.client_order_id].broker_order_id)
        rig.at(on(friday, "15:20:01"))
        rig.day.end_of_day(cx)
        await h.settle(lambda: "cx" in rig.day.cycle.cleaned)
        assert [(o.client_order_id, o.state) for o in exits(h)] == [(x.client_order_id, OrderState.ACCEPTED)]
    finally:
        await rig.close()
