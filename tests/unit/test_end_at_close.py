"""A card whose `schedule.end` is at or after the close ("15:30", "16:00": trade until the close) has its policy run
as the close's: a flatten as the closing call starts (its market sells meet the closing price, as a backtest sells
at the close), a cancel or hold not at all before the close (the closing call may still fill what the agent placed
for it; the close ends the day's orders). Never reported as missed: such a card was alerted "did not run at its
time (no gateway...)" at 15:30:00 with both running, its flatten's shares carried overnight and sold at the next
open, its cancels racing the closing auction's match."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import EndOfDay
from common.enums import AlertKind, OrderType, Side, TimeInForce
from common.ids import placed_by_gateway
from common.krx import Phase
from common.orders import OrderState
from common.schema import NewOrder
from server.daycycle import end_due, policy_time
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY = dt.date(2026, 12, 4)
CSAT = dt.date(2026, 11, 19)  # opens 10:00, closes 16:30
CODE = "005930"


def buy(agent: str, n: int, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261204-{n}", code=CODE, side=Side.BUY, qty=qty, price=price)


def kst(day: dt.date, hhmm: str) -> dt.datetime:
    return on(day, hhmm).replace(tzinfo=dt.timezone(dt.timedelta(hours=9)))


def test_an_end_at_the_close_is_due_when_the_closing_call_starts_for_a_flatten_only() -> None:
    flat = policy_card("flat", EndOfDay.FLATTEN, end="15:30")
    late = policy_card("late", EndOfDay.FLATTEN, end="16:00")
    canc = policy_card("canc", EndOfDay.CANCEL, end="15:35")
    assert not end_due(flat, kst(FRIDAY, "15:19:59"), Phase.CONTINUOUS)
    assert end_due(flat, kst(FRIDAY, "15:20"), Phase.CLOSING_AUCTION)
    assert end_due(late, kst(FRIDAY, "15:20"), Phase.CLOSING_AUCTION)
    # the closing auction's random end (up to 30 s past 15:30): still nothing for a cancel
    assert not end_due(canc, kst(FRIDAY, "15:30:10"), Phase.CLOSING_AUCTION)
    # the CSAT day moves the end as the close (16:30): the closing call starts at 16:20
    assert not end_due(flat, kst(CSAT, "16:19"), Phase.CONTINUOUS)
    assert end_due(flat, kst(CSAT, "16:20"), Phase.CLOSING_AUCTION)
    # an end before the close is unchanged
    at_1525 = policy_card("x", EndOfDay.CANCEL, end="15:25")
    assert not end_due(at_1525, kst(FRIDAY, "15:24"), Phase.CLOSING_AUCTION)
    assert end_due(at_1525, kst(FRIDAY, "15:25"), Phase.CLOSING_AUCTION)
    assert policy_time(flat, FRIDAY, True) == kst(FRIDAY, "15:20")
    assert policy_time(canc, FRIDAY, True) == kst(FRIDAY, "15:30")


async def test_a_flatten_ending_at_the_close_sells_in_the_closing_call_and_is_not_missed(tmp_path: Path) -> None:
    flat = policy_card("flat", EndOfDay.FLATTEN, end="15:30")
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [flat])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        assert h.desk.submit(flat, buy("flat", 1, 30, 70_000)).accepted  # marketable: fills at once
        await h.settle(lambda: h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
        rig.at(on(FRIDAY, "15:19:59"))
        rig.day.tick()
        assert not [c for c in h.book.orders if placed_by_gateway(c)]
        rig.at(on(FRIDAY, "15:20"))
        rig.day.tick()
        sells = [o for c, o in h.book.orders.items() if placed_by_gateway(c)]
        assert [(o.side, o.qty, o.order_type, o.tif) for o in sells] == [
            (Side.SELL, 30, OrderType.MARKET, TimeInForce.DAY)  # today's closing call, not the next open
        ]
        await h.settle(
            lambda: h.portfolio.position("flat", CODE) is None or h.portfolio.position("flat", CODE).qty == 0
        )  # type: ignore[union-attr]
        for t in ("15:30:10", "15:32"):
            rig.at(on(FRIDAY, t))
            rig.day.tick()
            await rig.run_spawned()
        assert rig.alerted(AlertKind.GATEWAY_FAULT) == [] and not h.book.held
        assert rig.day.counters.get("end_of_day_missed", 0) == 0
    finally:
        await rig.close()


async def test_a_cancel_ending_after_the_close_leaves_the_closing_call_alone(tmp_path: Path) -> None:
    canc = policy_card("canc", EndOfDay.CANCEL, end="15:35")
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [canc])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        assert h.desk.submit(canc, buy("canc", 1, 10, 60_000)).accepted  # below the market: rests
        await h.settle(lambda: h.book.orders["canc-20261204-1"].state is OrderState.ACCEPTED)
        for t in ("15:20", "15:25", "15:29:59", "15:30:00.1", "15:30:20"):
            rig.at(on(FRIDAY, t))
            rig.day.tick()
            assert h.book.orders["canc-20261204-1"].state is OrderState.ACCEPTED, t  # never cancelled
            if t == "15:25":  # its end has not come: it still buys for the closing call
                assert h.desk.submit(canc, buy("canc", 2, 1, 60_000)).accepted
        assert "canc" in rig.day.cycle.cleaned  # the close's: worked out, not pending
        rig.at(on(FRIDAY, "15:31:30"))
        rig.day.tick()
        await rig.run_spawned()
        assert h.book.orders["canc-20261204-1"].state is OrderState.EXPIRED
        assert rig.alerts == [] and rig.day.counters.get("end_of_day_missed", 0) == 0
    finally:
        await rig.close()
