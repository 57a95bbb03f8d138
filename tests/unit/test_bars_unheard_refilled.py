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
    assert lost == [[C]]  # the partial 10:40 buckets (1m, 5m) were dropped: the agents are told, once
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


def test_one_stretch_is_told_once_after_the_flushs_whole_bars_went_out(tmp_path: Path) -> None:
    """A registration taken mid-day drops a bucket per interval as each closes: told once (each told made every
    agent holding the code warm up again), and after the same flush's whole bars were published."""
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m", "15m"))
    order: list[str] = []
    md._pub = lambda topic, body: order.append(f"bar {topic}")  # type: ignore[method-assign,assignment]
    md.on_bars_lost = lambda codes: order.append(f"lost {codes}")
    cum = 500  # first heard at 10:07:23 with 500 shares traded before: its open buckets are partial
    for m in range(0, 30):
        cum += 2
        w = at(10, 7, 23) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000, 2, cum, date="20240304"), w)
    md.flush_at(at(10, 40, 0))
    told = [x for x in order if x.startswith("lost")]
    assert told == [f"lost {[C]}"], order  # the 1m 10:07, 5m 10:05 and 15m 10:00 buckets: one stretch
    first_lost = order.index(told[0])
    assert any(x.startswith("bar") for x in order[:first_lost])  # the flush's whole 1m bars went out first


def test_a_quiet_outage_is_filled_too(tmp_path: Path) -> None:
    """A websocket outage in which the code did not trade moves no cumulative volume: its open buckets are
    dropped by the outage's mark alone, and history fills them from the broker as after missed prints."""
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m"))
    cum = 0
    for m in range(0, 66):  # 09:00..10:05
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    md.feed_gap(since=at(10, 5, 30), until=at(10, 9, 0))  # down 10:05:30..10:09: the 10:05 buckets are partial
    for m in range(70, 90):  # 10:10..10:29, nothing missed by the count
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    md.flush_at(at(10, 30, 5))
    assert "2024-03-04T10:05" not in {b.start for b in md.store.bars(C, "5m")}
    md.wall = lambda: at(10, 30, 5)
    broker = MinuteCharts()
    got, _n = asyncio.run(md.history(broker, C, "5m", 6, "agent"))  # type: ignore[arg-type]
    assert [b.start[11:] for b in got] == ["10:00", "10:05", "10:10", "10:15", "10:20", "10:25"] and broker.calls == 1


def test_a_code_this_gateway_never_heard_today_is_filled_not_served_yesterdays(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m"))
    yesterday = [
        Bar(code=C, interval="5m", start=f"2024-03-01T15:{m:02d}", open=1, high=1, low=1, close=1, volume=1)
        for m in range(0, 30, 5)
    ]
    md.store.add(yesterday)  # (Friday's last bars; nobody held the code this morning)
    md._born = at(8, 0, 0).replace(tzinfo=None)  # the gateway started this morning (its exchange time)
    md.wall = lambda: at(10, 7, 0)
    broker = MinuteCharts()
    got, _n = asyncio.run(md.history(broker, C, "5m", 6, "agent"))  # type: ignore[arg-type]
    assert [b.start[11:] for b in got] == ["09:35", "09:40", "09:45", "09:50", "09:55", "10:00"] and broker.calls == 1
    asyncio.run(md.history(broker, C, "5m", 6, "agent"))  # type: ignore[arg-type]
    assert broker.calls == 1
