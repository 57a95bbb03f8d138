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


async def test_a_second_stop_on_shares_the_firsts_exit_sells_does_not_say_sold_outside_ktrader(tmp_path: Path) -> None:
    """(a hunt) Two whole-position stops met by one print: the second found the shares held by the first's exit and
    told a person they were "sold outside ktrader: sell or buy back by hand"."""
    from common.enums import AlertKind
    from tests.unit.test_protection import CARD, H

    h = Harness(tmp_path / "db")
    await h.start()
    try:
        assert h.desk.submit(CARD, buy(1, qty=10)).accepted
        await h.settle(lambda: (p := h.portfolio.position("alpha", "005930")) is not None and p.qty == 10)
        for n, stop in ((2, 65_000), (3, 66_000)):
            spec = ProtectionSpec(stop=stop)
            code, _ = h.protection.protect(CARD, Protect(h=H(), id=f"alpha-20261120-{n}", code="005930", spec=spec))
            assert code is None
        h.broker.no_buyers.add("005930")  # the first exit rests a moment
        h.print("005930", 64_000)
        told = h.alerted(AlertKind.PROTECTION)
        assert not [t for t in told if "outside ktrader" in t], told
        assert any("in the gateway's own sells working" in t for t in told), told
        assert [o.qty for o in exits(h)] == [10]  # sold once
    finally:
        await h.close()


async def test_a_cancelled_protections_exit_that_fills_on_counts_its_fills(tmp_path: Path) -> None:
    """(a hunt) cancel_protection with its exit part filled (4 of 10), and 3 more filling before the cancel reached
    the broker: the protection ended 'sold 4' in the journal, the daily report and on_protection; it sold 7."""
    from tests.unit.test_protection import CARD

    h = Harness(tmp_path / "db")
    await h.start()
    try:
        assert h.protection.submit(CARD, buy(1, qty=10, stop=69_000)).accepted
        await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
        h.broker.no_buyers.add("005930")  # the exit rests
        h.print("005930", 68_900)
        (x,) = exits(h)
        await h.settle(lambda: h.book.orders[x.client_order_id].broker_order_id)
        odno = h.book.orders[x.client_order_id].broker_order_id
        h.broker.orders[odno]["price"] = 68_900  # (the fake fills a resting order at its price)
        h.broker.fill(odno, 4)
        await h.settle(lambda: h.book.orders[x.client_order_id].filled_qty == 4)
        assert h.protection.cancel("alpha", "alpha-20261120-1", "cancelled by the agent")[0] is None
        h.broker.fill(odno, 3)  # crosses the cancel on the wire
        await h.settle(lambda: not h.book.orders[x.client_order_id].is_open)
        end = h.protection.ended["alpha-20261120-1"]
        assert (end.state, end.sold, end.sold_value) == (PS.CANCELLED, 7, 7 * 68_900)
        assert h.book.store.protection("alpha-20261120-1").sold == 7  # type: ignore[union-attr]
    finally:
        await h.close()


async def test_shares_sold_by_hand_beside_another_stops_exit_are_still_told_as_sold_outside(tmp_path: Path) -> None:
    """(a review) 20 held, 5 sold by hand, stops on 8 and 12: the second's alert blamed the first's exit (which sells
    its own 8) for the 5 missing; they are not in the account."""
    from common.books import apply_fill_value
    from common.enums import AlertKind
    from common.ids import EXTERNAL_AGENT
    from tests.unit.test_protection import CARD, H

    h = Harness(tmp_path / "db")
    await h.start()
    try:
        assert h.desk.submit(CARD, buy(1, qty=20)).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
        h.book.portfolio.set_position(
            EXTERNAL_AGENT, apply_fill_value(None, "005930", Side.SELL, 5, 5 * 70_000, allow_short=True)
        )
        for n, qty, stop in ((2, 8, 66_000), (3, 12, 65_000)):
            spec = ProtectionSpec(stop=stop)
            protect = Protect(h=H(), id=f"alpha-20261120-{n}", code="005930", qty=qty, spec=spec)
            assert h.protection.protect(CARD, protect)[0] is None
        h.broker.no_buyers.add("005930")  # the first exit rests
        h.print("005930", 64_000)
        told = h.alerted(AlertKind.PROTECTION)
        assert any("5 of its shares are not in the account (sold outside ktrader" in t for t in told), told
        assert not [t for t in told if "gateway's own sells" in t], told
    finally:
        await h.close()
