"""Today's close expires today's orders only: an earlier day's order kept open because that day's order
list cannot be read (it may have filled at that day's close) is left to that day's late close, never
expired unchecked by today's."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, EndOfDay, Schedule
from common.enums import Side
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerOrderReport
from tests.fakes.broker import FakeBroker
from tests.fakes.trading_day_rig import Rig

FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)
CODE = "005930"
CARD = AgentCard(
    id="alpha",
    name="alpha",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    schedule=Schedule(end="15:20", end_of_day=EndOfDay.HOLD),
)


class ListDown(FakeBroker):
    """Friday's order list cannot be read while `down` (Monday's can)."""

    down = False

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        if day == FRIDAY and self.down:
            raise OSError("EGW00201")
        return await super().order_reports(day, open_only=open_only)


def at(day: dt.date, hhmm: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm))


async def test_mondays_close_leaves_fridays_unread_order_to_fridays_close(tmp_path: Path) -> None:
    broker = ListDown(ref_price=70_000)
    rig = Rig(tmp_path / "db" / "g.sqlite", at(FRIDAY, "10:00"), [CARD], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        new = NewOrder(client_order_id="alpha-20261204-1", code=CODE, side=Side.BUY, qty=10, price=60_000)
        assert rig.h.desk.submit(CARD, new).accepted
        await rig.h.settle(lambda: rig.h.book.orders["alpha-20261204-1"].state is OrderState.ACCEPTED)
        rig.drop_spawned()
        broker.down = True  # Friday's list unreadable all Monday
        rig.at(at(MONDAY, "08:00"))
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.book.orders["alpha-20261204-1"].is_open
        rig.at(at(MONDAY, "15:31:30"))
        rig.mono[0] += 10_000
        rig.day.tick()
        await rig.run_spawned()  # Friday's late close tried (fails: its list is down)
        rig.at(at(MONDAY, "15:31:31"))
        rig.day.tick()
        await rig.run_spawned()  # Friday in its back-off; Monday closes
        rig.mono[0] += 400
        rig.day.tick()
        await rig.run_spawned()  # Friday again: still unreadable
        assert rig.h.store.get_meta("closed:20261207") == "1"  # Monday's own close is not held up
        o = rig.h.store.order("alpha-20261204-1")
        assert o is not None and o.state is OrderState.ACCEPTED  # kept open: not expired unchecked
        assert rig.h.store.get_meta("closed:20261204") != "1"
        # Friday's list is back: its late close settles the order against it and closes Friday
        broker.down = False
        rig.mono[0] += 400
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1"
        o = rig.h.store.order("alpha-20261204-1")
        assert o is not None and o.state is OrderState.EXPIRED
    finally:
        await rig.close()
