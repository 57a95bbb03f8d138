"""The night's base price is not kept all day when the morning's second look fails until the opening call:
it is asked again past 08:30, with back-off, until the day's value (fetched from 08:00 on) replaces it; and a
code whose prints land outside its band has its base fetched again, at most once per BAND_RECHECK_S.

The case: yesterday the stock went limit-up (10,000 -> 13,000); the night's fetch came before KIS rolled its day
(10,000: band 7,000..13,000), and KIS was unreachable from 08:00 to 08:40. Today's band is 9,100..16,900."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard
from common.enums import OrderType, Side
from common.errors import ErrorCode
from common.schema import NewOrder
from kis.port import BrokerError
from server.md_sanity import Bad, MarketSanity
from tests.fakes.broker import FakeBroker
from tests.fakes.prints import trade
from tests.fakes.trading_day_rig import Rig

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"
NIGHT, TODAY_BASE = 10_000, 13_000
PRICE = 15_000  # inside today's band only
MORNING_RETRY_FIRST_S, MORNING_RETRY_MAX_S = 15.0, 120.0  # server/trading_day.py
BAND_RECHECK_S = 300.0  # server/trading_day.py
CARD = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=10_000_000)


class Unrolled(FakeBroker):
    """KIS before it rolled its day (the night), unreachable from 08:00 until `back`, rolled since."""

    def __init__(self, back: dt.time) -> None:
        super().__init__(ref_price=NIGHT)
        self.back = back
        self.rig: Rig | None = None
        self.calls: list[tuple[dt.time, float]] = []  # (market time, back-off clock) of each fetch

    async def base_price(self, code: str) -> int:
        assert self.rig is not None
        now = self.rig.clock.now().time()
        self.calls.append((now, self.rig.mono[0]))
        if now < dt.time(8, 0):
            return NIGHT
        if now < self.back:
            raise BrokerError("connection refused", code="")
        return TODAY_BASE


def _limit_buy(n: int) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-{FRIDAY:%Y%m%d}-{n}",
        code=CODE,
        side=Side.BUY,
        qty=10,
        price=PRICE,
        order_type=OrderType.LIMIT,
    )


async def test_a_morning_refresh_failing_past_the_open_is_asked_again_until_todays_base_holds(tmp_path: Path) -> None:
    broker = Unrolled(back=dt.time(8, 40))
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(7, 59)), [CARD], broker=broker)
    broker.rig = rig
    await rig.start()
    try:
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])  # the night's fetch (before KIS rolled its day)
        prices = rig.h.portfolio.base_prices
        assert prices[CODE] == NIGHT and not rig.h.portfolio.base_is_today(CODE)  # not known to be today's
        broker.calls.clear()
        rig.at(dt.datetime.combine(FRIDAY, dt.time(8, 0)))
        while rig.clock.now().time() < dt.time(8, 50):  # a day tick a second, the back-off clock with it
            rig.clock.advance(1.0)
            rig.mono[0] += 1.0
            rig.day.tick()
            await rig.run_spawned()
        assert prices[CODE] == TODAY_BASE  # today's value replaced the night's
        assert rig.h.portfolio.base_is_today(CODE)  # (the day's P&L values a carried position at it now)
        after_open = [t for t, _ in broker.calls if t >= dt.time(8, 30)]
        assert after_open, "asked again after the opening call"
        ok = [t for t, _ in broker.calls if t >= dt.time(8, 40)]
        assert len(ok) == 1  # once it held, never asked again
        back_within = dt.datetime.combine(FRIDAY, dt.time(8, 40)) + dt.timedelta(seconds=MORNING_RETRY_MAX_S + 1)
        assert ok[0] <= back_within.time()  # within one back-off of KIS coming back
        # spaced: never twice within the first wait, and no more often than the longest wait once there
        gaps = [b - a for (_, a), (_, b) in zip(broker.calls, broker.calls[1:])]
        assert min(gaps) >= MORNING_RETRY_FIRST_S
        assert all(g >= MORNING_RETRY_MAX_S for g in gaps[4:]), gaps
        assert len(after_open) <= 10 * 60 / MORNING_RETRY_MAX_S + 1  # 08:30..08:40: a try per 2 minutes
        # the gate judges the day's band now: a buy above yesterday's upper limit (13,000) is valid today
        rig.at(dt.datetime.combine(FRIDAY, dt.time(9, 5)))
        rig.day.tick()
        await rig.run_spawned()
        res = rig.h.desk.submit(CARD, _limit_buy(1))
        assert res.accepted, (res.code, res.message)
        asked = len(broker.calls)
        rig.mono[0] += 3600
        rig.day.tick()
        assert not rig.spawned and len(broker.calls) == asked  # confirmed: not asked again
    finally:
        await rig.close()


async def test_a_morning_refresh_that_succeeds_before_the_open_is_done_by_then(tmp_path: Path) -> None:
    """The same morning with KIS back at 08:10: today's value holds from then, nothing is asked past 08:30."""
    broker = Unrolled(back=dt.time(8, 10))
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(7, 59)), [CARD], broker=broker)
    broker.rig = rig
    await rig.start()
    try:
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])
        prices = rig.h.portfolio.base_prices
        assert prices[CODE] == NIGHT
        rig.at(dt.datetime.combine(FRIDAY, dt.time(8, 0)))
        while rig.clock.now().time() < dt.time(8, 31):
            rig.clock.advance(1.0)
            rig.mono[0] += 1.0
            rig.day.tick()
            await rig.run_spawned()
        assert prices[CODE] == TODAY_BASE
        assert not [t for t, _ in broker.calls if t >= dt.time(8, 30)]  # confirmed before the open: done
    finally:
        await rig.close()


async def test_prints_outside_the_band_fetch_the_base_again_at_most_every_few_minutes(tmp_path: Path) -> None:
    broker = Unrolled(back=dt.time(0, 0))  # KIS answers (the day's value) from 08:00
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(9, 5)), [CARD], broker=broker)
    broker.rig = rig
    await rig.start()
    try:
        day = rig.day
        day.base_prices.missing([])  # the day rolled in the base prices
        prices = rig.h.portfolio.base_prices
        prices[CODE] = NIGHT  # the night's value, kept (the morning's look failed)
        alerts: list[str] = []
        # what the gateway checks every print with (server/gateway.py: the band of portfolio.base_prices)
        sanity = MarketSanity(lambda c: prices.get(c, 0), lambda c: None, lambda: FRIDAY, alerts.append)
        ymd = f"{FRIDAY:%Y%m%d}"
        assert sanity.trade(trade(CODE, "090500", PRICE, 10, 100, date=ymd)) is Bad.BAND  # dropped
        day.outside_band(CODE)  # the hook the gateway calls on an outside_band drop
        assert len(rig.spawned) == 1
        await rig.run_spawned()
        assert prices[CODE] == TODAY_BASE
        assert sanity.trade(trade(CODE, "090501", PRICE, 10, 110, date=ymd)) is None  # today's band: taken
        asked = len(broker.calls)
        day.outside_band(CODE)  # a feed sending prices outside the band all day: not a fetch per print
        rig.mono[0] += BAND_RECHECK_S - 1
        day.outside_band(CODE)
        assert not rig.spawned and len(broker.calls) == asked
        rig.mono[0] += 1
        day.outside_band(CODE)  # the next window
        assert len(rig.spawned) == 1
        await rig.run_spawned()
        assert len(broker.calls) == asked + 1
        day.outside_band("000660")  # a code without a base: no band was checked, nothing to fetch
        assert not rig.spawned
    finally:
        await rig.close()


async def test_the_nights_band_denies_what_todays_accepts(tmp_path: Path) -> None:
    """(What the first test's order meets when the night's value is kept: the band the reviewer found.)"""
    broker = Unrolled(back=dt.time(0, 0))
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(9, 5)), [CARD], broker=broker)
    broker.rig = rig
    await rig.start()
    try:
        rig.day.base_prices.missing([])
        rig.h.portfolio.base_prices[CODE] = NIGHT
        res = rig.h.desk.submit(CARD, _limit_buy(1))
        assert not res.accepted and res.code is ErrorCode.DENIED_PRICE_BAND
        rig.h.portfolio.base_prices[CODE] = TODAY_BASE
        res = rig.h.desk.submit(CARD, _limit_buy(2))
        assert res.accepted, (res.code, res.message)
    finally:
        await rig.close()
