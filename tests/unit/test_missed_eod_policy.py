"""A card's end-of-day policy whose time passed while no gateway ran (restarted at 15:32): it is not
silently skipped. A missed flatten holds market sells for the next session's open, a missed cancel leaves the
day's orders to the close (nothing is cancelled past the session), and a person is told."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import EndOfDay
from common.enums import AlertKind, OrderType, Side, TimeInForce
from common.krx import Phase
from common.orders import OrderState
from common.schema import NewOrder
from server.daycycle import DayCycle
from server.store import Store
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"


def at(hhmm: str, day: dt.date = FRIDAY) -> dt.datetime:
    return on(day, hhmm)


def buy(agent: str, n: int, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261204-{n}", code=CODE, side=Side.BUY, qty=qty, price=price)


def test_due_after_the_close_reports_a_card_not_cleaned_up_as_missed(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite")
    dc = DayCycle(store)
    dc.roll("20261204")
    flat, done = policy_card("flat", EndOfDay.FLATTEN), policy_card("done", EndOfDay.CANCEL)
    dc.mark_cleaned("done")
    due = dc.due(at("15:32").replace(tzinfo=dt.timezone(dt.timedelta(hours=9))), Phase.POST_CLOSE, True, [flat, done])
    assert [c.id for c in due.missed] == ["flat"] and due.cleanup == []
    store.close()


async def test_a_flatten_missed_over_a_restart_holds_next_session_sells_and_is_alerted(tmp_path: Path) -> None:
    flat = policy_card("flat", EndOfDay.FLATTEN)
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [flat])
    await rig.start()
    try:
        rig.day.tick()
        assert rig.h.desk.submit(flat, buy("flat", 1, 30, 70_000)).accepted  # marketable: fills at once
        await rig.h.settle(lambda: rig.h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
        # the gateway went down at 15:15 and is back at 15:32: its end (15:20) passed unseen
        rig.at(at("15:32"))
        rig.day = rig.new_day()
        rig.day.tick()
        sells = [o for o in rig.h.book.held.values() if o.agent == "flat"]
        assert sum(o.qty for o in sells) == 30
        assert all(
            o.side is Side.SELL
            and o.order_type is OrderType.MARKET
            and o.tif is TimeInForce.NEXT_SESSION
            and o.valid_day == "20261207"  # Monday's open
            for o in sells
        )
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "flat" in text and "flatten" in text and "did not run" in text and "30 005930" in text
        assert rig.day.counters["end_of_day_missed"] == 1
        # once: the next ticks neither sell again nor alert again (a restart neither: it is stored)
        rig.day.tick()
        rig.day = rig.new_day()
        rig.day.tick()
        assert sum(o.qty for o in rig.h.book.held.values() if o.agent == "flat") == 30
        assert len(rig.alerted(AlertKind.GATEWAY_FAULT)) == 1
    finally:
        await rig.close()


async def test_a_missed_cancel_leaves_the_days_orders_to_the_close_and_is_alerted(tmp_path: Path) -> None:
    canc = policy_card("canc", EndOfDay.CANCEL)
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [canc])
    await rig.start()
    try:
        rig.day.tick()
        assert rig.h.desk.submit(canc, buy("canc", 1, 10, 60_000)).accepted  # below the market: rests
        await rig.h.settle(lambda: rig.h.book.orders["canc-20261204-1"].state is OrderState.ACCEPTED)
        rig.at(at("15:32"))
        rig.day = rig.new_day()
        rig.day.tick()
        assert rig.h.book.orders["canc-20261204-1"].state is OrderState.ACCEPTED  # no cancel past the session
        await rig.run_spawned()  # the close ends it
        assert rig.h.book.orders["canc-20261204-1"].state is OrderState.EXPIRED
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "canc" in text and "cancel" in text and "did not run" in text
        assert "1 orders of the day were open through the close" in text
    finally:
        await rig.close()


async def test_a_card_with_nothing_to_do_is_not_alerted(tmp_path: Path) -> None:
    """An agent registered only after the close with no orders or positions: nothing was missed."""
    flat = policy_card("flat", EndOfDay.FLATTEN)
    rig = Rig(tmp_path / "db" / "g.sqlite", at("15:32"), [flat])
    await rig.start()
    try:
        rig.day.tick()
        assert rig.alerts == [] and not rig.h.book.held
    finally:
        await rig.close()
