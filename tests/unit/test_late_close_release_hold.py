"""While an earlier day is unclosed (its late close failing, in its back-off between tries), the held
orders of an agent that still has an open order of that day wait (it may have filled at that day's close
while nobody listened); other agents' held orders go out at the open as usual."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, EndOfDay, Schedule
from common.enums import Side, TimeInForce
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerOrderReport
from tests.fakes.broker import FakeBroker
from tests.fakes.trading_day_rig import Rig

FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)
CODE = "005930"


def card(agent: str) -> AgentCard:
    return AgentCard(
        id=agent,
        name=agent,
        strategy="x:Y",
        codes=[CODE],
        budget=10_000_000,
        schedule=Schedule(end="15:20", end_of_day=EndOfDay.HOLD),
    )


ALPHA, BETA = card("alpha"), card("beta")
SENT = {OrderState.PENDING_SUBMIT, OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED, OrderState.FILLED}


class ListDown(FakeBroker):
    down = False

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        if day == FRIDAY and self.down:
            raise OSError("EGW00201 rate limit")
        return await super().order_reports(day, open_only=open_only)


def at(day: dt.date, hhmm: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm))


def buy(agent: str, n: int, price: int, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261204-{n}", code=CODE, side=Side.BUY, qty=10, price=price, tif=tif)


async def test_held_orders_wait_for_their_agents_open_orders_of_the_unclosed_day(tmp_path: Path) -> None:
    broker = ListDown(ref_price=70_000)
    rig = Rig(tmp_path / "db" / "g.sqlite", at(FRIDAY, "10:00"), [ALPHA, BETA], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        d = rig.h.desk
        assert d.submit(ALPHA, buy("alpha", 1, 60_000)).accepted  # rests: open when the gateway goes down
        assert d.submit(ALPHA, buy("alpha", 2, 69_000, TimeInForce.NEXT_SESSION)).accepted
        assert d.submit(BETA, buy("beta", 1, 69_000, TimeInForce.NEXT_SESSION)).accepted
        await rig.h.settle(lambda: rig.h.book.orders["alpha-20261204-1"].state is OrderState.ACCEPTED)
        rig.drop_spawned()
        broker.down = True
        rig.at(at(MONDAY, "08:31"))  # back in Monday's opening call; Friday's list cannot be read
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()  # Friday's late close fails: back-off
        assert rig.h.store.get_meta("closed:20261204") != "1" and "20261204" in rig.day._close_retry_at
        for s in ("08:31:01", "08:31:02"):  # ticks in the back-off
            rig.at(at(MONDAY, s))
            rig.day.tick()
            await rig.run_spawned()
        assert rig.h.book.orders["alpha-20261204-2"].state is OrderState.HELD  # waits for Friday's close
        assert rig.h.book.orders["beta-20261204-1"].state in SENT  # nothing of Friday open: released
        # Friday's list is back: Friday closes, alpha's held order goes out
        broker.down = False
        rig.mono[0] += 10
        rig.at(at(MONDAY, "08:31:10"))
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1"
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.book.orders["alpha-20261204-2"].state in SENT
    finally:
        await rig.close()


async def test_an_agents_own_held_order_does_not_release_the_held_orders_that_wait(tmp_path: Path) -> None:
    """The release an agent's new next-session order starts (its session may be taking orders) leaves the
    waiting agents' held orders as the day tick does."""
    broker = ListDown(ref_price=70_000)
    rig = Rig(tmp_path / "db" / "g.sqlite", at(FRIDAY, "10:00"), [ALPHA, BETA], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        d = rig.h.desk
        assert d.submit(ALPHA, buy("alpha", 1, 60_000)).accepted
        assert d.submit(ALPHA, buy("alpha", 2, 69_000, TimeInForce.NEXT_SESSION)).accepted
        await rig.h.settle(lambda: rig.h.book.orders["alpha-20261204-1"].state is OrderState.ACCEPTED)
        rig.drop_spawned()
        broker.down = True
        rig.at(at(MONDAY, "08:31"))
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()  # Friday's late close fails: back-off
        assert "20261204" in rig.day._close_retry_at
        assert rig.h.book.orders["alpha-20261204-2"].state is OrderState.HELD
        monday = NewOrder(
            client_order_id="beta-20261207-1",
            code=CODE,
            side=Side.BUY,
            qty=10,
            price=69_000,
            tif=TimeInForce.NEXT_SESSION,
        )
        assert d.submit(BETA, monday).accepted
        await rig.run_spawned()
        assert rig.h.book.orders["beta-20261207-1"].state in SENT  # its own goes out in the opening call
        assert rig.h.book.orders["alpha-20261204-2"].state is OrderState.HELD  # still waits for Friday's close
    finally:
        await rig.close()
