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
    lost: list[list[tuple[str, str]]] = []
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
    # the buckets open across the outage (10:05 1m and 5m, closed by the 10:40 print: one flush) and those the
    # 10:40 print began inside (1m at 10:41, 5m at 10:45) were dropped: each told as it dropped
    assert lost == [[(C, "1m"), (C, "5m")], [(C, "1m")], [(C, "5m")]]
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


def test_each_dropped_bucket_is_told_after_its_flushs_whole_bars_went_out(tmp_path: Path) -> None:
    """A registration taken mid-day drops a bucket per interval as each closes (1m first, 5m, 15m later): each is
    a hole in its own windows, told as it drops (told once for the stretch, a 5m window rebuilt on the 1m's news
    ended before the 5m bucket still open, and that bucket never came), and after the same flush's whole bars
    (told first, a rebuilt window held the flush's bar, then handed over again)."""
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
    told = [i for i, x in enumerate(order) if x.startswith("lost")]
    assert len(told) == 3, order  # the 1m 10:07, 5m 10:05 and 15m 10:00 buckets, each as it closed
    assert order[told[0] - 1].startswith("bar")  # the flush's whole bars (other codes, intervals) went out first


def test_a_5m_window_rebuilt_on_the_1m_news_gets_the_5m_bucket_once_it_closed(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m"))
    broker = MinuteCharts()
    cum = 0
    for m in range(0, 64):  # heard 09:00..10:03
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    cum += 2 * 3  # 10:04..10:06 not heard (a restart)
    w = at(10, 7, 1)
    md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * 67, 2, cum + 2, date="20240304"), w)
    cum += 2
    w = at(10, 8, 1)  # closes the 1m 10:07 (partial): the 1m news; the 5m 10:05 bucket is still open
    md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * 68, 2, cum + 2, date="20240304"), w)
    cum += 2
    md.wall = lambda: at(10, 8, 2)
    early, _n = asyncio.run(md.history(broker, C, "5m", 6, "agent"))  # type: ignore[arg-type]
    assert early[-1].start.endswith("10:00") and broker.calls == 1  # (the 10:05 bucket is in progress)
    md.wall = lambda: at(10, 8, 40)
    asyncio.run(md.history(broker, C, "5m", 6, "agent"))  # type: ignore[arg-type]
    assert broker.calls == 1  # not asked again while the straddling bucket is open (in no window yet)
    for m in range(69, 72):  # 10:09..10:11: the 5m 10:05 bucket closes, partial, dropped
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    assert "2024-03-04T10:05" not in {b.start for b in md.store.bars(C, "5m")}
    md.wall = lambda: at(10, 11, 2)
    later, _n = asyncio.run(md.history(broker, C, "5m", 6, "agent"))  # type: ignore[arg-type]
    assert later[-1].start.endswith("10:05") and later[-1].volume == 10  # filled, not a silent hole


def test_a_quiet_outage_is_filled_too(tmp_path: Path) -> None:
    """A websocket outage in which the code did not trade moves no cumulative volume: its open buckets are
    dropped by the outage's mark alone, and history fills them from the broker as after missed prints."""
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m"))
    cum = 0
    for m in range(0, 66):  # 09:00..10:05
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    md.feed_gap(since=at(10, 5, 30), until=at(10, 9, 30))  # down 10:05:30..10:09:30: the 10:05 buckets partial
    w = at(10, 9, 40)  # the first print after: its count shows nothing missed
    cum += 2
    md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * 69, 2, cum, date="20240304"), w)
    for m in range(70, 90):  # 10:10..10:29
        cum += 2
        w = at(9, 0, 1) + dt.timedelta(minutes=m)
        md.on_trade(trade(C, w.strftime("%H%M%S"), 70_000 + 10 * m, 2, cum, date="20240304"), w)
    md.flush_at(at(10, 30, 5))
    assert "2024-03-04T10:05" not in {b.start for b in md.store.bars(C, "5m")}
    assert "2024-03-04T10:09" in {b.start for b in md.store.bars(C, "1m")}  # heard whole: not dropped
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
