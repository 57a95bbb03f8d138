"""The gateway's market-data fan-out: trade and book prints → PUB topics, candles built from the
prints (server.bars) → PUB bar topics and the bar store, the last state per code for snapshots
(`GetMarket`), and warm-up history (`GetBars`) from the store, back-filled from the broker's chart
API when the store has too few bars.

Exchange time: KIS prints carry HHMMSS only. We date them with the gateway's KST date and keep the
offset between the latest print's time and the wall clock, so `flush()` (a 1 s timer) closes bars on
the exchange's clock, not ours (a twin replaying a day runs on its own clock)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from common.clock import KST, now_kst
from common.config import BrokerEnv, GatewayConfig
from common.schema import Bar, BookTick, FeedHealth, MarketState, PubBody, TradeTick, bar_topic, book_topic, trade_topic
from kis import wire
from kis.port import Book, BrokerPort, Trade
from server.bars import DAILY, INTERVALS, MINUTES, BarBuilder, BarError, SessionRule, aggregate
from server.barstore import BarStore
from server.publisher import Publisher

log = logging.getLogger("ktrader.marketdata")


MINUTE_PAGES_MAX = 14  # 30 bars a page; a 390-minute session is 13 pages
DAILY_PAGES_MAX = 20  # 100 bars a page


def session_rule(cfg: GatewayConfig) -> SessionRule:
    """The twin's `open` clock trades all day on its synthetic session day (from 09:00, past 15:20 when
    left open longer than a session): every print makes bars there."""
    if cfg.broker.env is BrokerEnv.SIM and cfg.broker.sim_clock == "open":
        return SessionRule.ALL_DAY
    return SessionRule.KRX


def _int(s: str) -> int:
    s = s.strip()
    try:
        return int(s) if s else 0
    except ValueError:
        return int(float(s))  # KIS sometimes pads numbers as decimals


class MarketData:
    def __init__(self, store: BarStore, rule: SessionRule = SessionRule.KRX, intervals: tuple[str, ...] = INTERVALS) -> None:
        self.store = store
        self.builder = BarBuilder(intervals, rule)
        self.publisher: Publisher | None = None  # set once the PUB socket is bound
        self._skip_next = False  # fault injection: lose one message on every topic (gap healing tests)
        self.trades: dict[str, TradeTick] = {}
        self.books: dict[str, BookTick] = {}
        self.closed: dict[tuple[str, str], Bar] = {}
        self.seqs: dict[str, int] = {}
        self.skew = dt.timedelta()  # exchange clock - wall clock, from the latest print
        self.bad_prints = 0
        self.feed_health: dict[str, FeedHealth] = {}  # agent -> from its current session's latest heartbeat
        self.bars_closed = 0
        # where bars were closed by time, for the recording (replay closes them at the same point)
        self.on_clock: Callable[[dt.datetime], None] | None = None
        self.wall: Callable[[], dt.datetime] = now_kst  # a replay dates prints by its recording's clock

    def counters(self) -> dict[str, int]:
        return {"bars_closed": self.bars_closed, "prints_outside_session": self.builder.excluded,
                "prints_late": self.builder.late, "prints_unusable": self.bad_prints}

    # ---- clock ---------------------------------------------------------------------------------

    def exchange_now(self, wall: dt.datetime | None = None) -> dt.datetime:
        return (wall or self.wall()) + self.skew

    def _date_print(self, hhmmss: str, wall: dt.datetime) -> dt.datetime:
        """The print's KST datetime: today's exchange date, corrected across midnight."""
        guess = self.exchange_now(wall)
        t = dt.datetime.combine(guess.date(), dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:6])), KST)
        if t - guess > dt.timedelta(hours=12):
            t -= dt.timedelta(days=1)
        elif guess - t > dt.timedelta(hours=12):
            t += dt.timedelta(days=1)
        return t

    # ---- input -------------------------------------------------------------------------------

    def _pub(self, topic: str, body: PubBody) -> None:
        pub = self.publisher
        if pub is not None:
            if self._skip_next:
                pub.seq[topic] = pub.seq.get(topic, 0) + 1  # as if a message had been dropped
            self.seqs[topic] = pub.publish(topic, body)

    def inject_gap(self) -> None:
        """Operator/test fault: until the next flush (< 1 s), each market-data message is preceded by a
        'lost' one (a sequence number used but nothing sent), so subscribers see gaps and must heal."""
        self._skip_next = True

    def on_trade(self, ev: Trade, wall: dt.datetime | None = None) -> None:
        tick = TradeTick(code=ev.code, time=ev.time, price=ev.price, qty=ev.qty, side=ev.side, cum_volume=ev.cum_volume,
                         change=ev.change, ask1=ev.ask1, bid1=ev.bid1)
        self.trades[ev.code] = tick
        self._pub(trade_topic(ev.code), tick)
        wall = wall or self.wall()
        try:
            when = self._date_print(ev.time, wall)
            closed = self.builder.on_trade(ev.code, when.date(), ev.time, ev.price, ev.qty)
        except (BarError, ValueError) as e:
            self.bad_prints += 1
            log.warning("print %s not used for bars: %s", ev, e)
            return
        self.skew = when - wall
        self._emit(closed)

    def on_book(self, ev: Book) -> None:
        tick = BookTick(code=ev.code, time=ev.time, asks=[(p, q) for p, q in ev.asks], bids=[(p, q) for p, q in ev.bids],
                        total_ask_qty=ev.total_ask_qty, total_bid_qty=ev.total_bid_qty)
        self.books[ev.code] = tick
        self._pub(book_topic(ev.code), tick)

    def flush(self, wall: dt.datetime | None = None) -> list[Bar]:
        """Close bars by time (called every second)."""
        self._skip_next = False
        exchange = self.exchange_now(wall)
        closed = self.flush_at(exchange)
        if closed and self.on_clock is not None:
            self.on_clock(exchange)
        return closed

    def flush_at(self, exchange: dt.datetime) -> list[Bar]:
        """Close bars as of `exchange` time: a replay, at a recorded MarketClock mark."""
        closed = self.builder.flush(exchange)
        self._emit(closed)
        return closed

    def _emit(self, bars: list[Bar]) -> None:
        if not bars:
            return
        for b in bars:
            self.closed[(b.code, b.interval)] = b
            self._pub(bar_topic(b.code, b.interval), b)
        self.bars_closed += len(bars)
        try:
            self.store.add(bars)
        except Exception as e:  # a full disk must not stop the feed; the bars were published
            log.error("bar store write failed: %s", e)

    # ---- snapshot ------------------------------------------------------------------------------

    def snapshot(self, codes: list[str]) -> list[MarketState]:
        out = []
        for code in codes:
            topics = [trade_topic(code), book_topic(code)] + [bar_topic(code, iv) for iv in self.builder.intervals]
            out.append(MarketState(
                code=code, trade=self.trades.get(code), book=self.books.get(code), bars=self.builder.current(code),
                closed=[b for iv in self.builder.intervals if (b := self.closed.get((code, iv))) is not None],
                seqs={t: self.seqs[t] for t in topics if t in self.seqs},
            ))
        return out

    # ---- history -------------------------------------------------------------------------------

    async def history(self, broker: BrokerPort, code: str, interval: str, n: int, caller: str) -> tuple[list[Bar], int]:
        """The newest `n` completed bars before the one in progress, oldest first, and how many were
        back-filled from the broker (REST, under `caller`'s quota). Broker errors propagate."""
        if interval not in INTERVALS:
            raise BarError(f"unknown interval {interval!r}; known: {', '.join(INTERVALS)}")
        now = self.exchange_now()
        before = self.builder.open_start(code, interval) or _bucket_label(now, interval)
        have = self.store.last(code, interval, n, before)
        if len(have) >= n:
            return have, 0
        if interval == DAILY:
            fetched = await self._daily(broker, code, n, now.date(), caller)
        else:
            fetched = await self._minutes(broker, code, interval, n, now, caller)
        fetched = [b for b in fetched if b.start < before]
        if fetched:
            self.store.add(fetched)
        return self.store.last(code, interval, n, before), len(fetched)

    async def _daily(self, broker: BrokerPort, code: str, n: int, today: dt.date, caller: str) -> list[Bar]:
        out: dict[str, Bar] = {}
        end = today - dt.timedelta(days=1)  # today's bar is the builder's, complete only after the close
        for _ in range(DAILY_PAGES_MAX):
            start = end - dt.timedelta(days=max(14, n * 3 // 2 + 10))
            rows = (await broker.daily_chart(code, start, end, "D", caller=caller)).output2
            bars = [b for r in rows if (b := _daily_bar(code, r)) is not None]
            if not bars:
                break
            for b in bars:
                out[b.start] = b
            if len(out) >= n:
                break
            end = dt.date.fromisoformat(min(b.start for b in bars)) - dt.timedelta(days=1)
        return sorted(out.values(), key=lambda b: b.start)

    async def _minutes(self, broker: BrokerPort, code: str, interval: str, n: int, now: dt.datetime, caller: str) -> list[Bar]:
        need = n * MINUTES[interval] + MINUTES[interval]
        rows: dict[str, wire.MinuteBar] = {}
        until = now.strftime("%H%M%S")
        reached_start = False
        for _ in range(MINUTE_PAGES_MAX):
            page = [r for r in (await broker.minute_chart(code, until, caller=caller)).output2
                    if len(r.stck_cntg_hour) == 6 and r.stck_cntg_hour.isdigit() and _int(r.stck_prpr) > 0]
            if not page:
                reached_start = True
                break
            for r in page:
                rows[r.stck_bsop_date + r.stck_cntg_hour] = r
            oldest = min(r.stck_cntg_hour for r in page)
            if len(rows) >= need:
                break
            if oldest <= "090000" or len(page) < 30:
                reached_start = True
                break
            t = dt.datetime.strptime(oldest, "%H%M%S") - dt.timedelta(minutes=1)
            until = t.strftime("%H%M%S")
        ordered = [rows[k] for k in sorted(rows)]
        ones: list[Bar] = []
        prev_amt = None
        for r in ordered:
            amt = _int(r.acml_tr_pbmn)
            value = amt - prev_amt if prev_amt is not None and amt >= prev_amt else 0
            prev_amt = amt
            # the minute chart is today's only: label with our exchange date, as the builder does
            # (a replaying twin may stamp another date than the one we infer)
            start = f"{now.date().isoformat()}T{r.stck_cntg_hour[:2]}:{r.stck_cntg_hour[2:4]}"
            ones.append(Bar(code=code, interval="1m", start=start, open=_int(r.stck_oprc), high=_int(r.stck_hgpr),
                            low=_int(r.stck_lwpr), close=_int(r.stck_prpr), volume=_int(r.cntg_vol), value=value))
        bars = aggregate(ones, interval)
        if bars and interval != "1m" and not reached_start:
            bars = bars[1:]  # the oldest bucket may miss minutes cut off by the page limit
        return bars


def _bucket_label(now: dt.datetime, interval: str) -> str:
    """The label of the bar `now` falls in (history stops before it even when no print opened it)."""
    if interval == DAILY:
        return now.date().isoformat()
    size = MINUTES[interval]
    m = (now.hour * 60 + now.minute) // size * size
    return f"{now.date().isoformat()}T{m // 60:02d}:{m % 60:02d}"


def _daily_bar(code: str, r: wire.DailyBar) -> Bar | None:
    d = r.stck_bsop_date
    o, h, lo, c = _int(r.stck_oprc), _int(r.stck_hgpr), _int(r.stck_lwpr), _int(r.stck_clpr)
    if len(d) != 8 or not d.isdigit() or min(o, h, lo, c) <= 0:
        return None  # KIS pads short histories with empty rows
    return Bar(code=code, interval=DAILY, start=f"{d[:4]}-{d[4:6]}-{d[6:8]}", open=o, high=h, low=lo, close=c,
               volume=_int(r.acml_vol), value=_int(r.acml_tr_pbmn))
