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
  a halted bar (volume 0) fills nothing;
- a bar locked at the upper limit (low == high at the day's upper limit) fills no buys, one locked at
  the lower limit no sells: the queue at a locked limit is long and we would not be first. The limit is
  the day's band (±15 % before 2015-06-15, ...: common/krx_rules.py); adjusted history rounds prices,
  so a bar without range within half a percentage point of the band edge counts as locked too;
- buys never take cash below zero: a buy is cut to what the cash (with commission) pays for;
- orders fill in the order they were sent, across codes (cash and volume go to the earlier order);
- DAY orders live in one KRX session (the next one after a daily bar's close; the same day for intraday
  bars) and expire at its close, whether or not the data has a bar for their code that day: a code
  without a bar on a calendar session is halted and fills nothing.
Fill prices come from the data as is (adjusted history can be off the grid); prices the strategy sends
are checked against the grid and band of the session the order will live in; the sell tax is that
trading day's rate for the code's market and kind (ETF/ETN none), unless a flat rate is configured.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import msgspec

from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx_rules import PPM, KrxRules, Market, PriceRuleError, SecurityKind, rules_for
from common.orders import (
    Accept, Cancelled, Deny, Expire, Fill, FillRec, Order, OrderEvent, Reject, Replaced, ReplaceRefused, RequestCancel,
    OPEN, TERMINAL, TRANSITIONS, OrderState, RequestReplace, StateError, Submit, apply,
)
from common.schema import Bar, OrderView, PositionView
from common.books import apply_fill
from tools.backtest.costs import CostModel

BP = 10_000
# IOC/FOK see only the opening price; DAY and NEXT_SESSION orders (a next-session order is a day order
# of the session after its decision, which is the next bar here) rest through their day
_AT_OPEN_ONLY = frozenset({TimeInForce.IOC, TimeInForce.FOK})
_UNLOCKED = (False, False)
_OPEN, _TERMINAL = OPEN, TERMINAL
# the states whose fill the quiet path takes: the table sends them to the resting state by filled qty
_RESTING_FILLABLE = frozenset({OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED})
assert all(TRANSITIONS[(st, "fill")] == "resting" for st in _RESTING_FILLABLE)
# the one-step accept of a quiet submit is the table's NEW -submit-> PENDING_SUBMIT -accept-> resting
assert TRANSITIONS[(OrderState.NEW, "submit")] == OrderState.PENDING_SUBMIT
assert TRANSITIONS[(OrderState.PENDING_SUBMIT, "accept")] == "resting"
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


def _close_ns(day: str) -> int:
    """15:30 KST of `day` in ns since the epoch (a session's regular close)."""
    d = dt.date(int(day[:4]), int(day[5:7]), int(day[8:10]))
    return ((d.toordinal() - _EPOCH_DAY) * 86_400 + (15 * 60 + 30 - 9 * 60) * 60) * 1_000_000_000


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
_REASON, _DECISION, _SESSION = 0, 1, 2


# A notification for the strategy: ("order", Order) or ("fill", FillRecord, fill_id, ts_ns, PositionView);
# the engine builds the views only for a strategy that overrides the hook.
Note = tuple


@dataclass
class SimBroker:
    card: AgentCard
    cash: int
    costs: CostModel = field(default_factory=CostModel)
    max_participation_bp: int = 1_000
    kinds: dict[str, SecurityKind] = field(default_factory=dict)
    markets: dict[str, Market] = field(default_factory=dict)
    flat_sell_tax_ppm: int | None = None  # None: each trading day's KRX rate (common/krx_rules.py)
    uncapped: frozenset[str] = frozenset()  # codes whose data has no volume: fills not capped by it
    quiet: bool = False  # True: the strategy has no on_order (intermediate order states unseen)

    def __post_init__(self) -> None:
        if self.cash < 0:
            raise ValueError("initial cash must be >= 0")
        if not 0 < self.max_participation_bp <= BP:
            raise ValueError("max participation must be in (0, 100 %]")
        self.orders: dict[str, Order] = {}
        self.meta: dict[str, _Meta] = {}
        self.open_ids: list[str] = []  # open orders, in submission order (fill priority)
        self.positions: dict[str, PositionView] = {}
        self.held: dict[str, int] = {}  # codes with shares, qty: what the engine marks at each close
        self.base: dict[str, int] = {}  # previous close per code: the band's base
        # latest price per code: marks, a market order's notional, the decision price. Daily bars: the
        # same dict as `base` (a day's close is the next day's base); intraday the engine splits them.
        self.last: dict[str, int] = self.base
        self.fills: list[FillRecord] = []
        self.fees = 0
        self.taxes = 0
        self.traded_value = 0
        self._boid = 0
        self._fill_n = 0
        self._used: dict[str, int] = {}  # volume we took from the current bar, per code
        self.ts_ns = 0
        self.step = 0  # the engine's current bar-time index
        # set by the engine: the session new orders will live in, and its rules (grid, band)
        self.entry_session = ""
        self.entry_rules: KrxRules = rules_for("2026-01-05")
        self._listing: dict[str, tuple[SecurityKind, Market]] = {}

    # ---- views -----------------------------------------------------------------------------------

    def view(self, o: Order) -> OrderView:
        return OrderView(client_order_id=o.client_order_id, agent=o.agent, code=o.code, side=o.side, qty=o.qty,
                         price=o.price, order_type=o.order_type, tif=o.tif, state=o.state, filled_qty=o.filled_qty,
                         filled_value=o.filled_value, broker_order_id=o.broker_order_id, reason_code=o.reason_code,
                         reason=o.reason, created_ns=o.created_ns, updated_ns=o.updated_ns)

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

    def submit(self, coid: str, code: str, side: Side, qty: int, price: int, order_type: OrderType,
               tif: TimeInForce, reason: str, notes: list[Note]) -> None:
        ts = self.ts_ns
        order = Order(client_order_id=coid, agent=self.card.id, code=code, side=side, qty=max(qty, 0), price=price,
                      order_type=order_type, tif=tif, created_ns=ts, updated_ns=ts)
        self.orders[coid] = order
        self.meta[coid] = (reason, self.last.get(code, 0), self.entry_session)
        denial = self._gate(order, self.entry_rules)
        if denial:
            self._step(coid, Deny(code=denial[0], reason=denial[1], ts_ns=ts), notes)
            return
        if order_type in (OrderType.BEST, OrderType.PRIORITY):
            # quote-pegged types need an order book; bars have none
            self._step(coid, Submit(ts_ns=ts), notes)
            self._step(coid, Reject(code=ErrorCode.UNSUPPORTED, reason=f"{order.order_type} orders need quotes",
                                    ts_ns=ts), notes)
            return
        self._boid += 1
        boid = str(self._boid)
        if self.quiet:  # nobody sees PENDING_SUBMIT: NEW -> ACCEPTED in one step, the table's two (checked below)
            self.orders[coid] = msgspec.structs.replace(order, state=OrderState.ACCEPTED, broker_order_id=boid,
                                                        broker_chain=(boid,))
        else:
            self._step(coid, Submit(ts_ns=ts), notes)
            self._step(coid, Accept(broker_order_id=boid, ts_ns=ts), notes)
        self.open_ids.append(coid)

    def listing(self, code: str) -> tuple[SecurityKind, Market]:
        got = self._listing.get(code)
        if got is None:
            got = self._listing[code] = (self.kinds.get(code, SecurityKind.STOCK), self.markets.get(code, Market.KOSPI))
        return got

    def _gate(self, o: Order, rules: KrxRules) -> tuple[str, str] | None:
        """The live risk gate's checks (server/risk.py), in the same order, plus cash: no margin here.
        `rules`: the KRX rules of the session the order will live in (its grid and band)."""
        qty, price, otype, code, side = o.qty, o.price, o.order_type, o.code, o.side
        if qty <= 0:
            return ErrorCode.BAD_ORDER, "qty must be positive"
        if price <= 0 and otype in (OrderType.LIMIT, OrderType.CONDITIONAL):
            return ErrorCode.BAD_ORDER, "a limit order needs a positive price"
        if otype is OrderType.MARKET and price != 0:
            return ErrorCode.BAD_ORDER, "a market order carries no price (send price=0)"
        if code not in self.card.codes:
            return ErrorCode.DENIED_UNKNOWN_CODE, f"{code} is not among this agent's codes {self.card.codes}"
        base = self.base.get(code, 0)
        if not base:
            return ErrorCode.DENIED_MARKET_CLOSED, f"no price seen for {code} yet"
        if price > 0:
            kind, market = self.listing(code)
            if not rules.on_grid(price, kind, market):
                return ErrorCode.DENIED_TICK, (f"price {price} is off the tick grid of {self.entry_session} "
                                               f"(tick {rules.tick_size(price, kind, market)})")
            try:
                rules.check_price(price, base, kind, market)
            except PriceRuleError as e:
                return ErrorCode.DENIED_PRICE_BAND, str(e)
        orders, open_ids = self.orders, self.open_ids
        if side is Side.SELL:
            pending = 0
            for c in open_ids:
                x = orders[c]
                if x.code == code and x.side is Side.SELL:
                    pending += x.remaining
            sellable = self.position(code) - pending
            if qty > sellable:
                return ErrorCode.DENIED_NO_SHARES, f"sell of {qty} {code} but this agent can sell {sellable}"
        notional = qty * (price or self.last.get(code, base))
        lim = self.card.risk
        if lim.max_order_value and notional > lim.max_order_value:
            return ErrorCode.DENIED_NOTIONAL, f"order value {notional:,} > agent limit {lim.max_order_value:,}"
        if lim.max_open_orders and len(open_ids) + 1 > lim.max_open_orders:
            return ErrorCode.DENIED_OPEN_ORDERS, f"{len(open_ids)} open orders, agent limit {lim.max_open_orders}"
        if side is Side.BUY:
            pos = self.positions.get(code)
            cost = pos.cost if pos else 0
            if lim.max_position_value and cost + notional > lim.max_position_value:
                return ErrorCode.DENIED_POSITION_LIMIT, (
                    f"position in {code} would cost {cost + notional:,} > agent limit {lim.max_position_value:,}")
            reserved = 0
            for c in open_ids:
                x = orders[c]
                if x.side is Side.BUY:
                    reserved += x.remaining * (x.price or self.last.get(x.code, 0))
            if notional > self.cash - reserved:
                return ErrorCode.DENIED_BUDGET, f"order needs {notional:,} KRW, cash left {self.cash - reserved:,}"
        return None

    def cancel(self, coid: str, notes: list[Note]) -> bool:
        o = self.orders.get(coid)
        if o is None or not o.is_open:
            return False
        self._step(coid, RequestCancel(ts_ns=self.ts_ns), notes)
        self._step(coid, Cancelled(ts_ns=self.ts_ns), notes)
        self.open_ids.remove(coid)
        return True

    def modify(self, coid: str, price: int, qty: int, notes: list[Note]) -> bool:
        """A revise: new price (and total qty; 0 keeps it). Checked like a new order's price."""
        o = self.orders.get(coid)
        if o is None or not o.is_open:
            return False
        total = qty or o.qty
        try:
            self._step(coid, RequestReplace(price=price, qty=total, ts_ns=self.ts_ns), notes)
        except StateError:
            return False
        kind, market = self.listing(o.code)
        try:
            if o.order_type is not OrderType.MARKET:
                self.entry_rules.check_price(price, self.base[o.code], kind, market)
        except PriceRuleError as e:
            self._step(coid, ReplaceRefused(code=ErrorCode.DENIED_PRICE_BAND, reason=str(e), ts_ns=self.ts_ns), notes)
            return False
        o = self._step(coid, Replaced(broker_order_id=self._next_boid(), price=price, qty=total, ts_ns=self.ts_ns), notes)
        if o.is_terminal:
            self.open_ids.remove(coid)
        return True

    # ---- the market: one bar at a time -----------------------------------------------------------

    def has_open(self) -> bool:
        return bool(self.open_ids)

    def match(self, bars: dict[str, Bar] | Bar, day: str, notes: list[Note]) -> None:
        """A KRX session's bars (code -> the bar of this bar time, or the one Bar of a one-code card):
        fill the open orders in the order they were sent, each against its code's bar. An order whose
        code has no bar here does not fill (a halted code, or a bar time without it). The engine calls
        this before the strategy sees the bars, so every open order was decided on an earlier bar."""
        rules = rules_for(day)
        locks: dict[str, tuple[bool, bool]] = {}
        used = self._used
        one = bars if isinstance(bars, Bar) else None
        if one is not None:
            used[one.code] = 0
        else:
            for code in bars:  # type: ignore[union-attr]
                used[code] = 0
        orders, meta = self.orders, self.meta
        survivors: list[str] = []
        for coid in self.open_ids:
            o = orders[coid]
            code = o.code
            if one is not None:
                bar = one if code == one.code else None
            else:
                bar = bars.get(code)  # type: ignore[union-attr]
            if bar is None or meta[coid][_SESSION] > day:
                survivors.append(coid)
                continue
            if bar.low == bar.high:
                lock = locks.get(code)
                if lock is None:
                    lock = locks[code] = self._locked(bar, rules)
            else:
                lock = _UNLOCKED
            if not lock[0 if o.side is Side.BUY else 1]:
                self._fill_order(o, bar, day, rules, notes)
                o = orders[coid]
            state = o.state
            if o.tif in _AT_OPEN_ONLY and state in _OPEN:
                o = self._step(coid, Cancelled(ts_ns=self.ts_ns), notes)  # IOC/FOK rest: gone after the open
                state = o.state
            if state not in _TERMINAL:
                survivors.append(coid)
        self.open_ids[:] = survivors

    def _locked(self, bar: Bar, rules: KrxRules) -> tuple[bool, bool]:
        """(locked up, locked down): a bar without range at the day's limit (or within half a percentage
        point of it: adjusted history rounds prices)."""
        base = self.base.get(bar.code, 0)
        if bar.low != bar.high or not base:  # only a bar without a range can be locked at a limit
            return False, False
        kind, market = self.listing(bar.code)
        lower, upper = rules.price_limits(base, kind, market)
        pct = rules.band_pct(market)
        if pct is None:
            return False, False
        near = (pct * 10 - 5) * base  # 1000 x the move that counts as at the limit
        return bar.high >= upper or (bar.high - base) * 1000 >= near, bar.low <= lower or (base - bar.low) * 1000 >= near

    def _price_for(self, o: Order, bar: Bar) -> int:
        """The fill price this bar allows for `o`, or 0. IOC/FOK only see the open."""
        buy = o.side is Side.BUY
        if o.order_type is OrderType.MARKET:
            return bar.open
        if o.tif in _AT_OPEN_ONLY:
            return bar.open if (bar.open <= o.price if buy else bar.open >= o.price) else 0
        if buy and bar.low <= o.price:
            return min(bar.open, o.price)
        if not buy and bar.high >= o.price:
            return max(bar.open, o.price)
        if o.order_type is OrderType.CONDITIONAL:
            return bar.close
        return 0

    def _fill_order(self, o: Order, bar: Bar, day: str, rules: KrxRules, notes: list[Note]) -> None:
        price = self._price_for(o, bar)
        if not price:
            return
        code, side, coid = o.code, o.side, o.client_order_id
        used = self._used[code]
        remaining = o.qty - o.filled_qty
        if code in self.uncapped:
            qty = remaining
        else:
            qty = min(remaining, bar.volume * self.max_participation_bp // BP - used)
        costs = self.costs
        cash = self.cash
        positions = self.positions
        if side is Side.BUY:
            if qty * price + costs.commission(qty * price) > cash:  # only then the search
                qty = min(qty, costs.max_affordable(cash, price))
        else:
            p = positions.get(code)
            qty = min(qty, p.qty if p else 0)
        if qty <= 0 or (o.tif is TimeInForce.FOK and qty < remaining):
            return
        self._used[code] = used + qty
        self._fill_n += 1
        fid = f"bt{self._fill_n}"
        ts_ns = self.ts_ns
        value = qty * price
        if self.quiet and o.state in _RESTING_FILLABLE:
            # nobody sees the order between events: the table's fill step (ACCEPTED/PARTIALLY_FILLED -fill->
            # resting) without building the event; tests/unit/test_backtest_broker.py keeps it equal to apply()
            filled = o.filled_qty + qty
            self.orders[coid] = msgspec.structs.replace(
                o, state=OrderState.FILLED if filled >= o.qty else OrderState.PARTIALLY_FILLED, filled_qty=filled,
                filled_value=o.filled_value + value, fill_ids=o.fill_ids + (fid,),
                fills=o.fills + (FillRec(fid, qty, value, ts_ns),), updated_ns=ts_ns or o.updated_ns)
        else:
            self._step(coid, Fill(fill_id=fid, qty=qty, price=price, broker_order_id=o.broker_order_id, ts_ns=ts_ns),
                       notes)
        commission = value * costs.commission_ppm // PPM
        if side is Side.BUY:
            tax = 0
            cash -= value + commission
        else:
            ppm = self.flat_sell_tax_ppm
            if ppm is None:
                kind, market = self.listing(code)
                ppm = rules.sell_tax_ppm(market, kind)
            tax = value * ppm // PPM
            cash += value - commission - tax
        self.cash = cash
        self.fees += commission
        self.taxes += tax
        self.traded_value += value
        pos = apply_fill(positions.get(code), code, side, qty, price)
        positions[code] = pos
        if pos.qty:
            self.held[code] = pos.qty
        else:
            self.held.pop(code, None)
        m = self.meta[coid]
        rec = FillRecord(day=day, client_order_id=coid, code=code, side=side, qty=qty, price=price,
                         commission=commission, tax=tax, cash_after=cash, reason=m[_REASON],
                         decision_price=m[_DECISION], at=bar.start)
        self.fills.append(rec)
        notes.append(("fill", rec, fid, ts_ns, pos))

    def expire_sessions(self, day: str, notes: list[Note], before: bool = False) -> None:
        """The close of the KRX sessions up to `day` (inclusive; `before`: only those before it): every
        DAY order that lived in one of them expires, also when its code had no bar that day (halted).
        An order of an earlier session expires at that session's close (15:30)."""
        meta, open_ids = self.meta, self.open_ids
        # sessions never decrease in submission order: the first open order has the earliest
        if not open_ids:
            return
        first = meta[open_ids[0]][_SESSION]
        if first > day or (before and first == day):
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

