"""Market-data edges: a duplicated print, a daily history with missing trading days, a registration
the broker refuses after `want()` said "subscribed", and the partial first bar after a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from common.calendar import trading_days
from common.clock import KST
from common.enums import SessionState
from common.errors import ErrorCode
from common.krx import SecurityKind
from common.schema import Bar, Notice
from kis.port import Capability, MarketKind, SubscriptionResult
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from server.md_sanity import Bad, MarketSanity
from server.subscriptions import SubscriptionManager
from tests.fakes.prints import trade

DAY = dt.date(2024, 3, 4)  # a Monday, normal hours
C = "005930"
D = DAY.strftime("%Y%m%d")


def at(h: int, m: int, s: int, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(h, m, s), KST)


def _hms(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


# ---- 1. a duplicated print ------------------------------------------------------------------------


def _sanity(alerts: list[str] | None = None) -> MarketSanity:
    out = alerts if alerts is not None else []
    return MarketSanity(lambda c: 70_000, lambda c: SecurityKind.STOCK, lambda: DAY, out.append)


def test_a_print_that_does_not_move_the_cumulative_volume_is_a_duplicate() -> None:
    alerts: list[str] = []
    s = _sanity(alerts)
    assert s.trade(trade(C, "100005", 70_000, 100, 1_000, date=D)) is None
    assert s.trade(trade(C, "100005", 70_000, 100, 1_000, date=D)) is Bad.DUPLICATE  # the same print again
    assert s.trade(trade(C, "100006", 70_100, 5, 1_000, date=D)) is Bad.DUPLICATE  # alerted once, counted each
    assert s.counters()["md_dropped_print_duplicated"] == 2 and len(alerts) == 1 and C in alerts[0]
    assert s.trade(trade(C, "100110", 70_100, 10, 1_010, date=D)) is None  # the feed goes on
    # the first print of a code (and of a new business day) has nothing to repeat
    assert s.trade(trade("000660", "100111", 70_000, 1, 1_010, date=D)) is None
    assert s.trade(trade(C, "090000", 70_000, 1_010, 1_010, date="20240305")) is None  # the next session's opening


def test_a_duplicated_print_counts_once_in_the_bar(tmp_path: Path) -> None:
    s = _sanity()
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m",))
    prints = [
        (trade(C, "095950", 70_000, 1, 900, date=D), at(9, 59, 50)),  # heard before 10:00: its bar is whole
        (trade(C, "100005", 70_000, 100, 1_000, date=D), at(10, 0, 5)),
        (trade(C, "100005", 70_000, 100, 1_000, date=D), at(10, 0, 5)),  # delivered again
        (trade(C, "100110", 70_100, 10, 1_010, date=D), at(10, 1, 10)),
    ]
    for p, w in prints:
        if s.trade(p) is None:
            md.on_trade(p, w)
    bar = next(b for b in md.store.bars(C, "1m") if b.start == "2024-03-04T10:00")
    assert (bar.volume, bar.value) == (100, 7_000_000)  # the cumulative volume moved by 100


# ---- 2. daily history with a hole -----------------------------------------------------------------


def _day_bar(day: dt.date, close: int) -> Bar:
    c = close
    return Bar(code=C, interval="1d", start=day.isoformat(), open=c, high=c, low=c, close=c, volume=1, value=c)


class Charts:
    capabilities = frozenset({Capability.CHARTS})

    def __init__(self, bars: list[Bar], fail: bool = False) -> None:
        self.bars, self.calls, self.fail = bars, 0, fail

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("chart API down")
        return [x for x in self.bars if x.start < before.isoformat()][-n:]


DAYS = trading_days(dt.date(2024, 2, 1), dt.date(2024, 3, 29))
EXCHANGE = [_day_bar(d, 10_000 + i * 100) for i, d in enumerate(DAYS)]
WANT_21 = [x.start for x in EXCHANGE if x.start < "2024-03-29"][-21:]
# at 16:00 the store holds the day's bar (the day cycle closed the day): history holds it, today included
CLOSED_21 = [x.start for x in EXCHANGE][-21:]


def _md(tmp_path: Path, hole: set[str], wall: dt.datetime) -> MarketData:
    store = BarStore(tmp_path / "b.sqlite")
    store.add([x for x in EXCHANGE if x.start not in hole])
    md = MarketData(store, SessionRule.KRX, ("1d",))
    md.wall = lambda: wall
    return md


def test_daily_history_with_missing_trading_days_is_back_filled(tmp_path: Path) -> None:
    hole = {d.isoformat() for d in DAYS[20:25]}  # a week nobody had the code (or the gateway was down)
    md = _md(tmp_path, hole, at(16, 0, 0, dt.date(2024, 3, 29)))
    broker = Charts(EXCHANGE)
    got, filled = asyncio.run(md.history(broker, C, "1d", 21, "agent"))  # type: ignore[arg-type]
    assert [x.start for x in got] == CLOSED_21 and broker.calls == 1 and filled >= len(hole)


def test_a_missing_day_the_broker_has_not_got_is_asked_once_a_day(tmp_path: Path) -> None:
    halted = DAYS[30].isoformat()  # the code did not trade that day: the broker has no bar either
    md = _md(tmp_path, {halted}, at(16, 0, 0, dt.date(2024, 3, 29)))
    broker = Charts([x for x in EXCHANGE if x.start != halted])
    for _ in range(3):
        got, _n = asyncio.run(md.history(broker, C, "1d", 21, "agent"))  # type: ignore[arg-type]
        assert halted not in [x.start for x in got] and len(got) == 21
    assert broker.calls == 1  # the broker's answer is the truth for the day
    md.wall = lambda: at(16, 0, 0, dt.date(2024, 3, 30))  # another day (a Saturday): asked again, once
    asyncio.run(md.history(broker, C, "1d", 21, "agent"))  # type: ignore[arg-type]
    asyncio.run(md.history(broker, C, "1d", 21, "agent"))  # type: ignore[arg-type]
    assert broker.calls == 2


def test_a_complete_daily_window_costs_no_broker_call(tmp_path: Path) -> None:
    # during the session: today's bar is in progress, not a missing day; no weekends or holidays asked for
    md = _md(tmp_path, {"2024-03-29"}, at(10, 0, 0, dt.date(2024, 3, 29)))
    broker = Charts(EXCHANGE)
    got, filled = asyncio.run(md.history(broker, C, "1d", 21, "agent"))  # type: ignore[arg-type]
    assert [x.start for x in got] == WANT_21 and broker.calls == 0 and filled == 0


def test_a_failed_back_fill_is_asked_again(tmp_path: Path) -> None:
    hole = {DAYS[35].isoformat()}
    md = _md(tmp_path, hole, at(16, 0, 0, dt.date(2024, 3, 29)))
    down = Charts(EXCHANGE, fail=True)
    try:
        asyncio.run(md.history(down, C, "1d", 21, "agent"))  # type: ignore[arg-type]
    except ConnectionError:
        pass
    up = Charts(EXCHANGE)
    got, _n = asyncio.run(md.history(up, C, "1d", 21, "agent"))  # type: ignore[arg-type]
    assert up.calls == 1 and [x.start for x in got] == CLOSED_21


def test_after_the_close_the_days_bar_is_history(tmp_path: Path) -> None:
    """A warm-up at 16:00 (or a screen on an evening timer) decides on today's official bar, not yesterday's
    as the last: once the day cycle stored it, it is complete. During the session it is not in history."""
    today = dt.date(2024, 3, 29)
    md = _md(tmp_path, {today.isoformat()}, at(14, 0, 0, today))  # the session: today's bar is not stored yet
    got, _n = asyncio.run(md.history(Charts(EXCHANGE), C, "1d", 5, "agent"))  # type: ignore[arg-type]
    assert got[-1].start == "2024-03-28"
    md.store.add([EXCHANGE[-1]])  # the close: the day cycle stores the day's bar (close_daily)
    md.wall = lambda: at(16, 0, 0, today)
    broker = Charts(EXCHANGE)
    got, _n = asyncio.run(md.history(broker, C, "1d", 5, "agent"))  # type: ignore[arg-type]
    assert [x.start for x in got] == [x.start for x in EXCHANGE][-5:] and got[-1].close == EXCHANGE[-1].close
    assert broker.calls == 0  # a whole window: nothing asked


def test_after_the_close_a_day_nobody_heard_is_asked_of_the_broker(tmp_path: Path) -> None:
    """No agent had the code during the session (a first start at 16:00): no bar was built or stored, yet the
    day is closed: its official bar is asked of the broker, not left out of a window ending yesterday."""
    today = dt.date(2024, 3, 29)
    md = _md(tmp_path, {today.isoformat()}, at(16, 0, 0, today))
    asyncio.run(md.close_daily(today))  # the day cycle's close: nothing built of this code
    broker = Charts(EXCHANGE)
    got, filled = asyncio.run(md.history(broker, C, "1d", 5, "agent"))  # type: ignore[arg-type]
    assert [x.start for x in got] == [x.start for x in EXCHANGE][-5:] and broker.calls == 1 and filled >= 1


# ---- 3. a registration refused after "subscribed" -------------------------------------------------


class Refusing:
    def __init__(self, answers: list[SubscriptionResult | Exception]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        self.calls.append(code)
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return SubscriptionResult(ok=True)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_broker_refusal_after_subscribed_tells_every_holder() -> None:
    async def go() -> None:
        told: list[tuple[str, Notice]] = []
        broker = Refusing(
            [
                SubscriptionResult(ok=False, code="OPSP0008", message="MAX SUBSCRIBE OVER"),
                ConnectionError("ws reconnecting"),
                SubscriptionResult(ok=True),
            ]
        )
        m = SubscriptionManager(broker, slots=40, on_refused=lambda a, n: told.append((a, n)))  # type: ignore[arg-type]
        assert m.want("a1", MarketKind.TRADES, C) == (None, "subscribed")
        assert m.want("a2", MarketKind.TRADES, C) == (None, "subscribed")  # shared, before the broker answered
        await _settle()
        assert sorted(a for a, _ in told) == ["a1", "a2"] and not m.active and not m.holders.get((MarketKind.TRADES, C))
        n = told[0][1]
        # what the agent runtime acts on (agent/quotepoll.py): poll quotes, ask again
        assert (n.error, n.kind, n.code, n.level) == (ErrorCode.SUBSCRIPTION_LIMIT, "trades", C, "error")
        assert "MAX SUBSCRIBE OVER" in n.text
        # asked again: registered afresh; an exception is a refusal too
        assert m.want("a1", MarketKind.TRADES, C) == (None, "subscribed")
        await _settle()
        assert len(told) == 3 and told[2][0] == "a1" and "ws reconnecting" in told[2][1].text
        assert m.want("a1", MarketKind.TRADES, C) == (None, "subscribed")
        await _settle()
        assert len(told) == 3 and (MarketKind.TRADES, C) in m.active and m.holders[(MarketKind.TRADES, C)] == {"a1"}
        assert broker.calls == [C, C, C]

    asyncio.run(go())


def test_a_stale_refusal_does_not_undo_a_newer_registration() -> None:
    async def go() -> None:
        told: list[tuple[str, Notice]] = []
        first: asyncio.Future[SubscriptionResult] = asyncio.get_running_loop().create_future()

        class Slow(Refusing):
            async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
                self.calls.append(code)
                if len(self.calls) == 1:
                    return await first
                return SubscriptionResult(ok=True)

        broker = Slow([])
        m = SubscriptionManager(broker, slots=40, debounce_s=0.0, on_refused=lambda a, n: told.append((a, n)))  # type: ignore[arg-type]
        m.want("a1", MarketKind.TRADES, C)
        await _settle()
        m.leave("a1")  # released (debounce 0) while the first registration is still unanswered
        await asyncio.sleep(0.01)
        m.want("a2", MarketKind.TRADES, C)  # registered again
        await _settle()
        first.set_result(SubscriptionResult(ok=False, message="MAX SUBSCRIBE OVER"))  # the old answer, late
        await _settle()
        assert not told and (MarketKind.TRADES, C) in m.active and m.holders[(MarketKind.TRADES, C)] == {"a2"}

    asyncio.run(go())


# ---- 4. the partial first bar after a restart -----------------------------------------------------


def _feed(md: MarketData, prints: list[tuple[dt.datetime, int, int, int]]) -> None:
    for w, price, qty, cum in prints:
        md.on_trade(trade(C, _hms(w), price, qty, cum, date=D), w)


def test_the_first_bucket_heard_from_mid_bucket_is_not_published(tmp_path: Path) -> None:
    store = BarStore(tmp_path / "b.sqlite")
    md = MarketData(store, SessionRule.KRX, ("1m", "60m"))
    _feed(md, [(at(10, 0, 0), 70_000, 5_000, 500_000), (at(10, 20, 0), 69_000, 5_000, 505_000)])
    # the gateway restarts at 10:43: a fresh MarketData on the same store
    md2 = MarketData(store, SessionRule.KRX, ("1m", "60m"))
    _feed(
        md2,
        [
            (at(10, 43, 30), 71_000, 10, 520_000),
            (at(10, 44, 5), 71_100, 10, 520_010),
            (at(11, 0, 1), 71_200, 10, 520_020),
        ],
    )
    stored = {(b.interval, b.start) for b in store.bars(C, "1m") + store.bars(C, "60m")}
    # no 60m 10:00 bar (it missed 10:00-10:43) and no 1m 10:43 bar (it missed 10:43:00-10:43:29)
    assert ("60m", "2024-03-04T10:00") not in stored and ("1m", "2024-03-04T10:43") not in stored
    assert ("1m", "2024-03-04T10:44") in stored  # heard whole: published as before
    assert md2.closed.get((C, "60m")) is None and md2.counters()["bars_partial_dropped"] == 2


def test_a_feed_heard_from_the_bucket_start_keeps_its_first_bar(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "1d"))
    md.wall = lambda: at(15, 40, 0)
    _feed(md, [(at(9, 0, 0), 70_000, 10, 10), (at(9, 0, 40), 70_100, 5, 15), (at(9, 1, 2), 70_200, 1, 16)])
    (first, *_) = md.store.bars(C, "1m")
    assert (first.start, first.open, first.volume) == ("2024-03-04T09:00", 70_000, 15)
    # listening since before the open, the day's first print a few seconds after it (or a thin code's at
    # 09:03): it carries all the day's volume, nothing was missed, the bucket is whole
    md3 = MarketData(BarStore(tmp_path / "b3.sqlite"), SessionRule.KRX, ("1m", "5m"))
    _feed(md3, [(at(9, 3, 27), 70_000, 10, 10), (at(9, 5, 2), 70_100, 5, 15), (at(9, 10, 1), 70_200, 1, 16)])
    kept = [(b.interval, b.start) for b in md3.store.bars(C, "1m") + md3.store.bars(C, "5m")]
    assert ("1m", "2024-03-04T09:03") in kept and ("5m", "2024-03-04T09:00") in kept, kept
    assert md3.counters()["bars_partial_dropped"] == 0
    # a daily bar built from mid-day is left to the day close (the broker's daily bar replaces it)
    md2 = MarketData(BarStore(tmp_path / "b2.sqlite"), SessionRule.KRX, ("1d",))
    md2.on_trade(trade(C, "110000", 70_000, 1, 1, date=D), at(11, 0, 0))
    assert [b.start for b in asyncio.run(md2.close_daily(DAY))] == ["2024-03-04"]


# ---- 5. a registration KIS did not answer in time (NO_ACK) ---------------------------------------


def test_a_registration_without_an_ack_tells_every_holder_and_leaks_nothing() -> None:
    """The KIS session reported NO_ACK as ok: the manager counted the key active, its holders waited
    for prints, and KIS's late answer (a refusal, or a slot nobody counted) reached no one. Now NO_ACK
    is a refusal: each holder is told (SUBSCRIPTION_LIMIT: poll quotes, ask again), the key leaves
    `active` and the ledger, and asking again registers it afresh."""
    from kis.adapter import MARKET_TR
    from tests.unit.test_kis_ws import rigged
    from tests.unit.test_kis_ws_recovery import LateAcks

    tr = MARKET_TR[MarketKind.TRADES]
    key = (tr, C)

    class WsBroker:  # the adapter's subscribe/unsubscribe, straight to the KIS session
        def __init__(self, ws: object) -> None:
            self.ws = ws

        async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
            return await self.ws.subscribe(MARKET_TR[kind], code)  # type: ignore[attr-defined]

        async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
            return await self.ws.unsubscribe(MARKET_TR[kind], code)  # type: ignore[attr-defined]

    async def go() -> None:
        kis = LateAcks({key: 0.6}, cap=2)  # KIS takes it, answers after the ack timeout
        async with rigged(kis, ack_timeout_s=0.3) as rig:
            rig.ws.start()
            assert await rig.ws.wait_state(SessionState.READY, 5)
            told: list[tuple[str, Notice]] = []
            m = SubscriptionManager(WsBroker(rig.ws), slots=40, on_refused=lambda a, n: told.append((a, n)))  # type: ignore[arg-type]
            assert m.want("a1", MarketKind.TRADES, C) == (None, "subscribed")
            assert m.want("a2", MarketKind.TRADES, C) == (None, "subscribed")
            await rig.until(lambda: len(told) == 2)
            assert sorted(a for a, _ in told) == ["a1", "a2"]
            n = told[0][1]
            assert (n.error, n.kind, n.code) == (ErrorCode.SUBSCRIPTION_LIMIT, "trades", C) and "NO_ACK" in n.text
            assert (MarketKind.TRADES, C) not in m.active and not m.holders.get((MarketKind.TRADES, C))
            assert key not in rig.ws.registrations and key not in rig.ws.refused  # no reference left behind
            await rig.until(lambda: ("2", key) in kis.requests[0] and key not in kis.registered[0])
            await asyncio.sleep(0.4)  # the late SUBSCRIBE SUCCESS arrives: nothing counts it
            assert key not in rig.ws.active
            # asked again (the runtime's Subscribe): registered afresh, once
            assert m.want("a1", MarketKind.TRADES, C) == (None, "subscribed")
            await rig.until(lambda: key in rig.ws.active)
            assert len(told) == 2 and m.holders[(MarketKind.TRADES, C)] == {"a1"}
            assert rig.ws.registrations[key] == 1 and kis.registered[0].count(key) == 1

    asyncio.run(asyncio.wait_for(go(), 20))


def test_a_warm_up_while_the_close_asks_the_broker_ends_before_the_day(tmp_path: Path) -> None:
    """The day's bar is history only once it went out: a warm-up while the close still waits on the broker (a
    timer at 15:41) holding it would have its on_bar as well, counted twice."""
    today = dt.date(2024, 3, 29)

    class Slow(Charts):
        def __init__(self, bars: list[Bar], gate: asyncio.Event) -> None:
            super().__init__(bars)
            self.gate = gate

        async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
            await self.gate.wait()
            return await super().daily_bars(code, n, before, caller=caller)

    async def scenario() -> tuple[list[str], list[str]]:
        md = _md(tmp_path, {today.isoformat()}, at(15, 41, 0, today))
        gate = asyncio.Event()
        closing = asyncio.create_task(md.close_daily(today, Slow(EXCHANGE, gate), [C]))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # the close waits on the broker
        during, _n = await md.history(Charts(EXCHANGE), C, "1d", 3, "agent")  # type: ignore[arg-type]
        gate.set()
        await closing
        after, _n = await md.history(Charts(EXCHANGE), C, "1d", 3, "agent")  # type: ignore[arg-type]
        return [x.start for x in during], [x.start for x in after]

    during, after = asyncio.run(scenario())
    assert during[-1] == "2024-03-28" and after[-1] == "2024-03-29"


def test_a_days_bar_still_owed_is_published_not_taken_into_history_first(tmp_path: Path) -> None:
    """The broker gave no bar at the close and none was built (no prints): the bar is asked again and published
    then. A warm-up meanwhile must not store it as history (the retry took a stored bar as sent: it never went
    out, and no agent decided on the day)."""
    today = dt.date(2024, 3, 29)
    sent: list[str] = []

    async def scenario(warm_up_at: dt.datetime) -> list[str]:
        md = _md(tmp_path / warm_up_at.strftime("%a"), {today.isoformat()}, at(15, 45, 0, today))
        md._pub = lambda topic, body: sent.append(body.start)  # type: ignore[method-assign,assignment,attr-defined]
        await md.close_daily(today, Charts(EXCHANGE, fail=True), [C])  # type: ignore[arg-type]
        md.wall = lambda: warm_up_at
        got, _n = await md.history(Charts(EXCHANGE), C, "1d", 3, "agent")  # type: ignore[arg-type]
        await md._ask_again(today, Charts(EXCHANGE))  # type: ignore[arg-type]
        await md.stop()
        return [x.start for x in got]

    for when in (at(16, 0, 0, today), at(10, 0, 0, dt.date(2024, 3, 30))):  # that evening; the Saturday after
        sent.clear()
        window = asyncio.run(scenario(when))
        assert window[-1] == "2024-03-28" and sent == ["2024-03-29"], when
