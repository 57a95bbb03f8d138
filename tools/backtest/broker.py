"""The simulated broker: the live risk gate's checks, the KRX price rules, fills from bars.

Orders are `common.orders.Order` driven through `common.orders.apply`, so a backtested order goes
through the same states as a live one (NEW → PENDING_SUBMIT → ACCEPTED → PARTIALLY_FILLED/FILLED,
DENIED, REJECTED, CANCELLED, EXPIRED).

Fill rules (an order never sees the bar it was decided on):
- an order placed while bar t is current becomes active at the next bar of its code (t+1);
- MARKET: fills at t+1's open;
- LIMIT buy: fills if low <= limit, at min(open, limit); LIMIT sell: if high >= limit, at max(open, limit);
- CONDITIONAL: the limit rule, else the rest at the close (it turns into a market order at the call);
- IOC / FOK: only the opening price counts; the rest (IOC) or all of it (FOK) is cancelled;
- volume: our fills in one bar take at most `max_participation_bp` of its volume (1 bp = 0.01 %);
  a halted bar fills nothing (`halted`: volume 0 and no range, the last price repeated: how the data
  shows a suspended code's session; data without volume, `uncapped`, shows no halt). A bar with a range
  traded, whatever its volume says: the gateway's sells (protective exits, flatten sells: not capped)
  sell in it; the agent's orders fill in one with volume 0 only where the data is known not to record
  that volume (`unrecorded`: intraday data that leaves most sessions' first bar at volume 0, as
  krx_intraday_5min_2020 does, shared/data/README.md "The 09:00 bar has Volume = 0": the opening
  auction traded, its volume is missing), whole, as data without volume; elsewhere the cap leaves
  them nothing in it;
- a bar locked at the upper limit (low == high at the day's upper limit) fills no buys, one locked at
  the lower limit no sells (`locked`): the queue at a locked limit is long and we would not be first. The
  limit is the day's band (±15 % before 2015-06-15, ...: common/krx_rules.py); adjusted history rounds
  prices, so a bar without range within half a percentage point of the band edge counts as locked too;
- `halted` and `locked` are the one rule for every fill: the matching, the flatten's closing call, the
  protective exits (tools/backtest/protection.py);
- buys never take cash below zero: a buy is cut to what the cash (with commission) pays for;
- at each bar, the orders that execute at its open (market orders, IOC/FOK, limits the open crosses)
  are matched first, then the rest: in the order they were sent, across codes, within each of the two
  (cash and volume go to the earlier order); the engine tells the strategy of the open's fills and
  checks the protective orders between the two (`match`'s `phase`), as a stop sees the prints that
  follow the opening auction (a protection armed by a fill at the open sees the rest of its bar);
- a CONDITIONAL order's rest fills at the close only while the card's end of day leaves it working
  (`closing_call`: off under `end_of_day = cancel / flatten` on daily bars: live cancels it at
  `schedule.end`, before the closing call);
- the end of day (the engine's, tools/backtest/engine.py): `reducing` after the card's `schedule.end`
  on intraday bars (only sells of held shares for the day's session, as live's gate after its
  clean-up; next-session orders are not restricted); `flatten` places market sells of every
  position (the gateway's numbers, sized by the order-value limit as live) that fill at the close of the
  code's last bar of the day (the closing call), whole, not in a bar locked at the lower limit or halted;
- the card's `schedule.start` after the open holds the agent's own orders for the day's session back
  until then (DENIED_SCHEDULE, live's rule) on intraday bars (`timed`); daily bars have no time of day
  (orders meet the market at the open or the close), so nothing is held back by it there;
- DAY orders live in one KRX session (the next one after a daily bar's close; the same day for intraday
  bars) and expire at its close, whether or not the data has a bar for their code that day: a code
  without a bar on a calendar session is halted and fills nothing.
Fill prices come from the data as is (adjusted history can be off the grid); prices the strategy sends
are checked against the grid and band of the session the order will live in; the sell tax is that
trading day's rate for the code's market and kind (ETF/ETN none), unless a flat rate is configured.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

import msgspec

from common import calendar
from common.books import apply_fill
from common.clock import KST
from common.config import AgentCard, DrawdownPeak, RiskLimits
from common.enums import OrderType, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE, placed_by_gateway
from common.krx import phase_at_ns
from common.krx_rules import PPM, TAX_EXEMPT_KINDS, KrxRules, Market, SecurityKind, rules_for
from common.orders import (
    OPEN,
    RESTING,
    TERMINAL,
    TRANSITIONS,
    Accept,
    Cancelled,
    Deny,
    Expire,
    Fill,
    FillRec,
    Order,
    OrderEvent,
    OrderState,
    Reject,
    Replaced,
    ReplaceRefused,
    RequestCancel,
    RequestReplace,
    StateError,
    Submit,
    apply,
)
from common.risk_rules import (
    HELD_TIFS,
    AccountExposure,
    Exposure,
    Mandate,
    MarketView,
    RateWindow,
    check_order,
    drawdown_bp,
    fitting_qty,
    notional_price,
    pct_bp,
)
from common.schema import Bar, PositionView
from common.views import order_view
from tools.backtest.costs import MAX_PARTICIPATION_BP, CostModel

BP = 10_000
# IOC/FOK see only the opening price; DAY and NEXT_SESSION orders (a next-session order is a day order
# of the session after its decision, which is the next bar here) rest through their day
_AT_OPEN_ONLY = frozenset({TimeInForce.IOC, TimeInForce.FOK})
_UNLOCKED = (False, False)
_HALTED_BAR = (True, True)  # `halted`: neither side fills
_OPEN, _TERMINAL = OPEN, TERMINAL
# the states whose fill the quiet path takes: the table sends them to the resting state by filled qty
assert all(TRANSITIONS[(st, "fill")] == "resting" for st in RESTING)
# the one-step accept of a quiet submit is the table's NEW -submit-> PENDING_SUBMIT -accept-> resting
assert TRANSITIONS[(OrderState.NEW, "submit")] == OrderState.PENDING_SUBMIT
assert TRANSITIONS[(OrderState.PENDING_SUBMIT, "accept")] == "resting"
_DAY_NS = 86_400_000_000_000
# enum members the per-order paths compare with (module globals: see common/risk_rules.py's _BUY)
_BUY, _SELL, _MARKET, _CONDITIONAL, _FOK = Side.BUY, Side.SELL, OrderType.MARKET, OrderType.CONDITIONAL, TimeInForce.FOK
_QUOTE_PEGGED = frozenset({OrderType.BEST, OrderType.PRIORITY})
_NEW, _ACCEPTED, _FILLED, _PARTLY = OrderState.NEW, OrderState.ACCEPTED, OrderState.FILLED, OrderState.PARTIALLY_FILLED
_NO_ACCOUNT = AccountExposure()  # a backtest trades one agent's book: no account-wide limits here
# match()'s phases: both (the open's orders, then the rest), the orders that execute at the open, the rest
BOTH, AT_OPEN, REST = 0, 1, 2


def _close_ns(day: str) -> int:
    """The regular close of `day` (15:30 KST; 16:30 on a CSAT day; 15:30 on a day the calendar has closed) in ns
    since the epoch."""
    ns = calendar.close_ns(dt.date(int(day[:4]), int(day[5:7]), int(day[8:10])), closed=dt.time(15, 30))
    assert ns is not None  # (a stand-in for a closed day is given)
    return ns


class FillRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One execution, with its costs (the CSV/JSON row). A msgspec Struct: built once per fill, ~10x
    cheaper than a frozen dataclass."""

    day: str
    client_order_id: str
    code: str
    side: Side
    qty: int
    price: int
    commission: int
    tax: int
    cash_after: int
    reason: str = ""
    decision_price: int = 0  # the close the strategy saw when it decided (slippage baseline)
    at: str = ""  # the start of the bar it filled in ("YYYY-MM-DDTHH:MM" intraday, the day for daily bars)


# per order (a plain tuple: one is built per order): the strategy's reason, the decision price, and the
# KRX session (YYYY-MM-DD) it lives in (it expires at that session's close)
_Meta = tuple[str, int, str]
_REASON: Final = 0
_DECISION: Final = 1
_SESSION: Final = 2


# A notification for the strategy: ("order", Order) or ("fill", FillRecord, fill_id, ts_ns, PositionView);
# the engine builds the views only for a strategy that overrides the hook.
Note = tuple


@dataclass
class SimBroker:
    card: AgentCard
    cash: int
    costs: CostModel = field(default_factory=CostModel)
    # None: orders fill whole in a bar with volume (the twin's history mode: a rehearsal's backtest)
    max_participation_bp: int | None = MAX_PARTICIPATION_BP
    kinds: dict[str, SecurityKind] = field(default_factory=dict)
    markets: dict[str, Market] = field(default_factory=dict)
    sectors: dict[str, str] = field(default_factory=dict)  # code → the master's sector (account sector limits)
    flat_sell_tax_ppm: int | None = None  # None: each trading day's KRX rate (common/krx_rules.py)
    uncapped: frozenset[str] = frozenset()  # codes whose data has no volume: fills not capped by it
    # codes whose data leaves traded bars at volume 0 (volume not recorded: the engine's
    # `open_volume_unrecorded`): such a bar fills the agent's orders uncapped
    unrecorded: frozenset[str] = frozenset()
    quiet: bool = False  # True: the strategy has no on_order (intermediate order states unseen)
    # True (intraday bars): orders are judged at a time of day, so the card's `[schedule] start` holds the
    # agent's own back as live's gate does; False (daily bars): no time of day, nothing is held back by it
    timed: bool = False
    on_fill: Callable[[str, int], None] | None = None  # (order, qty) of every fill: protections arm on their buy's

    def __post_init__(self) -> None:
        if self.cash < 0:
            raise ValueError("initial cash must be >= 0")
        if self.max_participation_bp is not None and not 0 < self.max_participation_bp <= BP:
            raise ValueError("max participation must be in (0, 100 %]")
        self.orders: dict[str, Order] = {}
        self.meta: dict[str, _Meta] = {}
        self.open_ids: list[str] = []  # open orders, in submission order (fill priority)
        # orders the volume cap held back, at the first bar it did: (day, code, side, wanted, got): the report says
        # so (a live market may be deeper or thinner; the twin's history mode caps alike)
        self.capped: dict[str, tuple[str, str, Side, int, int]] = {}
        self.positions: dict[str, PositionView] = {}
        self.held: dict[str, int] = {}  # codes with shares, qty: what the engine marks at each close
        self.base: dict[str, int] = {}  # previous close per code: the band's base
        # latest price per code: marks, a market order's notional, the decision price. Daily bars: the
        # same dict as `base` (a day's close is the next day's base); intraday the engine splits them.
        self.last: dict[str, int] = self.base
        self.fills: list[FillRecord] = []
        # the agent's fills at a price other than their bar's open (inside the bar: maybe after the card's end
        # of day, which a daily bar cannot tell), counted as they happen for the engine's warning, and the first
        self.inside = 0
        self.first_inside: FillRecord | None = None
        self.fees = 0
        self.taxes = 0
        self.traded_value = 0
        self._boid = 0
        self._fill_n = 0
        self._used: dict[str, int] = {}  # volume we took from the current bar, per code
        self.ts_ns = 0
        self.step = 0  # the engine's current bar-time index
        # True while `match` fills the orders that execute at the bar's open (its first print: every print
        # of the bar's range came after such a fill; a protection it arms is checked against that bar)
        self.at_open = False
        # orders the agent placed on hearing of the open's fills (the engine's delivery between the two
        # phases): matched from the next bar, as every order placed at a bar time, not in this one's REST
        self.hold: set[str] = set()
        # set by the engine: the session new orders will live in, and its rules (grid, band)
        self.entry_session = ""
        self.day = ""  # the day of the bars matched last (intraday: a new day expires earlier sessions first)
        self.monotonic = True  # orders' sessions never decrease in submission order (daily bars)
        self.entry_rules: KrxRules = rules_for("2026-01-05")
        self._listing: dict[str, tuple[SecurityKind, Market]] = {}
        self.initial_cash = self.cash
        self._mandate = Mandate(
            agent_limits=self.card.risk,
            account_limits=RiskLimits(),
            budget=self.initial_cash,
            codes=frozenset(self.card.codes),
            costs=self.costs,
            start=self.card.schedule.start,
        )
        self._reducing_mandate = replace(self._mandate, agent_state=TradingState.REDUCING)
        self.reducing = False  # after the card's schedule.end (cancel / flatten): only reducing orders today
        self.closing_call = True  # False: a CONDITIONAL's rest does not reach the close (see the docstring)
        self.closing: set[str] = set()  # flatten sells: filled at the day's last close, not by match()
        self._gateway_n: dict[str, int] = {}  # day -> the last of the gateway's numbers used that day
        self._rate = RateWindow()
        lim = self.card.risk
        # the account's shape (gross, codes, one code, one sector) and drawdown: the backtest's account is
        # this agent's, its equity the cash plus the positions at the last price (as live's)
        self._shaped = bool(lim.max_gross_exposure_pct or lim.max_positions or lim.max_code_pct or lim.max_sector_pct)
        self._drawdown = bool(lim.max_drawdown_pct or lim.halt_drawdown_pct)
        # the day the daily figures count from (P&L, the day's equity peak), keyed by ts_ns // _DAY_NS;
        # rolled before the day's first fill and at the first look or close mark of a day without one
        self._daily = bool(lim.max_daily_loss) or self._drawdown
        self._day = -1
        self._day_peak, self._all_peak = 0, 0
        self._close_equity = self.initial_cash  # the last close's equity: where a new day's peak starts
        self._pnl_start = (0, 0)
        self._unreal_start = 0  # the positions' unrealised P&L at the day's start (the close before it)
        # the days a loss limit of the card was breached at a close (its rule -> the first day, and how many days):
        # live, the agent then reduces (halts) until a person resumes it, across days; a backtest goes on buying the
        # next morning, which the summary says (a hunt: the two parted silently)
        self.limit_trips: dict[str, tuple[str, int]] = {}
        self._trip_days: dict[str, int] = {}  # rule -> the last day it was counted on

    # ---- views -----------------------------------------------------------------------------------

    view = staticmethod(order_view)  # the one OrderView builder, live and here

    def position(self, code: str) -> int:
        p = self.positions.get(code)
        return p.qty if p else 0

    def holdings_value(self, closes: dict[str, int]) -> int:
        return sum(p.qty * closes[c] for c, p in self.positions.items() if p.qty)

    # ---- order entry (called from the strategy's context) ----------------------------------------

    def _step(self, coid: str, ev: OrderEvent, notes: list[Note]) -> Order:
        o = apply(self.orders[coid], ev)
        self.orders[coid] = o
        notes.append(("order", o))  # the engine turns it into an OrderView if the strategy listens
        return o

    def _next_boid(self) -> str:
        self._boid += 1
        return str(self._boid)

    def submit(
        self,
        coid: str,
        code: str,
        side: Side,
        qty: int,
        price: int,
        order_type: OrderType,
        tif: TimeInForce,
        reason: str,
        notes: list[Note],
        refuse: tuple[str, str] | None = None,
    ) -> None:
        """`refuse`: (code, reason) the order is denied with before any rule (a bad protective order)."""
        ts = self.ts_ns
        qty = max(qty, 0)
        self.meta[coid] = (reason, self.last.get(code, 0), self.entry_session)
        # (a flatten's sells carry the gateway's numbers: the agent's schedule does not hold them back, as live)
        by_gateway = side is _SELL and self.timed and placed_by_gateway(coid)
        denial = refuse or self._gate(code, side, qty, price, order_type, tif, self.entry_rules, by_gateway=by_gateway)
        # nobody sees NEW or PENDING_SUBMIT of a quiet order: it is made ACCEPTED, the table's submit and
        # accept in one step (asserted above; tests/property/test_backtest_properties.py keeps it equal to apply())
        accept_now = self.quiet and denial is None and order_type not in _QUOTE_PEGGED
        boid = self._next_boid() if accept_now else ""
        order = Order(
            client_order_id=coid,
            agent=self.card.id,
            code=code,
            side=side,
            qty=qty,
            price=price,
            order_type=order_type,
            tif=tif,
            created_ns=ts,
            updated_ns=ts,
            state=_ACCEPTED if accept_now else _NEW,
            broker_order_id=boid,
            broker_chain=(boid,) if accept_now else (),
        )
        self.orders[coid] = order
        if accept_now:
            self.open_ids.append(coid)
            return
        if denial:
            self._step(coid, Deny(code=denial[0], reason=denial[1], ts_ns=ts), notes)
            return
        if order_type in _QUOTE_PEGGED:
            # quote-pegged types need an order book; bars have none
            self._step(coid, Submit(ts_ns=ts), notes)
            self._step(
                coid,
                Reject(code=ErrorCode.UNSUPPORTED, reason=f"{order.order_type} orders need quotes", ts_ns=ts),
                notes,
            )
            return
        self._step(coid, Submit(ts_ns=ts), notes)
        self._step(coid, Accept(broker_order_id=self._next_boid(), ts_ns=ts), notes)
        self.open_ids.append(coid)

    def listing(self, code: str) -> tuple[SecurityKind, Market]:
        got = self._listing.get(code)
        if got is None:
            got = self._listing[code] = (self.kinds.get(code, SecurityKind.STOCK), self.markets.get(code, Market.KOSPI))
        return got

    def _gate(
        self,
        code: str,
        side: Side,
        qty: int,
        price: int,
        order_type: OrderType,
        tif: TimeInForce,
        rules: KrxRules,
        exclude: str = "",
        by_gateway: bool = False,
    ) -> tuple[str, str] | None:
        """The live gate's rules (common/risk_rules.py check_order, the very function the gateway's risk
        gate calls) over this book's exposure; the card's budget is the backtest's cash. `rules`: the
        KRX rules of the session the order will live in; `exclude`: an order whose own reservation is
        released (a revise is judged as if new); `by_gateway`: a sell the gateway places (a flatten's)."""
        kind, board = self.listing(code)
        lim = self.card.risk
        exp = self._exposure(code, rules, exclude)
        now_s = self.ts_ns // 1_000_000_000
        denial = check_order(
            code=code,
            side=side,
            qty=qty,
            price=price,
            order_type=order_type,
            tif=tif,
            # the end of day's clean-up restricts the day's session, not orders for the next one (as live)
            mandate=self._reducing_mandate if self.reducing and tif not in HELD_TIFS else self._mandate,
            exp=exp,
            account=self._account(exp) if self._shaped or self._drawdown else _NO_ACCOUNT,
            market=MarketView(
                phase=phase_at_ns(self.ts_ns),
                base_price=self.base.get(code, 0),
                kind=kind,
                board=board,
                rules=rules,
                at_ns=self.ts_ns if self.timed else 0,
            ),
            rates=(self._rate.count(now_s) if lim.max_orders_per_minute else 0, 0),
            by_gateway=by_gateway,
        )
        if denial is not None and denial[0] is ErrorCode.DENIED_DAILY_LOSS:
            self._trip("max_daily_loss")
        elif denial is not None and denial[0] is ErrorCode.DENIED_DRAWDOWN:
            self._trip(self._drawdown_rule(exp.equity, exp.peak) or "max_drawdown_pct")
        # a revise (`exclude`) counts as live's does: KIS takes each as an order request
        if denial is None and lim.max_orders_per_minute:
            self._rate.stamps.append(now_s)
        return denial

    def _exposure(self, code: str, rules: KrxRules, exclude: str = "") -> Exposure:
        """What this agent has at stake for an order in `code` (the live portfolio's Exposure, built
        from this book: the few open orders of a backtest are summed, not kept incrementally)."""
        orders, base = self.orders, self.base
        held_sells = buy_value = reserved = n = 0
        for c in self.open_ids:
            if c == exclude:
                continue
            x = orders[c]
            n += 1
            if x.side is _SELL:
                if x.code == code:
                    held_sells += x.remaining
                continue
            kind, board = self.listing(x.code)
            v = x.remaining * notional_price(_BUY, x.price, base.get(x.code, 0), kind, rules, board, x.order_type)
            reserved += v
            if x.code == code:
                buy_value += v
        pos = self.positions.get(code)
        qty, cost = (pos.qty, pos.cost) if pos else (0, 0)
        exp = Exposure(
            position_qty=qty,
            position_cost=cost,
            sellable_qty=qty - held_sells,
            open_buy_value=buy_value,
            open_orders=n,
            reserved_cash=reserved + self.costs.commission(reserved),  # as live's Portfolio.held_cash
            spent_cash=self.initial_cash - self.cash,
            day_pnl=self._day_pnl() if self.card.risk.max_daily_loss else 0,
        )
        if self._shaped:
            self._shape(exp, code, rules, exclude)
        if self._drawdown:
            exp.equity = self.equity()
            exp.peak = self._peak(exp.equity)
        return exp

    def equity(self) -> int:
        """Cash plus every position at the last price (cost without one), as live values an account."""
        last = self.last
        return self.cash + sum(p.qty * last[c] if c in last else p.cost for c, p in self.positions.items() if p.qty)

    def _roll(self) -> None:
        """A new day, before anything of it moved the book: its P&L counts from here and its equity
        peak starts at the last close's equity (what live's first sweep of the day sees: the
        positions at the previous closes), as live's Portfolio.roll_day and Peaks.roll start theirs.
        Live counts a carried position from today's base once it is known (an ex-rights or ex-dividend
        day's is below the close: common/portfolio.py day_unrealized); here the day's base is the
        previous close, the data carrying no other: a split is in split-adjusted history's earlier
        closes already, a dividend's ex-day drop (history not adjusted for dividends) reads as the day's
        loss, as live before today's base is known."""
        self._day = self.ts_ns // _DAY_NS
        self._pnl_start = (sum(p.realized_pnl for p in self.positions.values()), self.fees + self.taxes)
        self._unreal_start = self._unrealized()
        self._day_peak = self._close_equity

    def _unrealized(self) -> int:
        last = self.last
        return sum(last[c] * p.qty - p.cost for c, p in self.positions.items() if p.qty and c in last)

    def _peak(self, equity: int) -> int:
        """The peak the card's drawdown is measured from: the day's (from the previous close) or all time."""
        if self.ts_ns // _DAY_NS != self._day:
            self._roll()
        self._day_peak = max(self._day_peak, equity)
        self._all_peak = max(self._all_peak, equity)
        return self._all_peak if self.card.risk.drawdown_peak is DrawdownPeak.ALL_TIME else self._day_peak

    def mark_equity(self, equity: int, ts_ns: int) -> None:
        """The engine's equity at a bar time's close (`ts_ns`): peaks move with it, as live's sweep
        moves them, and the next day's peak starts from it."""
        self.ts_ns = ts_ns
        peak = self._peak(equity)
        self._close_equity = equity
        if self._daily:
            self._note_trips(equity, peak)

    def _note_trips(self, equity: int, peak: int) -> None:
        """The card's loss limits breached at this close: what live's sweep would trip (each rule it checks)."""
        lim = self.card.risk
        if lim.max_daily_loss and -self._day_pnl() >= lim.max_daily_loss:
            self._trip("max_daily_loss")
        if self._drawdown and (rule := self._drawdown_rule(equity, peak)):
            self._trip(rule)

    def _drawdown_rule(self, equity: int, peak: int) -> str:
        """The card's drawdown limit `equity` is past from `peak`: its halt level first ("" none)."""
        lim = self.card.risk
        if equity <= 0 or peak <= 0:
            return ""
        dd = drawdown_bp(equity, peak)
        if lim.halt_drawdown_pct and dd >= pct_bp(lim.halt_drawdown_pct):
            return "halt_drawdown_pct"
        if lim.max_drawdown_pct and dd >= pct_bp(lim.max_drawdown_pct):
            return "max_drawdown_pct"
        return ""

    def _trip(self, rule: str) -> None:
        """`rule` breached now: counted once a day (a breach an intraday day recovered from by its close too: its
        gate denied a buy for it, live's sweep would have tripped)."""
        today = self.ts_ns // _DAY_NS
        if self._trip_days.get(rule) == today:
            return
        self._trip_days[rule] = today
        day = dt.datetime.fromtimestamp(self.ts_ns / 1e9, KST).date().isoformat()
        first, n = self.limit_trips.get(rule, (day, 0))
        self.limit_trips[rule] = (first, n + 1)

    def _shape(self, exp: Exposure, code: str, rules: KrxRules, exclude: str) -> None:
        """The account-shape figures of live's portfolio (common/portfolio.py), summed over this book."""
        last, sectors, orders, base = self.last, self.sectors, self.orders, self.base
        sector = sectors.get(code, "")
        value: dict[str, int] = {}
        for c, p in self.positions.items():
            if p.qty:
                value[c] = p.qty * last[c] if c in last else p.cost
        for c in self.open_ids:
            x = orders[c]
            if c == exclude or x.side is _SELL:
                continue
            kind, board = self.listing(x.code)
            value[x.code] = value.get(x.code, 0) + x.remaining * notional_price(
                _BUY, x.price, base.get(x.code, 0), kind, rules, board, x.order_type
            )
        exp.gross_value = sum(value.values())
        exp.positions = len(value)
        exp.has_code = code in value
        exp.code_value = value.get(code, 0)
        exp.sector = sector
        exp.sector_value = sum(v for c, v in value.items() if sectors.get(c, "") == sector)

    def _account(self, exp: Exposure) -> AccountExposure:
        """The backtest's account is the agent's own: the card's limits are judged against its equity."""
        return AccountExposure(
            equity=self.equity(),
            gross_value=exp.gross_value,
            positions=exp.positions,
            has_code=exp.has_code,
            code_value=exp.code_value,
            sector_value=exp.sector_value,
            virtual=True,
        )

    def _day_pnl(self) -> int:
        """Realised today net of fees and taxes plus unrealised made today (the live gate's definition,
        common/portfolio.py day_pnl: positions carried from earlier days count from the close before it)."""
        if self.ts_ns // _DAY_NS != self._day:
            self._roll()
        realized = sum(p.realized_pnl for p in self.positions.values())
        paid = self.fees + self.taxes
        r0, f0 = self._pnl_start
        return realized - r0 - (paid - f0) + self._unrealized() - self._unreal_start

    def cancel(self, coid: str, notes: list[Note]) -> bool:
        o = self.orders.get(coid)
        if o is None or not o.is_open:
            return False
        self._step(coid, RequestCancel(ts_ns=self.ts_ns), notes)
        self._step(coid, Cancelled(ts_ns=self.ts_ns), notes)
        self.open_ids.remove(coid)
        return True

    def modify(self, coid: str, price: int, notes: list[Note], today: str = "") -> bool:
        """A revise of the price (only the price: the context refuses a quantity change, as live does,
        common/orders.py revise_refusal). Checked like a new order's price. An order held for a later
        session (`today` is before it) cannot be revised, as live's HELD order cannot (ORDER_NOT_OPEN)."""
        o = self.orders.get(coid)
        if o is None or not o.is_open:
            return False
        if o.tif in HELD_TIFS and today and self.meta[coid][_SESSION] > today:
            return False
        total = o.qty
        try:
            self._step(coid, RequestReplace(price=price, qty=total, ts_ns=self.ts_ns), notes)
        except StateError:
            return False
        # the revised order must pass the gate as if new, with its own reservation released (as live)
        denial = self._gate(o.code, o.side, total - o.filled_qty, price, o.order_type, o.tif, self.entry_rules, coid)
        if denial is not None:
            self._step(coid, ReplaceRefused(code=denial[0], reason=denial[1], ts_ns=self.ts_ns), notes)
            return False
        o = self._step(
            coid, Replaced(broker_order_id=self._next_boid(), price=price, qty=total, ts_ns=self.ts_ns), notes
        )
        if o.is_terminal:
            self.open_ids.remove(coid)
        return True

    # ---- the market: one bar at a time -----------------------------------------------------------

    def has_open(self) -> bool:
        return bool(self.open_ids)

    def match(self, bars: dict[str, Bar] | Bar, day: str, notes: list[Note], phase: int = BOTH) -> None:
        """A KRX session's bars (code -> the bar of this bar time, or the one Bar of a one-code card):
        fill the open orders, each against its code's bar: first those that execute at the bar's open
        (market orders, IOC/FOK, limits the open crosses), then the rest, each group in the order the
        orders were sent. `phase`: BOTH, or AT_OPEN then REST in two calls (the engine tells the strategy
        of the open's fills and checks the protective orders between them; `hold`: orders placed then,
        left to the next bar). `at_open` is True while the open's orders fill. An order whose code has no
        bar here does not fill (a halted code, or a bar time without it); a flatten sell waits for the
        close (`fill_closing`). The engine calls this before the strategy sees the bars, so every open
        order was decided on an earlier bar."""
        rules = rules_for(day)
        locks: dict[str, tuple[bool, bool]] = {}
        one = bars if isinstance(bars, Bar) else None
        if phase != REST:  # the bar's volume is shared by everything we fill in it
            used = self._used
            if one is not None:
                used[one.code] = 0
            else:
                for code in bars:  # type: ignore[union-attr]
                    used[code] = 0
        orders, meta, closing, hold = self.orders, self.meta, self.closing, self.hold
        later: list[tuple[Order, Bar]] = []
        ended = False
        self.at_open = phase != REST
        for coid in self.open_ids:
            o = orders[coid]
            if one is not None:
                bar = one if o.code == one.code else None
            else:
                bar = bars.get(o.code)  # type: ignore[union-attr]
            if bar is None or meta[coid][_SESSION] > day or (closing and coid in closing):
                continue
            if (
                o.order_type is _MARKET
                or o.tif in _AT_OPEN_ONLY
                or (bar.open <= o.price if o.side is _BUY else bar.open >= o.price)
            ):  # it executes at the open: in the opening auction (the session's first bar) or at the open's print
                if phase != REST:
                    ended = self._match_one(o, bar, day, rules, locks, notes) or ended
            elif phase != AT_OPEN and not (hold and coid in hold):
                later.append((o, bar))
        self.at_open = False
        for o, bar in later:
            ended = self._match_one(o, bar, day, rules, locks, notes) or ended
        if ended:
            self.open_ids[:] = [c for c in self.open_ids if orders[c].state not in _TERMINAL]

    def _match_one(
        self, o: Order, bar: Bar, day: str, rules: KrxRules, locks: dict[str, tuple[bool, bool]], notes: list[Note]
    ) -> bool:
        """One order against its code's bar; True when it ended (filled, or an IOC/FOK's rest cancelled)."""
        coid = o.client_order_id
        lock = locks.get(o.code)  # (buys, sells) this bar fills none of: `halted`, `locked` (once per code and bar)
        if lock is None:
            lock = locks[o.code] = _HALTED_BAR if self.halted(bar) else self._locked(bar, rules)
        if not lock[0 if o.side is _BUY else 1]:
            self._fill_order(o, bar, day, rules, notes)
            o = self.orders[coid]
        state = o.state
        if o.tif in _AT_OPEN_ONLY and state in _OPEN:
            o = self._step(coid, Cancelled(ts_ns=self.ts_ns), notes)  # IOC/FOK rest: gone after the open
            state = o.state
        return state in _TERMINAL

    def halted(self, bar: Bar) -> bool:
        """A bar with no trades to fill into: volume 0 and no range (the last price repeated, as the data
        shows a suspended code's session). A bar with a range traded, whatever its volume says (volume 0
        there is not recorded: `unrecorded`); data without volume (`uncapped`) cannot show a halt."""
        return bar.volume == 0 and bar.low == bar.high and bar.code not in self.uncapped

    def locked(self, bar: Bar, rules: KrxRules, side: Side) -> bool:
        """`bar` locked at the limit `side` cannot fill at (the upper for a buy, the lower for a sell)."""
        return bar.low == bar.high and self._locked(bar, rules)[0 if side is _BUY else 1]

    def _locked(self, bar: Bar, rules: KrxRules) -> tuple[bool, bool]:
        """(locked up, locked down): a bar without range at the day's limit (or within half a percentage
        point of it: adjusted history rounds prices)."""
        base = self.base.get(bar.code, 0)
        if bar.low != bar.high or not base:  # only a bar without a range can be locked at a limit
            return _UNLOCKED
        kind, market = self.listing(bar.code)
        lower, upper = rules.price_limits(base, kind, market)
        pct = rules.band_pct(market)
        if pct is None:
            return _UNLOCKED
        near = (pct * 10 - 5) * base  # 1000 x the move that counts as at the limit
        return bar.high >= upper or (bar.high - base) * 1000 >= near, bar.low <= lower or (
            base - bar.low
        ) * 1000 >= near

    def _price_for(self, o: Order, bar: Bar) -> int:
        """The fill price this bar allows for `o`, or 0. IOC/FOK only see the open."""
        buy = o.side is _BUY
        if o.order_type is _MARKET:
            return bar.open
        if o.tif in _AT_OPEN_ONLY:
            return bar.open if (bar.open <= o.price if buy else bar.open >= o.price) else 0
        if buy and bar.low <= o.price:
            return min(bar.open, o.price)
        if not buy and bar.high >= o.price:
            return max(bar.open, o.price)
        if o.order_type is _CONDITIONAL and self.closing_call:
            return bar.close
        return 0

    def _fill_order(
        self, o: Order, bar: Bar, day: str, rules: KrxRules, notes: list[Note], price: int = 0, capped: bool = True
    ) -> None:
        price = price or self._price_for(o, bar)
        if not price:
            return
        code, side, coid = o.code, o.side, o.client_order_id
        used = self._used.get(code, 0)
        remaining = o.qty - o.filled_qty
        if code in self.uncapped or not capped or (not bar.volume and code in self.unrecorded):
            qty = remaining  # (a halted bar never gets here: `halted`)
        else:
            cap = self.max_participation_bp
            if cap is None:
                qty = remaining if bar.volume else 0  # (a bar without volume fills nothing, as the twin's)
            else:
                room = bar.volume * cap // BP - used
                qty = min(remaining, room)
                if room < remaining and coid not in self.capped:  # (the first bar the cap held it back: told once)
                    self.capped[coid] = (day, code, side, remaining, max(room, 0))
        costs = self.costs
        cash = self.cash
        positions = self.positions
        if side is _BUY:
            if qty * price + costs.commission(qty * price) > cash:  # only then the search
                qty = min(qty, costs.max_affordable(cash, price))
        else:
            p = positions.get(code)
            qty = min(qty, p.qty if p else 0)
        if qty <= 0 or (o.tif is _FOK and qty < remaining):
            return
        ts_ns = self.ts_ns
        if self._daily and ts_ns // _DAY_NS != self._day:
            self._roll()  # the day's first fill: its P&L and peak start before it
        self._used[code] = used + qty
        self._fill_n += 1
        fid = f"bt{self._fill_n}"
        value = qty * price
        if self.quiet and o.state in RESTING:
            # nobody sees the order between events: the table's fill step (ACCEPTED/PARTIALLY_FILLED -fill->
            # resting) without building the event; tests/property/test_backtest_properties.py keeps it equal to apply()
            filled = o.filled_qty + qty
            self.orders[coid] = msgspec.structs.replace(
                o,
                state=_FILLED if filled >= o.qty else _PARTLY,
                filled_qty=filled,
                filled_value=o.filled_value + value,
                fill_ids=o.fill_ids + (fid,),
                fills=o.fills + (FillRec(fid, qty, value, ts_ns),),
                updated_ns=ts_ns or o.updated_ns,
            )
        else:
            self._step(
                coid, Fill(fill_id=fid, qty=qty, price=price, broker_order_id=o.broker_order_id, ts_ns=ts_ns), notes
            )
        commission = value * costs.commission_ppm // PPM
        if side is _BUY:
            tax = 0
            cash -= value + commission
        else:
            kind, market = self.listing(code)
            flat = self.flat_sell_tax_ppm
            # a flat what-if rate taxes what is taxed (ETF/ETN never are), as live's CostModel.tax_ppm
            ppm = rules.sell_tax_ppm(market, kind) if flat is None or kind in TAX_EXEMPT_KINDS else flat
            tax = value * ppm // PPM
            cash += value - commission - tax
        self.cash = cash
        self.fees += commission
        self.taxes += tax
        self.traded_value += value
        pos = apply_fill(positions.get(code), code, side, qty, price, fee=commission + tax)  # as live's books
        positions[code] = pos
        if pos.qty:
            self.held[code] = pos.qty
        else:
            self.held.pop(code, None)
        m = self.meta[coid]
        if self.on_fill is not None:
            self.on_fill(coid, qty)
        rec = FillRecord(
            day=day,
            client_order_id=coid,
            code=code,
            side=side,
            qty=qty,
            price=price,
            commission=commission,
            tax=tax,
            cash_after=cash,
            reason=m[_REASON],
            decision_price=m[_DECISION],
            at=bar.start,
        )
        self.fills.append(rec)
        if price != bar.open and not placed_by_gateway(coid):
            self.inside += 1
            if self.first_inside is None:
                self.first_inside = rec
        notes.append(("fill", rec, fid, ts_ns, pos))

    def gateway_coid(self, day: str) -> str:
        """The next of the gateway's own numbers of the agent's orders on `day` (protective exits and
        flatten sells share them, from GATEWAY_ORDER_BASE up, as live's OrderBook.last_gateway_number)."""
        n = self._gateway_n[day] = self._gateway_n.get(day, GATEWAY_ORDER_BASE - 1) + 1
        return f"{self.card.id}-{day.replace('-', '')}-{n}"

    def cancel_all(self, notes: list[Note]) -> int:
        """Every open order of the agent cancelled (next-session orders too, as live's cancel_all)."""
        n = 0
        for coid in list(self.open_ids):
            n += self.cancel(coid, notes)
        self.closing.clear()
        return n

    def flatten(self, day: str, reason: str, notes: list[Note]) -> list[str]:
        """The end of day's flatten after its cancels (server/order_desk.py flatten): a market sell of each
        position (in code order) for `day`'s session, at most what the order-value limit fits (judged at
        the day's lower limit, as live sizes it), through the gate; each waits for the close
        (`fill_closing`). The size is live's (common/risk_rules.py fitting_qty, server/order_desk.py's
        flatten). Returns the sells placed."""
        rules = rules_for(day)
        if day != self.entry_session:
            self.entry_session, self.entry_rules = day, rules  # (the engine sets its own back at its next order)
        limits = (self._mandate.agent_limits, self._mandate.account_limits)
        placed: list[str] = []
        for code, p in sorted(self.positions.items()):
            if p.qty <= 0:
                continue
            kind, board = self.listing(code)
            unit = notional_price(_SELL, 0, self.base.get(code, 0), kind, rules, board, _MARKET)
            fit = fitting_qty(p.qty, unit, *limits)
            qty = fit if 0 < fit < p.qty else p.qty  # (not one share fits: the whole, which the gate denies; as live)
            coid = self.gateway_coid(day)
            self.submit(coid, code, _SELL, qty, 0, _MARKET, TimeInForce.DAY, reason, notes)
            if self.orders[coid].is_open:
                self.closing.add(coid)
                placed.append(coid)
        return placed

    def fill_closing(self, bars: dict[str, Bar], day: str, notes: list[Note]) -> None:
        """The flatten sells at the close: each at the close of its code's last bar of the day (`bars`),
        whole; none in a bar locked at the lower limit, in a halted one (`halted`), or without a bar.
        What does not fill stays open until the session's expiry."""
        rules = rules_for(day)
        for coid in [c for c in self.open_ids if c in self.closing]:
            o = self.orders[coid]
            bar = bars.get(o.code)
            if bar is None or self.halted(bar) or self.locked(bar, rules, _SELL):
                continue
            self._fill_order(o, bar, day, rules, notes, price=bar.close, capped=False)
            if self.orders[coid].state in _TERMINAL:
                self.open_ids.remove(coid)
        self.closing.clear()

    def exit(
        self, coid: str, code: str, qty: int, price: int, bar: Bar, day: str, reason: str, notes: list[Note]
    ) -> Order:
        """A protective exit (tools/backtest/protection.py): a market sell placed and filled at `price`
        within `bar`, whole (not capped by the bar's volume), at most the shares held."""
        ts = self.ts_ns
        self.orders[coid] = Order(
            client_order_id=coid,
            agent=self.card.id,
            code=code,
            side=Side.SELL,
            qty=qty,
            price=0,
            order_type=OrderType.MARKET,
            tif=TimeInForce.DAY,
            created_ns=ts,
            updated_ns=ts,
        )
        self.meta[coid] = (reason, price, day)
        self._step(coid, Submit(ts_ns=ts), notes)
        self._step(coid, Accept(broker_order_id=self._next_boid(), ts_ns=ts), notes)
        self._fill_order(self.orders[coid], bar, day, rules_for(day), notes, price=price, capped=False)
        if self.orders[coid].is_open:  # fewer shares than asked: the rest has nothing to sell
            self._step(coid, Cancelled(ts_ns=ts), notes)
        return self.orders[coid]

    def expire_sessions(self, day: str, notes: list[Note], before: bool = False) -> None:
        """The close of the KRX sessions up to `day` (inclusive; `before`: only those before it): every
        DAY order that lived in one of them expires, also when its code had no bar that day (halted).
        An order of an earlier session expires at that session's close (15:30)."""
        meta, open_ids = self.meta, self.open_ids
        # on daily bars sessions never decrease in submission order (the first open order has the
        # earliest); on intraday bars a next-session order may come before a day order of today
        if not open_ids:
            return
        first = meta[open_ids[0]][_SESSION]
        if self.monotonic and (first > day or (before and first == day)):
            return
        for coid in list(open_ids):
            session = meta[coid][_SESSION]
            if session < day or (session == day and not before):
                ts = self.ts_ns if session == day else _close_ns(session)
                self._step(coid, Expire(ts_ns=ts), notes)
                self.open_ids.remove(coid)

    def expire_all(self, notes: list[Note]) -> None:
        """End of the data: orders that never reached a bar expire too."""
        for coid in list(self.open_ids):
            self._step(coid, Expire(ts_ns=self.ts_ns), notes)
        self.open_ids.clear()

    def set_close(self, code: str, close: int) -> None:
        self.base[code] = close
        self.last[code] = close
