"""The gateway's market-data fan-out: trade and book prints → PUB topics, candles built from the
prints (server.bars) → PUB bar topics and the bar store, the last state per code for snapshots
(`GetMarket`), and warm-up history (`GetBars`) from the store, back-filled from the broker's chart
API when the store has too few bars, or (daily bars, KRX sessions) when a trading day of the window
is missing from the store.

A restart (or a code first heard mid-session) leaves the first intraday bucket of each code partial:
built only from the prints heard since (the first print heard carries more day volume than its own).
So does a websocket gap (a reconnect) or a registration released and taken again: the first print heard
after it carries more day volume (H0STCNT0 ACML_VOL) than the last one heard plus its own, and every
bucket open across the gap misses prints. Such a bucket is not published nor stored: an agent sees no bar
for it (its next bar is the first one) rather than a wrong one (open/high/low off, volume short). Daily
bars are exempt: the day close replaces them with the broker's daily bar (`close_daily`). The first print
after a reconnect tells only for its own code, and only when it comes: so the live bar clock closes no bucket
by time past the last moment the stream is known to have been live (`flush`: up to the websocket's last
received frame of any kind, keepalive pongs included; held while the websocket is down, or silent), and
the broker's Gap marks every bucket open at the outage's start, of a code not heard since, partial
(`feed_gap`).

The day's first print always carries more day volume than its own: KIS's ACML_VOL counts the 08:30-08:40
pre-market close-price session, which no bar holds. That is no missed print when the code's registration
was live, with no websocket gap, since before it (`listening`, `feed_gap`, ended by `released`): every print
of it since then was heard, so the first one starts whole buckets wherever it lands (an opening uncross the
call's random end (임의종료) or a VI pushed past 09:00). Without that knowledge only a first print stamped at
or before the open is excused.

A stock split makes the stored history of its code a different price scale from today's prints. Daily
bars can be fetched again: they are dropped and the next history request back-fills the broker's
split-adjusted series, when the reconciler suspects a split in the balance (`forget_history`) and again
when the operator applies it (`split_applied`). Intraday bars cannot (the broker's minute chart gives
today's minutes only): they are never dropped; the operator's confirmation, which knows the ratio,
rescales those before the split's first session to the new shares (`split_applied`).

Exchange time: KIS prints carry HHMMSS only. We date them with the gateway's KST date and keep the
offset between the latest print's time and the wall clock, so `flush()` (a 1 s timer) closes bars on
the exchange's clock, not ours (a twin replaying a day runs on its own clock). The offset is watched:
a host clock more than SKEW_ALERT_S off the exchange's (the median of the latest prints' offsets, so one
late print moves nothing) sends orders into the wrong phase and closes the day early. Only an offset that
lasts is the host's clock: a burst of delayed prints (KIS at 09:00) is feed lag, and nine prints can come
within a second, so it must hold for SKEW_PERSIST of market time and SKEW_PRINTS prints; it is told then
(`on_skew`, at most once a market day), told again only after it stayed within SKEW_REARM_S for
SKEW_REARM_AFTER, and shown in status (clock_skew_ms); the clock itself is never moved."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from common.calendar import next_trading_day, previous_trading_day, session_hours
from common.clock import KST, STEP_NS, elapsed_ns, now_kst
from common.enums import AlertKind, SessionState
from common.market_clock import MarketClock
from common.schema import Bar, BookTick, FeedHealth, MarketState, PubBody, TradeTick, bar_topic, book_topic, trade_topic
from kis.port import Book, BrokerPort, Capability, Trade
from server.bars import DAILY, INTERVALS, MINUTES, BarBuilder, BarError, SessionRule, aggregate, bar_order
from server.barstore import BarStore, split_price, split_volume
from server.publisher import Publisher

log = logging.getLogger("ktrader.marketdata")

CHART_CALLS = 4  # daily-chart calls in flight at the day close (the REST budget paces them)
CHART_TIMEOUT_S = 10.0  # one code's daily bar; then the bar built from our prints goes out
# a code with no prints of ours (its registration refused, a polled code, a restart after its last print) whose
# chart call failed at the day close has no bar to send: asked again 15 s, 30 s ... at most 5 min apart, until its
# next session opens (an agent then takes the bar as history, not as a decision: agent/runtime.py _too_late)
DAILY_RETRY_FIRST_S, DAILY_RETRY_MAX_S = 15.0, 300.0
# the host clock against the exchange's: prints carry whole seconds and arrive some ms late, so a right
# clock reads 0 to -1 s; beyond 2 s (the median of the latest SKEW_PRINTS prints) for SKEW_PERSIST of market
# time and as many prints it is told (feed lag comes in bursts; a host clock stays off), and told again only
# after it stayed within SKEW_REARM_S for SKEW_REARM_AFTER; a person is paged at most once a market day
SKEW_PRINTS, SKEW_ALERT_S, SKEW_REARM_S = 9, 2.0, 1.5
SKEW_PERSIST, SKEW_REARM_AFTER = dt.timedelta(seconds=60), dt.timedelta(minutes=10)
# a registration's start or a stream's return is dated by the exchange clock as we know it (the host clock
# plus the prints' skew), which runs up to a second or so behind the exchange's (prints carry whole seconds and
# arrive late): it counts from this much later, so a bucket it may have missed the start of is never whole
LIVE_SLACK = dt.timedelta(seconds=SKEW_ALERT_S)
# The live bar clock (`flush` told the broker session's state) closes bars by time only as far as the stream is
# known to have been live: until the websocket's last received frame of any kind (told by the broker: a print, a
# KIS PINGPONG, the pong to the keepalive ping every 30 s, so a quiet stream is live to within that), its socket
# up (READY, or DEGRADED with the notice feed refused). A broker that does not tell it: until the latest frame
# (print or book) heard, or, the session READY, until STREAM_SILENCE ago: the KIS session drops a stream silent
# for 150 s (kis/ws.py silence_timeout_s), so a READY session had its stream live then. Keep it above that.
STREAM_SILENCE = dt.timedelta(seconds=160)
# after the session was seen down, bars close by time again only once the Gap that follows its reconnect was
# handled (it marks the buckets open across the outage: `feed_gap`), or this long after it was seen up again
UP_SETTLE = dt.timedelta(seconds=3)
# a print handled this long after an outage's last frame came after the reconnect (one from before it is not
# handled that late): its code's cumulative volume was checked across the outage (`feed_gap`)
HEARD_AFTER = dt.timedelta(seconds=5)
# states with the websocket open and its registrations made (DEGRADED: the notice feed refused, prints flow;
# or just dropped, when no frame comes and only the frames heard before count)
_STREAM_UP = frozenset({SessionState.READY, SessionState.DEGRADED})
REFILL_MAX = 1_000  # daily bars fetched back after a split dropped a code's (more: asked for as windows need them)


class SplitAdjusted(NamedTuple):
    """What `MarketData.split_applied` did to the stored bars of a code."""

    daily_dropped: int  # daily bars removed (back-filled split-adjusted from the broker on the next request)
    intraday_rescaled: int  # intraday bars (every minute interval) before `first_session` rescaled
    first_session: str  # "YYYY-MM-DD": the split's first session, as found (`basis`)
    basis: str  # how the first session was found

    @property
    def text(self) -> str:
        return (
            f"its {self.daily_dropped} stored daily bars dropped (back-filled split-adjusted from the broker) and "
            f"its {self.intraday_rescaled} stored intraday bars before {self.first_session} rescaled to the new "
            f"shares (first session: {self.basis})"
        )


def session_rule(clock: MarketClock) -> SessionRule:
    """Bars follow KRX sessions on a clock whose time of day means something; on one whose does not
    (the twin's `open` clock trades all day on its synthetic session day) every print makes bars."""
    return SessionRule.KRX if clock.timed else SessionRule.ALL_DAY


# the most one session moves a price (the daily limit, ±30 %): a step between two recorded days within it is
# no split
SESSION_MOVE = (0.7, 1.3)


def _at_or_before_open(when: dt.datetime) -> bool:
    """`when` (exchange time) is at or before its day's regular open (09:00; later on a late-opening day)."""
    hours = session_hours(when.date())
    return hours is not None and when.time() <= hours[0]


class MarketData:
    def __init__(
        self, store: BarStore, rule: SessionRule = SessionRule.KRX, intervals: tuple[str, ...] = INTERVALS
    ) -> None:
        self.store = store
        self.builder = BarBuilder(intervals, rule)
        self.publisher: Publisher | None = None  # set once the PUB socket is bound
        self._skips = 0  # fault injection: messages still to be preceded by a lost one (gap healing tests)
        self.trades: dict[str, TradeTick] = {}
        self.books: dict[str, BookTick] = {}
        self.closed: dict[tuple[str, str], Bar] = {}
        self.seqs: dict[str, int] = {}
        self.skew = dt.timedelta()  # exchange clock - wall clock, from the latest print
        self._skews: deque[float] = deque(maxlen=SKEW_PRINTS)  # the latest prints' skews, s
        self.skew_off = False  # the median skew is beyond SKEW_ALERT_S (told; re-armed within SKEW_REARM_S)
        self.skew_alerts = 0
        self._skew_since: dt.datetime | None = None  # market time the median went beyond SKEW_ALERT_S
        self._skew_seen = 0  # prints since then
        self._skew_back: dt.datetime | None = None  # market time it came back within SKEW_REARM_S (told)
        self._skew_told: dt.date | None = None  # the market day a person was last paged on
        self.on_skew: Callable[[str], None] | None = None  # a person is told (the live gateway on KST wall time)
        self.bad_prints = 0
        self.feed_health: dict[str, FeedHealth] = {}  # agent -> from its current session's latest heartbeat
        self.bars_closed = 0
        self.bar_store_failures = 0  # closed bars the bar store could not keep (published all the same)
        self.bar_store_error = ""  # the latest such failure, for people
        self.bar_store_failing = False  # the last write failed
        # where bars were closed by time, for the recording (replay closes them at the same point)
        self.on_clock: Callable[[dt.datetime], None] | None = None
        self.wall: Callable[[], dt.datetime] = now_kst  # a replay dates prints by its recording's clock
        # `wall` is the machine's clock (the live gateway on KST wall time): a step of it (NTP) is not the exchange's
        # time passing (`_bar_clock_bound`); `elapsed` (s) measures the time that did pass, a machine's sleep included
        self.wall_steps = False
        self.elapsed: Callable[[], float] = lambda: elapsed_ns() / 1e9
        self._skew_taken: tuple[dt.datetime, float] | None = None  # (exchange time, elapsed) at the latest print
        # (exchange time, elapsed) of the latest print whatever the clock: the day cycle holds a close while the
        # exchange still prints the session (a machine clock ahead of it)
        self.last_print: tuple[dt.datetime, float] | None = None
        self._step_told = False  # the step since the latest print was logged
        # KRX sessions: daily bars close when the day cycle has closed the day (close_daily), not by time
        self.hold_daily = rule is SessionRule.KRX
        self.daily_corrected = 0  # day bars the broker's daily chart corrected (prints we did not hear)
        self.daily_unconfirmed = 0  # day bars sent as built: the broker had no bar of the day for them
        # day bars neither the broker gave (an error, silence) nor our prints built: none sent at the close, asked
        # again until their next session opens (`_retry_daily`); lost: still none by then (that decision is gone)
        self.daily_missing = 0
        self.daily_lost = 0
        self._missing: dict[dt.date, set[str]] = {}  # day -> codes whose daily bar is asked again
        self._retries: dict[dt.date, asyncio.Task[None]] = {}  # day -> its task asking them (cancelled at `stop`)
        self.on_alert: Callable[[str, AlertKind], None] | None = None  # a person is told (the gateway's alerts)
        # code -> exchange time (naive KST) from which every print of it was heard: an intraday bucket that
        # started before it was not heard whole (a gateway restart, a code first subscribed mid-bucket, a
        # websocket gap, a registration released and taken again)
        self.heard_since: dict[str, dt.datetime] = {}
        # code -> (business day, its cumulative volume at the latest print heard): a print whose cumulative
        # volume before it is more than that follows prints we did not hear. None: prints of it were heard
        # that day, but its registration was released since (the count is forgotten: `released`)
        self._cum: dict[str, tuple[dt.date, int | None]] = {}
        # code -> exchange time (naive KST) since which its print registration has been live with no websocket
        # gap (`listening`, `feed_gap`; `released` ends it): every print of it since was heard, so the volume
        # the first print heard carries before its own traded before then
        self._live: dict[str, dt.datetime] = {}
        # the stream's liveness, for bars closed by time (`flush` with the session's state): the wall time of the
        # latest frame (print or book) heard, and of each code's latest print
        self._frame_at: dt.datetime | None = None
        self._print_at: dict[str, dt.datetime] = {}
        self._awaiting_gap = False  # the session was seen down: its reconnect's Gap is awaited (`feed_gap`)
        self._up_at: dt.datetime | None = None  # when it was seen up again meanwhile
        # (code, interval, start) of intraday buckets open across a websocket outage (`feed_gap`): partial
        self._gapped: set[tuple[str, str, str]] = set()
        self.bars_partial = 0  # buckets not published for being partial (prints of them missed)
        self.feed_gaps = 0  # prints heard after prints of the same code were missed (a reconnect, a release)
        self.bars_forgotten = 0  # stored daily bars dropped for a split (back-filled adjusted from the broker)
        self.bars_rescaled = 0  # stored intraday bars rescaled to the new shares by an applied split
        # code -> the exchange day a split of it was suspected (the reconciler's hook, `forget_history`)
        self._split_seen: dict[str, dt.date] = {}
        # (code, first day, last day) of a daily window with a hole -> the day the broker was asked to fill
        # it: its answer is the truth for that day (a halted code has no bar on a trading day), so the same
        # hole is not asked about on every GetBars
        self._hole_asked: dict[tuple[str, str, str], dt.date] = {}
        # code -> how many daily bars a split dropped (_drop_daily): the next daily window asked fetches that many
        # back, adjusted, not only its own n (the store kept 34 of 315 bars, and a backtest of it ran 34 days)
        self._refill: dict[str, int] = {}
        # (code, interval) -> (since when it was not heard, the earliest bucket start the broker's minute chart was
        # asked back to ("" the whole day), the bucket in progress then): an intraday window reaching back past an
        # unheard stretch (a restart, an outage) may hold holes; asked once per stretch, and once more after the
        # bucket straddling it closed (`_unheard`)
        self._unheard_asked: dict[tuple[str, str], tuple[dt.datetime, str, str]] = {}
        # (code, interval, agent) -> its back-fill running now (server/marketdata_requests.py: one at a time)
        self.backfills: dict[tuple[str, str, str], asyncio.Task[tuple[list[Bar], int]]] = {}
        # code -> the latest websocket outage's end that left buckets of it partial without a print telling so
        # (`feed_gap`): for `_unheard` only (heard_since is the prints' own account: moved, it dropped the bucket
        # of the reconnect even when the next print's count showed nothing missed)
        self._outage_until: dict[str, dt.datetime] = {}
        # told the codes whose intraday bars were lost (buckets dropped as partial: prints of them not heard),
        # so that agents rebuild windows built bar by bar from history, which the broker fills (`history`)
        self.on_bars_lost: Callable[[list[tuple[str, str]]], None] | None = None
        # nothing was heard by this process before (exchange time): set at the first flush (the gateway's clock is
        # wired after construction: a twin's or a replay's time is not the host's)
        self._born: dt.datetime | None = None
        self.closed_day = dt.date.min  # the newest day the day cycle closed (close_daily): its bar is history

    def day_close(self, code: str, day: dt.date) -> int:
        """The official close of `code` on `day` (0: not known): its daily bar's, which goes out only
        once the day cycle closed the day (close_daily, the broker's bar when it answered) and holds
        the regular session's prints only, so an after-hours print never moves it. The next session's
        band is centred on it (server/risk.py). KRX sessions only: the twin's all-day bars take every print."""
        if not self.hold_daily:
            return 0
        label = day.isoformat()
        got = self.store.last(code, DAILY, 1, (day + dt.timedelta(days=1)).isoformat())
        return got[0].close if got and got[0].start == label else 0

    def new_day(self, day: str = "") -> None:
        """A new trading day: the last print and book of a code are yesterday's, not news for an agent
        that subscribes before today's first print (a snapshot would hand them over as live); the last
        closed bars stay (history), and so do the topics' sequence numbers (gap detection)."""
        self.trades.clear()
        self.books.clear()
        self._hole_asked.clear()
        self._unheard_asked.clear()
        self._outage_until.clear()
        self._cum.clear()  # the day's cumulative volumes start again from zero

    def counters(self) -> dict[str, int]:
        return {
            "bars_closed": self.bars_closed,
            "bar_store_failures": self.bar_store_failures,
            "prints_outside_session": self.builder.excluded,
            "prints_late": self.builder.late,
            "prints_unusable": self.bad_prints,
            "daily_bars_corrected": self.daily_corrected,
            "daily_bars_unconfirmed": self.daily_unconfirmed,
            "daily_bars_missing": self.daily_missing,
            "daily_bars_lost": self.daily_lost,
            "bars_partial_dropped": self.bars_partial,
            "feed_gaps_seen": self.feed_gaps,
            "bars_forgotten": self.bars_forgotten,
            "bars_rescaled": self.bars_rescaled,
            "clock_skew_ms": round(statistics.median(self._skews) * 1000) if self._skews else 0,
            "clock_skew_alerts": self.skew_alerts,
        }

    # ---- clock ---------------------------------------------------------------------------------

    def _bar_clock_bound(self, exchange: dt.datetime) -> dt.datetime | None:
        """The bar clock's time when the machine's clock stepped ahead (NTP, an operator's date) since the latest
        print measured the skew: that print's exchange time plus the time that passed since (None: no step).
        Without it every open bar would close by the stepped clock, up to the step's length early, its later
        prints dropped as late (a quiet code's next print may be minutes away); the next print measures the skew
        again. A step back only holds bars until then."""
        if self._skew_taken is None:
            return None
        at, elapsed = self._skew_taken
        bound = at + dt.timedelta(seconds=self.elapsed() - elapsed)
        ahead = exchange - bound
        if ahead.total_seconds() * 1e9 <= STEP_NS:
            return None
        if not self._step_told:
            self._step_told = True
            log.warning(
                "the machine's clock is %.1fs ahead of the time that passed since the last print: bars close by "
                "the time that passed until the next print; check the machine's time sync (NTP)",
                ahead.total_seconds(),
            )
        return bound

    def exchange_now(self, wall: dt.datetime | None = None) -> dt.datetime:
        return (wall or self.wall()) + self.skew

    def _date_print(self, hhmmss: str, wall: dt.datetime, business_day: str = "") -> dt.datetime:
        """The print's KST datetime: its business day when the frame says it (BSOP_DATE, as KIS and the
        twin send it), else today's exchange date by our clock, corrected across midnight."""
        t_of_day = dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:6]))
        if len(business_day) == 8 and business_day.isdigit():
            return dt.datetime.combine(
                dt.date(int(business_day[:4]), int(business_day[4:6]), int(business_day[6:])), t_of_day, KST
            )
        guess = self.exchange_now(wall)
        t = dt.datetime.combine(guess.date(), t_of_day, KST)
        if t - guess > dt.timedelta(hours=12):
            t -= dt.timedelta(days=1)
        elif guess - t > dt.timedelta(hours=12):
            t += dt.timedelta(days=1)
        return t

    # ---- input -------------------------------------------------------------------------------

    def _pub(self, topic: str, body: PubBody) -> None:
        pub = self.publisher
        if pub is not None:
            if self._skips:
                self._skips -= 1
                pub.seq[topic] = pub.seq.get(topic, 0) + 1  # as if a message had been dropped
            self.seqs[topic] = pub.publish(topic, body)

    def inject_gap(self, messages: int = 8) -> None:
        """Operator/test fault: each of the next `messages` market-data messages is preceded by a 'lost'
        one (a sequence number used but nothing sent), so subscribers see gaps and must heal. Counted in
        messages, not time: on a loaded box a time window could pass before any message does."""
        self._skips = messages

    def on_trade(self, ev: Trade, wall: dt.datetime | None = None) -> None:
        tick = TradeTick(
            code=ev.code,
            time=ev.time,
            price=ev.price,
            qty=ev.qty,
            side=ev.side,
            cum_volume=ev.cum_volume,
            change=ev.change,
            ask1=ev.ask1,
            bid1=ev.bid1,
        )
        self.trades[ev.code] = tick
        self._pub(trade_topic(ev.code), tick)
        wall = wall or self.wall()
        self._frame_at = self._print_at[ev.code] = wall
        try:
            when = self._date_print(ev.time, wall, ev.date)
            self._heard(ev, when)
            closed = self.builder.on_trade(ev.code, when.date(), ev.time, ev.price, ev.qty)
        except (BarError, ValueError) as e:
            self.bad_prints += 1
            log.warning("print %s not used for bars: %s", ev, e)
            return
        self.skew = when - wall
        self.last_print = (when, self.elapsed())
        if self.wall_steps:
            self._skew_taken, self._step_told = (when, self.elapsed()), False
        self._watch_skew(self.skew.total_seconds(), when)
        self._emit(closed)

    def _heard(self, ev: Trade, when: dt.datetime) -> None:
        """Keep `heard_since` of the print's code: moved to the print when prints before it were missed.
        The first print heard of a business day missed the day's earlier ones if its cumulative volume is
        more than its own quantity (a restart, a code first registered mid-day; or, at the open, volume it
        never missed: ACML_VOL may count the 08:30-08:40 pre-market close-price session). When its
        registration is known live with no gap since a time at or before the print (`listening`), nothing of
        it was missed since then: `heard_since` is that time (before the open: every bucket of the session is
        whole, wherever the opening uncross lands; after it, the buckets that began before the registration
        are partial). Otherwise `heard_since` is the print's own time at or before the session's open, so the
        opening bars are whole, else the next second (prints earlier in its second were missed). The first
        print heard after a registration released and taken again is judged the same way. A later print
        missed some if its cumulative volume before it is more than the last one heard (a websocket gap),
        or, after a registration released and taken again, if it carries more than its own quantity: the
        missed prints may share its second, so a bucket starting in it is not whole either (`heard_since`
        is the next second). A print without a cumulative volume (0) tells nothing."""
        code, day = ev.code, when.date()
        known = self._cum.get(code)
        if known is not None and day < known[0]:
            return  # a print of an earlier business day: today's count is not its
        earlier = known is not None and known[0] == day  # prints of the code were heard before it today
        last = known[1] if known is not None and earlier else None
        missed = False
        if ev.cum_volume > 0:
            missed = ev.cum_volume - ev.qty > last if last is not None else ev.cum_volume > ev.qty
            self._cum[code] = (day, ev.cum_volume)
        if missed:
            live = self._live.get(code)
            if last is None and live is not None and live <= when.replace(tzinfo=None):
                # the first print heard since a registration live with no gap: what it carries before its own
                # traded before the registration (before the open: the pre-market session and the call)
                since = live
            else:
                # the day's first print at the open (its second holds nothing before it but the pre-market
                # session's volume) starts whole buckets; any other print after missed volume starts the next
                # second
                at_open = not earlier and _at_or_before_open(when)
                since = when.replace(tzinfo=None) + (dt.timedelta() if at_open else dt.timedelta(seconds=1))
            if last is not None:
                self.feed_gaps += 1
                log.info(
                    "%s: print at %s follows %d shares not heard (cumulative volume %d after %d): buckets "
                    "open across the gap are partial, not published",
                    code,
                    ev.time,
                    ev.cum_volume - ev.qty - last,
                    ev.cum_volume,
                    last,
                )
            self.heard_since[code] = max(since, self.heard_since.get(code, dt.datetime.min))
        elif code not in self.heard_since:
            self.heard_since[code] = dt.datetime.min  # the day's first print: nothing before it to miss

    def listening(self, code: str, wall: dt.datetime | None = None) -> None:
        """The code's print registration took effect (the broker acknowledged it) at `wall` (now): every
        print of it from then on is heard, until `released` or a websocket gap (`feed_gap`). The first print
        heard after it starts whole buckets from then (`_heard`): a registration live before the open keeps
        the opening bars whole wherever the uncross lands. Its time counts from LIVE_SLACK later (the
        exchange clock as we know it lags the exchange's). Only a caller that also tells every `feed_gap`
        may tell this: a gap nobody told would be read as the pre-market session's volume."""
        at = (self.exchange_now(wall) + LIVE_SLACK).replace(tzinfo=None)
        self._live[code] = max(at, self._live.get(code, at))  # taken again: live from the newer one only

    def feed_gap(
        self, wall: dt.datetime | None = None, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> None:
        """The real-time stream was down (the broker's Gap): no registration is known to be heard without a
        gap any more. The session registers its ledger again by itself after a reconnect, and a key it fails
        to register then and gets on a later retry comes back untold: taking every code as live again from
        the reconnect could read a missed stretch as the pre-market session's volume and publish a wrong
        opening bar. So each code is live again only from its next acknowledged registration (`listening`);
        until then its day's first print leaves its buckets partial, as before a registration was known.

        With the outage's wall times (`since`: its last frame heard, `until`: the reconnect), every intraday
        bucket open at `since` is partial (not published when it closes, counted in bars_partial_dropped):
        prints of it may have traded in the outage, and no print of its code after the reconnect told whether
        yet. A code with a print handled more than HEARD_AFTER after `since` (after the reconnect, or while
        prints flowed through an outage of the notice feed only) is left to its cumulative volume (`_heard`).
        A gap of no length (an order notice that did not read) missed no print."""
        self._live.clear()
        self._awaiting_gap, self._up_at = False, None  # its buckets are marked now: bars close by time again
        if since is None or until is None or until <= since:
            return
        heard = since + HEARD_AFTER
        gone = [
            b
            for b in self.builder.open_at(self.exchange_now(since))
            if b.code not in self._print_at or self._print_at[b.code] <= heard
        ]
        self._gapped.update((b.code, b.interval, b.start) for b in gone)
        back = self.exchange_now(until).replace(tzinfo=None)
        for code in {b.code for b in gone}:  # not heard whole before the reconnect: history fills it (_unheard)
            self._outage_until[code] = max(back, self._outage_until.get(code, dt.datetime.min))
        if gone:
            log.info(
                "websocket outage %s-%s: %d bars open across it are partial (not published): %s",
                f"{since:%H:%M:%S}",
                f"{until:%H:%M:%S}",
                len(gone),
                " ".join(sorted({f"{b.code}/{b.interval}@{b.start[11:]}" for b in gone})),
            )

    def released(self, code: str) -> None:
        """The code's print registration was released (its last holder left): prints are no longer heard.
        Its cumulative volume is forgotten (the first print heard after a new registration missed what
        traded meanwhile if it carries more than its own quantity; it is still not the day's first), and
        the buckets open now are partial (they close by time missing the prints after this): not published."""
        self._live.pop(code, None)  # not live until registered again (`listening`)
        known = self._cum.get(code)
        if known is not None:
            self._cum[code] = (known[0], None)
        now = self.exchange_now().replace(tzinfo=None)
        self.heard_since[code] = max(now, self.heard_since.get(code, dt.datetime.min))

    def forget_history(self, code: str, why: str) -> int:
        """A split of `code` is suspected (`why`: the reconciler found one in the balance; it may drop the
        suspicion later). Only its stored DAILY bars are dropped, with its last closed daily bar and its
        daily-hole answers: the next daily history request back-fills the broker's split-adjusted series
        (which, were there no split after all, is the same series), so a strategy on daily bars does not read
        the split as a crash while the operator has not applied it. Intraday bars are kept whole: the broker
        cannot give them again, and they are rescaled only when the operator confirms the split and its
        ratio (`split_applied`). The day is kept: the split's first session is not after it, unless the
        recorded prices show otherwise. Returns how many stored bars went."""
        self._split_seen[code] = self.exchange_now().date()
        gone = self._drop_daily(code)
        log.warning(
            "%s: %s: its %d stored daily bars dropped (back-filled split-adjusted from the broker); its intraday "
            "bars are kept until the split is applied",
            code,
            why,
            gone,
        )
        return gone

    def split_applied(self, code: str, num: int, den: int, why: str) -> SplitAdjusted:
        """The operator applied a split of `code` (`why`): 1 old share is num/den new ones. In one store
        transaction its daily bars are dropped (back-filled split-adjusted from the broker) and its intraday
        bars (every minute interval) dated before the split's first session are rescaled to the new shares:
        prices × den / num rounded to the nearest won (a half won up, at least 1 won), volumes × num / den
        rounded to the nearest share (a half up), the traded value unchanged (`server.barstore.split_price`
        and `split_volume`). No intraday bar is removed. The last closed bars of the code follow the store.
        The first session is found from the recorded prices (`_first_session`). Logged; returns what was done."""
        if num <= 0 or den <= 0 or num == den:
            raise ValueError(f"a split turns 1 share into num/den shares, not {num}/{den}")
        first, basis = self._first_session(code, num, den)
        dropped, rescaled = self.store.split(code, num, den, first, DAILY, MINUTES)
        self.closed.pop((code, DAILY), None)
        for key, b in list(self.closed.items()):
            if key[0] == code and b.interval in MINUTES and b.start < first:
                self.closed[key] = _split_bar(b, num, den)
        self._forget_holes(code)
        self._split_seen.pop(code, None)
        self.bars_forgotten += dropped
        self.bars_rescaled += rescaled
        done = SplitAdjusted(dropped, rescaled, first, basis)
        log.warning("%s: %s (%s → %s shares): %s", code, why, den, num, done.text)
        return done

    def _first_session(self, code: str, num: int, den: int) -> tuple[str, str]:
        """The split's first session ("YYYY-MM-DD") and how it was found. The price level of each day the
        code's intraday bars were recorded (the close of its latest bar; today's bars in progress too) is
        compared with the day before it recorded: of the steps no session's price limit allows (beyond ±30 %:
        SESSION_MOVE) and nearer the ratio (old ÷ new = num / den) than no change on a log scale, the one
        nearest the ratio is the split (a split halts trading: the step is of the ratio give or take a
        session's move). Without
        such a step the recorded days are one scale: the old shares' if every one is before the day the
        split was suspected (today, if not known: a restart), else the new shares' (nothing rescaled)."""
        levels = self.store.day_closes(code, MINUTES)
        live = [b for b in self.builder.current(code) if b.interval in MINUTES]
        if live:
            now = max(live, key=lambda b: b.start)
            day = now.start[:10]
            levels = [x for x in levels if x[0] < day] + [(day, now.close)]
        ratio = math.log(num / den)
        best: tuple[float, str, str] | None = None  # (distance from the ratio, first session, how)
        for (d0, p0), (d1, p1) in reversed(list(zip(levels, levels[1:]))):
            if p0 <= 0 or p1 <= 0 or SESSION_MOVE[0] * p0 <= p1 <= SESSION_MOVE[1] * p0:
                continue  # a move one session's price limit allows (a limit-down day is no split)
            step = math.log(p0 / p1)
            off = abs(step - ratio)
            if off < abs(step) and (best is None or off < best[0]):  # the step nearest the ratio, newest first
                best = (off, d1, f"the recorded closes step from {p0:,} on {d0} to {p1:,} on {d1}")
        if best is not None:
            return best[1], best[2]
        seen = self._split_seen.get(code) or self.exchange_now().date()
        if not levels or levels[-1][0] < seen.isoformat():
            return seen.isoformat(), f"no recorded day at the new shares' prices; the split was seen on {seen}"
        return levels[0][0], f"no step of the ratio in the recorded closes: all at the new shares' prices (seen {seen})"

    def _drop_daily(self, code: str) -> int:
        gone = self.store.delete(code, DAILY)
        if gone:  # (at most REFILL_MAX: ten pages of KIS's chart, 5 s at a paper account's 2 calls/s)
            self._refill[code] = min(REFILL_MAX, max(self._refill.get(code, 0), gone))
        self.closed.pop((code, DAILY), None)
        self._forget_holes(code)
        self.bars_forgotten += gone
        return gone

    def _forget_holes(self, code: str) -> None:
        for hole in [k for k in self._hole_asked if k[0] == code]:
            del self._hole_asked[hole]

    def _watch_skew(self, latest: float, at: dt.datetime) -> None:
        """Tell when the median of the latest prints' skews stayed beyond SKEW_ALERT_S for SKEW_PERSIST of
        market time (`at`: the print's exchange time) and SKEW_PRINTS prints; re-armed once it stayed within
        SKEW_REARM_S for SKEW_REARM_AFTER. The median is only worked out when the latest print could change
        the verdict (a print's hot path): a right clock with no offset pending costs a comparison. Not at all when
        nobody hears it (`on_skew` unset: the market's clock is not the host's -- a twin's replay clock, whose jumps
        read as the host being behind, and the log told to fix NTP)."""
        if self.on_skew is None:
            return
        self._skews.append(latest)
        if len(self._skews) < SKEW_PRINTS:
            return
        if self.skew_off:
            if abs(latest) >= SKEW_REARM_S or abs(statistics.median(self._skews)) >= SKEW_REARM_S:
                self._skew_back = None  # not back (yet): the wait starts again
            elif self._skew_back is None:
                self._skew_back = at
            elif at - self._skew_back >= SKEW_REARM_AFTER:
                self.skew_off, self._skew_back = False, None
                log.info("the host clock agrees with the exchange's again")
            return
        if self._skew_since is None and abs(latest) <= SKEW_ALERT_S:
            return
        median = statistics.median(self._skews)
        if abs(median) <= SKEW_ALERT_S:
            self._skew_since = None  # back within the limit: a lag burst, not the host's clock
            return
        if self._skew_since is None:
            self._skew_since, self._skew_seen = at, 0
        self._skew_seen += 1
        if at - self._skew_since < SKEW_PERSIST or self._skew_seen < SKEW_PRINTS:
            return
        self.skew_off, self._skew_since = True, None
        text = (
            f"the host clock is {abs(median):.1f} s {'behind' if median > 0 else 'ahead of'} the exchange's "
            f"(median of the last {SKEW_PRINTS} prints, for {SKEW_PERSIST.seconds} s): session phases, order "
            "timing and the day's close follow the host clock; fix its time sync (NTP/chrony). ktrader does not "
            "move the clock (status: clock_skew_ms)"
        )
        log.warning("%s", text)
        if self._skew_told == at.date():
            return  # a person was paged today already (it came back and went off again): the log has it
        self._skew_told = at.date()
        self.skew_alerts += 1
        if self.on_skew is not None:
            self.on_skew(text)

    def on_book(self, ev: Book, wall: dt.datetime | None = None) -> None:
        self._frame_at = wall or self.wall()  # a frame: the stream was live then (`flush`)
        tick = BookTick(
            code=ev.code,
            time=ev.time,
            asks=[(p, q) for p, q in ev.asks],
            bids=[(p, q) for p, q in ev.bids],
            total_ask_qty=ev.total_ask_qty,
            total_bid_qty=ev.total_bid_qty,
        )
        self.books[ev.code] = tick
        self._pub(book_topic(ev.code), tick)

    def flush(
        self, wall: dt.datetime | None = None, stream: SessionState | None = None, frame_age_s: float | None = None
    ) -> list[Bar]:
        """Close bars by time (called every second). With `stream`, the broker session's state now (the live
        gateway's bar clock), and `frame_age_s`, the seconds since its websocket last received a frame of any kind
        (None: the broker does not tell), only as far as the stream is known to have been live (`_live_through`):
        a bucket closed by time while the websocket is down would go out final without the outage's prints, and
        the first print after the reconnect, which tells they were missed, comes too late for it. The point
        bars were closed at is what a recording marks (a replay closes the same ones there)."""
        real = wall is None and self.wall_steps
        wall = wall or self.wall()
        exchange = self.exchange_now(wall)
        if self._born is None:
            self._born = exchange.replace(tzinfo=None)
        if stream is not None:
            through = self._live_through(wall, stream, frame_age_s)
            if through is None:
                return []
            exchange = min(exchange, self.exchange_now(through))
        if real and (bound := self._bar_clock_bound(exchange)) is not None:
            exchange = bound
        closed = self.flush_at(exchange)
        if closed and self.on_clock is not None:
            self.on_clock(exchange)
        return closed

    def _live_through(self, wall: dt.datetime, stream: SessionState, frame_age_s: float | None) -> dt.datetime | None:
        """The latest wall time the stream is known to have been live at (None: nothing closes by time now).
        Down (not connected, or its registrations being made again): none. Seen down, then up again: none
        until the Gap of the reconnect was handled (`feed_gap`: it marks the buckets open across the outage;
        a bar closed before that would go out whole), at most UP_SETTLE. Up (READY or DEGRADED): the
        websocket's last received frame of any kind (`frame_age_s` ago: everything sent before it arrived; a
        socket dead without a close frame receives none, so the buckets open then wait for the Gap); not told,
        the latest frame heard, and READY, also STREAM_SILENCE ago (a stream dead since then was dropped)."""
        if stream not in _STREAM_UP:
            self._awaiting_gap, self._up_at = True, None
            return None
        if self._awaiting_gap:
            self._up_at = self._up_at or wall
            if wall - self._up_at < UP_SETTLE:
                return None
            self._awaiting_gap, self._up_at = False, None
        through = self._frame_at
        if frame_age_s is not None:
            heard = wall - dt.timedelta(seconds=frame_age_s)
            return heard if through is None else max(through, heard)
        if stream is SessionState.READY:
            quiet = wall - STREAM_SILENCE
            through = quiet if through is None else max(through, quiet)
        return through

    def flush_at(self, exchange: dt.datetime) -> list[Bar]:
        """Close bars as of `exchange` time: a replay, at a recorded MarketClock mark."""
        closed = self.builder.flush(exchange, self.hold_daily)
        self._emit(closed)
        return closed

    async def close_daily(self, day: dt.date, broker: BrokerPort | None = None, codes: Iterable[str] = ()) -> list[Bar]:
        """The day cycle closed the day (the broker's last word taken, its orders expired): its daily
        bars go out now, so a strategy deciding on them sees the day's orders already ended, as in a
        backtest.

        The bar a strategy decides on is the exchange's, as a backtest's data is: with a broker that
        has charts, each day bar built from our prints is replaced by the broker's daily bar of the day
        (`codes`: also those we have no prints of, e.g. after a restart past the last print). The
        built bar misses whatever we did not hear: prints before a gateway restart, a websocket gap.
        Without an answer the built bar goes out, counted (`daily_bars_unconfirmed`)."""
        built = self.builder.close_daily(day)
        if self.hold_daily and broker is not None and Capability.CHARTS in broker.capabilities:  # KRX sessions
            built = await self._official(day, built, broker, set(codes))
        self._emit(built)
        # only now history holds the day: while the broker was asked, a warm-up holding it would have had its
        # on_bar as well
        self.closed_day = max(self.closed_day, day)
        return built

    async def _official(self, day: dt.date, built: list[Bar], broker: BrokerPort, codes: set[str]) -> list[Bar]:
        label, after = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
        ours = {b.code: b for b in built if b.start == label}
        out = [b for b in built if b.start != label]  # an earlier day's, closed late: as built
        # a code whose bar of the day went out already (the close run again: retried, or after a restart) gets none
        todo = [
            c
            for c in sorted(codes | set(ours))
            if not any(b.start == label for b in self.store.last(c, DAILY, 1, after))
        ]
        # a broker error or silence must not hold the day back: ours go out (an error is returned, not raised)
        answers = await self._chart_bars(broker, day, todo)
        missing: list[str] = []
        for code, official in zip(todo, answers):
            mine = ours.get(code)
            if isinstance(official, Exception):
                if mine is None:
                    log.warning(
                        "daily bar of %s %s: no answer from the broker (%r) and none built from our prints (none "
                        "heard): nothing sent",
                        code,
                        label,
                        official,
                    )
                    missing.append(code)
                    continue
                log.warning("daily bar of %s %s: no answer from the broker (%r); sending ours", code, label, official)
                official = None
            if official is None:
                if mine is not None:
                    self.daily_unconfirmed += 1
                    out.append(mine)
                continue  # the broker has none (halted that day) and we heard nothing: nothing to send
            if mine is not None and _ohlcv(mine) != _ohlcv(official):
                self.daily_corrected += 1
                log.info("daily bar of %s %s: the exchange's %s replaces ours %s", code, label, official, mine)
            out.append(official)
        if missing:
            self._ask_later(day, broker, missing)
        out.sort(key=bar_order)
        return out

    async def _chart_bars(self, broker: BrokerPort, day: dt.date, codes: list[str]) -> list[Bar | None | Exception]:
        """The broker's daily bar of `day` for each of `codes`, CHART_CALLS at a time: None when it answered
        without one (the code did not trade: halted), the error when it failed or stayed silent (CHART_TIMEOUT_S)."""
        limit = asyncio.Semaphore(CHART_CALLS)

        async def ask(code: str) -> Bar | None | Exception:
            async with limit:
                try:
                    got = await asyncio.wait_for(
                        broker.daily_bars(code, 1, day + dt.timedelta(days=1), caller="gateway"), CHART_TIMEOUT_S
                    )
                except Exception as e:
                    return e
            return next((b for b in got if b.start == day.isoformat()), None)

        return list(await asyncio.gather(*(ask(c) for c in codes)))

    # ---- daily bars the close could not send ----------------------------------------------------------

    def _ask_later(self, day: dt.date, broker: BrokerPort, codes: list[str]) -> None:
        """`codes` have no bar of `day` to send (no answer from the broker, no prints of ours): counted, and asked
        again by one task per day while its next session has not opened (`_retry_daily`)."""
        waiting = self._missing.setdefault(day, set())
        self.daily_missing += len(set(codes) - waiting)  # a close run again counts a code once
        waiting.update(codes)
        opens = self._next_open(day)
        if self.exchange_now() >= opens:
            self._give_up(day, opens)  # a day closed late, in its next session: too late for any decision on it
            return
        log.warning(
            "daily bars of %s not sent (%s): asked again until the next session opens at %s (ktrader status: "
            "daily_bars_missing)",
            day,
            " ".join(codes),
            f"{opens:%Y-%m-%d %H:%M}",
        )
        task = self._retries.get(day)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._retry_daily(day, broker), name=f"daily-bars-{day}")
            self._retries[day] = task
            task.add_done_callback(lambda t: self._retries.pop(day, None) if self._retries.get(day) is t else None)

    def _next_open(self, day: dt.date) -> dt.datetime:
        """When the session after `day` opens (its opening auction ends): from then an agent's next-session order
        goes a session later than the close's would, so a bar of `day` is history to it, no decision."""
        nxt = next_trading_day(day)
        hours = session_hours(nxt)
        return dt.datetime.combine(nxt, hours[0] if hours is not None else dt.time(9, 0), KST)

    async def _retry_daily(self, day: dt.date, broker: BrokerPort) -> None:
        """Ask the broker again for the daily bars of `day` still missing, with back-off; each one it gives goes
        out (published and stored) as at the close, one it answers without (halted) is dropped. Past the next
        session's open it gives up on the rest: told once, the decision on them is lost."""
        opens, wait = self._next_open(day), DAILY_RETRY_FIRST_S
        while self._missing.get(day) and (left := (opens - self.exchange_now()).total_seconds()) > 0:
            await asyncio.sleep(min(wait, left))
            wait = min(2 * wait, DAILY_RETRY_MAX_S)
            if self.exchange_now() < opens:
                await self._ask_again(day, broker)
        self._give_up(day, opens)

    async def _ask_again(self, day: dt.date, broker: BrokerPort) -> None:
        """One round of `_retry_daily`: what the broker answers is no longer missing."""
        waiting = self._missing.get(day, set())
        label, after = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
        codes = sorted(waiting)
        sent: list[Bar] = []
        for code, got in zip(codes, await self._chart_bars(broker, day, codes)):
            if isinstance(got, Exception):
                log.debug("daily bar of %s %s: still no answer from the broker (%r)", code, label, got)
                continue
            waiting.discard(code)
            if got is None:
                log.info("daily bar of %s %s: the broker has none (it did not trade): nothing to send", code, label)
            elif not any(b.start == label for b in self.store.last(code, DAILY, 1, after)):
                sent.append(got)  # (not one a close run again sent meanwhile)
        if sent:
            log.info("daily bars of %s sent late (the broker answered again): %s", label, sent)
            self._emit(sorted(sent, key=bar_order))

    def _give_up(self, day: dt.date, opens: dt.datetime) -> None:
        lost = sorted(self._missing.pop(day, set()))
        if not lost:
            return
        self.daily_lost += len(lost)
        more = f" (+{len(lost) - 10})" if len(lost) > 10 else ""
        text = (
            f"no daily bar of {day} went out for {' '.join(lost[:10])}{more}: the broker's daily chart gave "
            f"none for them before the next session opened ({opens:%Y-%m-%d %H:%M}), so agents deciding on daily "
            "bars lost that day's decision for these codes (history back-fills the bar later). Check the broker's "
            "REST access, and whether a position should change by hand (ktrader status: daily_bars_lost)"
        )
        log.warning("%s", text)
        if self.on_alert is not None:
            self.on_alert(text, AlertKind.STALE_MARKET_DATA)

    async def stop(self) -> None:
        """Cancel the daily bars still asked again and the history back-fills running (a stopping gateway)."""
        tasks = [*self._retries.values(), *self.backfills.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _partial(self, b: Bar) -> bool:
        """An intraday bar whose bucket began before its code's `heard_since`: prints of it were missed
        (before a restart, in a websocket gap, while unregistered), so its open/high/low/volume are not the
        exchange's."""
        if b.interval not in MINUTES:
            return False
        if (b.code, b.interval, b.start) in self._gapped:
            return True
        since = self.heard_since.get(b.code)
        return since is not None and dt.datetime.fromisoformat(b.start) < since

    def _emit(self, bars: list[Bar]) -> None:
        partial = [b for b in bars if self._partial(b)]
        if partial:
            # dropped, not sent as final: the agent gets no bar for the bucket rather than a wrong one
            self.bars_partial += len(partial)
            log.info("not publishing partial bars (prints of their buckets were missed): %s", partial)
            bars = [b for b in bars if b not in partial]
        for b in partial:
            self._gapped.discard((b.code, b.interval, b.start))  # judged: the mark is not needed any more
        if bars:
            for b in bars:
                self.closed[(b.code, b.interval)] = b
                self._pub(bar_topic(b.code, b.interval), b)
            self.bars_closed += len(bars)
            try:
                self.store.add(bars)
                self.bar_store_failing = False
            except Exception as e:  # a full disk must not stop the feed; the bars were published
                self.bar_store_failing = True
                self.bar_store_failures += 1
                self.bar_store_error = f"{type(e).__name__}: {e}"
                log.error("bar store write failed: %s", e)
        # each dropped bucket is a hole in its interval's windows, told as it drops, once per flush (a stretch drops
        # one per interval as each closes: told once for it, a 5m window rebuilt on the 1m's news never got the 5m
        # bucket), and after the flush's whole bars went out (an agent rebuilding on it has them; only agents on
        # that interval rebuild: the gateway's _bars_lost)
        if partial and self.on_bars_lost is not None:
            self.on_bars_lost(sorted({(b.code, b.interval) for b in partial}))

    # ---- snapshot ------------------------------------------------------------------------------

    def snapshot(self, codes: list[str]) -> list[MarketState]:
        out = []
        for code in codes:
            topics = [trade_topic(code), book_topic(code)] + [bar_topic(code, iv) for iv in self.builder.intervals]
            out.append(
                MarketState(
                    code=code,
                    trade=self.trades.get(code),
                    book=self.books.get(code),
                    bars=self.builder.current(code),
                    closed=[b for iv in self.builder.intervals if (b := self.closed.get((code, iv))) is not None],
                    seqs={t: self.seqs[t] for t in topics if t in self.seqs},
                )
            )
        return out

    # ---- history -------------------------------------------------------------------------------

    async def history(self, broker: BrokerPort, code: str, interval: str, n: int, caller: str) -> tuple[list[Bar], int]:
        """The newest `n` completed bars before the one in progress, oldest first, and how many were
        back-filled from the broker (its charts, under `caller`'s REST quota). Broker errors propagate."""
        if interval not in INTERVALS:
            raise BarError(f"unknown interval {interval!r}; known: {', '.join(INTERVALS)}")
        now = self.exchange_now()
        before = self.builder.open_start(code, interval) or _bucket_label(now, interval)
        if interval == DAILY:
            owed = min((d for d, codes in self._missing.items() if code in codes), default=None)
            if owed is not None:
                # a day's bar still owed (asked again until its next session opens, over a night or a weekend) is
                # not history yet: the retry publishes it (history storing it first, the retry took it as sent: it
                # never went out)
                before = min(before, owed.isoformat())
            elif self.hold_daily and (self.closed_day >= now.date() or self.day_close(code, now.date())):
                # the day cycle closed today: its bar is history now, stored or asked of the broker as a hole (a
                # warm-up at 16:00 ended a day behind until the next close)
                before = (now.date() + dt.timedelta(days=1)).isoformat()
        have = self.store.last(code, interval, n, before)
        if Capability.CHARTS not in broker.capabilities:
            return have, 0
        hole = self._daily_hole(code, interval, n, before, have, now.date()) if len(have) >= n else None
        unheard = self._unheard(code, interval, have, now, before) if len(have) >= n else None
        refill = self._refill.get(code, 0) if interval == DAILY else 0
        if len(have) >= n and hole is None and unheard is None and refill <= n:
            return have, 0
        reached_start = False
        if interval == DAILY:
            # today's bar is the builder's, complete only after the close (then `before` is the next day)
            fetched = await broker.daily_bars(code, max(n, refill), dt.date.fromisoformat(before), caller=caller)
            self._refill.pop(code, None)  # (answered: an error propagated above leaves it to ask again)
        else:
            # (a bucket more than the window: the chart may hold the minute in progress, and the oldest bucket
            # may be cut by the page limit)
            need = n * MINUTES[interval] + 2 * MINUTES[interval]
            ones, reached_start = await broker.minute_bars(
                code, need, now.date(), now.strftime("%H%M%S"), caller=caller
            )
            fetched = aggregate(ones, interval)
            if fetched and interval != "1m" and not reached_start:
                fetched = fetched[1:]  # the oldest bucket may miss minutes cut off by the page limit
        fetched = [b for b in fetched if b.start < before]
        if fetched:
            self.store.add(fetched)
        if hole is not None:  # answered (an error propagated above and leaves the hole to ask again)
            self._hole_asked[hole] = now.date()
        out = self.store.last(code, interval, n, before)
        if unheard is not None:  # answered: the stretch is the broker's now, back to the window's oldest bar
            # (and how far it reached: the bucket in progress then, which a later window may hold, is asked again)
            self._unheard_asked[(code, interval)] = (unheard, "" if reached_start or not out else out[0].start, before)
        return out, len(fetched)

    def _unheard(self, code: str, interval: str, have: list[Bar], now: dt.datetime, before: str) -> dt.datetime | None:
        """Since when `code` was not heard whole today when a full intraday window reaches back past it (a gateway
        restart, a websocket outage, a registration taken mid-day; a code this gateway has not heard today: since
        the open, or since its own start) and the broker's minute chart was not yet asked back that far, with the
        bucket that straddles it closed; else None. The store then has holes there (buckets never opened, partial
        ones dropped) or yesterday's bars in place of today's: served as is, a 12-bar window spans more than 12
        bars' time, and a copy of the strategy started later (whose window the broker filled) decides otherwise.
        KRX sessions only."""
        if interval == DAILY or not have or not self.hold_daily:
            return None
        hours = session_hours(now.date())
        if hours is None or now.time() <= hours[0]:
            return None  # no session today, or not opened yet: nothing of it to miss
        since = self.heard_since.get(code)
        if since is not None and since.date() == now.date():
            if _at_or_before_open(since):
                since = None  # heard whole from the open
        elif (known := self._cum.get(code)) is not None and known[0] == now.date():
            since = None  # heard today from its first print, nothing missed since
        else:  # not heard today by this process: all of today before its start, or since the open
            born = self._born or now.replace(tzinfo=None)
            since = max(dt.datetime.combine(now.date(), hours[0]), born)
        outage = self._outage_until.get(code)
        if outage is not None and outage.date() == now.date():
            since = outage if since is None else max(since, outage)
        if since is None or dt.datetime.fromisoformat(have[0].start) >= since:
            return None  # the window is all heard
        first = max(have[0].start, now.date().isoformat())  # (the minute chart holds today only)
        asked = self._unheard_asked.get((code, interval))
        straddle = _bucket_label(since, interval)  # dropped as partial when it closes: filled only after that
        if (
            asked is not None
            and asked[0] == since
            and first >= asked[1]
            and (straddle < asked[2] or straddle >= before)
        ):
            return None  # filled, and the straddling bucket with it, or still open (in no window yet)
        log.info(
            "%s %s history reaches back past %s (prints not heard before): filled from the broker",
            code,
            interval,
            f"{since:%H:%M:%S}",
        )
        return since

    def _daily_hole(
        self, code: str, interval: str, n: int, before: str, have: list[Bar], today: dt.date
    ) -> tuple[str, str, str] | None:
        """The window's key when a full-count daily window misses a trading day of the KRX calendar and the
        broker was not yet asked to fill it today; else None. A day nobody subscribed the code, or a
        gateway down over a close, leaves no bar: served as is, an n-day SMA would span the wrong days.
        The window is the `n` trading days before `before` (today's session, open or not yet closed by
        the day cycle, is never in it). Cheap when nothing is missing: calendar arithmetic only."""
        if interval != DAILY or not self.hold_daily or n <= 0:
            return None  # the calendar means nothing to the twin's all-day clock (its days are synthetic)
        day = dt.date.fromisoformat(before[:10])
        days: list[str] = []
        for _ in range(n):
            day = previous_trading_day(day)
            days.append(day.isoformat())
        if not set(days) - {b.start for b in have}:
            return None
        key = (code, days[-1], days[0])
        if self._hole_asked.get(key) == today:
            return None  # asked already today: what the broker has not got did not trade (a halt)
        log.info("daily history of %s %s..%s misses trading days: back-filled from the broker", code, days[-1], days[0])
        return key


def _split_bar(b: Bar, num: int, den: int) -> Bar:
    """`b` in the new shares after a split of 1 old share → num/den (as BarStore.split rescales it)."""
    return Bar(
        code=b.code,
        interval=b.interval,
        start=b.start,
        open=split_price(b.open, num, den),
        high=split_price(b.high, num, den),
        low=split_price(b.low, num, den),
        close=split_price(b.close, num, den),
        volume=split_volume(b.volume, num, den),
        value=b.value,
    )


def _ohlcv(b: Bar) -> tuple[int, int, int, int, int]:
    return b.open, b.high, b.low, b.close, b.volume


def _bucket_label(now: dt.datetime, interval: str) -> str:
    """The label of the bar `now` falls in (history stops before it even when no print opened it)."""
    if interval == DAILY:
        return now.date().isoformat()
    size = MINUTES[interval]
    m = (now.hour * 60 + now.minute) // size * size
    return f"{now.date().isoformat()}T{m // 60:02d}:{m % 60:02d}"
