"""The day's first print and the opening bars when the opening uncross lands after 09:00:00.

KIS's ACML_VOL counts the 08:30-08:40 pre-market close-price session, so the day's first print always carries
more volume than its own, as if prints had been missed. KRX's random end (임의종료) of the opening call (or a
VI-extended call) can push a stock's uncross past 09:00. When the code's print registration was live, with no
websocket gap, since before the open, nothing was missed: the 09:00 bars of every interval are whole and
published wherever the uncross lands. A registration made after the open, a stream outage across it, or a
gateway that was never told when the registration took effect still leave the first bars partial."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from tests.fakes.prints import trade

DAY = dt.date(2024, 3, 4)  # a Monday, normal hours
C = "005930"
PRE = 1_200  # shares traded in the 08:30-08:40 pre-market session (in ACML_VOL, in no bar)
OPENING = [f"{DAY}T09:00"]


def at(h: int, m: int, s: int) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(h, m, s), KST)


def new_md(tmp_path: Path) -> MarketData:
    return MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "5m", "15m", "60m"))


def feed(md: MarketData, prints: list[tuple[dt.datetime, int, int, int]]) -> None:
    """(exchange time, price, qty, cumulative volume of the day) per print."""
    for w, price, qty, cum in prints:
        md.on_trade(trade(C, w.strftime("%H%M%S"), price, qty, cum, date=w.strftime("%Y%m%d")), w)


# the opening uncross at 09:00:17 (the call's random end), then a few prints; 09:05 opens the next 5m bucket
DAY_PRINTS = [
    (at(9, 0, 17), 71_000, 50_000, PRE + 50_000),
    (at(9, 0, 40), 71_100, 10, PRE + 50_010),
    (at(9, 1, 2), 71_200, 10, PRE + 50_020),
    (at(9, 5, 10), 71_300, 10, PRE + 50_030),
]


def stored(md: MarketData) -> dict[str, list[str]]:
    return {iv: [b.start for b in md.store.bars(C, iv)] for iv in ("1m", "5m", "15m", "60m")}


def test_a_registration_live_before_the_open_keeps_the_opening_bars_of_a_late_uncross(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    md.listening(C, at(8, 50, 0))  # registered during the opening call, after the pre-market session
    feed(md, DAY_PRINTS)
    md.flush_at(at(10, 0, 5))  # closes every bucket through the 09:00 60m one
    got = stored(md)
    for iv in ("1m", "5m", "15m", "60m"):
        assert got[iv][:1] == OPENING, (iv, got)
    assert got["1m"] == [f"{DAY}T09:00", f"{DAY}T09:01", f"{DAY}T09:05"]
    # whole: the opening print opens them, every share heard is in them (not the pre-market session's)
    bars = {iv: md.store.bars(C, iv)[0] for iv in ("1m", "5m", "15m", "60m")}
    assert (bars["1m"].open, bars["1m"].high, bars["1m"].volume) == (71_000, 71_100, 50_010)
    assert (bars["5m"].open, bars["5m"].close, bars["5m"].volume) == (71_000, 71_200, 50_020)
    assert (bars["60m"].open, bars["60m"].high, bars["60m"].volume) == (71_000, 71_300, 50_030)
    # published too (an agent's snapshot hands them over), none dropped, no feed gap counted
    assert md.closed[(C, "60m")].start == f"{DAY}T09:00" and md.closed[(C, "15m")].start == f"{DAY}T09:00"
    c = md.counters()
    assert c["bars_partial_dropped"] == 0 and c["feed_gaps_seen"] == 0


def test_a_registration_made_after_the_open_leaves_the_opening_bars_partial(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    md.listening(C, at(9, 0, 30))  # registered at 09:00:30: the 09:00:17 uncross was not heard
    feed(md, DAY_PRINTS[1:])
    md.flush_at(at(10, 0, 5))
    got = stored(md)
    for iv in ("1m", "5m", "15m", "60m"):
        assert f"{DAY}T09:00" not in got[iv], (iv, got)
    assert got["1m"] == [f"{DAY}T09:01", f"{DAY}T09:05"] and got["5m"] == [f"{DAY}T09:05"]
    assert md.counters()["bars_partial_dropped"] == 4


def test_a_stream_outage_across_the_open_leaves_the_opening_bars_partial(tmp_path: Path) -> None:
    md = new_md(tmp_path)
    md.listening(C, at(8, 50, 0))
    md.feed_gap(at(9, 0, 42))  # the websocket was down over the open, back (registrations again) at 09:00:42
    feed(md, [(at(9, 0, 45), 71_100, 10, PRE + 50_020), *DAY_PRINTS[2:]])
    md.flush_at(at(10, 0, 5))
    got = stored(md)
    for iv in ("1m", "5m", "15m", "60m"):
        assert f"{DAY}T09:00" not in got[iv], (iv, got)
    assert got["1m"] == [f"{DAY}T09:01", f"{DAY}T09:05"]
    assert md.counters()["bars_partial_dropped"] == 4


def test_a_registration_released_before_the_open_or_never_told_is_not_trusted(tmp_path: Path) -> None:
    # live at 08:50, released at 08:55 (its last holder left) and taken again after the open (not told here)
    md = new_md(tmp_path)
    md.listening(C, at(8, 50, 0))
    md.wall = lambda: at(8, 55, 0)
    md.released(C)
    feed(md, DAY_PRINTS)
    md.flush_at(at(10, 0, 5))
    assert all(f"{DAY}T09:00" not in v for v in stored(md).values()), stored(md)
    # a gateway that tells no registration: a first print after 09:00:00 carrying earlier volume is partial, as
    # before (only one stamped at or before the open is excused)
    md2 = MarketData(BarStore(tmp_path / "b2.sqlite"), SessionRule.KRX, ("1m", "5m", "15m", "60m"))
    feed(md2, DAY_PRINTS)
    md2.flush_at(at(10, 0, 5))
    assert all(f"{DAY}T09:00" not in v for v in stored(md2).values())
    assert md2.counters()["bars_partial_dropped"] == 4
