"""The trading day, acted on: `server.daycycle` decides from the market clock what is due, this runs it.

- a new date: day P&L, base prices and order numbering roll; the new day's reconciliation expires
  what earlier days left open; agents are told the day (they number orders by it);
- while the session takes orders: held next-session orders are released (or expired unsent);
- at each card's `schedule.end`: the agent's end-of-day policy (cancel / flatten / hold), then
  reduce-only for the rest of the day;
- after the close: the broker's final word (reconcile), expiry of what is left, the daily report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from common.calendar import is_trading_day
from common.clock import date_of, yyyymmdd
from common.config import AgentCard, EndOfDay
from common.enums import AlertKind, SystemEventKind
from common.krx_rules import rules_for
from common.market_clock import MarketClock
from common.protection import Protection
from common.schema import AgentPerformance, Notice
from kis.port import BrokerAccount
from server import cash_check, daily_report
from server.cash_check import CashCheck
from server.daycycle import DayCycle
from server.order_book import OrderBook
from server.order_desk import OrderDesk
from server.reconcile import ReconcileResult
from server.reconciler import Reconciler
from server.risk import RiskGate

log = logging.getLogger("ktrader.day")

CLOSE_FAILURES_ALERT = 3  # failed closes of a day before a person is told

# the base prices are fetched again in this window of a trading day (before the 08:30 auction)
MORNING_REFRESH, MORNING_REFRESH_END = dt.time(8, 0), dt.time(9, 0)

Publish = Callable[[SystemEventKind, str, str], None]


class BasePrices:
    """Today's base price (band centre) per code, fetched once a day from the broker."""

    def __init__(self, book: OrderBook, fetch: Callable[[str], Coroutine[Any, Any, int]]) -> None:
        self.book = book
        self.fetch = fetch
        self._day = ""
        self._asking: set[str] = set()  # codes with a fetch in flight

    def missing(self, codes: list[str]) -> list[str]:
        self._roll()
        prices = self.book.portfolio.base_prices
        return [c for c in codes if c not in prices and c not in self._asking]

    def _roll(self) -> None:
        day = self.book.day()
        if day != self._day:
            self._day = day
            self.book.portfolio.base_prices.clear()

    async def _today(self, code: str) -> int:
        """The broker's base price of `code`, 0 when unavailable or when the day rolled meanwhile (the
        order path still works without it: the broker checks the band too)."""
        try:
            price = await self.fetch(code)
        except Exception as e:
            log.warning("base price of %s unavailable: %s", code, e)
            return 0
        return price if price > 0 and self.book.day() == self._day else 0

    async def refresh(self, codes: list[str]) -> None:
        """Fetch again and replace (the morning's second look: see TradingDay.tick). A value that
        changed since the night's fetch is logged: the broker had not rolled its day yet then."""
        self._roll()
        prices = self.book.portfolio.base_prices
        for code in codes:
            if price := await self._today(code):
                old = prices.get(code)
                if old is not None and old != price:
                    log.warning(
                        "base price of %s was %s at the night's fetch, %s now: the morning's holds", code, old, price
                    )
                prices[code] = price

    async def ensure(self, codes: list[str]) -> None:
        prices = self.book.portfolio.base_prices
        for code in self.missing(codes):
            self._asking.add(code)
            try:
                price = await self._today(code)
            finally:
                self._asking.discard(code)
            if price:
                prices[code] = price


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
        performance: Callable[[], dict[str, AgentPerformance]] = dict,
        close_bars: Callable[[dt.date], Awaitable[object]] | None = None,
        protections: Callable[[], list[Protection]] = list,
        account: Callable[[], Awaitable[BrokerAccount]] | None = None,
        alert: Callable[[str, AlertKind | None], None] = lambda text, kind: None,
    ) -> None:
        self.account = account  # the broker's account summary (the day's money: server/cash_check.py)
        self._cash_checked: dict[str, CashCheck | None] = {}
        self.alert = alert
        self.clock = clock
        self.book = book
        self.desk = desk
        self.risk = risk
        self.recon = recon
        self.base_prices = base_prices
        self.cards = cards
        self.publish = publish
        self.request_reconcile = request_reconcile
        self.spawn = spawn
        self.run_dir = run_dir
        self.alerts_of_day = alerts_of_day
        self.performance = performance
        self.close_bars = close_bars  # the day's daily bars, once its orders are over
        self.protections = protections
        self.cycle = DayCycle(book.store)
        self._closing = False
        self._morning = ""  # the day whose base prices were fetched again in the morning
        # what else starts the day afresh, as a gateway started that day would (market data, notices...)
        self.on_new_day: list[Callable[[str], None]] = []
        self.reports_written = 0
        self.close_errors = 0
        self._close_failures: dict[str, int] = {}  # day -> failed closes (a person is told at the third)

    def _day_span(self, day: str) -> daily_report.DaySpan | None:
        """Each agent's (realised, fees) totals at `day`'s start and end, once the book has rolled past
        it (a close that ran past midnight): the portfolio's day totals are the new day's by then."""
        if self.book.day() == day:
            return None
        start = self._day_start(day)
        if start is None:
            log.warning("day %s: its start of day totals are not stored: the report's P&L is the new day's", day)
            return None
        # the end: the totals now, with the fills the close's own reconciliation booked after midnight
        # (nothing trades overnight); the new day starts from them (see close_day)
        return start, self.book.portfolio.totals()

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
            self.book.portfolio.roll_day(saved)
            return
        start = self.book.portfolio.roll_day()
        with self.book.store.transaction():
            self._keep_day_start(day, start)

    def tick(self) -> None:
        now, phase = self.clock.now(), self.clock.phase()
        day = yyyymmdd(now.date())
        first, previous = not self.cycle.day, self.cycle.day
        if self.cycle.roll(day):
            self.book.roll_day(day)  # earlier days' finished orders let go, today's fills counted afresh
            self.book.portfolio.rules = rules_for(now.date())  # the day's tick grid, band and taxes
            self.roll_pnl(day)
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
        if (
            self.clock.timed
            and self._morning != day
            and MORNING_REFRESH <= now.time() < MORNING_REFRESH_END
            and is_trading_day(now.date())
        ):
            # fetched at midnight, when the broker may not have rolled its day yet (when it does is
            # UNCONFIRMED): again before the opening auction, where held orders are released
            self._morning = day
            self.spawn(self.base_prices.refresh(self._tradable_codes()))
        if not self.recon.synced:
            return  # nothing is decided before the books agree with the broker
        held = sorted({o.code for o in self.book.held.values() if o.valid_day == day})
        if held and (missing := self.base_prices.missing(held)):
            self.spawn(self.base_prices.ensure(missing))  # market buys are valued at the day's upper limit
        released, expired = self.desk.release_due()
        if released or expired:
            log.info("next-session orders: %d released, %d expired unsent", released, expired)
        due = self.cycle.due(now, phase, self.clock.timed, self.cards())
        for card in due.cleanup:
            self.end_of_day(card)
        if due.close_day and not self._closing:
            self._closing = True
            self.spawn(self.close_day(day))

    def _tradable_codes(self) -> list[str]:
        """The band's base is needed for every code an agent may trade today: its card's and its universe's."""
        codes = {c for card in self.cards() for c in card.codes}
        codes.update(c for listed in self.risk.extra_codes.values() for c in listed)
        codes.update(o.code for o in self.book.held.values())  # (a protective exit, a code that left a universe)
        return sorted(codes)

    def end_of_day(self, card: AgentCard) -> None:
        policy = card.schedule.end_of_day
        if policy is EndOfDay.CANCEL:
            n = self.desk.cancel_all(card.id)
        elif policy is EndOfDay.FLATTEN:
            n = self.desk.flatten(card, "end of day: flatten")
        else:
            n = 0
        with self.book.store.transaction():
            self.cycle.mark_cleaned(card.id)
        self.book.notify(
            card.id, Notice(level="info", text=f"end of day: {policy.value} ({n} orders); reducing only until tomorrow")
        )
        self.publish(SystemEventKind.END_OF_DAY, card.id, policy.value)
        log.info("end of day for %s: %s (%d orders)", card.id, policy.value, n)

    async def close_day(self, day: str) -> None:
        """After the close: the broker's final word, then expiry of what is left, then the report."""
        try:
            close = await self.recon.run("close")
            self.recon.expire_through(day)
            self.desk.release_due()  # held orders for today that never went out expire now
            if self.close_bars is not None:
                await self.close_bars(date_of(day))
            # the day's orders from the store: the book may have rolled to the next day meanwhile (a
            # close that waited on the broker past midnight) and let this day's finished orders go
            stored = daily_report.StoredDay.read(self.book.store, day)
            span = self._day_span(day)
            report = daily_report.build(
                day,
                stored,
                self.book.portfolio,
                self.alerts_of_day(day),
                self.performance(),
                self.protections(),
                day_span=span,
            )
            report.cash = await self._cash_check(day, stored, close)
            path = daily_report.write(report, self.run_dir)
            with self.book.store.transaction():
                self.cycle.mark_closed(day)
                if span is not None:  # the new day counts from the old one's end (its late fills are not its)
                    self._keep_day_start(self.book.day(), self.book.portfolio.roll_day(span[1]))
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
                    "while the day lasts (ktrader status: day_close_errors)",
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
