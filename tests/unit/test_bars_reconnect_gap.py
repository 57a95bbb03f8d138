"""Bars across prints the gateway did not hear: a websocket gap (reconnect) or a registration released and
taken again. KIS's H0STCNT0 prints carry the day's cumulative volume (ACML_VOL): a print whose cumulative
volume before it is more than the last one heard follows missed prints, and every intraday bucket open
across the gap is partial: not published nor stored (bars.sqlite is what history() and backtests read),
exactly as the first bucket after a restart. The day's first print, consecutive prints and a new day's
opening are not gaps."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from tests.fakes.prints import trade

DAY = dt.date(2024, 3, 4)  # a Monday, normal hours
NEXT = dt.date(2024, 3, 5)
C = "005930"


def at(h: int, m: int, s: int, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(h, m, s), KST)


def feed(md: MarketData, prints: list[tuple[dt.datetime, int, int, int]], code: str = C) -> None:
    """(exchange time, price, qty, cumulative volume of the day) per print, dated by its business day."""
    for w, price, qty, cum in prints:
        md.on_trade(trade(code, w.strftime("%H%M%S"), price, qty, cum, date=w.strftime("%Y%m%d")), w)


def stored(md: MarketData, code: str = C) -> set[tuple[str, str]]:
    return {(b.interval, b.start) for iv in md.builder.intervals for b in md.store.bars(code, iv)}


def new_md(tmp_path: Path, name: str = "b.sqlite") -> MarketData:
    return MarketData(BarStore(tmp_path / name), SessionRule.KRX, ("1m", "5m"))


def test_bars_open_across_a_reconnect_gap_are_not_published(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    feed(md, [(at(9, 0, 0), 70_000, 10, 10), (at(9, 1, 10), 70_100, 5, 15), (at(9, 2, 19), 70_200, 5, 20)])
    # the socket drops at 09:02:20 and is back at 09:03:40: 37 shares traded meanwhile (a new high among them)
    feed(
        md,
        [
            (at(9, 3, 40), 70_300, 3, 60),  # cumulative 60 after 3 of its own: 57 before it, we heard 20
            (at(9, 4, 10), 70_300, 1, 61),
            (at(9, 5, 5), 70_400, 1, 62),  # closes the 09:04 1m bar and the 09:00 5m bar
        ],
    )
    got = stored(md)
    assert ("1m", "2024-03-04T09:03") not in got  # missed 09:03:00-09:03:39
    assert ("5m", "2024-03-04T09:00") not in got  # missed 09:02:20-09:03:39: volume, high, low not the exchange's
    # (no flush ran in the gap here: the 09:02 bucket, closed by the first print after it, missed 09:02:20-59)
    assert ("1m", "2024-03-04T09:02") not in got
    assert md.closed.get((C, "5m")) is None  # nor published (an agent's snapshot does not hand it over)
    # heard whole before the gap and after it: as before
    assert {("1m", "2024-03-04T09:00"), ("1m", "2024-03-04T09:01"), ("1m", "2024-03-04T09:04")} <= got
    c = md.counters()
    assert c["feed_gaps_seen"] == 1 and c["bars_partial_dropped"] == 3
    # the next 5m bucket began after the gap: whole, published
    md.flush_at(at(9, 10, 5))
    assert ("5m", "2024-03-04T09:05") in stored(md) and md.closed[(C, "5m")].start == "2024-03-04T09:05"


def test_consecutive_prints_and_the_days_first_print_lose_nothing(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    prints = [(at(9, 0, 0), 70_000, 10, 10)]  # the day's opening: all the day's volume is its own
    cum = 10
    for i in range(1, 12):  # a print a minute, each moving the cumulative volume by its own quantity
        cum += i
        prints.append((at(9, i, 7), 70_000 + i * 100, i, cum))
    feed(md, prints)
    md.flush_at(at(9, 15, 5))
    got = stored(md)
    assert {("1m", f"2024-03-04T09:{m:02d}") for m in range(12)} <= got
    assert {("5m", "2024-03-04T09:00"), ("5m", "2024-03-04T09:05"), ("5m", "2024-03-04T09:10")} <= got
    assert md.counters()["feed_gaps_seen"] == 0 and md.counters()["bars_partial_dropped"] == 0
    # a feed without a cumulative volume (0) tells nothing: never read as a gap
    md0 = new_md(tmp_path, "b0.sqlite")
    feed(md0, [(at(9, 0, 0), 70_000, 10, 0), (at(9, 1, 0), 70_100, 10, 0), (at(9, 2, 0), 70_200, 10, 0)])
    assert {("1m", "2024-03-04T09:00"), ("1m", "2024-03-04T09:01")} <= stored(md0)
    assert md0.counters()["bars_partial_dropped"] == 0


def test_the_days_opening_print_with_volume_before_it_keeps_the_opening_bars(tmp_path: Path) -> None:
    """The day's first print heard is the 09:00:00 opening print, and its cumulative volume is more than
    its own: trades we could not hear (ACML_VOL may count the 08:30-08:40 pre-market close-price session).
    Nothing of the 09:00 buckets was missed: heard from the print's own time (no + 1 s), the 09:00 1m and 5m
    bars are published and stored. A gap between two heard prints at a minute's first second still leaves
    that minute's bucket partial (missed prints may share its second)."""
    md = new_md(tmp_path)
    feed(
        md,
        [
            (at(9, 0, 0), 70_000, 10, 1_510),  # 1,500 shares before it (the pre-market session)
            (at(9, 1, 10), 70_100, 5, 1_515),
            (at(9, 2, 30), 70_200, 5, 1_520),
            (at(9, 5, 2), 70_300, 5, 1_525),  # closes the 09:02 1m bar and the 09:00 5m bar
        ],
    )
    got = stored(md)
    assert {("1m", "2024-03-04T09:00"), ("1m", "2024-03-04T09:01"), ("5m", "2024-03-04T09:00")} <= got, got
    assert md.closed[(C, "5m")].start == "2024-03-04T09:00" and md.closed[(C, "5m")].volume == 20
    assert md.counters()["bars_partial_dropped"] == 0 and md.counters()["feed_gaps_seen"] == 0
    # a websocket gap: the next print heard, at 09:07:00, follows 30 shares not heard
    feed(md, [(at(9, 7, 0), 70_400, 5, 1_560), (at(9, 8, 1), 70_400, 5, 1_565), (at(9, 10, 3), 70_500, 5, 1_570)])
    got = stored(md)
    assert ("1m", "2024-03-04T09:07") not in got and ("5m", "2024-03-04T09:05") not in got
    assert ("1m", "2024-03-04T09:08") in got and md.counters()["feed_gaps_seen"] == 1


def test_the_day_roll_starts_the_cumulative_volume_again(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    feed(md, [(at(9, 0, 0), 70_000, 1_000, 1_000), (at(15, 20, 0), 70_000, 5, 900_000)])  # (a gap mid-day)
    for roll in (True, False):  # the day cycle's new_day, or only the print's business day (before it ran)
        day = NEXT if roll else dt.date(2024, 3, 6)
        if roll:
            md.new_day(day.isoformat())
        # the next day's opening carries only its own volume, far below yesterday's: not a gap, whole
        feed(
            md, [(at(9, 0, 0, day), 71_000, 7, 7), (at(9, 1, 3, day), 71_100, 2, 9), (at(9, 2, 0, day), 71_000, 1, 10)]
        )
        got = stored(md)
        assert ("1m", f"{day.isoformat()}T09:00") in got and ("1m", f"{day.isoformat()}T09:01") in got, roll
    assert md.counters()["feed_gaps_seen"] == 1  # yesterday's only


def test_a_days_first_print_heard_after_its_opening_is_partial_on_a_running_gateway(tmp_path: Path) -> None:
    """A gateway running over night, the socket down at the next open: its first print of the day carries
    the volume traded before it, as after a restart."""
    md = new_md(tmp_path)
    feed(md, [(at(9, 0, 0), 70_000, 10, 10), (at(9, 1, 0), 70_000, 10, 20)])
    md.new_day(NEXT.isoformat())
    feed(md, [(at(9, 3, 30, NEXT), 71_000, 5, 5_000), (at(9, 4, 1, NEXT), 71_100, 5, 5_005)])
    feed(md, [(at(9, 5, 2, NEXT), 71_100, 5, 5_010)])
    got = stored(md)
    assert ("1m", "2024-03-05T09:03") not in got and ("5m", "2024-03-05T09:00") not in got
    assert ("1m", "2024-03-05T09:04") in got


def test_a_released_registration_forgets_what_it_heard(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    md.wall = lambda: at(10, 2, 30)
    feed(md, [(at(10, 0, 0), 70_000, 10, 100_000), (at(10, 1, 5), 70_100, 10, 100_010)])
    feed(md, [(at(10, 2, 10), 70_200, 10, 100_020)])
    # its last holder left: the registration is released at 10:02:30 (prints after it are not heard)
    md.released(C)
    md.flush_at(at(10, 3, 5))  # the 10:02 bucket closes by time, missing whatever traded after 10:02:30
    got = stored(md)
    assert ("1m", "2024-03-04T10:01") in got and ("1m", "2024-03-04T10:02") not in got
    # registered again at 10:06: its first print carries what traded meanwhile; the 10:05 5m bucket
    # (open since 10:06:20 only, for us) is partial, the 10:07 1m bucket whole
    feed(
        md,
        [
            (at(10, 6, 20), 70_500, 5, 100_500),
            (at(10, 7, 0), 70_600, 5, 100_505),
            (at(10, 8, 1), 70_600, 5, 100_510),
            (at(10, 10, 2), 70_700, 5, 100_515),
        ],
    )
    got = stored(md)
    assert ("1m", "2024-03-04T10:06") not in got and ("5m", "2024-03-04T10:05") not in got
    assert ("1m", "2024-03-04T10:07") in got
    # released again at 10:20 and registered again: its first print is judged as a first print (what it
    # heard before the release is forgotten), the buckets after it are whole
    md.wall = lambda: at(10, 20, 0)
    md.released(C)
    feed(md, [(at(10, 21, 0), 70_700, 5, 100_520), (at(10, 22, 1), 70_700, 5, 100_525)])
    feed(md, [(at(10, 23, 0), 70_800, 5, 100_530)])
    got = stored(md)
    assert ("1m", "2024-03-04T10:21") not in got and ("1m", "2024-03-04T10:22") in got


def test_a_first_print_mid_day_after_missed_volume_starts_the_next_second(tmp_path: Path) -> None:
    """A gateway restarted mid-day hears its first print at 10:15:00 with 500,000 shares traded before it today,
    some maybe in that same second: the 10:15 bars are partial (only the open's first print starts whole ones)."""
    md = new_md(tmp_path)
    feed(
        md,
        [
            (at(10, 15, 0), 70_000, 10, 500_010),
            (at(10, 16, 5), 70_100, 5, 500_015),
            (at(10, 20, 3), 70_200, 5, 500_020),
        ],
    )
    got = stored(md)
    assert ("1m", f"{DAY}T10:15") not in got and ("5m", f"{DAY}T10:15") not in got
    assert ("1m", f"{DAY}T10:16") in got
