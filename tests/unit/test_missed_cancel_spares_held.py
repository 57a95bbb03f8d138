"""A "missed" cancel policy cancels what its end would have cancelled of the next-session orders, never one
placed after the day's end, and leaves the day's own orders to the close (past the session a cancel raced the
closing auction, or KIS refused it: the close had ended them): an agent registering Friday 19:00 (its policy missed)
places Monday's buy at once, and the next day tick leaves it held."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import AlertKind, Side, TimeInForce
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"
CARD = AgentCard(
    id="eve",
    name="eve",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    risk=RiskLimits(max_order_value=5_000_000),
    schedule=Schedule(end="15:20", end_of_day=EndOfDay.CANCEL),
)


def at(hhmm: str) -> dt.datetime:
    return dt.datetime.combine(FRIDAY, dt.time.fromisoformat(hhmm))


def buy(n: int, price: int, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(client_order_id=f"eve-20261204-{n}", code=CODE, side=Side.BUY, qty=10, price=price, tif=tif)


async def test_an_evening_registration_keeps_its_fresh_next_session_order(tmp_path: Path) -> None:
    cards: list[AgentCard] = []
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), cards)
    await rig.start()
    try:
        rig.day.tick()
        rig.at(at("15:31:30"))
        rig.day.tick()
        await rig.run_spawned()  # the day closes; no agent registered
        assert rig.h.store.get_meta("closed:20261204") == "1"
        rig.at(at("19:00"))
        cards.append(CARD)  # registers at 19:00 and at once places Monday's buy
        assert rig.h.desk.submit(CARD, buy(1, 69_000, TimeInForce.NEXT_SESSION)).accepted
        rig.day.tick()  # the next day tick: its policy of Friday was missed (nothing of Friday to cancel)
        assert rig.h.book.orders["eve-20261204-1"].state is OrderState.HELD
        assert rig.alerted(AlertKind.GATEWAY_FAULT) == []
        assert "eve" in rig.day.cycle.cleaned  # worked out once
    finally:
        await rig.close()


async def test_a_missed_cancel_leaves_the_days_orders_to_the_close_and_spares_the_evenings(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [CARD])
    await rig.start()
    try:
        rig.day.tick()
        d = rig.h.desk
        assert d.submit(CARD, buy(1, 60_000)).accepted  # rests below the market
        assert d.submit(CARD, buy(2, 69_000, TimeInForce.NEXT_SESSION)).accepted  # held before the end
        await rig.h.settle(lambda: rig.h.book.orders["eve-20261204-1"].state is OrderState.ACCEPTED)
        rig.drop_spawned()
        # the gateway is down over 15:20 and back at 15:45, where the agent places a next-session buy
        # before the first tick
        rig.at(at("15:45"))
        rig.day = rig.new_day()
        assert d.submit(CARD, buy(3, 68_000, TimeInForce.NEXT_SESSION)).accepted
        rig.day.tick()
        assert rig.h.book.orders["eve-20261204-1"].state is OrderState.ACCEPTED  # no cancel sent past the session
        assert rig.h.book.orders["eve-20261204-2"].state is OrderState.CANCELLED  # its end would have
        assert rig.h.book.orders["eve-20261204-3"].state is OrderState.HELD  # placed after it: spared
        await rig.run_spawned()  # the close
        assert rig.h.book.orders["eve-20261204-1"].state is OrderState.EXPIRED
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "1 orders of the day were open through the close" in text
        assert "1 next-session orders placed before its end cancelled" in text
    finally:
        await rig.close()
