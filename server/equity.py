"""The account's equity and the peaks drawdowns are measured from.

Equity, as the risk gate sees it (our choice, and why):
- the cash is the broker's settlement cash (KIS `prvs_rcdl_excc_amt`, D+2: today's trades count at
  once, where the deposit `dnca_tot_amt` only catches up after settlement), read every
  `account_every_s` over the account lane of the REST budget; between reads, every fill the books
  record moves it by the cash it took or gave (fees included), so a buy never looks free for 30 s.
  The broker answers from its state at some moment of the read's flight, and fill notices keep being
  booked meanwhile: the read is lined up with the fills the broker counted by its traded value today
  (`thdt_buy_amt` / `thdt_sll_amt`, as server/cash_check.py compares them at the close); where those
  cannot be used, every buy booked after the read was sent counts against the cash and no sell booked
  after it is credited until the next read. Either way the cash errs low, never high
  (common/portfolio.py set_account_cash);
- the positions are every share the account holds (agents' and 'external'), at the last trade price
  the gateway saw, kept tick by tick by the portfolio; a code with no print yet (after a restart, or
  never traded today) takes a reference price: the broker balance's last price at each position check
  (server/reconciler.py), else today's base price or the last close (server/risk.py seed_prices). Never
  over a print.
The broker's own total (`tot_evlu_amt`) is priced by KIS's last read of its prices, refreshed only
when asked; ours moves with every print and costs no REST call. Without the broker's traded totals, a
fill the broker counted before a read and the books record after it is counted twice until the next
read (at most `account_every_s`): the cash is then low by it, and so is the equity.

A read moves no equity by a trade of its own (a fill swaps cash for shares): a change of the cash
estimate at a read that the last read's doubt does not explain (a fill counted twice or not at all, a
deposit) is held as doubt until the next read; the account's peaks are raised on the equity less the
doubt upward, and its drawdown is judged on the equity plus the doubt downward (server/risk.py), so a
cash base that errs for one read neither records a peak nor halts the account.

An agent's equity is its budget plus its net P&L (realised − fees + unrealised).

Peaks (per agent, and `*` for the account): the day's (from the day's first look) and the all-time
one, raised by the risk gate's sweep, persisted at most once a second (a restart keeps them), reset by
the operator (`ktrader control reset_peak`). A scope holding a code with no price at all is valued at
cost: its peaks are not raised until every code has a price — a carried loss at cost would be recorded
as the day's peak and read as a drawdown at the first print — nor, until the process's first balance read
or a print, its drawdown judged (server/risk.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from common.config import DrawdownPeak
from common.portfolio import Portfolio
from kis.port import BrokerAccount, BrokerUnsupported
from server.store import Store

log = logging.getLogger("ktrader.equity")

ACCOUNT = "*"  # the account's key among the agents' peaks
_CASH_META = "account_cash"  # the last account read: (cash base, the books' spending then, (doubt up, down))
_META = "equity_peaks"
_SAVE_EVERY_NS = 1_000_000_000


class _Saved(msgspec.Struct):
    day: str = ""
    day_peaks: dict[str, int] = {}
    all_time: dict[str, int] = {}
    budgets: dict[str, int] = {}  # agent -> the card budget its peaks were taken with (an older store: none)


class Peaks:
    def __init__(self, store: Store) -> None:
        self.store = store
        raw = store.get_meta(_META)
        try:
            saved = msgspec.json.decode(raw, type=_Saved) if raw else _Saved()
        except msgspec.MsgspecError:
            log.warning("stored equity peaks unreadable: starting them again")
            saved = _Saved()
        self.day, self.day_peaks, self.all_time = saved.day, dict(saved.day_peaks), dict(saved.all_time)
        self.budgets = dict(saved.budgets)
        self._dirty = False
        self._saved_ns = 0

    def roll(self, day: str) -> None:
        """A new trading day: the day's peaks start again from the day's first look."""
        if day != self.day:
            self.day, self.day_peaks, self._dirty = day, {}, True

    def observe(self, key: str, equity: int) -> None:
        if equity <= 0:
            return
        if equity > self.day_peaks.get(key, 0):
            self.day_peaks[key] = equity
            self._dirty = True
        if equity > self.all_time.get(key, 0):
            self.all_time[key] = equity
            self._dirty = True

    def peak(self, key: str, which: DrawdownPeak) -> int:
        return (self.all_time if which is DrawdownPeak.ALL_TIME else self.day_peaks).get(key, 0)

    def scale(self, key: str, after: int, before: int) -> None:
        """Money moved in or out of what `key` measures (a deposit, a withdrawal) took its equity from `before` to
        `after`: its peaks scale with it, so that a drawdown is the trading's, not the withdrawal's (30 M KRW taken
        out read as a 30 % drawdown and halted the gateway: a hunt), and one already there keeps its size (moved by
        the amount, a 10 % drawdown read 14.3 % after 30 M of 100 M left: a review)."""
        for peaks in (self.day_peaks, self.all_time):
            if after <= 0:
                peaks.pop(key, None)  # (emptied: the next equity seen starts them again)
            elif before <= 0:
                peaks[key] = after  # (an empty account filled: they start here)
            elif key in peaks:
                peaks[key] = max(1, peaks[key] * after // before)
        self.save(force=True)

    def shift(self, key: str, amount: int) -> None:
        """`key`'s peaks less `amount` (value a corporate action took off its shares at today's prices: the new
        shares or rights come later), never below 1: its drawdown measures trading, not the adjustment."""
        for peaks in (self.day_peaks, self.all_time):
            if key in peaks:
                peaks[key] = max(1, peaks[key] - amount)
        self.save(force=True)

    def rebudget(self, agent: str, budget: int, equity: int) -> int:
        """The agent's card budget is `budget` now, its equity (budget + P&L) `equity`: the budget its peaks were taken
        with, if another (a reload, a card edited and approved, then 0: none known), after its peaks moved with the
        change as money moved (`scale`): a budget cut read as a loss halted the agent and cancelled its orders (a
        hunt)."""
        was = self.budgets.get(agent, 0)
        if was == budget:
            return 0
        self.budgets[agent] = budget
        if was:
            self.scale(agent, equity, equity - (budget - was))
        else:
            self.save(force=True)
        return was

    def reset(self, key: str, equity: int) -> None:
        """The peaks of `key` start again at `equity` (the operator's word: a drawdown is accepted)."""
        self.day_peaks[key] = self.all_time[key] = equity
        self.save(force=True)

    def save(self, now_ns: int = 0, force: bool = False) -> None:
        if not (self._dirty or force) or (not force and now_ns - self._saved_ns < _SAVE_EVERY_NS):
            return
        with self.store.transaction():
            self.store.set_meta(
                _META,
                msgspec.json.encode(
                    _Saved(day=self.day, day_peaks=self.day_peaks, all_time=self.all_time, budgets=self.budgets)
                ).decode(),
            )
        self._dirty, self._saved_ns = False, now_ns


def save_cash_kept(store: Store, portfolio: Portfolio) -> None:
    """(inside the caller's transaction) The store's copy of the last account read, after the books moved its
    baseline (shares found held before ktrader: no cash moved): a restart compares its first read with it."""
    kept = portfolio.cash_to_keep()
    if kept is not None:
        store.set_meta(_CASH_META, msgspec.json.encode(kept).decode())


REREAD_S = 1.0  # after an ambiguous read (Portfolio.reread): the next one this soon, past its flight's fills


class AccountReader:
    """Reads the broker's account every `every_s` (and once at start) for the portfolio's cash."""

    def __init__(
        self,
        portfolio: Portfolio,
        read: Callable[[], Awaitable[BrokerAccount]],
        every_s: float,
        on_cash_flow: Callable[[int], None] | None = None,
        store: Store | None = None,
        traded_today: Callable[[], bool] | None = None,
    ) -> None:
        self.portfolio = portfolio
        self.read = read
        self.every_s = every_s
        self.on_cash_flow = on_cash_flow  # money moved in or out of the account, seen over two reads
        # whether today's session may have traded yet (the opening auction matched): before, the broker's "today"
        # totals are none or another day's (KIS answers the day before's until it rolls its day, UNCONFIRMED when),
        # never lined up with the books' (a pre-open order worth more than them let yesterday's read as today's)
        self.traded_today = traded_today
        # the last read kept for the next process (money moved while no gateway ran is told at its first reads)
        self.store = store
        self._kept: tuple[int, int, tuple[int, int]] | None = None
        raw = store.get_meta(_CASH_META) if store is not None else None
        if raw:
            try:
                cash, spent, doubt = msgspec.json.decode(raw, type=tuple[int, int, tuple[int, int]])
                portfolio.keep_cash((cash, spent, doubt))
            except msgspec.MsgspecError:
                log.warning("the last account read kept in the store is unreadable: not compared with")
        self.reads = 0
        self.failures = 0
        self.last: BrokerAccount | None = None
        self.unsupported = False  # the broker has no account at all (a replay)
        self._soon = asyncio.Event()  # a read asked for before the next period's (read_soon)
        self._rereading = False  # the read under way is the one re-read after an ambiguous one (run)
        self.on_ahead: Callable[[], None] | None = None  # KIS's totals just went ahead of the books' (Portfolio.ahead)

    async def read_once(self) -> bool:
        # the books as the read leaves: what they book while it is on its way may or may not be in the
        # broker's answer (Portfolio.set_account_cash)
        mark = self.portfolio.cash_mark()
        try:
            acct = await self.read()
        except BrokerUnsupported as e:  # a broker with no account (a replay): nothing to wait for
            if not self.unsupported:
                log.info("the broker has no account to read (%s): cash stays unknown", e)
            self.unsupported = True
            return False
        except Exception as e:  # the session may be reconnecting; the limits wait (they deny, never guess)
            self.failures += 1
            log.warning("account read failed: %s", e)
            return False
        self.last = acct
        today = self.traded_today is None or self.traded_today()
        bought, sold = (acct.today_bought, acct.today_sold) if today else (-1, -1)
        was_ahead = self.portfolio.ahead
        self.portfolio.set_account_cash(acct.settlement_cash, mark, bought, sold)
        if self.portfolio.ahead and not was_ahead and self.on_ahead is not None:
            # KIS has trades the books lack (the KIS app's): reconciliation books them now, not at its next period
            # (meanwhile the account is judged on an estimate: an app sale's shares still in the books)
            self.on_ahead()
        self.reads += 1
        if (flow := self.portfolio.take_cash_flows()) and self.on_cash_flow is not None:
            self.on_cash_flow(flow)
        kept = self.portfolio.cash_kept()
        if self.store is not None and kept is not None and kept != self._kept:
            with self.store.transaction():
                save_cash_kept(self.store, self.portfolio)
            self._kept = kept
        return True

    def read_soon(self) -> None:
        """Read the account now, not at the next period (the broker refused a buy for want of cash: money left
        the account since the last read, and every buy until the next would be judged on cash that is gone)."""
        self._soon.set()

    async def run(self) -> None:
        while True:
            self._soon.clear()
            ok = await self.read_once()
            if self.unsupported:
                return
            try:
                # a read that could not tell which fills of its flight it counted (Portfolio.reread): the next soon, to
                # decide on an exact one; once (a re-read ambiguous again waits the period: a busy account read every
                # second all day would take most of a paper account's 2 requests a second)
                reread = ok and self.portfolio.reread and not self._rereading
                self._rereading = reread
                wait = REREAD_S if reread else self.every_s if ok else min(self.every_s, 5.0)
                await asyncio.wait_for(self._soon.wait(), min(wait, self.every_s))
            except TimeoutError:
                pass
