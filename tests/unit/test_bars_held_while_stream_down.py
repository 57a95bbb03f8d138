"""The live bar clock closes a bucket by time only as far as the real-time stream is known to have been live.

A websocket that dies inside a minute (no close frame: the session stays READY until its silence timeout or
its pings notice) leaves that minute's bucket open; closed by the 1 s timer as final, it would go out and into
the bar store without the outage's prints (a crash to 68,000 on 50,000 shares, say), and the first print after
the reconnect, which tells they were missed, comes too late for it. The clock (`flush` told the session's
state, as the gateway's `_bar_clock` does) holds it; after the reconnect the broker's Gap (`feed_gap` with its
times) and the first print's cumulative volume drop the buckets open across the outage as partial. A bucket
closed before the outage, and buckets closed while frames flow, go out as before."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from common.clock import KST
from common.config import GatewayConfig
from common.enums import SessionState
from common.schema import Bar, PubBody
from server.barstore import BarStore
from server.bars import SessionRule
from server import marketdata
from server.marketdata import MarketData
from kis.port import Gap
from tests.fakes.broker import FakeBroker
from tests.fakes.prints import trade

DAY = dt.date(2025, 6, 16)  # a Monday, normal hours
C, Q, R = "005930", "000660", "035420"
READY, DEGRADED, CONNECTING = SessionState.READY, SessionState.DEGRADED, SessionState.CONNECTING


def w(h: int, m: int, s: int, us: int = 200_000) -> dt.datetime:
    return dt.datetime(DAY.year, DAY.month, DAY.day, h, m, s, us, tzinfo=KST)


class _Pub:
    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.out: list[PubBody] = []

    def publish(self, topic: str, body: PubBody) -> int:
        self.out.append(body)
        self.seq[topic] = self.seq.get(topic, 0) + 1
        return self.seq[topic]


class _Rig:
    """MarketData as the live gateway drives it: prints dated by their wall time, the 1 s bar clock told the
    session's state (and, `tells`, the age of the websocket's last received frame of any kind, as the KIS
    broker tells it), a Gap after the reconnect."""

    def __init__(self, tmp_path: Path, tells: bool = False) -> None:
        self.tells = tells
        self.rx: dt.datetime | None = None  # the websocket's last received frame (a print, a ping's pong)
        self.md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1m",))
        self.pub = _Pub()
        self.md.publisher = self.pub  # type: ignore[assignment]
        self.marks: list[dt.datetime] = []
        self.md.on_clock = self.marks.append
        self.cum: dict[str, int] = {C: 1000, Q: 500, R: 100}
        for code in (C, Q, R):  # registered before the open: the day's first print starts whole buckets
            self.md.listening(code, w(8, 55, 0))

    def print(self, code: str, at: dt.datetime, price: int, qty: int) -> None:
        self.cum[code] += qty
        self.rx = at
        ev = trade(code, f"{at:%H%M%S}", price, qty, self.cum[code], date=f"{DAY:%Y%m%d}")
        self.md.on_trade(ev, at)

    def unheard(self, code: str, qty: int) -> None:
        self.cum[code] += qty  # traded at the exchange in the outage, never delivered

    def clock(self, start: dt.datetime, seconds: int, state: SessionState, ping_every: int = 0) -> list[Bar]:
        """The bar clock each second from `start`; with `ping_every`, the socket receives a frame that often (a
        keepalive pong, a KIS PINGPONG): an open socket. Returns the bars closed by time."""
        out: list[Bar] = []
        for i in range(seconds):
            t = start + dt.timedelta(seconds=i)
            if ping_every and i % ping_every == 0:
                self.rx = t
            age = (t - self.rx).total_seconds() if self.tells and self.rx is not None else None
            out += self.md.flush(t, stream=state, frame_age_s=age) if self.tells else self.md.flush(t, stream=state)
        return out

    def bars(self, code: str = C) -> list[str]:
        return [b.start[11:] for b in self.pub.out if isinstance(b, Bar) and b.code == code]

    def stored(self, code: str = C) -> list[str]:
        return [b.start[11:] for b in self.md.store.bars(code, "1m")]


def test_a_minute_open_when_the_socket_died_is_not_published(tmp_path: Path) -> None:
    r = _Rig(tmp_path)
    for s in range(0, 51):  # 10:00:00 .. 10:00:50 heard, a print a second at 70,000
        r.print(C, w(10, 0, s), 70_000, 10)
    r.clock(w(10, 0, 0), 51, READY)
    # 10:00:51 the socket dies without a close frame: the prints of 10:00:51-59 (a crash to 68,000 on 45,000
    # shares) never arrive, and the session stays READY until it notices the silence
    r.unheard(C, 45_000)
    r.clock(w(10, 0, 51), 40, READY)  # the timer runs on past 10:01:02, when the minute would close by time
    assert r.bars() == [] and r.stored() == [] and r.marks == []  # nothing closed as final
    r.clock(w(10, 1, 31), 2, DEGRADED)  # noticed: dropped
    r.clock(w(10, 1, 33), 3, CONNECTING)
    r.md.listening(C, w(10, 1, 36))  # registered again on the new socket
    r.print(C, w(10, 1, 37), 68_000, 10)  # the first print after it: 45,000 shares not heard
    r.md.feed_gap(since=w(10, 0, 50), until=w(10, 1, 38))  # READY again, the Gap of the outage
    r.clock(w(10, 1, 38), 40, READY)
    r.print(C, w(10, 2, 18), 68_100, 10)  # closes 10:01 (also across the outage)
    r.clock(w(10, 2, 18), 50, READY)
    r.print(C, w(10, 3, 8), 68_200, 10)  # the next minute's print closes 10:02: begun after the outage, whole
    assert r.bars() == ["10:02"] and r.stored() == ["10:02"]
    assert r.md.counters()["bars_partial_dropped"] == 2  # 10:00 and 10:01: open across the outage


def test_a_quiet_code_open_across_the_outage_is_dropped_by_the_gap(tmp_path: Path) -> None:
    """The other code's prints after the reconnect prove the stream live past 10:01, yet nothing of Q or R was
    heard since the outage began: whether their 10:00 prints all arrived is unknown. The Gap marks their buckets."""
    r = _Rig(tmp_path)
    r.print(Q, w(10, 0, 10), 200_000, 5)
    r.print(C, w(10, 0, 20), 70_000, 10)
    r.print(C, w(10, 0, 30), 70_000, 10)  # the last frame: the socket dies after it
    r.print(R, w(10, 0, 30, 600_000), 50_000, 1)  # received before, handled a little after: no news of R
    r.clock(w(10, 0, 10), 40, READY)
    r.clock(w(10, 0, 50), 5, CONNECTING)
    r.print(C, w(10, 0, 55), 70_100, 10)  # C registered again first: its volume goes on (nothing missed)
    r.md.feed_gap(since=w(10, 0, 30), until=w(10, 0, 56))
    r.clock(w(10, 0, 56), 4, READY)
    r.print(C, w(10, 1, 5), 70_200, 10)  # frames past 10:01: the stream was live across the minute's end
    r.clock(w(10, 1, 5), 3, READY)
    assert r.bars(C) == ["10:00"]  # C's minute: heard on both sides of the outage with no volume missing
    assert r.bars(Q) == [] and r.stored(Q) == []  # Q's: it may have traded in the outage; nothing said
    assert r.bars(R) == [] and r.stored(R) == []
    assert r.md.counters()["bars_partial_dropped"] == 2


def test_bars_close_on_time_while_frames_flow_and_a_quiet_stream_closes_them_later(tmp_path: Path) -> None:
    r = _Rig(tmp_path)
    for s in range(0, 60, 5):
        r.print(C, w(10, 0, s), 70_000, 1)
    r.print(Q, w(10, 1, 2), 200_000, 1)  # another code's frame at the minute's end plus the grace
    r.clock(w(10, 0, 0), 63, READY)
    assert r.bars(C) == ["10:00"] and r.marks == [w(10, 1, 2, 0)]  # on time: at its end plus the grace
    # a quiet stream (no frame after 10:01:01): 10:01 is held until the session, still READY, would have
    # dropped a stream dead since its end
    r.print(C, w(10, 1, 30), 70_100, 1)
    r.clock(w(10, 1, 3), 100, READY)
    assert r.bars(C) == ["10:00"]
    r.clock(w(10, 2, 43), int(marketdata.STREAM_SILENCE.total_seconds()), READY)
    assert r.bars(C) == ["10:00", "10:01"]
    assert r.md.counters()["bars_partial_dropped"] == 0
    # the recording marks where they closed (the known-live point, not the clock's): a replay closes the same
    assert r.marks == [w(10, 1, 2, 0), w(10, 2, 2, 0)]


def test_an_order_notice_gap_of_no_length_drops_nothing(tmp_path: Path) -> None:
    r = _Rig(tmp_path)
    r.print(C, w(10, 0, 10), 70_000, 10)
    r.md.feed_gap(since=w(10, 0, 20), until=w(10, 0, 20))  # a notice frame that did not read
    r.print(Q, w(10, 1, 3), 200_000, 1)
    r.clock(w(10, 1, 0), 4, READY)
    assert r.bars(C) == ["10:00"]


# ---- the gateway: its bar clock tells the session's state, its Gap handler the outage's times ------------------


async def _until(cond: Callable[[], bool], what: str) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(wait(), 10)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_the_gateway_holds_the_minute_over_an_outage_and_drops_it_after(tmp_path: Path) -> None:
    from server.gateway import Gateway

    broker = FakeBroker(ref_price=70_000)
    broker._state = READY
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), broker)
    now = [w(10, 0, 0)]
    gw.md.wall = lambda: now[0]
    ticks = [0]
    flush = gw.md.flush

    def counted(
        wall: dt.datetime | None = None, stream: SessionState | None = None, frame_age_s: float | None = None
    ) -> list[Bar]:
        ticks[0] += 1
        return flush(wall, stream) if frame_age_s is None else flush(wall, stream, frame_age_s)

    gw.md.flush = counted  # type: ignore[method-assign]
    cum = [0]

    async def hear(at: dt.datetime, price: int, qty: int) -> None:
        now[0], cum[0] = at, cum[0] + qty
        broker._queue.put_nowait(trade(C, f"{at:%H%M%S}", price, qty, cum[0], bid=price, ask=price + 100))
        await _until(lambda: gw.md.trades.get(C) is not None and gw.md.trades[C].cum_volume == cum[0], "the print")

    async def clock_runs(at: dt.datetime) -> None:
        now[0], seen = at, ticks[0]
        await _until(lambda: ticks[0] > seen, "a tick of the bar clock at that time")

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(gw._broker_events()), loop.create_task(gw._bar_clock())]
    try:
        for s in range(0, 51, 10):  # 10:00:00 .. 10:00:50 heard
            await hear(w(10, 0, s), 70_000, 10)
        cum[0] += 45_000  # 10:00:51 the socket dies silently: 45,000 shares traded unheard
        await clock_runs(w(10, 1, 10))  # the minute would have closed by time at 10:01:02
        assert gw.md.closed == {} and gw.md.bars_closed == 0
        broker._state = CONNECTING
        await clock_runs(w(10, 1, 20))
        broker._state = READY
        broker._queue.put_nowait(Gap(since=w(10, 0, 50), until=w(10, 1, 30), reason="real-time session interrupted"))
        await hear(w(10, 1, 31), 68_000, 10)  # the first print after the reconnect
        await hear(w(10, 2, 5), 68_100, 10)
        await clock_runs(w(10, 2, 10))
        assert [b for b in gw.md.store.bars(C, "1m")] == []  # 10:00 and 10:01: open across the outage
        assert gw.md.counters()["bars_partial_dropped"] == 2
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gw._close_stores()


# ---- liveness from the websocket's last received frame of any kind (keepalive pongs, KIS PINGPONG) --------------


def _quiet_close(r: _Rig, state: SessionState, ping_every: int) -> dict[str, dt.datetime]:
    """A quiet end of day: the last continuous print at 15:19:50, nothing in the closing call, the closing
    print at 15:30:00, nothing after; the socket open (a frame every `ping_every` s). When each 1m bar closed."""
    r.print(C, w(15, 19, 50), 70_000, 10)
    closed: dict[str, dt.datetime] = {}
    t = w(15, 20, 0, 0)
    for _ in range(40 * 60):  # to 16:00
        if t == w(15, 30, 0, 0):
            r.print(C, t, 70_500, 500)
        for b in r.clock(t, 1, state, ping_every=1 if (t - w(15, 20, 0, 0)).seconds % ping_every == 0 else 0):
            closed.setdefault(b.start[11:], t)
        t += dt.timedelta(seconds=1)
    return closed


@pytest.mark.parametrize("ping_every", [3, 30])  # a frame every few seconds; the keepalive pong every 30 s
def test_a_quiet_close_with_the_socket_up_closes_the_last_bars_on_time(tmp_path: Path, ping_every: int) -> None:
    """READY and quiet (nothing prints in the closing call): the 15:30 bar closes at its end plus the grace,
    15:31:02, or at the socket's next frame after that; not STREAM_SILENCE later (15:33:42), after the daily bar."""
    r = _Rig(tmp_path, tells=True)
    closed = _quiet_close(r, READY, ping_every)
    assert set(closed) == {"15:19", "15:30"}
    assert w(15, 31, 2, 0) <= closed["15:30"] < w(15, 31, 2, 0) + dt.timedelta(seconds=ping_every)
    assert w(15, 20, 2, 0) <= closed["15:19"] < w(15, 20, 2, 0) + dt.timedelta(seconds=ping_every)
    assert r.bars() == ["15:19", "15:30"] and r.md.counters()["bars_partial_dropped"] == 0


def test_a_session_degraded_with_its_socket_open_closes_bars_on_time(tmp_path: Path) -> None:
    """DEGRADED all day (the notice feed refused: a wrong HTS id), prints and pings flow on an open socket: bars
    close on time, not only when the next print comes (after hours, or the next morning)."""
    r = _Rig(tmp_path, tells=True)
    closed = _quiet_close(r, DEGRADED, 3)
    assert w(15, 31, 2, 0) <= closed["15:30"] < w(15, 31, 5, 0)
    assert r.bars() == ["15:19", "15:30"]


def test_a_socket_dead_without_a_close_frame_holds_the_minute_though_frames_came_seconds_before(tmp_path: Path) -> None:
    """Frames every 3 s until the socket dies silently at 10:00:58, four seconds before the minute would close
    by time: the session stays READY for a while, the minute is not published; the Gap drops it."""
    r = _Rig(tmp_path, tells=True)
    for s in range(0, 51, 5):
        r.print(C, w(10, 0, s), 70_000, 10)
    r.clock(w(10, 0, 50), 8, READY, ping_every=3)  # frames up to 10:00:56
    r.unheard(C, 45_000)  # 10:00:58 on: traded, never delivered
    assert r.clock(w(10, 0, 58), 60, READY) == []  # no frame: to 10:01:57, held
    assert r.bars() == [] and r.stored() == [] and r.marks == []
    r.clock(w(10, 1, 58), 3, DEGRADED)  # dropped (no socket: nothing received)
    r.clock(w(10, 2, 1), 3, CONNECTING)
    r.md.listening(C, w(10, 2, 4))
    r.print(C, w(10, 2, 5), 68_000, 10)
    r.md.feed_gap(since=w(10, 0, 56), until=w(10, 2, 5))
    r.clock(w(10, 2, 5), 60, READY, ping_every=3)
    r.print(C, w(10, 3, 10), 68_100, 10)
    r.clock(w(10, 3, 10), 60, READY, ping_every=3)
    assert r.bars() == ["10:03"]  # 10:00 open across the outage; 10:02 begun where 45,000 shares went unheard
    assert r.md.counters()["bars_partial_dropped"] == 2


@pytest.mark.parametrize("state", [READY, DEGRADED])
async def test_the_gateway_closes_a_quiet_minute_by_the_websockets_last_frame(
    tmp_path: Path, state: SessionState
) -> None:
    """The gateway's bar clock asks the broker how long ago its websocket last received a frame (KIS: a
    keepalive pong, a PINGPONG): the closing bar goes out at 15:31:02, not 160 s later."""
    from server.gateway import Gateway

    broker = FakeBroker(ref_price=70_000)
    broker._state = state
    age = [0.5]
    broker.stream_frame_age_s = lambda: age[0]  # type: ignore[attr-defined]
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), broker)
    now = [w(15, 29, 58)]
    gw.md.wall = lambda: now[0]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(gw._broker_events()), loop.create_task(gw._bar_clock())]
    try:
        now[0] = w(15, 30, 0)
        broker._queue.put_nowait(trade(C, "153000", 70_500, 500, 500, bid=70_500, ask=70_600))
        await _until(lambda: C in gw.md.trades, "the closing print")
        now[0] = w(15, 31, 3)  # quiet since: the last print 63 s ago, a frame half a second ago
        await _until(lambda: [b.start[11:] for b in gw.md.store.bars(C, "1m")] == ["15:30"], "the 15:30 bar")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gw._close_stores()
