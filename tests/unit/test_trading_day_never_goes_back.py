"""The machine's clock stepped back over midnight (NTP: 00:00:30 -> 23:58:30 of the day before) does not roll the
gateway's trading day back: agents are not told the old day again (they would restart their order numbering and
reuse its ids, whose finished orders the gateway let go at midnight), the clock's step is logged once, and the day
carries on when the clock passes midnight again."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import msgspec
import pytest

from common.config import EndOfDay
from common.enums import Side, SystemEventKind, TimeInForce
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

THURSDAY, FRIDAY = dt.date(2026, 11, 19), dt.date(2026, 11, 20)
CARD = policy_card("alpha", EndOfDay.HOLD)
THURSDAYS_ORDER = "alpha-20261119-1"


async def test_a_clock_stepped_back_over_midnight_does_not_roll_the_trading_day_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", on(THURSDAY, "10:00"), [CARD])
    told: list[str] = []
    rig.day.publish = lambda kind, agent, text: told.append(text) if kind is SystemEventKind.TRADING_DAY else None
    await rig.start()
    try:
        rig.day.tick()
        new = NewOrder(client_order_id=THURSDAYS_ORDER, code="005930", side=Side.BUY, qty=10, price=70_000)
        assert rig.h.desk.submit(CARD, new).accepted  # marketable: fills
        await rig.h.settle(lambda: rig.h.book.orders[THURSDAYS_ORDER].state is OrderState.FILLED)
        rig.at(dt.datetime.combine(FRIDAY, dt.time(0, 0, 30)))
        rig.day.tick()
        assert told == ["20261119", "20261120"] and THURSDAYS_ORDER not in rig.h.book.orders

        caplog.set_level(logging.WARNING, logger="ktrader.day")
        for second in (30, 40, 50):  # NTP steps the clock back 2 minutes: several ticks on Thursday's clock
            rig.at(dt.datetime.combine(THURSDAY, dt.time(23, 58, second)))
            rig.day.tick()
        assert rig.day.cycle.day == "20261120"  # the trading day stays Friday
        assert told == ["20261119", "20261120"]  # agents are not told Thursday again (no numbering restart)
        assert THURSDAYS_ORDER not in rig.h.book.orders
        warned = [r.getMessage() for r in caplog.records if "clock went back" in r.getMessage()]
        assert warned == [warned[0]] and "from 20261120 to 20261119" in warned[0]  # once for the step
        # an agent registering now is told Friday (its snapshot's day: the book's; numbering by Thursday would
        # reuse the filled order's id and overwrite its stored row); Thursday's id is refused, Friday's taken
        assert rig.h.book.day() == "20261120"
        again = rig.h.desk.submit(CARD, msgspec.structs.replace(new, tif=TimeInForce.NEXT_SESSION))  # (taken at night)
        assert not again.accepted and again.code == "WRONG_DAY"
        assert rig.h.store.load_orders(open_or_day="20261119")[0][1].state is OrderState.FILLED
        fridays = NewOrder(
            client_order_id="alpha-20261120-1",
            code="005930",
            side=Side.BUY,
            qty=1,
            price=70_000,
            tif=TimeInForce.NEXT_SESSION,
        )
        assert rig.h.desk.submit(CARD, fridays).accepted

        rig.at(dt.datetime.combine(FRIDAY, dt.time(0, 0, 5)))  # the clock passes midnight again
        rig.day.tick()
        rig.at(on(FRIDAY, "00:01"))
        rig.day.tick()
        assert rig.day.cycle.day == "20261120" and told == ["20261119", "20261120"]
        assert THURSDAYS_ORDER not in rig.h.book.orders
    finally:
        await rig.close()
