"""The machine's clock ahead of KRX across the close: the day is not closed while the exchange still prints its
session (a hunt: a clock 32 min fast closed the day at 15:00 by KRX, expired two sells still working at KIS, which
then filled out of reach of cancel_all and the kill switch, and published the 15:00 bars as the day's). The close
waits for the prints to stop; a person is told once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.config import EndOfDay
from common.enums import AlertKind, Side
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"


async def test_the_close_waits_while_the_exchange_still_prints_the_session(tmp_path: Path) -> None:
    hold = policy_card("hold", EndOfDay.HOLD)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [hold])
    await rig.start()
    h = rig.h
    elapsed = [5_000.0]
    heard: list[tuple[dt.datetime, float] | None] = [None]
    try:
        rig.day.last_print, rig.day.elapsed = lambda: heard[0], lambda: elapsed[0]
        rig.day.tick()
        sell = NewOrder(client_order_id="hold-20261204-1", code=CODE, side=Side.BUY, qty=1, price=60_000)
        assert h.desk.submit(hold, sell).accepted  # rests below the market
        await h.settle(lambda: h.book.orders["hold-20261204-1"].state is OrderState.ACCEPTED)
        # the machine's clock jumps to 15:32 while KRX is at 15:00 and still printing
        rig.at(on(FRIDAY, "15:32"))
        heard[0] = (dt.datetime.combine(FRIDAY, dt.time(15, 0, 5), KST), elapsed[0] - 1.0)
        for _ in range(2):
            rig.day.tick()
            await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") != "1"
        assert h.book.orders["hold-20261204-1"].state is OrderState.ACCEPTED  # still working at the broker
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "prints put it at 15:00:06" in text and "NTP" in text
        # KRX's closing call (15:20-15:30) prints nothing: its silence does not let the close run early
        elapsed[0] += 24 * 60.0
        rig.at(on(FRIDAY, "15:56"))
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") != "1"
        # the closing auction's print at 15:30:12, then the close's settle passes by the exchange's time
        heard[0] = (dt.datetime.combine(FRIDAY, dt.time(15, 30, 12), KST), elapsed[0])
        elapsed[0] += 50.0
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
        # heard at 15:19:58 by a clock that is right: 692 s ago at 15:31:30
        rig.day.last_print = lambda: (dt.datetime.combine(FRIDAY, dt.time(15, 19, 58), KST), 100.0)
        rig.day.elapsed = lambda: 100.0 + 692.0
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1" and rig.alerts == []
    finally:
        await rig.close()


async def test_a_day_closed_early_by_a_clock_ahead_closes_again_once_the_clock_is_back(tmp_path: Path) -> None:
    """(a hunt) The clock ahead at the start closed the day at once; set back into the session, the day's business went
    on and its real close never ran (no expiry, no bars, the morning's empty report kept). Reopened, what the early
    close decided by the clock is undone (a review): the agent no longer reduce-only, its missed flatten's sells for
    the next open cancelled, the daily bars it took dropped; its policy runs at its time and the day closes again."""
    flat = policy_card("flat", EndOfDay.FLATTEN)
    forgot: list[dt.date] = []
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [flat])
    await rig.start()
    h = rig.h
    try:
        rig.day.reopens = True  # (the host's clock: WallClock)
        rig.day.forget_bars = lambda d: forgot.append(d) or 3
        rig.day.tick()
        buy = NewOrder(client_order_id="flat-20261204-1", code=CODE, side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(flat, buy).accepted  # marketable: fills
        await h.settle(lambda: h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
        rig.drop_spawned()
        rig.at(on(FRIDAY, "17:58"))  # a restart with the clock 8 h ahead: closed at once, the flatten missed
        rig.day = rig.new_day()
        rig.day.reopens, rig.day.forget_bars = True, lambda d: forgot.append(d) or 3
        rig.day.tick()
        await rig.run_spawned()
        rig.day.tick()
        assert h.store.get_meta("closed:20261204") == "1" and "flat" in rig.day.cycle.cleaned
        assert [o.qty for o in h.book.held.values()] == [10]  # the missed flatten's sell for Monday's open
        rig.at(on(FRIDAY, "10:30"))  # NTP sets it right
        rig.day.tick()
        [told] = [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "went back into the session" in t]
        assert "1 next-session sells its flattens held, 3 daily bars it took" in told, told
        assert forgot == [FRIDAY] and h.store.get_meta("closed:20261204") != "1"
        assert not h.book.held and "flat" not in rig.day.cycle.cleaned and not h.risk.end_of_day
        more = NewOrder(client_order_id="flat-20261204-2", code=CODE, side=Side.BUY, qty=1, price=60_000)
        assert h.desk.submit(flat, more).accepted  # not reduce-only: it rests
        await h.settle(lambda: h.book.orders["flat-20261204-2"].state is OrderState.ACCEPTED)
        rig.at(on(FRIDAY, "15:20"))
        rig.day.tick()  # its flatten at its time
        await h.settle(lambda: (p := h.portfolio.position("flat", CODE)) is None or p.qty == 0)
        rig.at(on(FRIDAY, "15:31:30"))
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") == "1"
        assert h.book.orders["flat-20261204-2"].state is OrderState.CANCELLED  # the flatten's cancel
        assert not h.book.held  # flat at the close: nothing for Monday
    finally:
        await rig.close()


async def test_a_clock_right_within_its_prints_seconds_is_not_held(tmp_path: Path) -> None:
    """(a review) Prints carry whole seconds and arrive a little late: a clock that is right saw the exchange's time
    from the closing print a second behind at 15:31:00 and paged "set the machine's time right" on half of all
    days. Within CLOCK_AHEAD_TOLERANCE the close runs as the clock says."""
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "15:31:00.2"), [policy_card("hold", EndOfDay.HOLD)])
    await rig.start()
    try:
        rig.day.last_print = lambda: (dt.datetime.combine(FRIDAY, dt.time(15, 30, 0), KST), 100.0)
        rig.day.elapsed = lambda: 100.0 + 59.0  # the closing print, stamped 15:30:00, heard at 15:30:01.2
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
    elapsed = [5_000.0]
    heard: list[tuple[dt.datetime, float] | None] = [None]
    try:
        rig.day.last_print, rig.day.elapsed = lambda: heard[0], lambda: elapsed[0]
        rig.day.tick()
        o = NewOrder(client_order_id="cx-20261204-1", code=CODE, side=Side.BUY, qty=1, price=60_000)
        assert h.desk.submit(card, o).accepted
        await h.settle(lambda: h.book.orders["cx-20261204-1"].state is OrderState.ACCEPTED)
        rig.at(on(FRIDAY, "15:32"))
        heard[0] = (dt.datetime.combine(FRIDAY, dt.time(15, 0, 5), KST), elapsed[0] - 1.0)
        rig.day.tick()
        await rig.run_spawned()
        assert "cx" not in rig.day.cycle.cleaned
        assert [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "did not run" in t] == []
        elapsed[0] += 32 * 60.0  # the exchange's close and settle pass
        rig.at(on(FRIDAY, "16:04"))
        rig.day.tick()
        await rig.run_spawned()
        [missed] = [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "did not run" in t]
        assert "1 orders of the day were open through the close" in missed
        assert h.store.get_meta("closed:20261204") == "1"
    finally:
        await rig.close()
