"""Candles from prints, checked against bars computed by hand; the bar store round trip."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from common.clock import KST
from common.schema import Bar
from server.bars import BarBuilder, BarError, SessionRule, aggregate
from kis.port import Capability, Trade
from server.barstore import BarStore
from server.marketdata import MarketData
from tests.fakes.prints import trade

DAY = dt.date(2024, 3, 4)  # a Monday, normal hours
C = "005930"


def at(hhmmss: str, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])), KST)


def feed(b: BarBuilder, prints: list[tuple[str, int, int]], day: dt.date = DAY) -> list[Bar]:
    out: list[Bar] = []
    for t, p, q in prints:
        out += b.on_trade(C, day, t, p, q)
    return out


def bar(iv: str, start: str, o: int, h: int, lo: int, c: int, v: int, val: int) -> Bar:
    return Bar(code=C, interval=iv, start=start, open=o, high=h, low=lo, close=c, volume=v, value=val)


def test_opening_auction_minutes_and_empty_minutes() -> None:
    b = BarBuilder(("1m", "5m"))
    closed = feed(
        b,
        [
            ("085959", 70000, 5),  # opening-call period: no print belongs to a bar before 09:00
            ("090000", 70100, 100),  # the opening auction's single price
            ("090030", 70300, 10),
            ("090059", 70000, 20),
            ("090100", 70200, 1),  # closes the 09:00 1m bar
            # 09:02 and 09:03 have no prints: no bars for them
            ("090400", 69900, 3),
            ("090500", 70500, 2),  # closes 09:04 1m and the 09:00 5m bar
        ],
    )
    assert closed == [
        bar("1m", "2024-03-04T09:00", 70100, 70300, 70000, 70000, 130, 70100 * 100 + 70300 * 10 + 70000 * 20),
        bar("1m", "2024-03-04T09:01", 70200, 70200, 70200, 70200, 1, 70200),
        # bars closed by one print come oldest (start) first
        bar(
            "5m",
            "2024-03-04T09:00",
            70100,
            70300,
            69900,
            69900,
            134,
            70100 * 100 + 70300 * 10 + 70000 * 20 + 70200 + 69900 * 3,
        ),
        bar("1m", "2024-03-04T09:04", 69900, 69900, 69900, 69900, 3, 69900 * 3),
    ]
    assert b.excluded == 1
    assert b.current(C) == [
        bar("1m", "2024-03-04T09:05", 70500, 70500, 70500, 70500, 2, 141000),
        bar("5m", "2024-03-04T09:05", 70500, 70500, 70500, 70500, 2, 141000),
    ]


def test_interval_boundaries_close_and_after_hours() -> None:
    b = BarBuilder(("1m", "15m", "60m", "1d"))
    closed = feed(
        b,
        [
            ("091459", 100, 1),
            ("091500", 110, 2),  # a new 15m bar; same 60m bar
            ("095959", 90, 3),
            ("100000", 95, 4),  # a new 60m bar
            ("151959", 120, 5),  # the last continuous print
            ("153000", 125, 50),  # the closing auction print: its own 15:30 bar
            ("154500", 130, 7),  # post-market close-price trading: excluded
            ("163000", 131, 8),  # after-hours single price: excluded
        ],
    )
    got = {(x.interval, x.start): x for x in closed}
    assert got[("15m", "2024-03-04T09:00")] == bar("15m", "2024-03-04T09:00", 100, 100, 100, 100, 1, 100)
    assert got[("60m", "2024-03-04T09:00")] == bar("60m", "2024-03-04T09:00", 100, 110, 90, 90, 6, 100 + 220 + 270)
    assert got[("1m", "2024-03-04T15:19")].close == 120
    assert got[("15m", "2024-03-04T15:15")].volume == 5  # nothing from the closing call's collection period
    assert ("1d", "2024-03-04") not in got
    assert b.excluded == 2
    cur = {x.interval: x for x in b.current(C)}
    assert cur["1m"] == bar("1m", "2024-03-04T15:30", 125, 125, 125, 125, 50, 6250)
    assert cur["15m"].start == "2024-03-04T15:30" and cur["60m"].start == "2024-03-04T15:00"
    assert cur["60m"] == bar("60m", "2024-03-04T15:00", 120, 125, 120, 125, 55, 600 + 6250)
    # all bars of the day, the daily one included, close by time once the 15:30 minute is over
    assert b.flush(at("153059")) == []
    day_end = b.flush(at("153102"))
    assert {(x.interval, x.start) for x in day_end} == {
        ("1m", "2024-03-04T15:30"),
        ("15m", "2024-03-04T15:30"),
        ("60m", "2024-03-04T15:00"),
        ("1d", "2024-03-04"),
    }
    daily = next(x for x in day_end if x.interval == "1d")
    assert daily == bar(
        "1d", "2024-03-04", 100, 125, 90, 125, 1 + 2 + 3 + 4 + 5 + 50, 100 + 220 + 270 + 380 + 600 + 6250
    )
    assert b.current(C) == []


def test_flush_closes_by_time_with_grace_and_late_prints_are_kept() -> None:
    b = BarBuilder(("1m",), grace_s=2.0)
    feed(b, [("100010", 500, 1)])
    assert b.flush(at("100101")) == []  # within the grace period
    assert b.flush(at("100102")) == [bar("1m", "2024-03-04T10:00", 500, 500, 500, 500, 1, 500)]
    # a print stamped 10:00:59 arriving after its bar closed goes into the next bar, counted
    assert feed(b, [("100059", 510, 2)]) == []
    assert b.late == 1
    assert b.current(C) == [bar("1m", "2024-03-04T10:01", 510, 510, 510, 510, 2, 1020)]


def test_daily_bar_rolls_over_days_and_late_open_days() -> None:
    b = BarBuilder(("1d",))
    feed(b, [("090000", 10, 1), ("153000", 12, 1)])
    nxt = feed(b, [("090000", 13, 1)], day=DAY + dt.timedelta(days=1))
    assert nxt == [bar("1d", "2024-03-04", 10, 12, 10, 12, 2, 22)]
    # first trading day of 2024 opened at 10:00 and closed 15:30: 09:30 prints are not regular
    jan2 = dt.date(2024, 1, 2)
    b2 = BarBuilder(("1m",))
    assert feed(b2, [("093000", 10, 1), ("100000", 11, 1)], day=jan2) == []
    assert b2.excluded == 1 and b2.current(C)[0].start == "2024-01-02T10:00"


def test_all_day_rule_and_bad_input() -> None:
    b = BarBuilder(("1m",), SessionRule.ALL_DAY)
    feed(b, [("220000", 10, 1)])
    assert b.current(C)[0].start == "2024-03-04T22:00"
    with pytest.raises(BarError):
        b.on_trade(C, DAY, "25:00:00", 10, 1)
    with pytest.raises(BarError):
        b.on_trade(C, DAY, "220001", 0, 1)
    with pytest.raises(BarError):
        BarBuilder(("2m",))


def test_aggregate_minutes() -> None:
    ones = [bar("1m", f"2024-03-04T09:0{i}", 10 + i, 20 + i, 5, 11 + i, 1, 10) for i in range(7)]
    five = aggregate(ones, "5m")
    assert five == [
        bar("5m", "2024-03-04T09:00", 10, 24, 5, 15, 5, 50),
        bar("5m", "2024-03-04T09:05", 15, 26, 5, 17, 2, 20),
    ]


def test_bar_store_round_trip(tmp_path: Path) -> None:
    s = BarStore(tmp_path / "data" / "bars.sqlite")
    days = [bar("1d", f"2024-03-{d:02d}", 100 + d, 110 + d, 90 + d, 105 + d, 1000 * d, 10**9 * d) for d in range(1, 8)]
    assert s.add(days) == 7
    s.add([bar("1m", "2024-03-04T09:00", 1, 1, 1, 1, 1, 1)])
    assert s.bars(C, "1d") == days
    assert s.bars(C, "1d", start="2024-03-03", end="2024-03-05") == days[2:5]
    assert s.bars(C, "1d", limit=2) == days[-2:]
    assert s.last(C, "1d", 3, before="2024-03-07") == days[3:6]
    # the same bar written again replaces the earlier one
    fixed = bar("1d", "2024-03-07", 1, 2, 1, 2, 5, 10)
    s.add([fixed])
    s.close()
    again = BarStore(tmp_path / "data" / "bars.sqlite")
    assert again.bars(C, "1d")[-1] == fixed and len(again.bars(C, "1d")) == 7
    assert again.bars("000660", "1d") == []
    again.close()


class _Charts:
    """A broker with a daily chart: the exchange's bars by (code, day); `down` makes it fail."""

    capabilities = frozenset({Capability.CHARTS})

    def __init__(self, bars: list[Bar]) -> None:
        self.bars = bars
        self.down = False
        self.silent = False
        self.calls: list[str] = []

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
        self.calls.append(code)
        if self.down:
            raise ConnectionError("chart API down")
        if self.silent:
            await asyncio.Event().wait()  # connected, never answers
        return [b for b in self.bars if b.code == code and b.start < before.isoformat()][-n:]


def test_the_days_bar_is_the_exchanges_when_ours_missed_prints(tmp_path: Path) -> None:
    """A gateway restarted mid-day builds its day bar from the prints after the restart only (no open,
    a short volume): the day's bars go out as the broker's daily chart has them, as a backtest's data
    has them; a code we heard nothing of but an agent subscribes to gets its bar too; without an
    answer the built bar goes out, counted; a retried close sends nothing twice."""
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1d",))
    exchange = [
        bar("1d", DAY.isoformat(), 70_000, 72_000, 69_500, 71_000, 900_000, 63_900_000_000),
        Bar(code="000660", interval="1d", start=DAY.isoformat(), open=1, high=2, low=1, close=2, volume=5, value=9),
    ]
    broker = _Charts(exchange)
    # after a restart at 13:00: the morning (the open at 70,000, the low) was never heard
    for t, p, q in [("130000", 70_800, 1_000), ("153000", 71_000, 20_000)]:
        md.on_trade(_trade(t, p, q, 21_000), at(t))
    out = asyncio.run(md.close_daily(DAY, broker, {"000660"}))  # type: ignore[arg-type]
    assert out == [exchange[1], exchange[0]]  # by code, as the backtester delivers them
    assert md.counters()["daily_bars_corrected"] == 1 and md.store.last(C, "1d", 5, "9999") == [exchange[0]]
    assert asyncio.run(md.close_daily(DAY, broker, {"000660"})) == [] and len(broker.calls) == 2  # type: ignore[arg-type]

    # a gateway restarted during its day close runs the close again: what went out does not go out twice
    restarted = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1d",))
    restarted.on_trade(_trade("153000", 71_000, 5, 21_005), at("153000"))
    assert asyncio.run(restarted.close_daily(DAY, broker, {"000660"})) == []  # type: ignore[arg-type]

    md2 = MarketData(BarStore(tmp_path / "bars2.sqlite"), SessionRule.KRX, ("1d",))
    broker.down = True
    md2.on_trade(_trade("090000", 70_000, 10, 10), at("090000"))
    (ours,) = asyncio.run(md2.close_daily(DAY, broker))  # type: ignore[arg-type]
    assert (ours.open, ours.volume) == (70_000, 10) and md2.counters()["daily_bars_unconfirmed"] == 1


def test_a_silent_chart_does_not_hold_the_day_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.marketdata as marketdata

    monkeypatch.setattr(marketdata, "CHART_TIMEOUT_S", 0.05)
    broker = _Charts([])
    broker.silent = True
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1d",))
    md.on_trade(_trade("090000", 70_000, 10, 10), at("090000"))
    codes = {f"{n:06d}" for n in range(1, 9)}  # eight more codes, none of which answers
    (ours,) = asyncio.run(md.close_daily(DAY, broker, codes))  # type: ignore[arg-type]
    assert ours.volume == 10 and len(broker.calls) == 9 and md.counters()["daily_bars_unconfirmed"] == 1


def _trade(t: str, price: int, qty: int, cum: int) -> Trade:
    return trade(C, t, price, qty, cum, date=DAY.strftime("%Y%m%d"))


def test_a_new_day_hands_no_one_yesterdays_print_as_live(tmp_path: Path) -> None:
    """An agent that subscribes the next morning, before the first print, gets no snapshot of
    yesterday's last print or book (a TradeTick has no date: it would read as today's); the closed
    bars stay (they are history) and the topics' numbering goes on (gap detection)."""
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1d",))
    md.on_trade(_trade("153000", 71_000, 5, 21_005), at("153000"))
    (before,) = md.snapshot([C])
    assert before.trade is not None and before.trade.price == 71_000
    seqs = dict(before.seqs)
    md.new_day("20261121")
    (after,) = md.snapshot([C])
    assert after.trade is None and after.book is None and after.seqs == seqs
