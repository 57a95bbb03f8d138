"""Feed lag is not a host clock off: nine prints can arrive within a second, and KIS's delay bursts at
09:00 read as an offset for a while. Only an offset held for a minute of market time (and nine prints or
more) pages; it is re-armed only after it stayed within 1.5 s for 10 minutes; at most one page a day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from kis.port import Trade
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData

FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)


def trade(exchange: dt.datetime) -> Trade:
    return Trade(
        code="005930",
        time=exchange.strftime("%H%M%S"),
        price=70_000,
        qty=1,
        side=1,
        cum_volume=100,
        cum_value=7_000_000,
        open=70_000,
        high=70_000,
        low=70_000,
        change=0,
        ask1=70_100,
        bid1=70_000,
        date=exchange.strftime("%Y%m%d"),
    )


def feed(md: MarketData, wall: dt.datetime, offset: float, seconds: float, every: float = 1.0) -> dt.datetime:
    """Prints `offset` s off the host's clock, one each `every` s of wall time, for `seconds`."""
    end = wall + dt.timedelta(seconds=seconds)
    while wall < end:
        md.on_trade(trade(wall + dt.timedelta(seconds=offset)), wall=wall)
        wall += dt.timedelta(seconds=every)
    return wall


def rig(tmp_path: Path) -> tuple[MarketData, list[str]]:
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX)
    told: list[str] = []
    md.on_skew = told.append
    return md, told


def test_nine_lagged_prints_within_a_second_page_nobody(tmp_path: Path) -> None:
    md, told = rig(tmp_path)
    try:
        wall = dt.datetime.combine(FRIDAY, dt.time(10, 0, 0, 500_000), KST)
        wall = feed(md, wall, -0.4, 20)
        wall = feed(md, wall, -4.0, 0.9, every=0.1)  # a burst of nine prints four seconds late
        assert told == [] and md.counters()["clock_skew_alerts"] == 0
        feed(md, wall, -0.4, 20)
        assert told == []
    finally:
        md.store.close()


def test_a_delay_burst_at_the_open_pages_nobody(tmp_path: Path) -> None:
    md, told = rig(tmp_path)
    try:
        wall = dt.datetime.combine(FRIDAY, dt.time(9, 0, 0, 500_000), KST)
        for _ in range(5):  # KIS's delay at 09:00: 40 s of prints 3 s late, many a second, again and again
            wall = feed(md, wall, -3.0, 40, every=0.05)
            wall = feed(md, wall, -0.4, 5, every=0.2)
        assert told == [] and md.counters()["clock_skew_alerts"] == 0
    finally:
        md.store.close()


def test_an_offset_held_a_minute_pages_once_a_day_and_rearms_after_ten_minutes(tmp_path: Path) -> None:
    md, told = rig(tmp_path)
    try:
        wall = dt.datetime.combine(FRIDAY, dt.time(10, 0, 0, 500_000), KST)
        wall = feed(md, wall, 5.0, 58)
        assert told == []  # not a minute yet
        wall = feed(md, wall, 5.0, 30)
        [text] = told
        assert "4.5 s behind" in text and "NTP" in text and md.counters()["clock_skew_alerts"] == 1
        wall = feed(md, wall, 5.0, 600)
        assert len(told) == 1  # once, however many prints follow
        # back for five minutes, then off again: not re-armed yet
        wall = feed(md, wall, -0.3, 300)
        wall = feed(md, wall, 5.0, 120)
        assert len(told) == 1
        # Monday, still off: it never stayed back for ten minutes
        wall = dt.datetime.combine(MONDAY, dt.time(9, 30, 0, 500_000), KST)
        wall = feed(md, wall, 5.0, 120)
        assert len(told) == 1
        # back for eleven minutes: re-armed; off for two minutes: told (Monday's page)
        wall = feed(md, wall, -0.3, 660)
        wall = feed(md, wall, -3.0, 120)
        assert len(told) == 2 and "3.5 s ahead of" in told[1]
        # the same again on Monday: at most one page a day
        wall = feed(md, wall, -0.3, 660)
        feed(md, wall, -3.0, 120)
        assert len(told) == 2 and md.counters()["clock_skew_alerts"] == 2
    finally:
        md.store.close()
