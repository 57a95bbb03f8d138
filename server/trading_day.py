"""The trading day, acted on: `server.daycycle` decides from the market clock what is due, this runs it.

- a new date: day P&L, base prices and order numbering roll; the new day's reconciliation expires
  what earlier days left open; agents are told the day (they number orders by it);
- while the session takes orders: held next-session orders are released (or expired unsent);
- at each card's `schedule.end`: the agent's end-of-day policy (cancel / flatten / hold), then
  reduce-only for the rest of the day (a flatten's sells wait for a broker session that is not ready,
  stepped at each tick, and are held for the next session if the market closes first: never dropped); a
  policy whose time passed while no gateway ran is alerted, its cancels still sent (the day's own orders:
  not the next-session orders placed after its time) and a flatten's sells held for the next session's
  open (promised sells are kept in the store until queued);
- after the close: the broker's final word (reconcile), expiry of what is left of the day, the daily
  report. A close that fails is tried again with back-off (never every tick: each try is a reconciliation
  pass); a trading day the gateway ran but never closed (down over its close, or failing until midnight)
  is closed late at the next start or day: its missed policies are worked out too, and the held orders of
  agents with an order of that day still open wait for it. An approved agent not registered over the close
  whose policy had something to do (shares or held orders) is told to a person then, once, and nothing is
  sold for it (it may have been stopped on purpose): registering after midnight (Saturday, Monday morning)
  it found its day's policy forgotten, its shares carried untold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import msgspec

from common import approvals
from common.clock import date_of, elapsed_ns, yyyymmdd
from common.config import AgentCard, EndOfDay
from common.enums import AlertKind, OrderType, Side, SystemEventKind, TimeInForce
from common.krx import Phase, SessionTimes
from common.krx_rules import rules_for
from common.market_clock import MarketClock, WallClock
from common.orders import AWAITING_ACK, CANCELLABLE, OrderState, is_gateway_exit
from common.portfolio import shares_text
from common.protection import Protection
from common.schema import AgentPerformance, Notice
from kis.port import BrokerAccount, DayBand
from server import cash_check, daily_report, protection
from server.cash_check import CashCheck
from server.daycycle import CLOSE_SETTLE, RANK, DayCycle, ends_at_close, policy_time
from server.order_book import OrderBook
from server.order_desk import OrderDesk, gateway_sell
from server.reconcile import ReconcileResult
from server.reconciler import Reconciler
from server.risk import RiskGate
from server.send_queue import Priority

log = logging.getLogger("ktrader.day")
# an approved agent is judged not running over a close only this long (market time) after the gateway began
# looking: restarted after the close, its agents register within seconds (the operator's offline_after_s is 10 s)
ABSENT_GRACE = dt.timedelta(seconds=60)

CLOSE_FAILURES_ALERT = 3  # failed closes of a day before a person is told
# a failed close is tried again after 5 s, 10 s, 20 s ... at most 5 min apart: each try is a whole
# reconciliation pass (and KIS blocks keys that call in a tight loop), and the day stays closable
CLOSE_RETRY_FIRST_S, CLOSE_RETRY_MAX_S = 5.0, 300.0

# the base prices are fetched again from this time of a trading day (before its opening auction, 08:30 on a
# normal day, where held orders are released), and a code's value counts as the day's once fetched from then
# on; what failed is tried again 15 s, 30 s ... 2 min later, past the auction too, until every code the day
# trades has its confirmed value (or the day's trading is over): a night's value kept all day bands today's
# prints and orders around yesterday's base (after a limit-up day every print above yesterday's close dropped)
MORNING_REFRESH = dt.time(8, 0)
# a clock this far ahead of the exchange's (its prints' whole seconds, their delivery's delay) does not hold the
# close: the close then runs at least CLOSE_SETTLE - this after KRX's close, past its closing auction's random end
CLOCK_AHEAD_TOLERANCE = dt.timedelta(seconds=30)
FEED_WAIT_S = 120.0  # a start that finds the day over by its clock waits this long for the feed's first print
MORNING_RETRY_FIRST_S, MORNING_RETRY_MAX_S = 15.0, 120.0
# a code whose prints (or books) land outside its band (server/md_sanity.py drops them as outside_band) has its
# base price fetched again, at most this often: its base may be stale; a feed sending bad prices all day must not
# turn into a fetch per print (KIS blocks keys that call in a tight loop)
BAND_RECHECK_S = 300.0

# agent -> the day of its missed flatten whose next-session sells are not queued yet (they wait for its
# cancels): kept in the store with the policy's mark, so a restart meanwhile still queues them
MISSED_FLATTEN_KEY = "eod:missed_flatten"
# a missed flatten's sells still not queued this long before the next session's opening call (08:25 on a
# normal day) reach a person: they would not be sold at the open as the alert promised
MISSED_SELLS_ALERT_BEFORE = dt.timedelta(minutes=5)
# the states a missed policy cancels (OrderDesk.cancel_all's)
_CANCELS = CANCELLABLE | AWAITING_ACK | {OrderState.HELD, OrderState.PENDING_REPLACE}

Publish = Callable[[SystemEventKind, str, str], None]


class BasePrices:
    """Today's base price (band centre) per code, fetched from the broker: once a day (`ensure`), again from
    the morning on until each value is confirmed (`refresh`, TradingDay._morning_refresh), and again for a
    code whose prints land outside its band (TradingDay.outside_band)."""

    def __init__(self, book: OrderBook, fetch: Callable[[str], Coroutine[Any, Any, int | DayBand]]) -> None:
        self.book = book
        self.fetch = fetch
        self._day = ""
        # codes with a fetch in flight, each with what an `ensure` of it waits on: a fetch another caller started
        # counts as its own (the second universe agent told of a joining code was told before its base price came:
        # market buys refused)
        self._asking: dict[str, asyncio.Event] = {}
        # codes whose value was fetched from MORNING_REFRESH of the day on: the broker has rolled its day by
        # then (a fetch at midnight may still get yesterday's base: when KIS rolls is UNCONFIRMED)
        self._confirmed: set[str] = set()
        # the day's P&L values a carried position at today's base once it is known to be today's (an ex-rights
        # or ex-dividend day's base is below yesterday's close: common/portfolio.py day_unrealized); it keeps
        # what it worked out, told of each code confirmed (_confirm) and of the day's roll (the prices cleared)
        book.portfolio.base_is_today = self.is_today
        # (code, base): a value confirmed as today's (the gateway compares it with the last close: a corporate
        # action changes the price scale of the code's history)
        self.on_confirmed: Callable[[str, int], None] | None = None

    def is_today(self, code: str) -> bool:
        """`code`'s base price is today's (fetched this morning, this market day): one set lookup, the set
        emptied when the day rolls (`roll`, at every day tick and before every fetch)."""
        return code in self._confirmed

    def missing(self, codes: list[str]) -> list[str]:
        self.roll()
        prices = self.book.portfolio.base_prices
        return [c for c in codes if c not in prices and c not in self._asking]

    def unconfirmed(self, codes: list[str]) -> list[str]:
        """The codes whose value is not confirmed for today (missing, or fetched before the morning), none
        with a fetch in flight."""
        self.roll()
        return [c for c in codes if c not in self._confirmed and c not in self._asking]

    def roll(self) -> None:
        """A new market day: yesterday's values and confirmations go (TradingDay.tick asks at every tick)."""
        day = self.book.day()
        if day != self._day:
            self._day = day
            self._confirmed.clear()
            self.book.portfolio.base_prices.clear()  # (the day's P&L starts of carried positions move with it)
            self.book.portfolio.published.clear()

    def _confirm(self, code: str) -> None:
        first = code not in self._confirmed
        self._confirmed.add(code)
        self.book.portfolio.base_confirmed(code)
        base = self.book.portfolio.base_prices.get(code, 0)
        if first and base and self.on_confirmed is not None:
            try:
                self.on_confirmed(code, base)
            except Exception:  # the base stands whatever a listener makes of it
                log.exception("base price of %s: its listener failed", code)

    def _settled(self) -> bool:
        """Whether a value fetched now is the day's for sure (a clock whose time of day means nothing: it is)."""
        clock = self.book.clock
        return not clock.timed or clock.now().time() >= MORNING_REFRESH

    async def _today(self, code: str) -> int:
        """The broker's base price of `code`, 0 when unavailable or when the day rolled meanwhile (the
        order path still works without it: the broker checks the band too). The day's limits the broker
        published with it (DayBand) are kept beside it (Portfolio.published), or forgotten when it gave none."""
        try:
            got = await self.fetch(code)
        except Exception as e:
            log.warning("base price of %s unavailable: %s", code, e)
            return 0
        band = got if isinstance(got, DayBand) else DayBand(base=got)
        if band.base <= 0 or self.book.day() != self._day:
            return 0
        pf = self.book.portfolio
        limits = band.published()
        # kept only where they are not the rules' band of the base (a new listing's first day): an ordinary day's
        # band stays the rules' alone, whatever an answer carries
        if limits is not None and limits != pf.rules.price_limits(band.base, pf.kind(code), pf.board(code)):
            pf.published[code] = limits
        else:
            pf.published.pop(code, None)
        return band.base

    async def refresh(self, codes: list[str]) -> list[str]:
        """Fetch again and replace (the morning's second look: see TradingDay.tick; a code whose prints land
        outside its band). A value that changed since the last fetch is logged: the broker had not rolled its
        day yet then. Returns the codes whose fetch failed (their earlier value, if any, stays)."""
        self.roll()
        prices = self.book.portfolio.base_prices
        failed: list[str] = []
        for code in codes:
            settled = self._settled()
            mine = self._start(code)
            try:
                price = await self._today(code)
            finally:
                self._end(code, mine)
            if price:
                old = prices.get(code)
                if old is not None and old != price:
                    log.warning(
                        "base price of %s was %s at the last fetch, %s now: the new one holds", code, old, price
                    )
                prices[code] = price
                if settled:
                    self._confirm(code)
            else:
                failed.append(code)
        return failed

    def _start(self, code: str) -> asyncio.Event | None:
        """A fetch of `code` begins: the event its waiters wait on, when this fetch is the one they wait for (None:
        another fetch of it runs, and its end releases them)."""
        if code in self._asking:
            return None
        done = self._asking[code] = asyncio.Event()
        return done

    def _end(self, code: str, mine: asyncio.Event | None) -> None:
        """The fetch that `_start` gave `mine` ended: its waiters go on (a fetch that joined another, or ended
        already, releases nobody: a later fetch of the code has waiters of its own)."""
        if mine is not None and self._asking.get(code) is mine:
            del self._asking[code]
            mine.set()

    async def ensure(self, codes: list[str]) -> None:
        """Fetch the codes' base prices not known yet; returns once every one of them is known or was asked (by
        this call or by one already running for it)."""
        prices = self.book.portfolio.base_prices
        running = [e for c in codes if (e := self._asking.get(c)) is not None]
        # all of them at once: the morning's fetch does not ask again what waits here
        todo = {code: self._start(code) for code in self.missing(codes)}
        try:
            for code, mine in todo.items():
                settled = self._settled()
                try:
                    price = await self._today(code)
                finally:
                    self._end(code, mine)
                if price:
                    prices[code] = price
                    if settled:
                        self._confirm(code)
        finally:
            for code, mine in todo.items():
                self._end(code, mine)  # (those not reached: a cancelled ensure releases its waiters)
        for e in running:
            await e.wait()


class TradingDay:
    def __init__(
        self,
        clock: MarketClock,
        book: OrderBook,
        desk: OrderDesk,
        risk: RiskGate,
        recon: Reconciler,
        base_prices: BasePrices,
        cards: Callable[[], list[AgentCard]],
        publish: Publish,
        request_reconcile: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        run_dir: Path,
        alerts_of_day: Callable[[str], list[str]] = lambda day: [],
        # (day, KRW each agent traded that day, each agent's (realised, fees) at its end or None) -> the report's
        # performance figures, the day's row of each agent written first (server/operator.py)
        performance: Callable[
            [str, dict[str, int], dict[str, tuple[int, int]] | None], dict[str, AgentPerformance]
        ] = lambda day, traded, end: {},
        close_bars: Callable[[dt.date], Awaitable[object]] | None = None,
        protections: Callable[[], list[Protection]] = list,
        account: Callable[[], Awaitable[BrokerAccount]] | None = None,
        alert: Callable[[str, AlertKind | None], None] = lambda text, kind: None,
        counters: MutableMapping[str, int] | None = None,
        approved: approvals.ApprovedCards | None = None,
        day_close: Callable[[str, dt.date], int] = lambda code, day: 0,  # a code's official close of a day (0: none)
        last_print: Callable[[], tuple[dt.datetime, float] | None] = lambda: None,
        alerts_reported: Callable[[str], None] = lambda day: None,
    ) -> None:
        # status counters (ktrader status): end_of_day_missed, days_closed_late
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}
        self.account = account  # the broker's account summary (the day's money: server/cash_check.py)
        self._cash_checked: dict[str, CashCheck | None] = {}
        self.alert = alert
        self.clock = clock
        self.book = book
        self.desk = desk
        # the day a fill counts in (the account's traded value of the day, lined up with the broker's: common/
        # portfolio.py set_account_cash): its order's, the day it was sent, whenever the fill is booked
        book.portfolio.order_day = lambda o: book.order_day.get(o.client_order_id, "")
        desk.held_back = self._held_back  # (also the release an agent's own held order starts)
        desk.sell_next_session = self._sell_next_session  # an end-of-day flatten whose sells come after the close
        self.risk = risk
        self.recon = recon
        self.base_prices = base_prices
        self.cards = cards
        self.publish = publish
        self.request_reconcile = request_reconcile
        self.spawn = spawn
        self.run_dir = run_dir
        self.alerts_of_day = alerts_of_day
        self.alerts_reported = alerts_reported  # (its report written: the next one's alerts start from then)
        self.performance = performance
        self.close_bars = close_bars  # the day's daily bars, once its orders are over
        self.last_print = last_print  # (exchange time, elapsed s) of the latest print heard, None: none
        # the host's clock (KIS's), which can be wrong: a close waits for the exchange's word (`_exchange_in_session`)
        self.wall = isinstance(clock, WallClock)
        # when this start first decided on the day (its books agreeing with the broker): the feed's prints can come
        # from then on, not from the process's start (a KIS start's retries took minutes before any print could)
        self._started_at: float | None = None
        self.elapsed: Callable[[], float] = lambda: elapsed_ns() / 1e9  # (last_print's clock: MarketData.elapsed)
        self._close_held_told = ""  # the day a close held for the exchange's prints was told
        self.day_close = day_close
        self.protections = protections
        self.cycle = DayCycle(book.store)
        self._closing = False
        self._clock_back_told = False  # the clock's step back to an earlier day was logged (once per step)
        self.monotonic: Callable[[], float] = time.monotonic  # back-off waits are real time (tests move it)
        self._absent_since: dt.datetime | None = None  # the market time absent agents were first looked for
        self._absent_told: set[tuple[str, str]] = set()  # (day, agent) told as not running over its close
        self._close_retry_at: dict[str, float] = {}  # day -> monotonic time its close may be tried again
        self._late = ""  # an earlier trading day this gateway ran and never closed: closed before today's business
        # the earlier day closed late today (or being closed): its policies missed are worked out for agents
        # seen today before today's own end-of-day takes over (kept in the store: `eod_late:<today>`)
        self._late_policies = ""
        self._morning_busy = False  # a morning fetch in flight
        self._morning_day = ""  # the day the retry state below is of
        self._morning_at = 0.0  # monotonic time of the next morning try (after a failure)
        self._morning_wait = MORNING_RETRY_FIRST_S
        self._band_recheck_at: dict[str, float] = {}  # code -> monotonic time its base may be fetched again (band)
        # agents whose flatten was missed -> its day: their next-session sells wait for that day's open
        # orders to end (in the store too: MISSED_FLATTEN_KEY)
        raw = book.store.get_meta(MISSED_FLATTEN_KEY)
        self._missed_flatten: dict[str, str] = msgspec.json.decode(raw, type=dict[str, str]) if raw else {}
        self._missed_told: set[tuple[str, str]] = set()  # (agent, day) whose sells not queued at pre-open were told
        # the operator's approved cards (common/approvals.py): a missed flatten's sells are sized by the card the
        # agent would trade under, without waiting for it to register again (the registry is empty after a start).
        # The gateway's own view, bound to its environment and account: a card approved for another account never
        # sizes sells on this one (a view of its own, for tests without a gateway, holds every approval)
        self._approved = approved if approved is not None else approvals.ApprovedCards(run_dir)
        self.missed_policies = 0  # end-of-day policies that never ran at their time (alerted)
        # called with the market time at every tick, synced or not (the calendar's own watch)
        self.on_tick: list[Callable[[dt.datetime], None]] = []
        # what else starts the day afresh, as a gateway started that day would (market data, notices...)
        self.on_new_day: list[Callable[[str], None]] = []
        # the stored closes before `day` of the codes the books hold (the gateway's bar store): what a price at the
        # day's start is compared with (Portfolio.close_before_today) where the books had none (a morning's start)
        self.closes_before: Callable[[str], Mapping[str, int]] | None = None
        self.reports_written = 0
        self.close_errors = 0
        self._close_failures: dict[str, int] = {}  # day -> failed closes (a person is told at the third)

    def _day_span(self, day: str) -> tuple[daily_report.DaySpan | None, bool]:
        """Each agent's (realised, fees) totals at `day`'s start and end, once the book has rolled past
        it (a close that ran past midnight, or a day closed late): the portfolio's day totals are the
        new day's by then. The flag: the new day starts from that end (see close_day)."""
        if self.book.day() == day:
            return None, False
        start = self._day_start(day)
        if start is None:
            log.warning("day %s: its start of day totals are not stored: the report's P&L is the new day's", day)
            return None, False
        if self.book.fills_today and self.clock.phase() not in (Phase.PRE_OPEN, Phase.CLOSED):
            # the new day traded already (a late close after a restart in its session): its fills are not
            # this day's; this day ends where the new one started (its own fills booked since count there)
            end = self._day_start(self.book.day())
            if end is not None:
                return (start, end), False
        # the end: the totals now, with the fills the close's own reconciliation booked after midnight
        # (nothing traded since); the new day starts from them
        return (start, self.book.portfolio.totals()), True

    def _day_start(self, day: str) -> dict[str, tuple[int, int]] | None:
        """Each agent's (realised, fees) totals at `day`'s start, as stored (None: not stored)."""
        saved = self.book.store.get_meta(f"day_start:{day}")
        return {k: (int(v[0]), int(v[1])) for k, v in msgspec.json.decode(saved).items()} if saved else None

    def _keep_day_start(self, day: str, start: dict[str, tuple[int, int]]) -> None:
        self.book.store.set_meta(f"day_start:{day}", msgspec.json.encode(start).decode())

    def roll_pnl(self, day: str) -> None:
        """Realised P&L and fees count per day from each agent's totals at the day's start
        (persisted, so a restart in the day keeps them)."""
        saved = self._day_start(day)
        if saved is not None:
            self.book.portfolio.roll_day(saved, day=day, afresh=False)  # (the day's start as stored)
            return
        start = self.book.portfolio.roll_day(day=day)
        with self.book.store.transaction():
            self._keep_day_start(day, start)

    def tick(self) -> None:
        now, phase = self.clock.now(), self.clock.phase()
        day = yyyymmdd(now.date())
        first, previous = not self.cycle.day, self.cycle.day
        if self._clock_went_back(day):
            return
        ensuring = False
        self.base_prices.roll()  # (whether a base is today's is a set lookup: the set goes with the day, here)
        if self.cycle.roll(day):
            self.book.roll_day(day)  # earlier days' finished orders let go, today's fills counted afresh
            self.book.portfolio.rules = rules_for(now.date())  # the day's tick grid, band and taxes
            self.roll_pnl(day)
            if self.closes_before is not None:
                try:
                    self.book.portfolio.fill_closes_before(self.closes_before(day))
                except Exception:  # (only the off-scale check of the day's first prints is poorer)
                    log.exception("the closes before %s could not be read", day)
            self.risk.end_of_day = self.cycle.cleaned  # one set: the day cycle persists it, the gate reads it
            self.publish(SystemEventKind.TRADING_DAY, "", day)  # agents number their orders by the gateway's day
            if not first:
                log.info("new trading day %s", day)
                self.request_reconcile("new day")  # expires what is left of earlier days
                if day > previous:  # (a replay's clock jumps back from today to its recorded day at its first frame)
                    for fn in self.on_new_day:
                        try:
                            fn(day)
                        except Exception:  # one part's bug must not keep the others from the new day
                            log.exception("new day %s: %s failed", day, getattr(fn, "__qualname__", fn))
                self.spawn(self.base_prices.ensure(self._tradable_codes()))
                ensuring = True  # (the morning's fetch waits a tick: it would ask for the same codes again)
            # a day this gateway ran but never closed (down over its close, or its close failed until
            # midnight): closed now, before the new day's business (tried below once the books agree). One
            # still failing at this roll is kept (today's close leaves its orders open: it is not closed)
            if not self._late or self._late >= day or self.cycle.is_closed(self._late):
                self._late = self.cycle.unclosed_before(day, lambda d: self._day_start(d) is not None)
            self._late_policies = self._late or self.book.store.get_meta(f"eod_late:{day}")
            if self._late:
                log.warning("day %s was never closed: closing it now (report, daily bars, its orders)", self._late)
                if self.book.store.get_meta(f"eod_late:{day}") != self._late:
                    with self.book.store.transaction():  # (a restart today still knows whose policies to see to)
                        self.book.store.set_meta(f"eod_late:{day}", self._late)
        for watch in self.on_tick:
            try:
                watch(now)
            except Exception:  # a watch's bug must not stop the day
                log.exception("day tick %s failed", getattr(watch, "__qualname__", watch))
        if not ensuring:
            self._morning_refresh(now, day)
        if not self.recon.synced:
            return  # nothing is decided before the books agree with the broker
        if self._late and self.cycle.is_closed(self._late):
            self._late = ""
        if self._late:
            self._start_close(self._late)
        if self._late_policies:
            self._late_missed(phase)
        held = sorted({o.code for o in self.book.held.values() if o.valid_day == day})
        if held and (missing := self.base_prices.missing(held)):
            self.spawn(self.base_prices.ensure(missing))  # market buys are valued at the day's upper limit
        released, expired = self.desk.release_due()
        if released or expired:
            log.info("next-session orders: %d released, %d expired unsent", released, expired)
        self.desk.step_flattens()  # end-of-day flattens whose sells waited for the broker session (or the close)
        due = self.cycle.due(now, phase, self.clock.timed, self.cards(), lambda: self._absent_cards(self.cycle.cleaned))
        # the exchange still in the session by its prints (a clock ahead): neither a close nor missed policies yet
        early = bool(due.close_day or due.missed) and self._exchange_in_session(day)
        if early:
            due.missed, due.close_day = [], False
        for card in due.missed:
            self.missed_end_of_day(card)
        if self._missed_flatten:
            self._queue_missed_sells()
            self._missed_sells_due(now)
        for card in due.cleanup:
            self.end_of_day(card)
        if due.close_day:
            self._start_close(day)

    def _exchange_in_session(self, day: str) -> bool:
        """(the host's clock: KIS's) The machine's clock says `day`'s session is over, but the exchange's time -- its
        latest print's, plus the time that passed since it was heard -- is more than CLOCK_AHEAD_TOLERANCE behind
        it and not yet past the close and its settle: the clock is ahead of KRX, and closing now would expire orders
        still working at KIS (out of reach of cancels and the kill switch, as the books say them ended) and publish
        mid-session bars as the day's (a hunt: a clock 32 min fast closed the day at 15:00 by KRX). Counted from the
        print, not only while prints come: the closing call prints nothing for ten minutes. With no print heard yet,
        a start waits FEED_WAIT_S for the feed's first (a clock hours ahead at a start closed the day at once, and a
        day is closed once: its real close never ran). A person is told once a day."""
        if not self.wall:
            return False
        got = self.last_print()
        if got is None:
            if self._started_at is None:
                self._started_at = self.elapsed()
            return self.elapsed() - self._started_at < FEED_WAIT_S
        at, heard = got
        if yyyymmdd(at.date()) != day:
            return False
        exchange = at + dt.timedelta(seconds=max(self.elapsed() - heard, 0.0))
        if self.clock.now() - exchange <= CLOCK_AHEAD_TOLERANCE:  # (whole-second prints, their delivery's delay)
            return False
        try:
            if exchange >= SessionTimes(at.date()).close + CLOSE_SETTLE:
                return False
        except ValueError:
            return False
        if self._close_held_told != day:
            self._close_held_told = day
            self.alert(
                f"the machine's clock says the session of {day} is over ({self.clock.now():%H:%M:%S} KST), but the "
                f"exchange's prints put it at {exchange:%H:%M:%S}: the day is closed (and end-of-day policies not "
                "seen to are worked out) once its close has passed there; set the machine's time right (NTP): "
                "orders are judged by its clock",
                AlertKind.GATEWAY_FAULT,
            )
        return True

    def _clock_went_back(self, day: str) -> bool:
        """The machine's clock stepped back to an earlier day (NTP over midnight): the trading day never goes
        backwards. Rolling back would restart the agents' order numbering on a day whose finished orders were
        let go at midnight (ids reused, stored rows overwritten). Nothing is done until the clock reaches the
        trading day again; told once per step. A replay's clock (untimed) jumps back to its recorded day."""
        current = self.cycle.day
        if not current or day >= current or not self.clock.timed:
            self._clock_back_told = False
            return False
        if not self._clock_back_told:
            self._clock_back_told = True
            log.warning(
                "the machine's clock went back from %s to %s: the trading day stays %s and nothing of the day"
                " cycle runs until the clock reaches it again; check the machine's time sync (NTP)",
                current,
                day,
                current,
            )
        return True

    def _morning_refresh(self, now: dt.datetime, day: str) -> None:
        """Base prices fetched at midnight, when the broker may not have rolled its day yet (when it does
        is UNCONFIRMED), are fetched again from 08:00, before the day's opening auction where held orders
        are released; what failed is asked again with back-off, past the auction too (the night's value is
        not kept all day), until every code the day trades has a value fetched from 08:00 on. A code added
        later (a registration, a universe) is fetched then, so confirmed at once unless that fails."""
        if not self.clock.timed or self._morning_busy or now.time() < MORNING_REFRESH:
            return
        try:
            if now >= SessionTimes(now.date()).end:
                return  # the day's trading is over
        except ValueError:  # not a trading day
            return
        if self._morning_day != day:
            self._morning_day = day
            self._morning_at, self._morning_wait = 0.0, MORNING_RETRY_FIRST_S
        if self.monotonic() < self._morning_at:
            return
        codes = self.base_prices.unconfirmed(self._tradable_codes())
        if not codes:
            return
        self._morning_busy = True
        self.spawn(self._refresh_bases(codes))

    async def _refresh_bases(self, codes: list[str]) -> None:
        try:
            failed = await self.base_prices.refresh(codes)
        except Exception as e:  # (refresh logs each code's failure; anything else is one too)
            log.warning("morning base prices: %s", e)
            failed = codes
        finally:
            self._morning_busy = False
        if not failed:
            self._morning_at, self._morning_wait = 0.0, MORNING_RETRY_FIRST_S
            return
        self._morning_at = self.monotonic() + self._morning_wait
        log.warning(
            "base prices of %d codes not confirmed for today (%s...): asked again in %.0f s",
            len(failed),
            ", ".join(failed[:3]),
            self._morning_wait,
        )
        self._morning_wait = min(self._morning_wait * 2, MORNING_RETRY_MAX_S)

    def outside_band(self, code: str) -> None:
        """A print or book of `code` landed outside the band of its base price (server/md_sanity.py drops it
        as outside_band): the base may be stale (the night's, fetched before the broker rolled its day), so it
        is fetched again, at most once per BAND_RECHECK_S per code (the gateway's market-data loop calls this)."""
        if code not in self.book.portfolio.base_prices:
            return  # no base: no band was checked
        now = self.monotonic()
        if now < self._band_recheck_at.get(code, 0.0):
            return
        self._band_recheck_at[code] = now + BAND_RECHECK_S
        self.spawn(self._recheck_base(code))

    async def _recheck_base(self, code: str) -> None:
        if await self.base_prices.refresh([code]):
            log.warning("base price of %s (prints outside its band) unavailable: asked again later", code)

    def _open_of(self, day: str) -> set[str]:
        """The agents with an order of `day` (or earlier) still open at the broker, as far as we know
        (held orders are not: they were never sent)."""
        book = self.book
        return {
            o.agent
            for c, o in book.orders.items()
            if o.is_open and o.state is not OrderState.HELD and book.order_day.get(c, day) <= day
        }

    def _held_back(self) -> set[str]:
        """The agents whose held orders no release touches now: those with an order of an unclosed earlier
        day still open (in flight or in the close's back-off): it may have filled at that day's close while
        nobody listened, so their next-session orders wait for that day's list to be read (others go)."""
        return self._open_of(self._late) if self._late else set()

    def _late_missed(self, phase: Phase) -> None:
        """The late day's end-of-day policies that never ran (its stored set), worked out for each agent
        seen once that day's orders of the agent have ended (what filled at that day's close is known): at
        the late close, or when it registers later, until today's own end of day takes over."""
        late = self._late_policies
        if phase is not Phase.CLOSED and RANK[phase] > RANK[Phase.CLOSING_AUCTION]:
            return  # today's own missed policy covers an agent seen from now on (sells at the next session)
        done, today = self.cycle.cleaned_on(late), self.cycle.cleaned
        seen = [*self.cards(), *self._absent_cards(done | today)]
        todo = [card for card in seen if card.id not in done and card.id not in today]
        if not todo:
            return
        waiting = self._open_of(late)
        for card in todo:
            if card.id not in waiting:
                self.missed_end_of_day(card, late)

    def _absent_cards(self, done: set[str]) -> list[AgentCard]:
        """The operator's approved cards of agents not registered (not shadow), not in `done`, whose end-of-day
        policy had something to do: shares held, or a held next-session order (its day orders end at the close, as
        shares if they filled; the held set is small: this is asked at every tick while a late day's policies are
        seen to). Seen to as missed at the close (DayCycle.due, _late_missed): a person is told once, nothing is
        sold (`_tell_absent`), where an agent registering after midnight found its day's policy forgotten untold."""
        now = self.clock.now()
        if self._absent_since is None:
            self._absent_since = now
        if now - self._absent_since < ABSENT_GRACE:  # a gateway just started: its agents are coming back
            return []
        registered = {card.id for card in self.cards()}
        # (a shadow agent's books are virtual: an offline one's missed flatten risks no money and pages nobody; its
        # virtual shares are carried overnight, as its record then shows)
        shadow = self.book.portfolio.virtual
        self._approved.refresh()
        cards: list[AgentCard] = []
        for agent, approval in sorted(self._approved.cards.items()):
            if agent in registered or agent in done or agent in shadow:
                continue
            if not approvals.same_owner(approval.owner, self._approved.owner):
                continue  # approved for another account
            if approval.card.schedule.end_of_day is not EndOfDay.HOLD and not (
                self.clock.timed and ends_at_close(approval.card, now.date())
            ):
                cards.append(approval.card)
        if not cards:
            return []
        positions = self.book.portfolio.positions
        busy = {c.id for c in cards if any(p.qty > 0 for p in positions.get(c.id, {}).values())}
        if len(busy) < len(cards):
            busy.update(o.agent for o in self.book.held.values())
        return [card for card in cards if card.id in busy]

    def _late_closes(self, day: str) -> dict[str, int] | None:
        """A day closed late (the book rolled past it): what is held valued at that day's official closes (the bars
        the close just sealed), not at the prices of the session it is closed in; a code without one is valued at
        its mark, said. None: today's close, at the marks (the closing prints)."""
        if day == self.book.day():
            return None
        closes = {c: self.day_close(c, date_of(day)) for c in self.book.portfolio.held_codes()}
        if unknown := sorted(c for c, v in closes.items() if not v):
            log.warning(
                "day %s closed late: no official close of %s (the broker's daily bar did not come): valued at the "
                "last price heard in its report",
                day,
                ", ".join(unknown[:5]) + ("..." if len(unknown) > 5 else ""),
            )
        return closes

    def _start_close(self, day: str) -> None:
        """Close `day` now unless a close is in flight or its last failure's back-off has not passed."""
        if self._closing or self.monotonic() < self._close_retry_at.get(day, 0.0):
            return
        self._closing = True
        self.spawn(self._close_with_back_off(day))

    async def _close_with_back_off(self, day: str) -> None:
        await self.close_day(day)
        if self.cycle.is_closed(day):
            self._close_retry_at.pop(day, None)
            if day < self.book.day():  # (past midnight, or at a later start)
                self.counters["days_closed_late"] = self.counters.get("days_closed_late", 0) + 1
            return
        failed = max(self._close_failures.get(day, 1), 1)
        wait = min(CLOSE_RETRY_FIRST_S * 2 ** (failed - 1), CLOSE_RETRY_MAX_S)
        self._close_retry_at[day] = self.monotonic() + wait
        log.info("closing day %s: tried again in %.0f s", day, wait)

    def _tradable_codes(self) -> list[str]:
        """The band's base is needed for every code an agent may trade today: its card's and its universe's."""
        codes = {c for card in self.cards() for c in card.codes}
        codes.update(c for listed in self.risk.extra_codes.values() for c in listed)
        codes.update(o.code for o in self.book.held.values())  # (a protective exit, a code that left a universe)
        # what is held, by an agent not running too (its stops' exits are priced in the day's band)
        codes.update(self.book.portfolio.held_codes())
        return sorted(codes)

    def end_of_day(self, card: AgentCard) -> None:
        policy = card.schedule.end_of_day
        # the policy and its mark in one durable write: a crash between a kept flatten and its mark restored the
        # flatten AND ran the policy as missed, holding two sets of next-session sells
        with self.book.store.transaction():
            if policy is EndOfDay.CANCEL:
                # its protective exits go on, as the operator's cancel_all leaves them (cancelled, the protection placed
                # them again at the back of a lower-limit queue: a hunt)
                n = self.desk.cancel_all(card.id, spare_exits=True)
            elif policy is EndOfDay.FLATTEN:
                # kept until its sells are out (a broker session not ready: they wait) or held for the next session
                # (the market closed first): the desk keeps it in the store with the policy's mark
                n = self.desk.flatten(card, "end of day: flatten", keep=True)
                self.cycle.mark_flattened(card.id)
            else:
                n = 0
            self.cycle.mark_cleaned(card.id)
        pending = policy is EndOfDay.FLATTEN and card.id in self.desk.flattening
        what = (
            f"{n} orders so far; its sells go once its orders are closed and the broker session takes them, or are "
            "held for the next session if the market closes first"
            if pending
            else f"{n} orders"
        )
        self.book.notify(
            card.id, Notice(level="info", text=f"end of day: {policy.value} ({what}); reducing only until tomorrow")
        )
        self.publish(SystemEventKind.END_OF_DAY, card.id, policy.value)
        log.info("end of day for %s: %s (%d orders)", card.id, policy.value, n)

    def missed_end_of_day(self, card: AgentCard, day: str = "") -> None:
        """The session of `day` (today's by default; an earlier day's closed late) ended and `card`'s
        end-of-day policy never ran (no gateway at its `schedule.end`): the day's own orders are left to
        the close, which ends them (a cancel sent after its start raced the closing auction's match, or
        KIS refused it: the orders were already over); a cancel cancels the next-session orders placed
        before its time, a flatten so and holds market sells of the agent's positions for the next
        session's open (sized once the day's orders have ended); a person is told when it mattered (orders
        open through the close, or positions). A cancel or hold whose end is at or after the close missed
        nothing (its policy is the close's expiry: `policy_due`). Today's: the agent reduces only until
        tomorrow, as after its policy."""
        policy = card.schedule.end_of_day
        day = day or self.cycle.day
        if card.id not in {c.id for c in self.cards()}:
            self._tell_absent(card, day)
            return
        if self.clock.timed and ends_at_close(card, date_of(day)):
            with self.book.store.transaction():
                self.cycle.mark_cleaned_on(day, card.id)
            if day == self.cycle.day:
                self.publish(SystemEventKind.END_OF_DAY, card.id, policy.value)
            log.info(
                "end of day %s for %s: %s at the close (schedule.end %s)", day, card.id, policy.value, card.schedule.end
            )
            return
        through = self._open_through_close(card.id, day) if policy is not EndOfDay.HOLD else 0
        cancels = self._missed_cancels(card, day) if policy is not EndOfDay.HOLD else 0
        held = self.book.portfolio.holding(card.id)
        flatten = policy is EndOfDay.FLATTEN and bool(held)
        with self.book.store.transaction():
            # the promised sells are stored with the mark: sized once its cancels have ended (as the
            # desk's flatten), and a restart meanwhile must not lose them (the mark says it was done)
            if flatten:
                self._missed_flatten[card.id] = day
                self._save_missed_flatten()
            if policy is EndOfDay.FLATTEN:  # (holding nothing now: a fill read later leaves shares the close holds)
                self.cycle.mark_flattened(card.id, day)
            self.cycle.mark_cleaned_on(day, card.id)
        if day == self.cycle.day:  # (an earlier day's: today is not the agent's end of day)
            self.publish(SystemEventKind.END_OF_DAY, card.id, policy.value)
        if not cancels and not flatten and not through:
            log.info("end of day %s for %s: %s missed, nothing to do", day, card.id, policy.value)
            return
        self.missed_policies += 1
        self.counters["end_of_day_missed"] = self.missed_policies
        what = []
        if through:
            what.append(
                f"{through} orders of the day were open through the close, not cancelled before it (what filled in the "
                "closing auction is kept; the close ended the rest)"
            )
        if cancels:
            what.append(f"{cancels} next-session orders placed before its end cancelled")
        if flatten:
            shares = shares_text(held)
            if day != self.cycle.day and self._session_open():
                what.append(f"its positions ({shares}) are sold at market now (today's session is open)")
            else:
                what.append(
                    f"its positions ({shares}) are held overnight and sold at market at the next session's open"
                )
        of = "" if day == self.cycle.day else f" of {day}"
        text = (
            f"{card.id}: end-of-day policy '{policy.value}'{of} (schedule.end {card.schedule.end}) did not run at "
            f"its time (no gateway, or the agent not registered, then); {'; '.join(what)}"
        )
        self.alert(text, AlertKind.GATEWAY_FAULT)  # a person must know what the card promised did not happen
        self.book.notify(card.id, Notice(level="warning", text=f"end of day missed: {'; '.join(what)}"))

    def _tell_absent(self, card: AgentCard, day: str) -> None:
        """An approved agent not running over `day`'s close whose policy had something to do: a person is told
        (once a gateway run), nothing is sold or cancelled for it -- it may have been stopped on purpose, and the
        gateway acts for an agent that is not running only through its protective orders and the operator. Not
        marked done: if it registers later (a gateway restarted after the close, its agents coming back), its
        missed policy is worked out then as any registered agent's."""
        if (day, card.id) in self._absent_told:
            return
        self._absent_told.add((day, card.id))  # (not marked done: registering later, its missed policy still runs)
        policy = card.schedule.end_of_day
        held = self.book.portfolio.holding(card.id)
        waiting = sum(1 for o in self.book.held.values() if o.agent == card.id)
        what = [f"holds {shares_text(held)}"] if held else []
        if waiting:
            what.append(f"has {waiting} next-session orders waiting")
        of = "" if day == self.cycle.day else f" of {day}"
        self.alert(
            f"{card.id} was not running at its end of day{of} (schedule.end {card.schedule.end}): its policy "
            f"'{policy.value}' did not run and it {' and '.join(what)} overnight; nothing was sold or cancelled for "
            f"it. Start the agent, or flatten it from the console or with: ktrader control flatten --agent {card.id}",
            AlertKind.AGENT_OFFLINE,
        )

    def _missed_cancels(self, card: AgentCard, day: str) -> int:
        """A missed policy's cancels: the agent's held orders placed before the policy's time (what `cancel_all` at its
        end would have cancelled). A held order placed after it (an agent registering in the evening places tomorrow's
        buy) is a decision for the next session; the day's working orders are the close's (`_open_through_close`)."""
        cutoff_ns = self._policy_ns(card, day)
        n = 0
        for c, o in list(self.book.held.items()):
            if o.agent == card.id and o.created_ns < cutoff_ns and self.desk.cancel(card.id, c, exits=True)[0] is None:
                n += 1
        return n

    def _policy_ns(self, card: AgentCard, day: str) -> int:
        """When `card`'s policy of `day` was due (`policy_time`), whole seconds as ns: orders are told apart by it."""
        return int(policy_time(card, date_of(day), self.clock.timed).timestamp()) * 1_000_000_000

    def _session_open(self) -> bool:
        """Today's session takes orders now, past its opening call: a missed flatten of an earlier day sells in it."""
        return self.clock.phase() in (Phase.CONTINUOUS, Phase.CLOSING_AUCTION)

    def _open_through_close(self, agent: str, day: str) -> int:
        """The agent's orders of `day` still open in the books when its missed policy is worked out: past the session,
        the close ends them (its expiry), whatever filled in the closing auction first."""
        book = self.book
        return sum(
            1
            for c, o in book.orders.items()
            if o.agent == agent
            and o.state in _CANCELS
            and o.state is not OrderState.HELD
            and book.order_day.get(c) == day
        )

    def _save_missed_flatten(self) -> None:
        self.book.store.set_meta(MISSED_FLATTEN_KEY, msgspec.json.encode(self._missed_flatten).decode())

    def flatten_sells_held(self, agent: str) -> int:
        """The sells a flatten of the agent's placed for the next session (held; not its protective exits): what a
        reload away from 'flatten' leaves in force (cancel_all pulls them)."""
        return sum(
            1
            for o in self.book.held.values()
            if o.agent == agent and is_gateway_exit(o) and not self.desk.placed_again(o.client_order_id)
        )

    def drop_missed_flatten(self, agent: str) -> bool:
        """A reload away from 'flatten': the sells its missed flatten promised for the next session, not queued yet,
        are not (True: there was such a promise)."""
        if agent not in self._missed_flatten:
            return False
        with self.book.store.transaction():
            del self._missed_flatten[agent]
            self._save_missed_flatten()
        return True

    def _sells_card(self, agent: str, registered: dict[str, AgentCard]) -> AgentCard | None:
        """The card a missed flatten's sells are sized by: the registered agent's, else its approved card (the
        one it would trade under), else the last card the gateway kept for it (the desk's card_of)."""
        card = registered.get(agent)
        if card is None and (approval := self._approved.get(agent)) is not None:
            card = approval.card
        return card if card is not None else self.desk.card_of(agent)

    def _missed_sells_due(self, now: dt.datetime) -> None:
        """Sells a missed flatten promised for the next session's open, still not queued shortly before its
        opening call (no card for the agent anywhere, or its orders of that day still open): a person is told,
        once a day per agent, while there is time to sell by hand. (A broker still down then is alerted as such.)"""
        if not self._missed_flatten or not self.clock.timed:
            return
        try:
            call = SessionTimes(now.date()).auction_open
        except ValueError:  # not a trading day
            return
        today = yyyymmdd(now.date())
        if now < call - MISSED_SELLS_ALERT_BEFORE:
            return
        registered = {card.id: card for card in self.cards()}
        for agent, day in sorted(self._missed_flatten.items()):
            if day >= today or (agent, today) in self._missed_told:
                continue
            self._missed_told.add((agent, today))
            if self._sells_card(agent, registered) is None:
                why = "no card is known for the agent: not approved, never registered"
            else:
                why = f"its orders of {day} are still open at the broker"
            self.alert(
                f"{agent}: the sells its missed flatten of {day} promised for the next session's open are not "
                f"queued ({why}): sell by hand, or flatten it once the session opens",
                AlertKind.GATEWAY_FAULT,
            )

    def _queue_missed_sells(self) -> None:
        registered = {card.id: card for card in self.cards()}
        for agent, day in list(self._missed_flatten.items()):
            card = self._sells_card(agent, registered)
            if card is None:
                continue  # (no card anywhere: told before the next session's open, _missed_sells_due)
            if agent in self._open_of(day):
                continue  # its cancels first (a cancel can lose the race to a fill): the sells are sized after
            # an earlier day's, worked out with today's session already open (a gateway back mid-session): its "next
            # session" is today's, so it sells now; held, its sells waited for the session after, and today's own
            # flatten waited on them and sold nothing (a review: carried through Friday and the weekend, untold)
            now_open = self._session_open()
            with self.book.store.transaction():  # queued and no longer promised, durable together
                del self._missed_flatten[agent]
                self._save_missed_flatten()
                if now_open:
                    # the desk's kept flatten, as an end of day's: the agent's orders cancelled first, its sells wait
                    # for a broker session still connecting (a gateway just started), unsold ones held at the close
                    n = self.desk.flatten(card, "end of day (missed): flatten now", keep=True)
                    self.cycle.mark_flattened(agent)  # (what is unsold at today's close is held and told then)
                else:
                    n = self._sell_next_session(card, "end of day (missed): flatten at the next session")
            log.info(
                "end of day %s for %s: flatten missed, %d sells %s",
                day,
                agent,
                n,
                "of a flatten started now (the session is open)" if now_open else "held for the next session",
            )

    def _hold_unsold_flattens(self, day: str) -> None:
        """After the close's expiry: an agent whose end-of-day flatten ran today and still holds shares -- its market
        sells expired unsold (a code locked at its lower limit all afternoon, or halted) -- has them held for the next
        session's open, as a flatten that came after the close; a person is told (the card promised no position
        overnight; the sells' expiry alone said nothing). Shares a held sell already covers (a protective exit placed
        again for the open) are left to it; run again (a close tried twice), it finds them covered."""
        registered = {card.id: card for card in self.cards()}
        for agent in sorted(self.cycle.flattened_on(day)):
            # (an agent stopped after its flatten, or not online at the close, too: the flatten the gateway started
            # for it is finished as a missed one is, by its card: the registered one, else the approved one)
            card = self._sells_card(agent, registered)
            if (
                card is None
                or card.schedule.end_of_day is not EndOfDay.FLATTEN
                or agent in self._missed_flatten  # (its own sells are queued for the open)
                or self.desk.is_flattening(agent)  # (the desk holds them itself once its orders are closed)
                or not (left := self._unsold(agent))
            ):
                continue
            why = "end of day: flatten (unsold at the close)"
            with self.book.store.transaction():
                n = self._sell_next_session(card, why)
            self.alert(
                f"{agent}: end of day: flatten: its sells did not sell everything by the close ({shares_text(left)} "
                f"left: {self._flatten_ended(card, day)}): held overnight, {n} market sells held for the next "
                "session's open",
                AlertKind.NOT_SENT,
            )

    def _flatten_ended(self, card: AgentCard, day: str) -> str:
        """How the end-of-day flatten's sells of `card`'s agent on `day` (the gateway's, placed from its policy's time
        on) ended short, for a person: refused (the broker's word: one sent after the close is refused as outside
        trading hours) and/or unfilled at the close (a lock, a halt)."""
        book, agent = self.book, card.id
        since = self._policy_ns(card, day)
        sells = [
            o
            for c, o in book.orders.items()
            if o.agent == agent
            and is_gateway_exit(o)
            and book.order_day.get(c) == day
            and o.created_ns >= since
            and o.state is not OrderState.HELD
        ]
        refused = [o for o in sells if o.state in (OrderState.REJECTED, OrderState.DENIED)]
        said = []
        if refused:
            o = refused[-1]
            said.append(
                f"{len(refused)} of its sells refused, the last {o.reason_code or o.state.value}: {o.reason[:120]}"
            )
        if not refused or any(
            o.state not in (OrderState.REJECTED, OrderState.DENIED, OrderState.FILLED) for o in sells
        ):
            said.append("unfilled at the close: a code locked at its lower limit, or halted?")
        return "; ".join(said)

    def _unsold(self, agent: str) -> dict[str, int]:
        """code -> shares `agent` holds that none of its held sells (for a next session) covers, nor a market sell the
        gateway has working for it (a missed flatten selling in today's session, when an earlier day closes late; a
        protective limit exit resting below the market covers nothing: it may never fill)."""
        out = self.book.portfolio.holding(agent)
        for o in self.book.held.values():
            if o.agent == agent and o.side is Side.SELL and o.code in out:
                out[o.code] -= o.remaining
        for o in self.book.orders.values():
            if (
                o.agent == agent
                and o.is_open
                and o.state is not OrderState.HELD
                and o.order_type is OrderType.MARKET
                and is_gateway_exit(o)
                and o.code in out
            ):
                out[o.code] -= o.remaining
        return {c: q for c, q in out.items() if q > 0}

    def _sell_next_session(self, card: AgentCard, why: str) -> int:
        """Market sells of all `card`'s agent holds, held for the next session (TimeInForce.NEXT_SESSION:
        the desk releases them at the open): the desk's flatten, for a market that is closed. Numbered
        as the gateway's own orders (sent first at the release), each at most the order-value limit."""
        book, agent = self.book, card.id
        positions = sorted(
            (p for p in book.portfolio.positions.get(agent, {}).values() if p.qty > 0), key=lambda p: p.code
        )
        missing = [p.code for p in positions if p.code not in card.codes]
        acting = msgspec.structs.replace(card, codes=[*card.codes, *missing]) if missing else card
        day = book.clock.now().date()
        n = book.last_gateway_number(agent)
        sent = 0
        unsold = self._unsold(agent)  # (shares its held sells cover are theirs: not sold twice, not 'missing')
        for pos in positions:
            want = unsold.get(pos.code, 0)
            if want <= 0:
                continue
            have = book.portfolio.exit_qty(agent, pos.code, want)  # what the account still holds (see exit_qty)
            if have < want:
                self.alert(
                    f"{agent}: {why}: {want - have} of its {pos.qty} {pos.code} are not in the account (sold "
                    "outside ktrader: see the 'external is short' alert): sell or buy back by hand",
                    AlertKind.NOT_SENT,
                )
            if have <= 0:
                continue
            unit = book.portfolio.notional_price(Side.SELL, 0, pos.code)
            fit = self.risk.fitting_qty(card, have, unit)
            if fit <= 0:
                self.alert(
                    f"{agent}: {why}: one share of {pos.code} is worth more than the order-value limit: sell by hand",
                    AlertKind.GATEWAY_FAULT,
                )
                continue
            left = have
            while left > 0:
                n += 1
                qty = min(fit, left)
                mark = book.portfolio.marks.get(pos.code, 0)
                new = gateway_sell(agent, day, n, pos.code, qty, TimeInForce.NEXT_SESSION, why, mark)
                res = self.desk.submit(acting, new, priority=Priority.PROTECT)
                if not res.accepted:
                    self.alert(
                        f"{agent}: {why}: sell of {qty} {pos.code} denied: {res.code} {res.message}: sell by hand",
                        AlertKind.GATEWAY_FAULT,
                    )
                    break
                left -= qty
                sent += 1
        return sent

    async def close_day(self, day: str) -> None:
        """After the close: the broker's final word, then expiry of what is left, then the report. For
        an earlier day (closed past midnight, or late at a start) the pass settles that day's open
        orders against that day's own order list and expires them (Reconciler._settle_earlier_days);
        one whose list could not be read stays open, so the close fails and is tried again."""
        try:
            close = await self.recon.run("close")
            if day == self.book.day():
                # the day's own orders only: an earlier day's kept open (its list unread: the close pass
                # keeps them) is settled by that day's late close, never expired unchecked by this one
                earlier = {
                    c for c, o in self.book.orders.items() if o.is_open and self.book.order_day.get(c, day) < day
                }
                self.recon.expire_through(day, keep=earlier)
                self.desk.release_due(wait=())  # held orders for today that never went out expire now
                self._hold_unsold_flattens(day)
            elif left := [
                c
                for c, o in self.book.orders.items()
                if o.is_open and o.state is not OrderState.HELD and self.book.order_day.get(c) == day
            ]:
                # (not expired unchecked: they may have filled at that day's close while nobody listened)
                raise RuntimeError(f"{len(left)} orders of {day} still open: that day's order list was not read")
            else:  # a day closed late (past midnight, at a later start): its flatten's sells were settled by the pass
                self._hold_unsold_flattens(day)
            if self.close_bars is not None:
                await self.close_bars(date_of(day))
            # the day's orders from the store: the book may have rolled to the next day meanwhile (a
            # close that waited on the broker past midnight) and let this day's finished orders go
            timed = self.book.clock.timed  # (the twin's "open" clock has no KRX hours: every order is its day's)
            stored = daily_report.StoredDay.read(self.book.store, day, timed)
            span, reroll = self._day_span(day)
            report = daily_report.build(
                day,
                stored,
                self.book.portfolio,
                self.alerts_of_day(day),
                self.performance(day, daily_report.traded_by_agent(stored, day), span[1] if span is not None else None),
                # (the desk's view is today's: an earlier day's, closed late, is read from the store)
                self.protections() if day == self.book.day() else protection.of_day(self.book.store, day),
                day_span=span,
                timed=timed,
                closes=self._late_closes(day),
                held=list(self.book.held.values()),
            )
            report.cash = await self._cash_check(day, stored, close)
            path = daily_report.write(report, self.run_dir)
            with self.book.store.transaction():
                self.cycle.mark_closed(day)
                self.alerts_reported(day)
                # the new day counts from the old one's end (its late fills are not its), and its carried
                # positions from what they are now (the late fills changed them): taken afresh, kept
                if span is not None and reroll:
                    today = self.book.day()
                    self._keep_day_start(today, self.book.portfolio.roll_day(span[1], day=today, afresh=True))
            self.reports_written += 1
            self.publish(SystemEventKind.DAY_CLOSED, "", day)
            log.info("day %s closed: %d orders expired, report %s", day, report.expired_at_close, path)
        except Exception as e:  # retried on the next tick
            self.close_errors += 1
            log.warning("closing day %s failed: %s; will retry", day, e)
            failed = self._close_failures[day] = self._close_failures.get(day, 0) + 1
            if failed == CLOSE_FAILURES_ALERT:
                self.alert(
                    f"closing day {day} failed {failed} times ({e}): no report, bars or cash check yet; retrying "
                    f"with back-off, at most {CLOSE_RETRY_MAX_S / 60:.0f} min apart (ktrader status: day_close_errors)",
                    AlertKind.GATEWAY_FAULT,  # a person must look: it was only on the screen
                )
        finally:
            self._closing = False

    async def _cash_check(self, day: str, stored: daily_report.StoredDay, close: ReconcileResult) -> CashCheck | None:
        """The day's traded value and costs, books against the broker (server/cash_check.py); what
        differs is told once. Only on the day itself (after midnight the broker's 'today' is the next
        day), and only once the close pass left nothing unconfirmed (a fill notice of the closing auction
        still inside the grace, or a value still to be corrected): then after one more pass past it."""
        if self.account is None:
            return None
        if day in self._cash_checked:  # a close retried after a failed write: told once
            return self._cash_checked[day]
        if close.held or close.unconfirmed:
            await asyncio.sleep(self.recon.fill_grace_ns / 1e9)
            close = await self.recon.run("close")
            if close.held or close.unconfirmed:
                log.warning("day %s: fills still unconfirmed after the grace: no cash check", day)
                return None
        if self.book.day() != day:
            return None
        account: BrokerAccount | None = None
        for attempt in range(3):
            try:
                account = await self.account()
                break
            except Exception as e:  # the report goes out without it
                log.warning("day %s: the broker's account summary is unavailable (%s)", day, e)
                await asyncio.sleep(2.0 * (attempt + 1))
        if account is None or self.book.day() != day:
            return None
        fills, bought, sold, paid = daily_report.money(stored, day, lambda o: self.book.fill_fees(o, o.filled_value))
        result = self._cash_checked[day] = cash_check.check(fills, bought, sold, paid, account)
        for text in result.findings:
            # a traded value that differs is a books error (it reaches a person); costs alone are the model's
            kind = AlertKind.RECONCILE_DIFF if cash_check.is_value_finding(text) else None
            self.alert(f"day {day}, money: {text}", kind)
        if result.compared and not result.findings:
            log.info("day %s: bought %s, sold %s, costs %s agree with KIS", day, bought, sold, paid)
        return result

    async def run(self, tick_s: float, on_error: Callable[[], None]) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                on_error()
                log.exception("day cycle failed")
            await asyncio.sleep(tick_s)
