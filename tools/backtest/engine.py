"""The event loop: one strategy instance, driven bar by bar through the live Strategy API.

Daily bars (`1d`), per bar time t (a trading day), in this order:
1. orders that lived in a KRX session before t without a bar for their code (a halted code, or a day
   the data lacks) expire; the simulated broker matches the orders of session t against t's bars: first
   those that execute at the open (the opening auction: market orders, IOC/FOK, limits the open
   crosses) — a strategy that listens hears of their fills at once (`on_order` / `on_fill` /
   `on_protection`, as live's come at the open's print: a protection it places then is checked against
   t's bar, as the buy's own; an order it places then is matched from the next bar) —, then the
   protective orders are checked against the bar (tools/backtest/protection.py: a stop sees the prints
   after the auction; one armed by a fill at the open sees t's whole range, one armed by a fill inside
   the bar only the next bar's), then the rest; each group in the order sent; the session's leftovers
   expire; the strategy hears about the rest through the same hooks (now() = t's open, 09:00);
2. the card's end of day (`[schedule] end_of_day`, at `end`, 15:20 by default): `flatten` cancels what
   is still open (orders placed while t's fills were delivered) and sells every position at t's close
   (the closing call; server/trading_day.py); `cancel` cannot be told from a daily bar (it does not say
   whether a fill inside it came before `end`): fills stay as they are and the result warns once when
   a fill inside a bar (not at its open) may have come after it; under both, a CONDITIONAL's rest no
   longer fills at the close (live cancels it at `end`, before the closing call); `hold`: nothing;
3. the strategy gets `on_bar` for every code with a bar at t, in code order (as the gateway closes daily bars; live
   intraday bars come as each code's next print closes them: README 'Backtest it') (now() = t's
   close, 15:30); orders it places go to the broker at once and live in the next KRX session (the
   calendar's, or the data's next day when the calendar has it closed), checked against that
   session's tick grid and band (common/krx_rules.py);
4. equity is marked at t's closes.

Intraday bars (`1m`, `5m`, ...), per bar time t: the same steps 1 and 3 (now() = t's start while matching,
t's end in `on_bar`), but DAY orders live until the close of the day they were placed on: after the
day's last bar they expire (an order placed on that last bar never fills: the data has no later bar
that day). The end of day (step 2) comes after the matching of the day's first bar whose end reaches
`end` (moved as the session's close on a late-closing day), before its `on_bar`: `cancel` and
`flatten` cancel every open order of the agent (its next-session orders too, as live) and leave it
reducing for the rest of the day's session (buys refused, as live's gate after its clean-up;
next-session orders are not restricted); `flatten` also places market sells of every position, filled
at the close of the code's last bar of the day (the closing call). A bar that spans `end` (15m, 60m)
has its fills counted as before it. A day whose bars stop before `end` (data without the session's
last minutes: shared/data/krx_intraday_5min_2020 stops at 15:00) is warned of once per run: `flatten`
sells after its last bar at that bar's close, `cancel` is not applied (its orders expire at the
close). `hold`: nothing (orders expire at the close). The price band's base is the previous day's last close
(the data's stand-in for the official close); equity is marked once a day, at the day's last bar, so
returns and their annualisation are daily whatever the bar size. Data that leaves the session's first
bar at volume 0 though it traded (krx_intraday_5min_2020's 09:00 bars: `open_volume_unrecorded`) fills
there as data without volume does: the opening auction happened, its volume is not recorded.

`ctx.history(code, interval)` returns only bars before t — never the bar being delivered or a later one;
on intraday data `history(code, "1d")` gives the completed days, aggregated from the bars.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import logging
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agent.runtime import load_strategy_class
from agent.strategy import DataNeed, Strategy, params_codes_problems
from common.calendar import (
    CLOSING_CALL,
    EARLIER_HOURS,
    LONGER_SESSION_FROM,
    NORMAL_HOURS,
    known_year,
    late_hours_of,
    next_session,
    next_trading_day,
    schedule_end,
    trading_days,
)
from common.clock import KST
from common.errors import ErrorCode, KtraderError
from common.krx_rules import rules_for
from common.config import AgentCard, EndOfDay
from common.enums import OrderType, Side, TimeInForce
from common.krx import Phase, next_session_day, phase_at_ns
from common.orders import Order, OrderState, is_gateway_exit, revise_refusal
from common.protection import (
    ExitType,
    Protection,
    ProtectionSpec,
    WhenClosed,
    entry_mark,
    met_on_entry,
    protection_spec,
    validate,
)
from common.schema import Bar, FillView, InvestorDay, OrderView, PositionView, PriceQuote, history_count
from tools.backtest.broker import _DAY_NS, AT_OPEN, BOTH, REST, FillRecord, Note, SimBroker
from tools.backtest.protection import BacktestProtections
from tools.backtest.costs import MAX_PARTICIPATION_BP, CostModel
from tools.backtest.data import Series
from tools.backtest.history import CompanyDay, CompanyHistory
from tools.backtest.services import BacktestServices

DEFAULT_CASH = 100_000_000  # when the card has no budget
# minutes per bar of the intraday intervals; "1d" is the daily bar
INTERVAL_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "60m": 60}


class BacktestError(RuntimeError):
    """The backtest cannot run or the strategy failed; the message says where."""


class BacktestInputError(BacktestError):
    """What the backtest was given cannot make a run (the card's strategy or params, dates without bars,
    bars of mixed intervals): bad input, which the command line exits with 2 for; nothing ran."""


def codes_text(codes: list[str], shown: int = 5) -> str:
    """`codes` as a line can hold them: the first few, then how many more."""
    more = f" +{len(codes) - shown} more" if len(codes) > shown else ""
    return ", ".join(codes[:shown]) + more


def no_bars(codes: list[str], series: dict[str, Series], lo: dt.date, hi: dt.date) -> BacktestInputError:
    """The error for dates outside the data: it says where the data is."""
    held = [series[c] for c in codes if c in series and series[c].bars]
    # (the series were read up to --to: where its file ends, not where the read stopped)
    span = (
        f"the data runs {min(s.bars[0].start[:10] for s in held)}.."
        f"{max((s.through or s.bars[-1].start)[:10] for s in held)}"
        if held
        else f"the data has none up to {hi}"
    )
    inside = (
        bool(held)
        and min(s.bars[0].start[:10] for s in held) <= lo.isoformat()
        and hi.isoformat() <= max((s.through or s.bars[-1].start)[:10] for s in held)
    )
    if inside and not trading_days(lo, hi):  # (dates inside the data, all of them closed: the range's own fault)
        nxt = next_trading_day(hi)
        return BacktestInputError(
            f"no KRX session between {lo} and {hi} (weekends, holidays, the year-end closure): the next session is "
            f"{nxt}; give --from/--to that hold one ({span})"
        )
    return BacktestInputError(f"no bars for {codes} between {lo} and {hi} ({span}): give --from/--to within the data")


def strategy_class(card: AgentCard) -> type[Strategy]:
    """The card's Strategy class. A strategy that cannot be loaded is one line naming it and what is
    wrong: BacktestInputError when the card names no class (no such module, no such class, not a
    Strategy subclass), BacktestError when its module fails while being imported."""
    spec = card.strategy
    module_name, _, cls_name = spec.partition(":")
    what = f"strategy {spec!r} of card {card.id}"
    try:
        return load_strategy_class(spec)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise BacktestInputError(
                f"{what}: no module named {e.name!r} "
                '(strategy = "package.module:Class", importable from the current folder or PYTHONPATH)'
            ) from None
        failure: Exception = e
    except Exception as e:  # noqa: BLE001 - the strategy module's own failure, said in one line below
        failure = e
    module = sys.modules.get(module_name)
    if module is not None:  # imported: the class is missing or is not a strategy
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise BacktestInputError(f"{what}: module {module_name} has no {cls_name!r}") from None
        kind = "a class but" if isinstance(cls, type) else f"a {type(cls).__name__},"
        raise BacktestInputError(f"{what}: {cls_name} is {kind} not a Strategy subclass") from None
    where = traceback.extract_tb(failure.__traceback__)[-1] if failure.__traceback__ else None
    at = f" ({where.filename}:{where.lineno})" if where and not where.filename.startswith("<") else ""
    raise BacktestError(f"{what}: importing {module_name} failed: {type(failure).__name__}: {failure}{at}") from None


def decides_on_prints_only(cls: type[Strategy]) -> bool:
    """True for a strategy that decides in on_trade / on_book (never called in a backtest) and has
    neither on_bar nor on_timer, the only decision hooks a backtest drives."""
    live_only = cls.on_trade is not Strategy.on_trade or cls.on_book is not Strategy.on_book
    return live_only and cls.on_bar is Strategy.on_bar and cls.on_timer is Strategy.on_timer


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    date_from: dt.date
    date_to: dt.date
    cash: int = 0  # 0: the card's budget (or DEFAULT_CASH when that is 0 too)
    costs: CostModel = field(default_factory=CostModel)
    # 10 % of a bar's volume; None: orders fill whole in a bar with volume (the twin's history mode fills so)
    max_participation_bp: int | None = MAX_PARTICIPATION_BP
    params: dict[str, Any] | None = None  # overrides the card's [params] (sweeps)
    # None: each trading day's securities transaction + rural tax for the code's market and kind
    # (common/krx_rules.py, ETF/ETN none); a number: that flat rate on every sale (costs.sell_tax_ppm
    # is not used by the backtester)
    sell_tax_ppm: int | None = None
    history: CompanyHistory | None = None  # company data and investor flows for ctx.quote()/ctx.investor()


@dataclass(slots=True)
class BacktestResult:
    card_id: str
    strategy: str
    params: dict[str, Any]
    date_from: str
    date_to: str
    initial_cash: int
    dates: list[str]  # trading days (YYYY-MM-DD), one per equity point
    equity: list[int]  # at each day's close, KRW
    holdings: list[int]  # market value of the positions at each day's close
    fills: list[FillRecord]
    orders: list[Order]  # every order in its final state, in submission order
    order_states: dict[str, int]  # final state -> count
    fees: int
    taxes: int
    traded_value: int
    positions: dict[str, PositionView]
    closes: dict[str, tuple[list[str], list[int]]]  # code -> (days, each day's last close) (for the report)
    bars: int  # bars delivered to on_bar
    interval: str = "1d"
    unanswered: dict[str, int] = field(default_factory=dict)  # ctx.quote/investor asked before the history began
    protections: list[Protection] = field(default_factory=list)  # every protective order, in its final state
    # what the run could not model as live, and orders refused (for the report)
    warnings: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=65536)
def _time(start: str, minutes: int, end: bool) -> dt.datetime:
    """The time of a bar's start (end=False) or end: a daily bar spans its session (09:00-15:30); an intraday bar ends
    at the latest a minute after the close, as the gateway's builder ends the day's last bars (server/bars.py)."""
    if minutes == 0:
        return dt.datetime.fromtimestamp(_session_ns(start[:10])[end] // 1_000_000_000, KST)
    if end:
        return dt.datetime.fromtimestamp(_time_ns(start, minutes, True) // 1_000_000_000, KST)
    return dt.datetime(
        int(start[:4]), int(start[5:7]), int(start[8:10]), int(start[11:13]), int(start[14:16]), tzinfo=KST
    )


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()
_KST_OFFSET_S = 9 * 3600


_TIF_NEXT = TimeInForce.NEXT_SESSION
EOD_BEFORE_BAR, EOD_AFTER_BAR = 1, 2  # Backtest.eod_at: the end of day before the bar's on_bar, or after it
_BUY, _SELL = Side.BUY, Side.SELL  # module globals: a class attribute of an enum is slow on Python 3.11
_NO_COMPANY = CompanyDay(day="", per=0.0, pbr=0.0, eps=0, bps=0)  # prices only: KIS's answer without company data


@functools.lru_cache(maxsize=65536)
def _day_ns(day: str) -> int:
    """00:00 KST of `day` in ns since the epoch (cached: a day's orders and fills all need it)."""
    return (
        (dt.date(int(day[:4]), int(day[5:7]), int(day[8:10])).toordinal() - _EPOCH_DAY) * 86_400 - _KST_OFFSET_S
    ) * 1_000_000_000


_SESSION_NS: dict[str, tuple[int, int]] = {}


def _minute_ns(t: dt.time) -> int:
    return (t.hour * 60 + t.minute) * 60_000_000_000


_NORMAL_NS = (_minute_ns(NORMAL_HOURS[0]), _minute_ns(NORMAL_HOURS[1]))  # the open and close after midnight
_EARLIER_NS = (_minute_ns(EARLIER_HOURS[0]), _minute_ns(EARLIER_HOURS[1]))  # (before LONGER_SESSION_FROM)
_LONGER_FROM = LONGER_SESSION_FROM.isoformat()
_CLOSING_CALL_NS = CLOSING_CALL // dt.timedelta(microseconds=1) * 1000


def _session_ns(day: str) -> tuple[int, int]:
    """The session's open and close on `day` in ns since the epoch, by the KRX calendar: 09:00-15:30,
    an hour later on a late-opening day (the year's first session, the college entrance exam); the
    standard hours on a day the calendar does not know (memoised: calendar facts)."""
    got = _SESSION_NS.get(day)
    if got is None:
        # a cold run works this out for every bar time it orders in: the calendar's table of late
        # sessions and one date object, not session_hours' walk through the calendar
        year = int(day[:4])
        hours = late_hours_of(year).get(day) if known_year(year) else None
        if hours is None:
            o, c = _NORMAL_NS if day >= _LONGER_FROM else _EARLIER_NS  # (the era's usual hours: era_hours)
        else:
            o, c = _minute_ns(hours[0]), _minute_ns(hours[1])
        midnight = ((dt.date.fromisoformat(day).toordinal() - _EPOCH_DAY) * 86_400 - _KST_OFFSET_S) * 1_000_000_000
        got = _SESSION_NS[day] = (midnight + o, midnight + c)
    return got


def _time_ns(start: str, minutes: int, end: bool) -> int:
    """_time() in ns for order/fill timestamps, with integer arithmetic (KST has no DST)."""
    if minutes == 0:
        return _session_ns(start[:10])[end]
    at = _day_ns(start[:10]) + (int(start[11:13]) * 60 + int(start[14:16])) * 60_000_000_000
    if not end:
        return at
    # the day's last bars end with the closing print's minute (the 60m 15:00 bar at 15:31, not 16:00): live hands
    # them over then, in the post-close phase; a bar of data after that (after-hours) keeps its own length
    last, full = _session_ns(start[:10])[1] + 60_000_000_000, at + minutes * 60_000_000_000
    return full if at >= last else min(full, last)


def _daily_bars(bars: list[Bar]) -> list[Bar]:
    """Intraday bars aggregated into one bar per day (for history(code, "1d") on intraday data)."""
    out: list[Bar] = []
    cur: Bar | None = None
    for b in bars:
        day = b.start[:10]
        if cur is not None and cur.start == day:
            cur = Bar(
                code=b.code,
                interval="1d",
                start=day,
                open=cur.open,
                high=max(cur.high, b.high),
                low=min(cur.low, b.low),
                close=b.close,
                volume=cur.volume + b.volume,
                value=cur.value + b.value,
            )
        else:
            if cur is not None:
                out.append(cur)
            cur = Bar(
                code=b.code,
                interval="1d",
                start=day,
                open=b.open,
                high=b.high,
                low=b.low,
                close=b.close,
                volume=b.volume,
                value=b.value,
            )
    if cur is not None:
        out.append(cur)
    return out


# sessions of evidence before intraday data counts as leaving the open's volume out (open_volume_unrecorded)
UNRECORDED_SESSIONS = 5


def open_volume_unrecorded(bars: list[Bar], starts: list[str]) -> bool:
    """Intraday bars (`starts`: their starts) that leave the opening's volume out: on most days (more than
    half, UNRECORDED_SESSIONS or more) the day's first bar traded (it has a range) yet shows volume 0, while
    other bars have volume. So do shared/data/krx_intraday_5min_2020's (yfinance 5-minute bars; its README:
    "The 09:00 bar has Volume = 0", the bars' volumes add up to about 80 % of the day's, the first bar's
    open is the official open on 41 of 42 days): volume 0 there is not recorded, not no trades, and the
    broker fills such bars (broker.py `unrecorded`). A few days cannot tell a source's habit from bars
    that happened to record none: the broker's rule for those (a volume-0 bar leaves the agent's orders
    nothing) stays."""
    unrecorded = recorded = i = 0
    traded = False
    n = len(bars)
    while i < n:  # day by day: the first bar of each
        first = bars[i]
        j = bisect.bisect_left(starts, first.start[:10] + "~", i)  # "~" sorts after "THH:MM": the next day
        if first.volume:
            recorded += 1
        elif first.low != first.high:
            unrecorded += 1
            traded = traded or any(bars[k].volume for k in range(i + 1, j))
        i = j
    return traded and unrecorded >= UNRECORDED_SESSIONS and unrecorded > recorded


def _forbidden(o: Order, what: str) -> str:
    """What live's desk answers the agent's cancel or revise of a gateway exit with (code FORBIDDEN)."""
    return (
        f"{o.client_order_id} is a sell the gateway placed for {o.agent} (a protective "
        f"exit or a flatten): the agent may not {what} it"
    )


class BacktestContext(BacktestServices):  # state in memory; quote/investor from the history (services.py)
    """The strategy's Context in a backtest (agent.strategy.Context): same calls, simulated broker."""

    _e: Backtest  # always bound here (the services base also serves engine-less calls)

    def __init__(self, engine: Backtest) -> None:
        self._e = engine
        self.agent_id = engine.card.id
        self.log = logging.getLogger(f"ktrader.backtest.{engine.card.id}")

    def buy(
        self,
        code: str,
        qty: int,
        price: int = 0,
        *,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.DAY,
        reason: str = "",
        context: dict[str, Any] | None = None,
        stop: int = 0,
        take: int = 0,
        trail_pct: float = 0.0,
        protect: ProtectionSpec | None = None,
    ) -> str:
        e = self._e
        spec = protection_spec(stop, take, trail_pct, protect)
        if spec is None:
            return e.order(_BUY, code, qty, price, order_type, tif, reason)
        # as live: a bad protective order refuses its buy, as does one its fill would meet at once
        err = validate(spec) or met_on_entry(spec, price, self._entry_mark(code, tif))
        coid = e.order(
            _BUY, code, qty, price, order_type, tif, reason, refuse=(ErrorCode.BAD_PROTECTION, err) if err else None
        )
        if not err:
            e.protections.attach(coid, code, spec, e.broker.ts_ns, e.pending)
        return coid

    def protect(
        self,
        code: str,
        qty: int = 0,
        *,
        stop: int = 0,
        take: int = 0,
        trail_pct: float = 0.0,
        exit: ExitType = ExitType.MARKET,
        when_closed: WhenClosed = WhenClosed.NEXT_OPEN,
        spec: ProtectionSpec | None = None,
    ) -> str:
        e = self._e
        ps = protection_spec(stop, take, trail_pct, spec, exit=exit, when_closed=when_closed)
        if ps is None:
            raise KtraderError(
                ErrorCode.BAD_PROTECTION, "a protective order needs a stop, a take-profit or a trailing stop"
            )
        pid = e.next_id()
        e.protections.protect(pid, code, qty, ps, e.broker.ts_ns, e.pending)
        return pid

    def cancel_protection(self, protection_id: str) -> None:
        try:
            self._e.protections.cancel(protection_id, self._e.pending)
        except KtraderError as err:
            self.log.warning("cancel protection %s: %s", protection_id, err.message)

    @property
    def protections(self) -> dict[str, Protection]:
        return dict(self._e.protections.active)

    def sell(
        self,
        code: str,
        qty: int,
        price: int = 0,
        *,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.DAY,
        reason: str = "",
        context: dict[str, Any] | None = None,
    ) -> str:
        return self._e.order(_SELL, code, qty, price, order_type, tif, reason)

    def _refused(self, o: Order, verb: str, what: str, code: ErrorCode, why: str) -> None:
        """A revise or cancel refused, as live's desk refuses it: the strategy hears it through on_order (the
        order as it stands, with the refusal's code and why; the order itself does not change), as the live
        runtime delivers the gateway's Error (agent/runtime.py _amend_refused)."""
        self.log.warning("%s %s: refused: %s: %s", verb, o.client_order_id, code, why)
        told = msgspec.structs.replace(o, reason_code=code.value, reason=f"{what} refused: {why}")
        self._e.pending.append(("order", told))

    def cancel(self, client_order_id: str) -> None:
        o = self._e.broker.orders.get(client_order_id)
        if o is None:
            self.log.warning("cancel %s: refused: %s: no such order", client_order_id, ErrorCode.UNKNOWN_ORDER)
        elif is_gateway_exit(o):  # live's desk answers FORBIDDEN (server/order_desk.py cancel)
            self._refused(o, "cancel", "cancel", ErrorCode.FORBIDDEN, _forbidden(o, "cancel"))
        elif not self._e.broker.cancel(client_order_id, self._e.pending):
            self._refused(
                o,
                "cancel",
                "cancel",
                ErrorCode.ORDER_NOT_OPEN,
                f"{client_order_id} is {o.state}: nothing to cancel now",
            )

    def modify(self, client_order_id: str, price: int) -> None:
        """The price only, as live (agent.strategy.Context.modify); a refusal comes back through on_order."""
        e = self._e
        b = e.broker
        o = b.orders.get(client_order_id)
        what = f"revise to {price:,}"
        if o is None:
            self.log.warning("modify %s: refused: %s: no such order", client_order_id, ErrorCode.UNKNOWN_ORDER)
        elif is_gateway_exit(o):  # live's desk answers FORBIDDEN (server/order_desk.py modify)
            self._refused(o, "modify", what, ErrorCode.FORBIDDEN, _forbidden(o, "revise"))
        elif not o.is_open:  # then, as the desk checks: not open, a revise it refuses, the gate
            self._refused(
                o, "modify", what, ErrorCode.ORDER_NOT_OPEN, f"{client_order_id} is {o.state}: cannot revise now"
            )
        elif why := revise_refusal(o, 0):
            self._refused(o, "modify", what, ErrorCode.BAD_ORDER, why)  # as the gateway refuses it
        elif met := self._met_on_revise(o, price):  # as the gateway: a protected buy revised to meet its levels
            self._refused(o, "modify", what, ErrorCode.BAD_PROTECTION, met)
        else:
            told = len(e.pending)
            if b.modify(client_order_id, price, e.pending, today=e.times[e.step][:10] if e._running else ""):
                return
            if len(e.pending) == told:  # (else the gate refused it: its ReplaceRefused note tells on_order)
                why = f"{client_order_id} is held for a later session: cannot revise now"  # live: HELD
                self._refused(b.orders[client_order_id], "modify", what, ErrorCode.ORDER_NOT_OPEN, why)

    def _met_on_revise(self, o: Order, price: int) -> str | None:
        p = self._e.protections.active.get(o.client_order_id)
        if p is None or p.entry != o.client_order_id or o.side is not _BUY:
            return None
        return met_on_entry(p.spec, price, self._entry_mark(o.code, o.tif))

    def _entry_mark(self, code: str, tif: TimeInForce) -> int:
        return entry_mark(tif, self.market_phase(), self._e.broker.last.get(code, 0))  # (as the gateway's)

    def cancel_all(self, code: str = "") -> None:
        """The agent's own open orders (of `code`): the sells the gateway placed for it stay, as live's
        CancelAll spares them (server/gateway.py, spare_exits)."""
        b = self._e.broker
        for coid in list(b.open_ids):
            o = b.orders[coid]
            if (not code or o.code == code) and not is_gateway_exit(o):
                b.cancel(coid, self._e.pending)

    @property
    def open_orders(self) -> dict[str, OrderView]:
        b = self._e.broker
        return {c: b.view(b.orders[c]) for c in b.open_ids}

    @property
    def positions(self) -> dict[str, PositionView]:
        return {c: p for c, p in self._e.broker.positions.items() if p.qty}

    def position(self, code: str) -> int:
        p = self._e.broker.positions.get(code)
        return p.qty if p else 0

    def set_timer(self, interval_s: float) -> None:
        self._e.timer_s = interval_s
        self._e.next_timer = self.now() + dt.timedelta(seconds=interval_s) if interval_s > 0 else None

    def now(self) -> dt.datetime:
        e = self._e
        return _time(e.times[e.step], e.minutes, e.in_bar)

    def market_phase(self) -> Phase:
        return phase_at_ns(self._e.now_ns())  # the KRX calendar's phase at the bar's time (as the gate judges it)

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        """The bars before the current bar time (agent.strategy.Context.history). It never fails (never
        raises HistoryUnavailable, as live may): no data, or an interval the data cannot give, is []."""
        e = self._e
        if n <= 0:
            return []
        n = history_count(code, interval, n)  # (a typo is the strategy's error, as live)
        if code not in e.bars:
            return []
        t = e.times[e.step]
        if interval == e.interval:
            bars, starts = e.bars[code], e.starts[code]
        elif interval == "1d":  # completed days of intraday data
            bars, starts = e.daily(code)
            t = t[:10]
        else:
            return []
        # bars strictly before the current bar time: never the bar being delivered, never a later one
        p = bisect.bisect_left(starts, t)
        return bars[max(0, p - n) : p]


class Backtest:
    def __init__(self, card: AgentCard, series: dict[str, Series], config: BacktestConfig) -> None:
        missing = [c for c in card.codes if c not in series]
        if missing:
            raise BacktestInputError(f"no data for {missing}")
        if config.date_from > config.date_to:
            raise BacktestInputError(f"--from {config.date_from} is after --to {config.date_to}")
        intervals = {series[c].bars[0].interval for c in card.codes if series[c].bars}
        if len(intervals) > 1:
            raise BacktestInputError(f"the codes' bars have different intervals {sorted(intervals)}")
        self.interval = intervals.pop() if intervals else "1d"
        if self.interval != "1d" and self.interval not in INTERVAL_MINUTES:
            raise BacktestInputError(
                f"bar interval {self.interval!r} is not supported (1d, {', '.join(INTERVAL_MINUTES)})"
            )
        self.intraday = self.interval != "1d"
        self.minutes = INTERVAL_MINUTES.get(self.interval, 0)
        self.card = card
        self.config = config
        cash = config.cash or card.budget or DEFAULT_CASH
        self.broker = SimBroker(
            card=card,
            cash=cash,
            costs=config.costs,
            max_participation_bp=config.max_participation_bp,
            kinds={c: s.kind for c, s in series.items()},
            markets={c: s.market for c, s in series.items()},
            sectors={c: s.sector for c, s in series.items() if s.sector},
            flat_sell_tax_ppm=config.sell_tax_ppm,
            uncapped=frozenset(c for c, s in series.items() if not s.has_volume),
        )
        if self.intraday:  # marks follow every bar; the band's base moves once a day
            self.broker.last = {}
            self.broker.monotonic = False  # a next-session order may precede a day order of today
            self.broker.timed = True  # orders at a time of day: the card's [schedule] start is judged, as live
        self.initial_cash = cash
        lo, hi = config.date_from.isoformat(), config.date_to.isoformat() + "~"  # "~" sorts after "T..": whole day
        self.bars: dict[str, list[Bar]] = {}
        self.starts: dict[str, list[str]] = {}
        self._official: dict[str, list[Bar]] = {c: d for c in card.codes if (d := series[c].daily)}
        self._rolled_reads: Counter[str] = Counter()  # ctx.history(code, "1d") answered from the run's own bars
        firsts: dict[str, int] = {}
        for code in card.codes:  # bars are oldest first (loaders guarantee it)
            all_bars = series[code].bars
            starts = series[code].starts  # the loader's column; rebuilt when the bars were replaced since
            if (
                starts is None
                or len(starts) != len(all_bars)
                or (all_bars and (starts[0] != all_bars[0].start or starts[-1] != all_bars[-1].start))
            ):
                starts = [b.start for b in all_bars]
            end = bisect.bisect_right(starts, hi)
            self.bars[code] = all_bars[:end]
            self.starts[code] = starts[:end]
            firsts[code] = bisect.bisect_left(starts, lo, 0, end)
        if self.intraday:  # data that leaves the open's volume out (broker.py `unrecorded`)
            self.broker.unrecorded = frozenset(
                c for c, b in self.bars.items() if open_volume_unrecorded(b, self.starts[c])
            )
        # the timeline: bar times, and per time its bars (one code: the Bar itself, no per-step container)
        self.single = len(card.codes) == 1
        self.at: list[Any]
        if self.single:
            code = card.codes[0]
            self.times: list[str] = self.starts[code][firsts[code] :]
            self.at = self.bars[code][firsts[code] :]
        else:
            by_time: dict[str, dict[str, Bar]] = {}
            for code in sorted(card.codes):  # code order = on_bar order within a bar time (as the gateway closes them)
                for b in self.bars[code][firsts[code] :]:
                    by_time.setdefault(b.start, {})[code] = b
            self.times = sorted(by_time)
            self.at = [by_time[t] for t in self.times]
        if not self.times:
            raise no_bars(card.codes, series, config.date_from, config.date_to)
        # the KRX session an order placed at each bar time lives in: intraday the same day; daily the
        # next calendar session, or the data's next day if that comes first (the pre-1999 calendar has
        # gaps where the data shows trading)
        self._entry: dict[int, str] = {}  # step -> session, computed when an order is placed
        # intraday: True at each day's last bar time (where orders expire and equity is marked)
        self.day_end: list[bool] = []
        if self.intraday:
            days = [t[:10] for t in self.times]
            self.day_end = [a != b for a, b in zip(days, days[1:])] + [True]
        for code, first in firsts.items():  # warm-up closes: the band's base for the first decisions
            if first > 0:
                self.broker.set_close(code, self.bars[code][first - 1].close)
            elif self.intraday and first < len(self.bars[code]):
                # no earlier day: the first bar's open stands in for the previous close (the band's base)
                self.broker.set_close(code, self.bars[code][first].open)
        # the card's end of day (module docstring): intraday, per bar time 0, or when it runs there
        self.end_of_day = EndOfDay(card.schedule.end_of_day)  # (a card built in code may carry the plain string)
        self._end_minute = int(card.schedule.end[:2]) * 60 + int(card.schedule.end[3:5])
        self.eod_at: list[int] = []
        self._short_days: list[str] = []  # intraday: the last bar of each day whose bars stop before `end`
        if self.intraday:  # every policy, hold too: after `end` the agent only reduces, as live's gate has it
            self.eod_at = self._eod_steps()
        elif self.end_of_day is not EndOfDay.HOLD:
            self.broker.closing_call = False  # live cancels a CONDITIONAL at `end`, before the closing call
        self._daily: dict[str, tuple[list[Bar], list[str]]] = {}
        raw = dict(card.params)
        raw.update(config.params or {})
        self.params = raw
        cls = strategy_class(card)
        if decides_on_prints_only(cls):
            # bars cannot be turned back into the prints (or books) it decides on: run, it would trade
            # nothing and look like a flat strategy
            hooks = " / ".join(h for h in ("on_trade", "on_book") if getattr(cls, h) is not getattr(Strategy, h))
            raise BacktestInputError(
                f"{card.strategy} decides on live prints only ({hooks}), which {self.interval} bars cannot "
                "replay: a backtest of it would trade nothing (it needs on_bar or on_timer to be backtested)"
            )
        if cls.needs_bars and self.interval not in cls.needs_bars:
            # (live, the gateway streams every interval its card subscribes to; a run gets its data's only)
            needs = ", ".join(b.value for b in cls.needs_bars)
            raise BacktestInputError(
                f"{card.strategy} decides on {needs} bars, the data is {self.interval} bars: a backtest of it would "
                f"trade nothing (run it on {cls.needs_bars[0].value} data)"
            )
        # intervals it decides on that this run cannot give (live streams each one its card subscribes to): said
        self._other_intervals = sorted(
            {str(b) for b in (*cls.needs_bars, *card.subscriptions.bars)} - {self.interval},
            key=lambda b: (b != "1d", INTERVAL_MINUTES.get(b, 0)),  # (a set's order: another per run)
        )
        self.ctx = BacktestContext(self)
        try:  # params the strategy refuses (its Params' types and checks, or a ValueError when it starts)
            params = cls.parse_params(raw)
            if outside := params_codes_problems(cls, params, card.codes)[0]:
                raise ValueError(outside)
            self.strategy: Strategy = cls(self.ctx, params)
        except (ValueError, TypeError) as e:
            raise BacktestInputError(f"{card.strategy}: bad params {raw}: {e}") from e
        except Exception as e:
            raise BacktestError(f"{card.strategy}: failed to start with params {raw}: {type(e).__name__}: {e}") from e
        self.pending: list[Note] = []
        self.history = config.history
        self.missing: list[str] = []  # what the strategy asked for that this backtest cannot answer
        self.unanswered: dict[str, int] = {}
        # hooks the strategy leaves at the base no-op are not called (saves building views)
        self._wants_orders = type(self.strategy).on_order is not Strategy.on_order
        self._wants_fills = type(self.strategy).on_fill is not Strategy.on_fill
        self._wants_protections = type(self.strategy).on_protection is not Strategy.on_protection
        self.broker.quiet = not self._wants_orders
        self.protections = BacktestProtections(self.broker, card.id)
        self._check_needs()
        self.step = 0
        self.in_bar = False  # False while the broker matches (bar start), True in on_bar (bar end)
        self._now_key = -1  # (step, in_bar) of the memoised _now_ns
        self._now_ns = 0
        self.timer_s = 0.0
        self.next_timer: dt.datetime | None = None
        self._order_day = ""
        self._coid_prefix = ""
        self._id_head = card.id + "-"
        self._order_n = 0
        self._running = False

    # ---- the end of day ---------------------------------------------------------------------------

    def _end_minute_of(self, day: str) -> int:
        """The card's `end` on `day` in minutes after midnight, moved as the session's close (the CSAT day), or as its
        open where the card's start would pass it (the year's first session), as live's (calendar.schedule_end)."""
        if not known_year(int(day[:4])):
            return self._end_minute
        end = schedule_end(
            dt.date.fromisoformat(day),
            dt.time(*divmod(self._end_minute, 60)),
            dt.time.fromisoformat(self.card.schedule.start),
        )
        return end.hour * 60 + end.minute

    def _eod_steps(self) -> list[int]:
        """Intraday: per bar time, EOD_BEFORE_BAR at each day's first bar whose end reaches the card's
        `end` (after its matching, before its on_bar), else 0. A day whose bars stop before `end` (data
        without the session's last minutes) is counted in `_short_days`; under `flatten` its end of day
        comes after its last bar (EOD_AFTER_BAR: sold at that bar's close, the data's stand-in for the
        closing call), under `cancel` not at all (its orders expire at the close). An end at or after the
        close is not a short day: live, a flatten sells in the closing call and a cancel leaves the close to end
        the orders (server/daycycle.py policy_due)."""
        out = [0] * len(self.times)
        day, end, done, at_close = "", 0, False, False
        flatten = self.end_of_day is EndOfDay.FLATTEN
        for i, t in enumerate(self.times):
            if t[:10] != day:
                day, done = t[:10], False
                end = self._end_minute_of(day)
                # an end at or after the close is the close's (server/daycycle.py policy_due): no bar reaches it
                at_close = end >= (_session_ns(day)[1] - _day_ns(day)) // 60_000_000_000
            if done:
                continue
            if at_close:  # a flatten sells at the day's last close (live: in the closing call); else nothing runs
                if flatten and self.day_end[i]:
                    out[i] = EOD_AFTER_BAR
            elif int(t[11:13]) * 60 + int(t[14:16]) + self.minutes >= end:
                out[i], done = EOD_BEFORE_BAR, True
            elif self.day_end[i]:
                self._short_days.append(t)
                if flatten:
                    out[i] = EOD_AFTER_BAR
        return out

    def _end_of_day(self, step: int, bars: Any) -> None:
        """The card's end-of-day policy at its `end` (server/trading_day.py end_of_day): the agent's open
        orders cancelled, and for `flatten` a market sell of every position for the closing call (daily
        bars: filled here at the bar's close; intraday at the day's last close, `_closing_call`).
        Intraday the agent is reducing until the day's close."""
        broker, pending = self.broker, self.pending
        day = self.times[step][:10]
        broker.step = step
        end_ns, close_ns = _day_ns(day) + self._end_minute_of(day) * 60_000_000_000, _session_ns(day)[1]
        # an end at or after the close runs as the closing call starts (server/daycycle.py policy_due): at the close
        # itself the flatten's sells were refused (market closed) and the position carried, unsaid
        broker.ts_ns = end_ns if end_ns < close_ns else close_ns - _CLOSING_CALL_NS
        if self.end_of_day is not EndOfDay.HOLD:
            broker.cancel_all(pending)
        if self.end_of_day is EndOfDay.FLATTEN:
            broker.flatten(day, "end of day: flatten", pending)
            if not self.intraday:
                broker.ts_ns = _session_ns(day)[1]
                broker.fill_closing({bars.code: bars} if self.single else bars, day, pending)
                broker.expire_sessions(day, pending)  # a sell that did not fill (locked, halted) ends with the day
        if self.intraday:
            broker.reducing = True
        if self.protections.active:
            self.protections.settle(pending)  # a position sold ends its protection
        if pending:
            self._deliver()

    def _closing_call(self, step: int) -> None:
        """Intraday, at the day's last bar: the flatten sells at the close of their code's last bar of the day."""
        broker, t = self.broker, self.times[step]
        day = t[:10]
        last: dict[str, Bar] = {}
        for coid in broker.closing:
            code = broker.orders[coid].code
            starts = self.starts[code]
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and starts[i][:10] == day:
                last[code] = self.bars[code][i]
        broker.step = step
        broker.ts_ns = _session_ns(day)[1]
        broker.fill_closing(last, day, self.pending)
        if self.protections.active:
            self.protections.settle(self.pending)
        if self.pending:
            self._deliver()

    def _interval_warnings(self) -> list[str]:
        """A strategy that decides on several intervals (5m through the day, 1d after the close) gets one in a run:
        its decisions on the others are missing from the result, unsaid (a hunt: 288 on_bar calls on 5m, 0 on 1d)."""
        if not self._other_intervals:
            return []
        other = ", ".join(self._other_intervals)
        return [
            f"{self.card.strategy} decides on {other} bars too (its needs_bars / the card's subscriptions.bars): this "
            f"run on {self.interval} data gives it {self.interval} bars only, so any decision it takes on {other} "
            "bars is not in the result"
        ]

    def _rolled_daily_warnings(self) -> list[str]:
        """ctx.history(code, "1d") of an intraday run on data without daily bars: rolled up from the run's bars, it
        starts empty on the data's first day and carries the intraday data's close and volume (a file whose bars stop
        before the close: that bar's close), where live answers with the broker's daily chart (the bars hunt)."""
        rolled = self._rolled_reads
        if not rolled:
            return []
        codes = sorted(rolled)
        return [
            f"ctx.history(code, '1d') of {codes_text(codes)} was read {sum(rolled.values()):,} time(s): the data has "
            f"no daily bars of {'it' if len(codes) == 1 else 'them'}, so this run rolls the days up from its "
            f"{self.interval} bars (none before the data's first day; the intraday data's close and volume), where "
            "live it is the broker's daily chart: a daily filter may decide differently (a --twin-replay run reads "
            "the daily bars the gateway stored, where it has them)"
        ]

    def _trip_warnings(self) -> list[str]:
        """A loss limit breached (at a close, or by an order's denial): live then keeps the agent reducing (halted
        past halt_drawdown_pct) until a person resumes it, across days; the backtest's gate only judges each order
        by the day's figures, so it went on buying the next morning. Said, with what live would have done."""
        out = []
        for rule, (first, days) in self.broker.limit_trips.items():
            stop = "halts it (cancels only)" if rule == "halt_drawdown_pct" else "keeps it reducing (sells only)"
            out.append(
                f"risk.{rule} was breached on {days} day{'' if days == 1 else 's'} (the first: {first}): "
                f"live, the gateway then {stop} until a person resumes it, across days; this backtest went on "
                "buying from the next morning as if someone had"
            )
        return out

    def _refusal_warnings(self) -> list[str]:
        """Orders the card's risk limits (or the broker's rules) refused: a run of them read as a strategy that never
        signalled ('trades 0', the reasons only in orders.csv: a hunt). By reason code, with the first."""
        refused = [o for o in self.broker.orders.values() if o.state in (OrderState.DENIED, OrderState.REJECTED)]
        if not refused:
            return []
        counts = Counter(o.reason_code or o.state.value for o in refused)
        first = min(refused, key=lambda o: o.created_ns)
        by = ", ".join(f"{c} x{n:,}" for c, n in counts.most_common())
        return [
            f"{len(refused):,} order{'' if len(refused) == 1 else 's'} refused ({by}; the first: "
            f"{first.client_order_id} {first.code} {first.side.value} {first.qty:,}: {first.reason}): see orders.csv"
        ]

    def _cap_warnings(self) -> list[str]:
        """Orders the volume cap held back: a fill cut short is a modelling choice the user should see."""
        capped, cap = self.broker.capped, self.broker.max_participation_bp
        if not capped or cap is None:
            return []
        day, code, side, wanted, got = next(iter(capped.values()))
        pct = cap / 100
        return [
            f"the volume cap ({pct:g} % of a bar's volume, --max-participation) held back {len(capped):,} "
            f"order{'' if len(capped) == 1 else 's'} (the first: {day} {code} {side.value} {got:,} of {wanted:,} "
            "filled in that bar): a deeper market could have filled more"
        ]

    def _eod_warnings(self) -> list[str]:
        """Under `cancel` / `flatten`: on daily bars, the agent's fills inside a bar (not at its open), which
        may have come after `end`, where live cancels the order; on intraday bars, the days whose bars
        stop before `end`."""
        if self.end_of_day is EndOfDay.HOLD:
            return []
        policy, end = self.end_of_day.value, self.card.schedule.end
        if self.intraday:
            short = self._short_days
            if not short:
                return []
            days = sum(self.day_end)
            what = (
                "their positions are sold at the day's last close instead (the data's stand-in for the closing call)"
                if self.end_of_day is EndOfDay.FLATTEN
                else "not applied on them: their orders expire at the close (live cancels them at "
                f"{end}, next-session orders placed before it too)"
            )
            last = max(int(t[11:13]) * 60 + int(t[14:16]) for t in short) + self.minutes
            return [
                f"end_of_day = {policy} at {end}: the bars of {len(short):,} of {days:,} days stop before it (by "
                f"{last // 60:02d}:{last % 60:02d}): {what}"
            ]
        first, inside = self.broker.first_inside, self.broker.inside
        if first is None or (
            self.end_of_day is EndOfDay.CANCEL and dt.time.fromisoformat(self.card.schedule.end) >= NORMAL_HOURS[1]
        ):
            return []  # (an end at the close cancels nothing live: the close ends the day's orders)
        return [
            f"end_of_day = {policy} at {end}: a daily bar cannot tell fills "
            f"after it; live cancels the order then ({inside:,} fills inside a bar kept as filled, the first "
            f"{first.day} {first.code} {first.side.value} {first.qty:,} at {first.price:,}; "
            '[schedule] end_of_day = "hold" for orders meant to work the whole session)'
        ]

    # ---- company data and flows (tools/backtest/services.py) ---------------------------------------

    def _bar_now(self, code: str) -> tuple[int, list[Bar]]:
        """Index of `code`'s newest complete bar at the current time (-1: none yet), and its bars."""
        t = self.times[self.step]
        starts = self.starts[code]
        i = (bisect.bisect_right(starts, t) if self.in_bar else bisect.bisect_left(starts, t)) - 1
        return i, self.bars[code]

    def _unanswered(self, kind: str, message: str) -> KtraderError:
        self.unanswered[kind] = self.unanswered.get(kind, 0) + 1
        return KtraderError(ErrorCode.UNSUPPORTED, message)

    def quote(self, code: str) -> PriceQuote:
        """inquire-price as of the current bar: prices from the bars, company data from the history as
        read by now (the bar's end in on_bar, the session's close for a daily bar: never a later read of
        the day); PER/PBR/EPS/BPS 0 without it, counted."""
        day = self.times[self.step][:10]
        i, bars = self._bar_now(code)
        if i < 0:
            raise self._unanswered("quote before the first bar", f"no price for {code} before {day}")
        h = self.history
        row = h.quote_row(code, self.now_ns()) if h is not None and code in h.quotes else None
        if row is None:
            self.unanswered["quote without company data"] = self.unanswered.get("quote without company data", 0) + 1
            row = _NO_COMPANY
        bar = bars[i]
        last, bday = bar.close, bar.start[:10]
        j = i
        while j > 0 and bars[j - 1].start[:10] == bday:  # intraday: the day so far
            j -= 1
        today = bars[j : i + 1]
        base = bars[j - 1].close if j > 0 else today[0].open  # the previous day's close
        kind, market = self.broker.listing(code)
        rules = rules_for(bday)
        lower, upper = rules.price_limits(base, kind, market)
        eps, bps = row.eps, row.bps
        return PriceQuote(
            code=code,
            last=last,
            change=last - base,
            change_pct=round((last - base) * 100 / base, 2),
            open=today[0].open,
            high=max(b.high for b in today),
            low=min(b.low for b in today),
            base=base,
            upper_limit=upper,
            lower_limit=lower,
            volume=sum(b.volume for b in today),
            value=sum(b.value for b in today),
            per=round(last / eps, 2) if eps > 0 else row.per,
            pbr=round(last / bps, 2) if bps > 0 else row.pbr,
            eps=eps,
            bps=bps,
            market_cap=row.listed_shares * last if row.listed_shares else row.market_cap,
            listed_shares=row.listed_shares,
            high_250d=row.high_250d,
            low_250d=row.low_250d,
            tick=rules.tick_size(last, kind, market),
        )

    def investor(self, code: str) -> list[InvestorDay]:
        """inquire-investor as of the current bar: completed days before today, newest first."""
        assert self.history is not None
        day = self.times[self.step][:10]
        days = self.history.investor_days(code, day)
        if not days:
            self.unanswered["investor"] = self.unanswered.get("investor", 0) + 1
        return days

    def _check_needs(self) -> None:
        """A strategy that declares it needs company data or flows does not start without them."""
        h, lacking = self.history, []
        for need in sorted(type(self.strategy).needs):
            have = (h.quotes if need is DataNeed.COMPANY else h.flows) if h is not None else {}
            codes = [c for c in self.card.codes if c not in have]
            if codes:
                what = "company data (PER/PBR/EPS/BPS)" if need is DataNeed.COMPANY else "investor flows"
                lacking.append(f"{what} for {', '.join(codes)}")
        if lacking:
            where = f"{h.source} has none" if h is not None else "give --history PATH"
            raise BacktestInputError(
                f"{self.card.strategy} needs {'; '.join(lacking)} ({where}: a run directory whose "
                f"gateway recorded them, or files in the layout of tools/backtest/history.py)"
            )

    def _check_missing(self) -> None:
        if self.missing:
            first = self.missing[0]
            raise BacktestError(
                f"{self.card.strategy} needs what this backtest cannot give: {first} "
                f"(asked {len(self.missing)} time(s) by {self.times[self.step][:10]})"
            )

    def entry_session(self, step: int) -> str:
        """The KRX session an order placed at `step` lives in (see the module docstring)."""
        got = self._entry.get(step)
        if got is None:
            times = self.times
            day = times[step][:10]
            if self.intraday:
                got = day
            else:
                got = next_session(day)
                if step + 1 < len(times):
                    got = min(got, times[step + 1][:10])
            self._entry[step] = got
        return got

    def daily(self, code: str) -> tuple[list[Bar], list[str]]:
        """An intraday run's daily bars of `code`: the source's official ones (Series.daily), else rolled up from
        the run's bars (counted: the run says so)."""
        got = self._daily.get(code)
        if got is None:
            bars = self._official.get(code) or _daily_bars(self.bars[code])
            got = self._daily[code] = (bars, [b.start for b in bars])
        if code not in self._official:
            self._rolled_reads[code] += 1
        return got

    # ---- called by the context --------------------------------------------------------------------

    def now_ns(self) -> int:
        """The current time in ns: the bar's start while the broker matches, its end in on_bar. Worked
        out once per bar time and side (the strategy's phase check and its order both ask)."""
        key = self.step * 2 + self.in_bar
        if key != self._now_key:
            self._now_key = key
            self._now_ns = _time_ns(self.times[self.step], self.minutes, self.in_bar)
        return self._now_ns

    def next_id(self) -> str:
        """The agent's next order number of the day (orders and protective orders share them, as live)."""
        day = self.times[self.step][:10]
        if day != self._order_day:  # client order numbers restart each day, as live
            self._order_day, self._order_n = day, 0
            # common.ids.make_client_order_id's "<agent>-<yyyymmdd>-<n>", without a date object per day
            self._coid_prefix = self._id_head + day.replace("-", "") + "-"
        self._order_n += 1
        return self._coid_prefix + str(self._order_n)

    def order(
        self,
        side: Side,
        code: str,
        qty: int,
        price: int,
        order_type: OrderType,
        tif: TimeInForce,
        reason: str,
        refuse: tuple[str, str] | None = None,
    ) -> str:
        t = self.times[self.step]
        day = t[:10]
        coid = self.next_id()
        # on_start orders are decided before the first bar: they are live in it and expire after it
        broker = self.broker
        step = self.step
        if self._running:
            broker.step = step
            if (
                tif == _TIF_NEXT and self.intraday
            ):  # (== : a strategy may pass the plain string)  # held for the next session, as the gateway holds it
                session = next_session_day(self.ctx.now(), phase_at_ns(self.now_ns())).isoformat()
            else:
                session = self._entry.get(step) or self.entry_session(step)
        else:
            broker.step, session = -1, day
        if session != broker.entry_session:
            broker.entry_session, broker.entry_rules = session, rules_for(session)
        broker.ts_ns = self.now_ns()
        broker.submit(coid, code, side, qty, price, order_type, tif, reason, self.pending, refuse)
        return coid

    # ---- the loop ------------------------------------------------------------------------------

    def _call(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.strategy, hook)(*args)
            if self.ctx._kv is not None and self.ctx._kv._lent:
                self.ctx._kv.settle()
        except Exception as e:
            self._check_missing()  # (the strategy may have let the UNSUPPORTED error through)
            raise BacktestError(
                f"{self.card.strategy}.{hook} failed at {self.times[self.step]}: {type(e).__name__}: {e}"
            ) from e
        if self.missing:
            self._check_missing()

    def _deliver(self) -> None:
        # notes raised while delivering (an order placed in on_fill) are delivered in the same pass
        pending = self.pending
        if not (self._wants_orders or self._wants_fills or self._wants_protections):
            pending.clear()
            return
        i = 0
        while i < len(pending):
            note = pending[i]
            i += 1
            if note[0] == "order":
                if self._wants_orders:
                    self._call("on_order", self.broker.view(note[1]))
            elif note[0] == "protection":
                if self._wants_protections:
                    self._call("on_protection", note[1])
            elif self._wants_fills:
                f = note[1]  # the FillRecord; the view is built only for a strategy that listens
                self._call(
                    "on_fill",
                    FillView(
                        client_order_id=f.client_order_id,
                        fill_id=note[2],
                        code=f.code,
                        side=f.side,
                        qty=f.qty,
                        price=f.price,
                        ts_ns=note[3],
                    ),
                    note[4],
                )
        pending.clear()

    def _heard_at_open(self, bars: dict[str, Bar] | Bar) -> None:
        """The fills at the bar's open reach the strategy before the bar's protections are checked and its
        other orders matched, as live's on_fill comes at the open's print: a protection it places now
        (`ctx.protect` in on_fill) is placed at the open and checked against this bar
        (tools/backtest/protection.py). Orders it places now are matched from the next bar, as every
        order placed at a bar time (broker `hold`: a daily bar's already live in the next session)."""
        broker, prot, pending = self.broker, self.protections, self.pending
        if prot.active or prot._pending_notes:
            prot.settle(pending)  # the buys that filled at the open armed theirs: heard with the fills
        before = set(broker.open_ids)
        prot.opening = bars
        try:
            self._deliver()
        finally:
            prot.opening = None
        broker.hold.update(c for c in broker.open_ids if c not in before)

    def run(self, progress: Callable[[int, int], None] | None = None) -> BacktestResult:
        # The hot loop: per bar one on_bar call; broker work only when orders are open, position
        # marking only while shares are held.
        broker, pending, times, at = self.broker, self.pending, self.times, self.at
        on_bar = self.strategy.on_bar
        ctx = self.ctx
        base, last, held = broker.base, broker.last, broker.held
        intraday, minutes, day_end = self.intraday, self.minutes, self.day_end
        dates: list[str] = []
        equity: list[int] = []
        holdings: list[int] = []
        d_append, eq_append, h_append = dates.append, equity.append, holdings.append
        # drawdown peaks follow the equity; a loss limit breached at a close is noted (_trip_warnings)
        mark_equity = broker.mark_equity if broker._daily else None
        total = len(times)
        single = self.single
        listening = self._wants_orders or self._wants_fills or self._wants_protections
        open_ids, meta = broker.open_ids, broker.meta
        prot = self.protections
        protected = prot.active
        missing = self.missing
        eod_at = self.eod_at
        flatten_daily = not intraday and self.end_of_day is EndOfDay.FLATTEN  # (daily cancel: see the docstring)
        self._call("on_start")
        self._deliver()
        self.in_bar = True
        self._running = True
        daily, rolled = broker._daily, ""
        for step, t in enumerate(times):
            self.step = step
            bars = at[step]
            if daily and t[:10] != rolled:  # a new day starts from the close before it, before its bars move it
                rolled = t[:10]
                broker.ts_ns = _session_ns(rolled)[0]
                if broker.ts_ns // _DAY_NS != broker._day:
                    broker._roll()
            check = protected or prot._pending_notes
            prot.step = step
            if open_ids or check:
                self.in_bar = False
                split = False
                broker.step = step
                day = t[:10]
                start_ns = _time_ns(t, minutes, False) if intraday else _session_ns(day)[0]
                broker.ts_ns = start_ns
                if open_ids:
                    if intraday:
                        if day != broker.day:  # a new day: next-session orders whose session had no bar expired then
                            broker.day = day
                            broker.expire_sessions(day, pending, before=True)
                    elif meta[open_ids[0]][2] < day:  # sessions that passed without a bar of any listed code
                        broker.expire_sessions(day, pending, before=True)  # (halted): expired at their close
                    # the orders that execute at the open first: they fill in the opening auction (or at
                    # the open's print), before any print a stop or a take-profit sees
                    if check or listening:
                        split, fills = True, broker._fill_n
                        broker.match(bars, day, pending, AT_OPEN)
                        if listening and broker._fill_n != fills:  # the strategy hears of them at the open
                            self._heard_at_open(bars)
                            check = protected or prot._pending_notes
                    else:
                        broker.match(bars, day, pending, BOTH)
                if check:  # then the stops and take-profits (common/protection.py), then the rest of the bar
                    broker.ts_ns = start_ns
                    prot.check(step, bars, day, pending)
                if split:
                    if open_ids:
                        broker.match(bars, day, pending, REST)
                    if broker.hold:
                        broker.hold.clear()  # (orders placed at the open: from the next bar on, as any)
                if open_ids and not intraday:
                    broker.ts_ns = _session_ns(day)[1]
                    broker.expire_sessions(day, pending)  # daily bars: the session is one bar time
                if prot.working and not intraday:  # a limit exit unsold expired with it (an attempt, as live)
                    broker.ts_ns = _session_ns(day)[1]
                    prot.close_session(day, pending)
                if protected:
                    prot.settle(pending)  # buys filled in the bar arm theirs (see protection.py), unfilled ones end
                if pending:
                    if listening:
                        self._deliver()
                    else:
                        pending.clear()
                self.in_bar = True
            if eod_at:
                if eod_at[step] == EOD_BEFORE_BAR:
                    self._end_of_day(step, bars)
            elif flatten_daily and (open_ids or held):
                self._end_of_day(step, bars)
            if single:  # one code: the same steps without the loops over a bar time's bars
                bar = bars
                last[bar.code] = bar.close
                try:
                    on_bar(bar)
                    if ctx._kv is not None and ctx._kv._lent:  # state changed in place: saved or refused, as live
                        ctx._kv.settle()
                except Exception as e:
                    self._check_missing()
                    raise BacktestError(
                        f"{self.card.strategy}.on_bar failed at {t} {bar.code}: {type(e).__name__}: {e}"
                    ) from e
                if missing:
                    self._check_missing()
                if pending:
                    if listening:
                        self._deliver()
                    else:
                        pending.clear()
            else:
                # at the bar's end every bar of this time is complete: marks (daily: the band base)
                for bar in bars.values():
                    last[bar.code] = bar.close
                for bar in bars.values():
                    try:
                        on_bar(bar)
                        if ctx._kv is not None and ctx._kv._lent:
                            ctx._kv.settle()
                    except Exception as e:
                        self._check_missing()
                        raise BacktestError(
                            f"{self.card.strategy}.on_bar failed at {t} {bar.code}: {type(e).__name__}: {e}"
                        ) from e
                    if missing:
                        self._check_missing()
                    if pending:
                        self._deliver()
            if self.next_timer is not None and self.ctx.now() >= self.next_timer:
                self.next_timer = self.ctx.now() + dt.timedelta(seconds=self.timer_s)
                self._call("on_timer")
                self._deliver()
            if progress is not None and (step & 255 == 0 or step == total - 1):
                progress(step + 1, total)
            if intraday:
                if not day_end[step]:
                    continue
                if eod_at:
                    if eod_at[step] == EOD_AFTER_BAR:  # no bar of the day reached the card's end
                        self._end_of_day(step, bars)
                    if broker.closing:
                        self._closing_call(step)
                    broker.reducing = False  # (the next day's session is its own)
                if broker.open_ids:  # the close: DAY orders end with their day
                    broker.step = step
                    broker.ts_ns = _time_ns(t[:10], 0, True)
                    broker.expire_sessions(t[:10], pending)
                    self._deliver()
                if prot.working:  # a limit exit unsold expired with the day (an attempt, as live)
                    broker.step = step
                    broker.ts_ns = _time_ns(t[:10], 0, True)
                    prot.close_session(t[:10], pending)
                    self._deliver()
                base.update(last)  # the day's last closes: tomorrow's band base
                d_append(t[:10])
            if held:
                if single:
                    value = held.get(bars.code, 0) * bars.close
                else:
                    value = 0
                    for code, qty in held.items():
                        value += qty * last[code]
                h_append(value)
                eq_append(broker.cash + value)
            else:
                h_append(0)
                eq_append(broker.cash)
            if mark_equity is not None:
                mark_equity(equity[-1], _session_ns(t[:10])[1])
        self._call("on_stop")
        broker.step = total
        broker.expire_all(pending)
        prot.settle(pending)
        self._deliver()
        if not intraday:  # daily: one equity point per bar time
            dates = list(times)
        return self._result(dates, equity, holdings)

    def _result(self, dates: list[str], equity: list[int], holdings: list[int]) -> BacktestResult:
        broker = self.broker
        states: dict[str, int] = {}
        for o in broker.orders.values():
            states[str(o.state)] = states.get(str(o.state), 0) + 1
        # two flat lists per code, not a tuple per bar: nothing here for the garbage collector to scan
        closes: dict[str, tuple[list[str], list[int]]] = {c: ([], []) for c in self.card.codes}
        n_bars = 0
        if self.single and not self.intraday:
            closes[self.card.codes[0]] = (list(self.times), [b.close for b in self.at])
            n_bars = len(self.at)
        else:
            for t, bars in zip(self.times, self.at):
                bars = (bars,) if self.single else bars.values()
                n_bars += len(bars)
                day = t[:10]
                for bar in bars:
                    c_days, c_closes = closes[bar.code]
                    if c_days and c_days[-1] == day:
                        c_closes[-1] = bar.close  # intraday: the day's last close
                    else:
                        c_days.append(day)
                        c_closes.append(bar.close)
        return BacktestResult(
            card_id=self.card.id,
            strategy=self.card.strategy,
            params=self.params,
            date_from=self.times[0][:10],
            date_to=self.times[-1][:10],
            initial_cash=self.initial_cash,
            dates=dates,
            equity=equity,
            holdings=holdings,
            fills=list(broker.fills),
            orders=list(broker.orders.values()),
            order_states=dict(sorted(states.items())),
            fees=broker.fees,
            taxes=broker.taxes,
            traded_value=broker.traded_value,
            positions={c: p for c, p in broker.positions.items() if p.qty},
            closes=closes,
            bars=n_bars,
            interval=self.interval,
            unanswered=dict(self.unanswered),
            protections=list(self.protections.all.values()),
            warnings=self._interval_warnings()
            + self._rolled_daily_warnings()
            + self._eod_warnings()
            + self._refusal_warnings()
            + self._cap_warnings()
            + self._trip_warnings(),
        )


def unconfirmed_rules(days: list[str], markets: set[str]) -> list[str]:
    """The UNCONFIRMED KRX rule rows of these markets in force over these days (for the report)."""
    seen: dict[int, tuple[str, ...]] = {}
    for d in days:
        r = rules_for(d)
        seen.setdefault(id(r), r.unconfirmed)
    return sorted({n for notes in seen.values() for n in notes if n.split(" (")[0].split()[-1] in markets})


def run_backtest(
    card: AgentCard,
    series: dict[str, Series],
    config: BacktestConfig,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    return Backtest(card, series, config).run(progress)
