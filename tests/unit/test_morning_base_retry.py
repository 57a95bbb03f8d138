"""The morning's second look at the base prices (fetched at midnight, maybe before KIS rolled its day) is
not given up after one failed fetch: the day counts as refreshed only once it succeeded, and it is asked
again with back-off, before the opening auction (08:30, where held orders are released) and past it too: the
night's value is not kept all day (tests/unit/test_base_refresh_after_open.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard
from kis.port import BrokerError
from tests.fakes.broker import FakeBroker
from tests.fakes.trading_day_rig import Rig

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"
MORNING_RETRY_FIRST_S = 15.0  # server/trading_day.py: the first wait after a failed morning fetch
CARD = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=10_000_000)


class Flaky(FakeBroker):
    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.failing = 0  # the next fetches that fail
        self.asked = 0

    async def base_price(self, code: str) -> int:
        self.asked += 1
        if self.failing:
            self.failing -= 1
            raise BrokerError("EGW00201 초당 거래건수를 초과하였습니다.", code="EGW00201")
        return 71_000  # the day's, rolled (the night's was 1)


async def test_a_failed_morning_fetch_is_tried_again_until_it_succeeds(tmp_path: Path) -> None:
    broker = Flaky()
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(7, 59)), [CARD], broker=broker)
    await rig.start()
    try:
        rig.day.tick()  # the day's first tick
        await rig.day.base_prices.ensure([CODE])  # the agent's registration fetches its codes' bases
        prices = rig.h.portfolio.base_prices
        prices[CODE] = 1  # what the night's fetch, before KIS rolled its day, left
        broker.failing = 2
        rig.at(dt.datetime.combine(FRIDAY, dt.time(8, 0, 1)))
        rig.day.tick()
        assert await rig.run_spawned() == 1 and prices[CODE] == 1  # failed: the night's value stays
        for _ in range(5):  # not again at every tick...
            rig.clock.advance(1.0)
            rig.day.tick()
        assert not rig.spawned
        rig.mono[0] += MORNING_RETRY_FIRST_S  # ...but after the back-off
        rig.day.tick()
        assert await rig.run_spawned() == 1 and prices[CODE] == 1  # failed again: twice the wait now
        rig.mono[0] += MORNING_RETRY_FIRST_S
        rig.day.tick()
        assert not rig.spawned
        rig.mono[0] += MORNING_RETRY_FIRST_S
        rig.day.tick()
        assert await rig.run_spawned() == 1 and prices[CODE] == 71_000
        asked = broker.asked
        rig.mono[0] += 600
        rig.day.tick()
        assert not rig.spawned and broker.asked == asked  # refreshed: once a day
    finally:
        await rig.close()


async def test_the_morning_fetch_goes_on_past_the_auction_with_back_off(tmp_path: Path) -> None:
    broker = Flaky()
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(7, 59)), [CARD], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        await rig.run_spawned()
        broker.failing = 100
        rig.at(dt.datetime.combine(FRIDAY, dt.time(8, 29, 50)))
        rig.day.tick()
        assert await rig.run_spawned() == 1
        rig.at(dt.datetime.combine(FRIDAY, dt.time(8, 30)))  # the auction has started: still not the day's value
        rig.day.tick()
        assert not rig.spawned  # not at every tick...
        rig.mono[0] += MORNING_RETRY_FIRST_S
        rig.day.tick()
        assert await rig.run_spawned() == 1  # ...but after the back-off
    finally:
        await rig.close()
