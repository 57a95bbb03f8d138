"""Intraday bars the gateway never heard (its restart, a websocket outage) are neither served as a silent
hole nor lost in silence: the agents are told (HISTORY_CHANGED, through `on_bars_lost`) when buckets are
dropped as partial, and an intraday history window that reaches back past the code's heard_since is filled
from the broker's minute chart, once per stretch (a hunt: a 12-bar 5m SMA read 318,958 where the exchange's
bars give 317,750, and a copy of the strategy started later decided otherwise)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from common.clock import KST
from common.schema import Bar
from kis.port import Capability
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from tests.fakes.prints import trade

DAY = dt.date(2024, 3, 4)  # a Monday, normal hours
C = "005930"


def at(h: int, m: int, s: int) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(h, m, s), KST)


def minute(m: int) -> Bar:
    """The exchange's 1m bar `m` minutes after 09:00: a price rising 10 won a minute, 2 shares."""
    t = dt.datetime.combine(DAY, dt.time(9, 0)) + dt.timedelta(minutes=m)
    p = 70_000 + 10 * m
    return Bar(code=C, interval="1m", start=t.strftime("%Y-%m-%dT%H:%M"), open=p, high=p, low=p, close=p, volume=2)


class MinuteCharts:
    capabilities = frozenset({Capability.CHARTS})

    def __init__(self) -> None:
        self.calls = 0

    async def minute_bars(
        self, code: str, need: int, day: dt.date, until_hhmmss: str, *, caller: str = "gateway"
    ) -> tuple[list[Bar], bool]:
        self.calls += 1
        until = f"{day.isoformat()}T{until_hhmmss[:2]}:{until_hhmmss[2:4]}"
        ones = [b for b in (minute(m) for m in range(390)) if b.start < until]
        return ones[-need:], len(ones) <= need


def test_bars_lost_in_an_outage_are_told_and_history_fills_them_from_the_broker(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m"))
    lost: list[list[str]] = []
    md.on_bars_lost = lost.append
    cum = 0
    for m in range(0, 66):  # heard 09:00..10:05, two shares a minute (the exchange's bars)
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    # the gateway is down 10:06..10:40 (its restart): the first print after it carries what it missed
    cum += 2 * 35
    for m in range(100, 131):  # 10:40..11:10
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    md.flush_at(at(11, 11, 0))
    assert lost and C in lost[0]  # the partial 10:40 buckets were dropped: the agents are told
    stored = {b.start for b in md.store.bars(C, "5m")}
    assert "2024-03-04T10:10" not in stored and "2024-03-04T10:40" not in stored  # the hole

    md.wall = lambda: at(11, 11, 0)
    broker = MinuteCharts()
    got, filled = asyncio.run(md.history(broker, C, "5m", 12, "agent"))  # type: ignore[arg-type]
    want = [f"2024-03-04T{(9 * 60 + m) // 60:02d}:{(9 * 60 + m) % 60:02d}" for m in range(70, 130, 5)]
    assert [b.start for b in got] == want and broker.calls == 1 and filled > 0  # 12 bars, one per 5 minutes
    assert got[0].volume == 10 and got[0].close == 70_000 + 10 * 74  # the exchange's bar, not a hole's neighbour
    got2, _n = asyncio.run(md.history(broker, C, "5m", 12, "agent"))  # type: ignore[arg-type]
    assert got2 == got and broker.calls == 1  # filled once: not asked again for the same stretch
    # a longer window reaching further back past the stretch: asked again, once
    asyncio.run(md.history(broker, C, "5m", 20, "agent"))  # type: ignore[arg-type]
    asyncio.run(md.history(broker, C, "5m", 20, "agent"))  # type: ignore[arg-type]
    assert broker.calls == 2


def test_a_window_heard_whole_costs_no_broker_call(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m"))
    cum = 0
    for m in range(0, 80):  # heard from the open, nothing missed
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    md.flush_at(at(10, 21, 0))
    md.wall = lambda: at(10, 21, 0)
    broker = MinuteCharts()
    got, filled = asyncio.run(md.history(broker, C, "5m", 12, "agent"))  # type: ignore[arg-type]
    assert len(got) == 12 and broker.calls == 0 and filled == 0
