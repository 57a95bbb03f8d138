"""The machine's clock ahead of KRX across the close: the day is not closed while the exchange still prints its
session (a hunt: a clock 32 min fast closed the day at 15:00 by KRX, expired two sells still working at KIS, which
then filled out of reach of cancel_all and the kill switch, and published the 15:00 bars as the day's). The close
waits for the prints to stop; a person is told once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST, elapsed_ns
from common.config import EndOfDay
from common.enums import AlertKind, Side
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"


class Feed:
    """The day cycle on the host's clock (TradingDay.wall) with the exchange's prints as it reads them
    (MarketData.last_print: a print's time and when it was heard) and the elapsed clock the test moves."""

    def __init__(self, rig: Rig, now: float = 5_000.0) -> None:
        self.now = now
        self.heard: tuple[dt.datetime, float] | None = None
        rig.day.wall, rig.day.last_print, rig.day.elapsed = True, lambda: self.heard, lambda: self.now

    def hear(self, hhmmss: str, ago: float = 0.0) -> None:
        """A print of FRIDAY stamped `hhmmss`, heard `ago` seconds before now."""
        self.heard = (dt.datetime.combine(FRIDAY, dt.time.fromisoformat(hhmmss), KST), self.now - ago)


async def test_the_close_waits_while_the_exchange_still_prints_the_session(tmp_path: Path) -> None:
    hold = policy_card("hold", EndOfDay.HOLD)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [hold])
    await rig.start()
    h = rig.h
    try:
        feed = Feed(rig)
        rig.day.tick()
        sell = NewOrder(client_order_id="hold-20261204-1", code=CODE, side=Side.BUY, qty=1, price=60_000)
        assert h.desk.submit(hold, sell).accepted  # rests below the market
        await h.settle(lambda: h.book.orders["hold-20261204-1"].state is OrderState.ACCEPTED)
        # the machine's clock jumps to 15:32 while KRX is at 15:00 and still printing
        rig.at(on(FRIDAY, "15:32"))
        feed.hear("15:00:05", ago=1.0)
        for _ in range(2):
            rig.day.tick()
            await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") != "1"
        assert h.book.orders["hold-20261204-1"].state is OrderState.ACCEPTED  # still working at the broker
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "prints put it at 15:00:06" in text and "NTP" in text
        # KRX's closing call (15:20-15:30) prints nothing: its silence does not let the close run early
        feed.now += 24 * 60.0
        rig.at(on(FRIDAY, "15:56"))
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") != "1"
        # the closing auction's print at 15:30:12, then the close's settle passes by the exchange's time
        feed.hear("15:30:12")
        feed.now += 50.0
        rig.at(on(FRIDAY, "15:57"))
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") == "1"
        assert h.book.orders["hold-20261204-1"].state is OrderState.EXPIRED
        assert len(rig.alerted(AlertKind.GATEWAY_FAULT)) == 1
    finally:
        await rig.close()


async def test_a_quiet_feed_does_not_hold_the_close(tmp_path: Path) -> None:
    """The last print of the session heard long ago (a quiet code, the feed down), by a clock that is right: the
    exchange's time from it is the clock's, and the day closes as before."""
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "15:31:30"), [policy_card("hold", EndOfDay.HOLD)])
    await rig.start()
    try:
        Feed(rig).hear("15:19:58", ago=692.0)  # heard by a clock that is right: 692 s ago at 15:31:30
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1" and rig.alerts == []
    finally:
        await rig.close()


async def test_a_start_with_the_clock_ahead_waits_for_the_feed_before_closing_the_day(tmp_path: Path) -> None:
    """(a hunt) A start with the clock hours ahead closed the day at once, before any print could say otherwise, and
    a day is closed once: its real close never ran (no expiry, no bars, an empty report). A start waits FEED_WAIT_S
    for the feed's first print; a print of the session then holds the close until the exchange's close."""
    hold = policy_card("hold", EndOfDay.HOLD)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "17:58"), [hold])  # the clock 8 h ahead: KRX is at 09:58
    await rig.start()
    h = rig.h
    try:
        feed = Feed(rig)
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") != "1" and rig.alerts == []  # the feed's first seconds
        feed.now += 5.0
        feed.hear("09:58:03", ago=1.0)
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") != "1"
        [told] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "prints put it at 09:58:04" in told, told
        feed.now += 5 * 3600 + 33 * 60 + 10  # the exchange's close and settle pass (no print since)
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") == "1"
    finally:
        await rig.close()


async def test_a_start_after_the_close_with_a_quiet_feed_closes_after_the_wait(tmp_path: Path) -> None:
    """A start after the close with the clock right and no print (the market is over): closed once the wait is up,
    counted from the start's first decision on the day, not the process's start (a review: a KIS start retrying for
    minutes used the wait up before any print could come)."""
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "16:00"), [policy_card("hold", EndOfDay.HOLD)])
    await rig.start()
    try:
        feed = Feed(rig, elapsed_ns() / 1e9 + 200.0)  # the books agreed with the broker 200 s after the start
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") != "1"
        feed.now += 121.0
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1" and rig.alerts == []
    finally:
        await rig.close()


async def test_a_clock_right_within_its_prints_seconds_is_not_held(tmp_path: Path) -> None:
    """(a review) Prints carry whole seconds and arrive a little late: a clock that is right saw the exchange's time
    from the closing print a second behind at 15:31:00 and paged "set the machine's time right" on half of all
    days. Within CLOCK_AHEAD_TOLERANCE the close runs as the clock says."""
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "15:31:00.2"), [policy_card("hold", EndOfDay.HOLD)])
    await rig.start()
    try:
        Feed(rig).hear("15:30:00", ago=59.0)  # the closing print, stamped 15:30:00, heard at 15:30:01.2
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1" and rig.alerts == []
    finally:
        await rig.close()


async def test_a_policy_is_not_worked_out_as_missed_while_the_exchange_is_in_its_session(tmp_path: Path) -> None:
    """(review) The clock jumps past the card's end and the close while KRX is at 15:00: its policy is not worked out
    as missed then (that said the close had ended orders still working); once the exchange's close has passed, it
    is, naming the order open through the close."""
    card = policy_card("cx", EndOfDay.CANCEL)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [card])
    await rig.start()
    h = rig.h
    try:
        feed = Feed(rig)
        rig.day.tick()
        o = NewOrder(client_order_id="cx-20261204-1", code=CODE, side=Side.BUY, qty=1, price=60_000)
        assert h.desk.submit(card, o).accepted
        await h.settle(lambda: h.book.orders["cx-20261204-1"].state is OrderState.ACCEPTED)
        rig.at(on(FRIDAY, "15:32"))
        feed.hear("15:00:05", ago=1.0)
        rig.day.tick()
        await rig.run_spawned()
        assert "cx" not in rig.day.cycle.cleaned
        assert [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "did not run" in t] == []
        feed.now += 32 * 60.0  # the exchange's close and settle pass
        rig.at(on(FRIDAY, "16:04"))
        rig.day.tick()
        await rig.run_spawned()
        [missed] = [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "did not run" in t]
        assert "1 orders of the day were open through the close" in missed
        assert h.store.get_meta("closed:20261204") == "1"
    finally:
        await rig.close()


async def test_a_right_clock_with_an_end_at_the_close_is_not_held(tmp_path: Path) -> None:
    """(a review) With a right clock, a cancel card whose end is 15:30 is the close's at 15:30:00.1: the closing call
    printed nothing since 15:19:58, and the exchange's time from that print is the clock's: no hold, no page."""
    canc = policy_card("canc", EndOfDay.CANCEL, end="15:30")
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "15:30:00.1"), [canc])
    await rig.start()
    try:
        Feed(rig).hear("15:19:58", ago=602.1)
        rig.day.tick()
        assert "canc" in rig.day.cycle.cleaned and rig.alerts == []
    finally:
        await rig.close()
