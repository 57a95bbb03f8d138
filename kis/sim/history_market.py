"""History mode: the twin replays real KRX days, driven by the caller (`ktrader sim --history DIR
--from DATE`; `ktrader rehearse` drives it).

Every twin stock with a `DIR/<code>.csv` (`Date,Open,High,Low,Close,Volume,Change`, the layout of
shared/data/krx_daily_fdr_2020_2026, read in place) is *driven*: its day is the schedule of
`kis.sim.history_plan` (opening auction at O, a path through the extremes, closing auction at C,
exactly V shares printed), and our orders fill by rules that match the backtester's daily-bar model
(tools/backtest/broker.py):

- opening auction (orders 08:30–09:00), uncrossed at the open at O: market orders and buys with
  limit >= O / sells with limit <= O fill at O (= the backtester's min(open, limit) / max(open, limit));
- continuous session: an order marketable against the last print (or a market order) fills at once
  at the last print; a resting limit buy fills when a print at or below its limit happens, at its
  limit if the previous print was above it (the market traded through it), else at the print; sells
  mirrored. Whole quantities: the historical market is deep enough for us (the backtester's
  participation cap is not modelled);
- closing auction (orders 15:20–15:30), uncrossed at the close at C like the opening one; an unfilled
  `02` (conditional) order converts to a market order there and fills at C;
- a day locked at a limit (L == H at the upper limit, or at the lower) fills no buys (no sells);
- V == 0, a non-positive price or no row that day: the code is halted: no prints, nothing fills, DAY
  orders expire at the close. IOC/FOK that cannot fill at once are cancelled.
Every price a driven code prints is on its day's KRX tick grid (common/krx_rules.rules_for): a row whose
prices lie off it (split-adjusted rows, a few extremes such as 000660's low 2,290,500 on 2026-05-29) is
printed as `on_day_grid` puts it, inside the row's range (the low rounded up, the high down, the open and
close to the nearest grid price between them). An exchange never prints off its grid, and the gateway
drops such a print as bad market data: a protective stop would never see that day's low.
Our fills are trades: each prints at its fill price, and the closing print's quantity makes the day's
printed volume exactly V. Driven codes have no synthetic book (H0STASP0 is not sent for them; the
prints carry a one-tick quote around the trade price) and no background price process.

The clock stands still (`ClockMode.HISTORY`, speed 0): `advance(to)` moves it, emitting every
scheduled print up to `to` in time order, each at its own exchange time, the auctions as their
times pass. Stocks without a file keep the synthetic market. Daily history (inquire-daily-*, the
250-day figures of inquire-price) comes from the data: the last `days` rows before the current day
with positive prices (what the backtester loads), plus today's bar so far; never a future row.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
from dataclasses import dataclass, replace
from pathlib import Path

from common.calendar import is_trading_day, next_trading_day
from common.clock import KST
from common.krx import Phase, SessionTimes
from common.krx_rules import Market, SecurityKind, rules_for
from kis.sim import history, universe
from kis.sim.clock import ClockMode, TwinClock
from kis.sim.engine import BookSide, Fill, Tif
from kis.sim.exchange import (
    Event,
    Exchange,
    MarketConfig,
    OrderRecord,
    StockState,
    TradePrint,
)
from kis.sim.history_plan import PlannedPrint, PrintKind, day_plan, nearest_grid, tradable
from kis.sim.ledger import Account

DEFAULT_HISTORY_DAYS = 250
PRE_OPEN_LEAD = dt.timedelta(minutes=30)  # a history day starts this long before the opening call


class HistoryError(ValueError):
    """History-mode input the twin cannot use (directory, dates, a move backwards); says what to do."""


def pre_open(day: dt.date) -> dt.datetime:
    """Where a history day starts: before its opening call (08:00 on a normal day)."""
    return SessionTimes(day).auction_open - PRE_OPEN_LEAD


def first_session(day: dt.date) -> dt.date:
    return day if is_trading_day(day) else next_trading_day(day)


# ------------------------------------------------------------------------------------ the data


class HistoryData:
    """Daily rows per code, oldest first, with look-ups by day (bisect, no scans)."""

    def __init__(self, directory: Path, rows: dict[str, list[history.DailyBar]]) -> None:
        self.directory = directory
        self._rows = rows
        self._days = {code: [b.day for b in bars] for code, bars in rows.items()}
        # the chart's days: those with trades (a halt written as the price repeated with no volume printed nothing,
        # and the backtest has no bar for it either)
        self._bars = {code: [b for b in bars if tradable(b)] for code, bars in rows.items()}
        self._bar_days = {code: [b.day for b in bars] for code, bars in self._bars.items()}

    @classmethod
    def load(cls, directory: Path, codes: list[str]) -> HistoryData:
        if not directory.is_dir():
            raise HistoryError(f"history directory {directory} not found: give a folder of <code>.csv daily files")
        rows: dict[str, list[history.DailyBar]] = {}
        for code in codes:
            path = directory / f"{code}.csv"
            if path.is_file():
                bars = sorted({b.day: b for b in history.load_csv(path)}.values(), key=lambda b: b.day)
                if bars:
                    rows[code] = bars
        if not rows:
            raise HistoryError(
                f"{directory} has no <code>.csv with daily rows for any of the twin's stocks "
                f"(e.g. {', '.join(codes[:4])})"
            )
        return cls(directory, rows)

    @property
    def codes(self) -> list[str]:
        return sorted(self._rows)

    @property
    def last_day(self) -> dt.date:
        return max(days[-1] for days in self._days.values())

    def row(self, code: str, day: dt.date) -> history.DailyBar | None:
        days = self._days.get(code)
        if not days:
            return None
        i = bisect.bisect_left(days, day)
        return self._rows[code][i] if i < len(days) and days[i] == day else None

    def base_row(self, code: str, day: dt.date) -> history.DailyBar | None:
        """The last row before `day` with a close (None if none): the day the base price is the close of."""
        days = self._days.get(code, [])
        i = bisect.bisect_left(days, day)
        while i > 0:
            i -= 1
            if self._rows[code][i].close > 0:
                return self._rows[code][i]
        return None

    def base(
        self, code: str, day: dt.date, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI
    ) -> int:
        """The day's base price (0 if none): the close before it as it traded, on its day's tick grid, as the twin
        printed it (KRX's base is that close). A split-adjusted row's raw close is off the grid (017670's 51,847 on
        2021-10-12, printed 51,900): taken as the base the gateway read every morning as a corporate action."""
        row = self.base_row(code, day)
        if row is None:
            return 0
        if tradable(row):
            return on_day_grid(row, kind, market).close
        return nearest_grid(row.close, kind, market, rules_for(row.day))  # (a halted day repeats the close before)

    def past_bars(self, code: str, day: dt.date, n: int) -> list[history.DailyBar]:
        """The last `n` rows before `day` with trades (tradable: positive prices and volume), oldest first."""
        days = self._bar_days.get(code, [])
        i = bisect.bisect_left(days, day)
        return self._bars[code][max(i - n, 0) : i]


def on_day_grid(bar: history.DailyBar, kind: SecurityKind, market: Market) -> history.DailyBar:
    """`bar` as the twin prints it: every price on its day's tick grid and inside its range (widened to
    the open and close, as day_plan does). The low rounds up and the high down (a print never beyond the
    day's real range); the open and close go to the nearest grid price between them, as the path's
    prices in between do (history_plan.path). A range inside one tick (no grid price in it) becomes
    the grid price nearest its middle."""
    rules = rules_for(bar.day)
    low, high = min(bar.low, bar.open, bar.close), max(bar.high, bar.open, bar.close)
    lo, hi = rules.round_up(low, kind, market), rules.round_down(high, kind, market)
    if lo > hi:
        lo = hi = nearest_grid((low + high) / 2, kind, market, rules)

    def inside(price: int) -> int:
        return min(max(nearest_grid(price, kind, market, rules), lo), hi)

    return replace(bar, open=inside(bar.open), high=hi, low=lo, close=inside(bar.close))


# ------------------------------------------------------------------------------------ the exchange


@dataclass(slots=True)
class _Resting:
    rec: OrderRecord
    limit: int | None  # None = a market order
    seq: int


class HistoryExchange(Exchange):
    """The twin's exchange with its driven codes replaying history (see the module docstring)."""

    def __init__(
        self, clock: TwinClock, config: MarketConfig, data: HistoryData, days: int = DEFAULT_HISTORY_DAYS
    ) -> None:
        self.data = data
        self.history_days = days
        self.driven = frozenset(c for c in universe.codes() if c in data.codes)
        self._events: list[tuple[dt.datetime, int, str, PlannedPrint | None]] = []
        self._cursor = 0
        self._bar: dict[str, history.DailyBar | None] = {}
        self._left: dict[str, int] = {}  # scheduled prints still to come today, per code
        self._locked: dict[str, tuple[bool, bool]] = {}  # (no buys fill, no sells fill)
        self._resting: dict[str, list[_Resting]] = {}
        self._seq = 0
        self.prints = 0  # trade prints emitted since start (every code)
        self.fills = 0  # our fills on driven codes since start
        self.volume_overflow = 0  # closing prints that could not make V exact (our fills exceeded it)
        super().__init__(clock, config)
        self._start_day(self.day)

    # ---- the day ---------------------------------------------------------------------------------

    def _start_day(self, day: dt.date) -> None:
        """Bases, history and the print schedule of `day` for every driven code."""
        trading = is_trading_day(day)
        events: list[tuple[dt.datetime, int, str, PlannedPrint | None]] = []
        for code in sorted(self.driven):
            st = self.stocks[code]
            bar = self.data.row(code, day) if trading else None
            kind, market = st.info.kind, st.book.market
            base = self.data.base(code, day, kind, market) or (
                bar.open if bar is not None and tradable(bar) else st.prev_close
            )
            st.book.reset_day(base, self.rules)
            st.reset_day(base)
            st.last = base
            # the days before as the twin printed them (on their grid): its chart agrees with its prints
            st.history = [on_day_grid(b, kind, market) for b in self.data.past_bars(code, day, self.history_days)]
            self.process.reanchor(code, base)
            printed = on_day_grid(bar, kind, market) if bar is not None and tradable(bar) else None
            plan = day_plan(printed, kind, market=market)
            self._bar[code] = bar if plan else None
            self._left[code] = len(plan)
            self._resting[code] = []
            flat = bar is not None and bool(plan) and bar.low == bar.high
            self._locked[code] = (flat and bar.high >= st.book.upper, flat and bar.low <= st.book.lower)  # type: ignore[union-attr]
            events += [(p.at, 1, code, p) for p in plan]
        if trading:
            t = SessionTimes(day)
            # phase boundaries: the rest of the exchange follows the clock there (after that time's prints)
            events += [(b, 2, "", None) for b in (t.auction_open, t.open, t.closing_call, t.close)]
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        self._events = events
        self._cursor = 0

    def _roll_day(self, day: dt.date) -> None:
        super()._roll_day(day)
        self._start_day(day)

    def split(self, code: str, num: int, den: int, shares: bool = True) -> StockState:
        if universe.normalise_code(code) in self.driven:
            raise ValueError(f"{code} replays history (its data is split-adjusted already): no split of it here")
        return super().split(code, num, den, shares)

    def suspended(self, code: str) -> bool:
        # a driven code with no prints on a trading day is halted (the data's V == 0 or missing row); its
        # orders are still taken and expire unfilled, as the backtest's (a difference from KIS, which refuses them)
        return super().suspended(code) or (
            code in self.driven and is_trading_day(self.day) and self._bar.get(code, True) is None
        )

    # ---- driving ---------------------------------------------------------------------------------

    def advance(self, to: dt.datetime) -> None:
        """Move the clock forward to `to`, running every scheduled print and auction up to it (whole
        days in between: each day's prints, its close, the next trading day's pre-open)."""
        to = _kst(to)
        now = self.clock.now()
        if to < now:
            raise HistoryError(
                f"the history clock only moves forward: it is {now:%Y-%m-%d %H:%M:%S}, asked for {to:%Y-%m-%d %H:%M:%S}"
            )
        while to.date() > self.day:
            self._run_until(None)
            start = pre_open(next_trading_day(self.day))
            self._move(min(start, to))
        self._run_until(to)
        self._move(to)

    def close(self) -> None:
        """Run the day through its closing auction and close (the admin close)."""
        if is_trading_day(self.day):
            close = SessionTimes(self.day).close
            if self.clock.now() < close:
                self.advance(close)
        if self._closed_day != self.day:
            self.close_day()

    def next_day(self) -> dt.date:
        """Finish today (every print, the close), then the next KRX trading day's pre-open."""
        self._run_until(None)
        self._move(max(pre_open(next_trading_day(self.day)), self.clock.now()))
        return self.day

    def _run_until(self, until: dt.datetime | None) -> None:
        events = self._events
        while self._cursor < len(events) and (until is None or events[self._cursor][0] <= until):
            t = events[self._cursor][0]
            self.clock.move_to(t)
            while self._cursor < len(events) and events[self._cursor][0] == t:
                _, _, code, planned = events[self._cursor]
                self._cursor += 1
                if planned is not None:
                    self._print(self.stocks[code], planned)
            self.on_clock()  # after the time's prints: the closing print comes before the day's expiry

    def _move(self, to: dt.datetime) -> None:
        if to > self.clock.now():
            self.clock.move_to(to)
        self.on_clock()

    def describe(self) -> dict[str, object]:
        halted = sorted(c for c in self.driven if self._bar.get(c) is None)
        return {
            "directory": str(self.data.directory),
            "day": self.day.isoformat(),
            "now": self.clock.now().isoformat(),
            "phase": self.clock.phase().value,
            "codes": sorted(self.driven),
            "halted": halted,
            "last_data_day": self.data.last_day.isoformat(),
            "history_days": self.history_days,
            "prints": self.prints,
            "fills": self.fills,
            "volume_overflow": self.volume_overflow,
        }

    # ---- the schedule ----------------------------------------------------------------------------

    def _print(self, st: StockState, planned: PlannedPrint) -> None:
        code = st.code
        self._left[code] -= 1
        if planned.kind is PrintKind.CONTINUOUS:
            self._trade_through(st, planned.price)
        else:
            self._uncross(st, planned.price, closing=planned.kind is PrintKind.CLOSE)
        bar = self._bar[code]
        assert bar is not None
        budget = bar.volume - st.acml_vol
        qty = budget if planned.kind is PrintKind.CLOSE else min(planned.qty, budget - self._left[code])
        if qty < 1:
            self.volume_overflow += planned.kind is PrintKind.CLOSE
            qty = 1
        aggressor: BookSide | None = None
        if planned.kind is PrintKind.CONTINUOUS:
            if planned.price != st.last:
                aggressor = BookSide.BUY if planned.price > st.last else BookSide.SELL
            else:
                aggressor = BookSide.BUY if self._left[code] % 2 else BookSide.SELL
        self._process_fills(st, [Fill(planned.price, qty, 0, 0, None, None, aggressor)])

    def _uncross(self, st: StockState, price: int, *, closing: bool) -> None:
        """A call auction at the day's price: every order that accepts it fills there."""
        no_buys, no_sells = self._locked[st.code]
        for r in self._open(st.code):
            buy = r.rec.side is BookSide.BUY
            if no_buys if buy else no_sells:
                continue
            accepts = r.limit is None or (r.limit >= price if buy else r.limit <= price)
            if accepts or (closing and r.rec.ord_dvsn == "02"):  # 조건부지정가 turns market at the close
                self._fill(st, r.rec, price, None)

    def _trade_through(self, st: StockState, price: int) -> None:
        """Resting orders a continuous print reaches fill before it prints: at their limit if the
        market traded through it, else at the print."""
        no_buys, no_sells = self._locked[st.code]
        live = self._open(st.code)
        if not no_buys:
            buys = [r for r in live if r.rec.side is BookSide.BUY and (r.limit is None or r.limit >= price)]
            buys.sort(key=lambda r: (-(r.limit if r.limit is not None else 1 << 62), r.seq))
            for r in buys:
                at = r.limit if r.limit is not None and st.last > r.limit else price
                self._fill(st, r.rec, at, BookSide.SELL)
        if not no_sells:
            sells = [r for r in live if r.rec.side is BookSide.SELL and (r.limit is None or r.limit <= price)]
            sells.sort(key=lambda r: (r.limit if r.limit is not None else 0, r.seq))
            for r in sells:
                at = r.limit if r.limit is not None and st.last < r.limit else price
                self._fill(st, r.rec, at, BookSide.BUY)

    def _open(self, code: str) -> list[_Resting]:
        """The code's resting orders still open today, in time priority (drops the finished ones)."""
        live = [r for r in self._resting[code] if r.rec.open_qty > 0 and r.rec.day == self.day]
        self._resting[code] = live
        return live

    def _fill(self, st: StockState, rec: OrderRecord, price: int, aggressor: BookSide | None) -> None:
        qty = rec.open_qty
        if rec.side is BookSide.BUY:
            fill = Fill(price, qty, rec.oid, 0, rec.odno, None, aggressor)
        else:
            fill = Fill(price, qty, 0, rec.oid, None, rec.odno, aggressor)
        self.fills += 1
        self._process_fills(st, [fill])

    # ---- order entry (the exchange's hooks) ------------------------------------------------------

    def _submit(self, acct: Account, st: StockState, rec: OrderRecord, limit: int | None) -> None:
        if st.code not in self.driven:
            super()._submit(acct, st, rec, limit)
            return
        continuous = self.clock.phase() is Phase.CONTINUOUS
        if continuous and st.acml_vol > 0:  # the day has traded: the last print is the market
            buy = rec.side is BookSide.BUY
            no_buys, no_sells = self._locked[st.code]
            marketable = limit is None or (limit >= st.last if buy else limit <= st.last)
            if marketable and not (no_buys if buy else no_sells):
                self._fill(st, rec, st.last, rec.side)
                return
        if continuous and rec.tif is not Tif.DAY:
            n = rec.open_qty  # IOC/FOK that cannot fill now
            rec.cancelled_qty += n
            self._reserve(acct, rec)
            self._notify(acct, rec, cntg_yn="1", acpt="3", rctf="2", qty=n)
            return
        self._seq += 1
        self._resting[st.code].append(_Resting(rec, limit, self._seq))

    # ---- what driven codes do not have ----------------------------------------------------------

    def _load_history(self, info: universe.StockInfo, rng: random.Random) -> list[history.DailyBar]:
        if info.code in self.driven:
            return []  # from the data, at each day's start
        return super()._load_history(info, rng)

    def _refresh_synthetic(self, st: StockState, center: int, *, match: bool) -> None:
        if st.code not in self.driven:
            super()._refresh_synthetic(st, center, match=match)

    def _emit_book(self, st: StockState) -> None:
        if st.code not in self.driven:
            super()._emit_book(st)

    def step(self, codes: list[str] | None = None) -> None:
        rest = [c for c in (codes or list(self.stocks)) if c not in self.driven]
        if rest:
            super().step(rest)

    def set_price(self, code: str, price: int) -> None:
        st = self.stock(code)
        if st is not None and st.code in self.driven:
            raise HistoryError(f"{st.code} is driven by {self.data.directory}: its prices come from the data")
        super().set_price(code, price)

    def _price_record(self, st: StockState, f: Fill, tmd: str) -> list[str]:
        rec = super()._price_record(st, f, tmd)
        if st.code in self.driven:
            # no book: quote one tick around the trade (the side that was hit is at the price)
            p = f.price
            ask, bid = (p, p - self.tick_size(st, p)) if f.aggressor is BookSide.BUY else (p + self.tick_size(st, p), p)
            rec[10], rec[11] = str(ask), str(max(bid, 1))
        return rec

    def _emit(self, ev: Event) -> None:
        if isinstance(ev, TradePrint):
            self.prints += 1
        super()._emit(ev)


def _kst(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=KST) if when.tzinfo is None else when.astimezone(KST)


def require_history_settings(start: dt.date | None, state_file: Path | None) -> dt.date:
    """The start date; history mode has no state file (a rehearsal restarts from its data)."""
    if start is None:
        raise HistoryError("history mode needs a start date (--from YYYY-MM-DD)")
    if state_file is not None:
        raise HistoryError("history mode does not keep a state file: leave --state-file out")
    return start


def open_history(directory: Path, start: dt.date, days: int, config: MarketConfig) -> tuple[TwinClock, HistoryExchange]:
    """The clock and exchange of a twin in history mode, at the pre-open of the first trading day >= `start`."""
    if days < 1:
        raise HistoryError(f"history days must be at least 1, got {days}")
    data = HistoryData.load(directory, universe.codes())
    day = first_session(start)
    if day > data.last_day:
        raise HistoryError(f"the data in {directory} ends on {data.last_day}: pick --from on or before it")
    clock = TwinClock(ClockMode.HISTORY, day)
    clock.move_to(pre_open(day))
    return clock, HistoryExchange(clock, config, data, days)
