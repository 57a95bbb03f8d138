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
- a bar locked at the upper limit (low == high >= upper) fills no buys, one locked at the lower limit
  no sells: the queue at a locked limit is long and we would not be first;
- buys never take cash below zero: a buy is cut to what the cash (with commission) pays for;
- DAY orders expire at the close of the last bar of their day (for daily bars: the bar they were
  active in).
Fill prices come from the data as is (split-adjusted history can be off the current tick grid);
prices the strategy sends are checked against the current grid and the ±30 % band of the last close.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import msgspec

from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx import PriceRuleError, SecurityKind, check_price, on_grid, price_limits, tick_size
from common.orders import (
    Accept, Cancelled, Deny, Expire, Fill, Order, OrderEvent, Reject, Replaced, ReplaceRefused, RequestCancel,
    RequestReplace, StateError, Submit, apply,
)
from common.schema import Bar, OrderView, PositionView
from common.books import apply_fill
from tools.backtest.costs import CostModel

BP = 10_000
# IOC/FOK see only the opening price; DAY and NEXT_SESSION orders (a next-session order is a day order
# of the session after its decision, which is the next bar here) rest through their day
_AT_OPEN_ONLY = frozenset({TimeInForce.IOC, TimeInForce.FOK})


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


@dataclass(slots=True)
class _Meta:
    reason: str
    decision_price: int
    placed_step: int  # the engine step (bar time) it was decided at; live from the next step on


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
        self.meta[coid] = _Meta(reason=reason, decision_price=self.last.get(code, 0), placed_step=self.step)
        denial = self._gate(order)
        if denial:
            self._step(coid, Deny(code=denial[0], reason=denial[1], ts_ns=ts), notes)
            return
        self._step(coid, Submit(ts_ns=ts), notes)
        if order_type in (OrderType.BEST, OrderType.PRIORITY):
            # quote-pegged types need an order book; bars have none
            self._step(coid, Reject(code=ErrorCode.UNSUPPORTED, reason=f"{order.order_type} orders need quotes",
                                    ts_ns=ts), notes)
            return
        self._boid += 1
        self._step(coid, Accept(broker_order_id=str(self._boid), ts_ns=ts), notes)
        self.open_ids.append(coid)

    def _gate(self, o: Order) -> tuple[str, str] | None:
        """The live risk gate's checks (server/risk.py), in the same order, plus cash: no margin here."""
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
            kind = self.kinds.get(code, SecurityKind.STOCK)
            if not on_grid(price, kind):
                return ErrorCode.DENIED_TICK, f"price {price} is off the tick grid (tick {tick_size(price, kind)})"
            try:
                check_price(price, base, kind)
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
        kind = self.kinds.get(o.code, SecurityKind.STOCK)
        try:
            if o.order_type is not OrderType.MARKET:
                check_price(price, self.base[o.code], kind)
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

    def match(self, bar: Bar, day: str, notes: list[Note]) -> None:
        """Fill the open orders of `bar.code` against `bar`. The engine calls this before the strategy
        sees `bar`, so every open order was decided on an earlier bar."""
        code = bar.code
        self._used[code] = 0
        locked_up = locked_down = False
        base = self.base.get(code, 0)
        if bar.low == bar.high and base:  # only a bar without a range can be locked at a limit
            lower, upper = _limits(base, self.kinds.get(code, SecurityKind.STOCK))
            locked_up, locked_down = bar.high >= upper, bar.low <= lower
        orders = self.orders
        for coid in list(self.open_ids):
            o = orders[coid]
            if o.code != code:
                continue
            if not ((o.side is Side.BUY and locked_up) or (o.side is Side.SELL and locked_down)):
                self._fill_order(o, bar, day, notes)
                o = orders[coid]
            if o.tif in _AT_OPEN_ONLY and o.is_open:
                o = self._step(coid, Cancelled(ts_ns=self.ts_ns), notes)  # IOC/FOK rest: gone after the open
            if o.is_terminal:
                self.open_ids.remove(coid)

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

    def _fill_order(self, o: Order, bar: Bar, day: str, notes: list[Note]) -> None:
        price = self._price_for(o, bar)
        if not price:
            return
        code, buy, coid = o.code, o.side is Side.BUY, o.client_order_id
        used = self._used[code]
        qty = min(o.remaining, bar.volume * self.max_participation_bp // BP - used)
        costs = self.costs
        if buy:
            qty = min(qty, costs.max_affordable(self.cash, price))
        else:
            qty = min(qty, self.position(code))
        if qty <= 0 or (o.tif is TimeInForce.FOK and qty < o.remaining):
            return
        self._used[code] = used + qty
        self._fill_n += 1
        fid = f"bt{self._fill_n}"
        ts_ns = self.ts_ns
        self._step(coid, Fill(fill_id=fid, qty=qty, price=price, broker_order_id=o.broker_order_id, ts_ns=ts_ns), notes)
        value = qty * price
        commission = costs.commission(value)
        if buy:
            tax = 0
            self.cash -= value + commission
        else:
            tax = costs.sell_tax(value)
            self.cash += value - commission - tax
        self.fees += commission
        self.taxes += tax
        self.traded_value += value
        pos = apply_fill(self.positions.get(code), code, o.side, qty, price)
        self.positions[code] = pos
        if pos.qty:
            self.held[code] = pos.qty
        else:
            self.held.pop(code, None)
        m = self.meta[coid]
        rec = FillRecord(day=day, client_order_id=coid, code=code, side=o.side, qty=qty, price=price,
                         commission=commission, tax=tax, cash_after=self.cash, reason=m.reason,
                         decision_price=m.decision_price, at=bar.start)
        self.fills.append(rec)
        notes.append(("fill", rec, fid, ts_ns, pos))

    def expire_day(self, notes: list[Note]) -> None:
        """The close of a trading day: every order that was live in it (placed before this step) expires,
        also when its code had no bar that day."""
        for coid in list(self.open_ids):
            if self.meta[coid].placed_step < self.step:
                self._step(coid, Expire(ts_ns=self.ts_ns), notes)
                self.open_ids.remove(coid)

    def expire_all(self, notes: list[Note]) -> None:
        """End of the data: orders that never reached a bar expire too."""
        for coid in list(self.open_ids):
            self._step(coid, Expire(ts_ns=self.ts_ns), notes)
        self.open_ids.clear()

    def set_close(self, code: str, close: int) -> None:
        self.base[code] = close
        self.last[code] = close


@functools.lru_cache(maxsize=65536)
def _limits(base: int, kind: SecurityKind) -> tuple[int, int]:
    return price_limits(base, kind)
