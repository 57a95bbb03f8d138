"""A step of the machine's clock (NTP) is not the exchange's time passing: the live bar clock keeps closing
bars by the exchange's time until the next print measures the skew again. Without that, a step 60 s ahead
closed the open minute up to a minute early, and that minute's later prints were dropped as late."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.enums import SessionState
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from tests.fakes.prints import trade

DAY = dt.date(2024, 3, 4)  # a Monday, normal hours
C = "005930"
D = DAY.strftime("%Y%m%d")


def at(h: int, m: int, s: int) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(h, m, s), KST)


def _md(tmp_path: Path, wall_steps: bool) -> tuple[MarketData, list[dt.datetime], list[float]]:
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m",))
    wall, mono = [at(10, 0, 10)], [1_000.0]
    md.wall, md.elapsed, md.wall_steps = (lambda: wall[0]), (lambda: mono[0]), wall_steps
    return md, wall, mono


def _run_minute(md: MarketData, wall: list[dt.datetime], mono: list[float]) -> list[int]:
    """A print at 10:00:10, the clock stepping 60 s ahead at 10:00:20, a print at 10:00:40; the volumes of the
    10:00 bars closed by the end."""
    closed = []
    md.on_trade(trade(C, "100010", 70_000, 5, 5, date=D))
    wall[0], mono[0] = at(10, 0, 20), mono[0] + 10
    closed += md.flush(stream=SessionState.READY, frame_age_s=0.1)
    wall[0], mono[0] = at(10, 1, 21), mono[0] + 1  # NTP: 60 s ahead within a second
    closed += md.flush(stream=SessionState.READY, frame_age_s=0.1)
    wall[0], mono[0] = at(10, 1, 41), mono[0] + 20  # the exchange's 10:00:40
    md.on_trade(trade(C, "100040", 70_100, 7, 12, date=D))
    wall[0], mono[0] = at(10, 2, 5), mono[0] + 24  # the exchange's 10:01:04: the minute is over
    closed += md.flush(stream=SessionState.READY, frame_age_s=0.1)
    return [b.volume for b in closed if b.start.endswith("10:00")]


def test_a_step_of_the_machine_clock_does_not_close_the_minute_early(tmp_path: Path) -> None:
    md, wall, mono = _md(tmp_path, wall_steps=True)
    assert _run_minute(md, wall, mono) == [12]  # closed once, at its end, with both prints


def test_a_market_clock_moving_on_closes_the_minute(tmp_path: Path) -> None:
    """A twin's or a replay's clock (not the machine's) moving on is the exchange's time: the first flush after
    the move closes the minute (before the fix a step of the machine's clock did the same)."""
    md, wall, mono = _md(tmp_path, wall_steps=False)
    assert _run_minute(md, wall, mono) == [5]


def test_a_step_during_a_websocket_outage_still_drops_the_bar_the_outage_cut(tmp_path: Path) -> None:
    """A 60 s slow clock stepped ahead by NTP while the websocket was down: the reconnect's gap (its times on the
    clock before the step) still marks A's open minute partial, so it never goes out as final without the
    prints of the outage (a first version took the step out of the skew, and the gap missed the minute)."""
    md, wall, mono = _md(tmp_path, wall_steps=True)
    wall[0] = at(10, 4, 10)  # the machine is 60 s slow: the exchange's 10:05:10
    md.on_trade(trade("A", "100510", 70_000, 5, 5, date=D))
    md.on_trade(trade("B", "100510", 50_000, 5, 5, date=D))
    wall[0], mono[0] = at(10, 4, 30), mono[0] + 20  # the exchange's 10:05:30: the last frame, then the socket drops
    md.flush(stream=SessionState.READY, frame_age_s=0.1)
    since = wall[0]
    wall[0], mono[0] = at(10, 5, 41), mono[0] + 11  # NTP stepped the clock 60 s ahead at the exchange's 10:05:40
    md.flush(stream=SessionState.DISCONNECTED, frame_age_s=11)
    wall[0], mono[0] = at(10, 5, 45), mono[0] + 4
    md.feed_gap(since=since, until=wall[0])
    wall[0], mono[0] = at(10, 5, 50), mono[0] + 5
    md.on_trade(trade("B", "100550", 50_100, 3, 90, date=D))
    for s in range(51, 60):
        wall[0], mono[0] = at(10, 5, s), mono[0] + 1
        md.flush(stream=SessionState.READY, frame_age_s=0.1)
    wall[0], mono[0] = at(10, 6, 5), mono[0] + 6
    md.flush(stream=SessionState.READY, frame_age_s=0.1)
    # A's minute, cut by the outage, dropped as partial: never published (nor stored) as final
    assert ("A", "1m") not in md.closed and md.bars_partial >= 1
