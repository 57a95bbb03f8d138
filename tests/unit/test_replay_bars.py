"""Replay makes the same bars as the live session that recorded it.

Live: a Recorder (on a virtual receive clock) records H0STCNT0 frames as they arrive, the same
frames go through the KIS parser into MarketData, and a 1 s timer closes bars by time, which
records CLOCK marks. The script has an empty minute, a minute that only time closes, and a print
that arrives after its minute was closed by time (late: kept out of the bar). Replay: the recording
through ReplayBroker (as fast as possible, on another day than the recording) into a second
MarketData. Same bars, in the same order, dated the recorded day; the same bars still open; the
same late print. Without the CLOCK marks the replay would close the last minute never and take
the late print into its bar."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from common.clock import KST, kst_from_ns
from common.schema import Bar
from kis.port import MarketClock, Trade
from kis.realtime import FrameParser
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from server.recorder import FrameKind, Recorder, iter_frames
from server.replay import ReplayBroker

DAY = dt.date(2025, 11, 20)  # a Thursday, normal hours; not today, so dating by the wall clock would show
C = "005930"


def ns(hhmmss: str) -> int:
    t = dt.datetime.combine(DAY, dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])), KST)
    return int(t.timestamp()) * 10**9


def frame(hhmmss: str, price: int, qty: int, cum: int) -> bytes:
    fields = ["0"] * 46
    fields[0], fields[1], fields[2], fields[12], fields[13] = C, hhmmss, str(price), str(qty), str(cum)
    return ("0|H0STCNT0|001|" + "^".join(fields)).encode()


# (receive time, print time, price, qty): 09:03 has no prints; 09:07 is closed only by time; the
# 09:05:59 print arrives at 09:06:03, after the 09:06:02 tick closed 09:05 (grace 2 s)
SCRIPT = [
    ("090000", "090000", 70_000, 10),
    ("090015", "090015", 70_100, 5),
    ("090059", "090059", 69_900, 7),
    ("090100", "090100", 70_000, 1),
    ("090230", "090230", 70_200, 3),
    ("090405", "090405", 70_300, 2),
    ("090550", "090550", 70_400, 4),
    ("090603", "090559", 70_900, 9),  # late
    ("090610", "090610", 70_500, 6),
    ("090705", "090705", 70_600, 8),
]


def capture(md: MarketData) -> list[Bar]:
    out: list[Bar] = []
    add = md.store.add

    def add_and_keep(bars: list[Bar]) -> None:
        out.extend(bars)
        add(bars)

    md.store.add = add_and_keep  # type: ignore[method-assign]
    return out


def live(run: Path) -> tuple[MarketData, list[Bar]]:
    clock = [ns("085959")]
    rec = Recorder(run / "data", clock=lambda: clock[0])
    md = MarketData(BarStore(run / "bars.sqlite"), SessionRule.KRX)
    md.wall = lambda: kst_from_ns(clock[0])
    md.on_clock = rec.record_clock
    emitted = capture(md)
    parser, cum, pending = FrameParser(), 0, list(SCRIPT)
    for second in range(ns("090000") // 10**9, ns("090900") // 10**9):
        clock[0] = second * 10**9
        while pending and ns(pending[0][0]) == clock[0]:
            _, t, price, qty = pending.pop(0)
            cum += qty
            data = frame(t, price, qty, cum)
            rec.record_ws(data)
            for ev in parser.parse(data.decode()):
                assert isinstance(ev, Trade)
                md.on_trade(ev)
        md.flush()  # the gateway's 1 s bar clock
    rec.close()
    return md, emitted


async def replay(source: Path, run: Path) -> tuple[MarketData, list[Bar]]:
    broker = ReplayBroker(source, DAY, speed=0, wait_s=0)
    md = MarketData(BarStore(run / "bars.sqlite"), SessionRule.KRX)
    md.wall = broker.wall
    emitted = capture(md)
    await broker.start()
    events = broker.events()
    while not (broker.finished.is_set() and broker._events.empty()):
        try:
            ev = await asyncio.wait_for(anext(events), 5)
        except TimeoutError:
            break
        if isinstance(ev, Trade):
            md.on_trade(ev)
        elif isinstance(ev, MarketClock):
            md.flush_at(ev.exchange)
    await broker.close()
    return md, emitted


def test_replay_makes_the_recorded_sessions_bars(tmp_path: Path) -> None:
    md1, live_bars = live(tmp_path / "live")
    marks = [f for f in iter_frames(tmp_path / "live", DAY) if f.kind is FrameKind.CLOCK]
    assert marks, "bars closed by time leave marks in the recording"
    assert md1.builder.late == 1  # the 09:05:59 print came after its minute was closed
    ones = [b for b in live_bars if b.interval == "1m"]
    assert [b.start[-5:] for b in ones] == ["09:00", "09:01", "09:02", "09:04", "09:05", "09:06", "09:07"]
    assert ones[4].close == 70_400 and ones[4].volume == 4  # the late print is not in 09:05
    assert all(b.start.startswith(DAY.isoformat()) for b in live_bars)

    md2, replay_bars = asyncio.run(replay(tmp_path / "live", tmp_path / "replay"))
    assert replay_bars == live_bars  # same bars, same order, same day
    assert md2.builder.current(C) == md1.builder.current(C)  # the same bars still open (5m, 15m, 60m, day)
    assert (md2.builder.late, md2.bars_closed) == (md1.builder.late, md1.bars_closed)
