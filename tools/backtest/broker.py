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

from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx import PriceRuleError, SecurityKind, check_price, on_grid, price_limits, tick_size
from common.orders import (
    Accept, Cancelled, Deny, Expire, Fill, Order, OrderEvent, Reject, Replaced, ReplaceRefused, RequestCancel,
    RequestReplace, StateError, Submit, apply,
)
from common.schema import Bar, FillView, OrderView, PositionView
from server.books import apply_fill
from tools.backtest.costs import CostModel

BP = 10_000


@dataclass(frozen=True, slots=True)
class FillRecord:
    """One execution, with its costs (the CSV/JSON row)."""

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


@dataclass(slots=True)
class _Meta:
    reason: str
    decision_price: int
    placed_step: int  # the engine step (bar time) it was decided at; live from the next step on


# A notification for the strategy: ("order", Order) or ("fill", FillView, PositionView).
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
        self.base: dict[str, int] = {}  # last close per code: the band's base, the market order's notional
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
        order = Order(client_order_id=coid, agent=self.card.id, code=code, side=side, qty=max(qty, 0), price=price,
                      order_type=order_type, tif=tif, created_ns=self.ts_ns, updated_ns=self.ts_ns)
        self.orders[coid] = order
        self.meta[coid] = _Meta(reason=reason, decision_price=self.base.get(code, 0), placed_step=self.step)
        denial = self._gate(order)
        if denial:
            self._step(coid, Deny(code=denial[0], reason=denial[1], ts_ns=self.ts_ns), notes)
            return
        self._step(coid, Submit(ts_ns=self.ts_ns), notes)
        if order.order_type in (OrderType.BEST, OrderType.PRIORITY):
            # quote-pegged types need an order book; daily bars have none
            self._step(coid, Reject(code=ErrorCode.UNSUPPORTED, reason=f"{order.order_type} orders need quotes",
                                    ts_ns=self.ts_ns), notes)
            return
        self._step(coid, Accept(broker_order_id=self._next_boid(), ts_ns=self.ts_ns), notes)
        self.open_ids.append(coid)

    def _gate(self, o: Order) -> tuple[str, str] | None:
        """The live risk gate's checks (server/risk.py), in the same order, plus cash: no margin here."""
        if o.qty <= 0:
            return ErrorCode.BAD_ORDER, "qty must be positive"
        if o.order_type in (OrderType.LIMIT, OrderType.CONDITIONAL) and o.price <= 0:
            return ErrorCode.BAD_ORDER, "a limit order needs a positive price"
        if o.order_type is OrderType.MARKET and o.price != 0:
            return ErrorCode.BAD_ORDER, "a market order carries no price (send price=0)"
        if o.code not in self.card.codes:
            return ErrorCode.DENIED_UNKNOWN_CODE, f"{o.code} is not among this agent's codes {self.card.codes}"
        base = self.base.get(o.code, 0)
        if not base:
            return ErrorCode.DENIED_MARKET_CLOSED, f"no price seen for {o.code} yet"
        kind = self.kinds.get(o.code, SecurityKind.STOCK)
        if o.price > 0:
            if not on_grid(o.price, kind):
                return ErrorCode.DENIED_TICK, f"price {o.price} is off the tick grid (tick {tick_size(o.price, kind)})"
            try:
                check_price(o.price, base, kind)
            except PriceRuleError as e:
                return ErrorCode.DENIED_PRICE_BAND, str(e)
        open_orders = [self.orders[c] for c in self.open_ids]
        if o.side is Side.SELL:
            pending = sum(x.remaining for x in open_orders if x.code == o.code and x.side is Side.SELL)
            sellable = self.position(o.code) - pending
            if o.qty > sellable:
                return ErrorCode.DENIED_NO_SHARES, f"sell of {o.qty} {o.code} but this agent can sell {sellable}"
        notional = o.qty * (o.price or base)
        lim = self.card.risk
        if lim.max_order_value and notional > lim.max_order_value:
            return ErrorCode.DENIED_NOTIONAL, f"order value {notional:,} > agent limit {lim.max_order_value:,}"
        if lim.max_open_orders and len(open_orders) + 1 > lim.max_open_orders:
            return ErrorCode.DENIED_OPEN_ORDERS, f"{len(open_orders)} open orders, agent limit {lim.max_open_orders}"
        if o.side is Side.BUY:
            pos = self.positions.get(o.code)
            cost = pos.cost if pos else 0
            if lim.max_position_value and cost + notional > lim.max_position_value:
                return ErrorCode.DENIED_POSITION_LIMIT, (
                    f"position in {o.code} would cost {cost + notional:,} > agent limit {lim.max_position_value:,}")
            reserved = sum(x.remaining * (x.price or self.base.get(x.code, 0))
                           for x in open_orders if x.side is Side.BUY)
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
        upper = lower = 0
        base = self.base.get(code, 0)
        if base:
            lower, upper = _limits(base, self.kinds.get(code, SecurityKind.STOCK))
        locked_up = bar.low == bar.high and upper and bar.high >= upper
        locked_down = bar.low == bar.high and lower and bar.low <= lower
        for coid in list(self.open_ids):
            o = self.orders[coid]
            if o.code != code:
                continue
            if (o.side is Side.BUY and locked_up) or (o.side is Side.SELL and locked_down):
                pass
            else:
                self._fill_order(o, bar, day, notes)
            o = self.orders[coid]
            if o.is_open and o.tif is not TimeInForce.DAY:
                self._step(coid, Cancelled(ts_ns=self.ts_ns), notes)  # IOC/FOK rest: gone after the open
            if self.orders[coid].is_terminal:
                self.open_ids.remove(coid)

    def _price_for(self, o: Order, bar: Bar) -> int:
        """The fill price this bar allows for `o`, or 0. IOC/FOK only see the open."""
        buy = o.side is Side.BUY
        if o.order_type is OrderType.MARKET:
            return bar.open
        if o.tif is not TimeInForce.DAY:
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
        room = bar.volume * self.max_participation_bp // BP - self._used[o.code]
        qty = min(o.remaining, room)
        if o.side is Side.BUY:
            qty = min(qty, self.costs.max_affordable(self.cash, price))
        else:
            qty = min(qty, self.position(o.code))
        if o.tif is TimeInForce.FOK and qty < o.remaining:
            return
        if qty <= 0:
            return
        self._used[o.code] += qty
        self._fill_n += 1
        fid = f"bt{self._fill_n}"
        self._step(o.client_order_id, Fill(fill_id=fid, qty=qty, price=price, broker_order_id=o.broker_order_id,
                                           ts_ns=self.ts_ns), notes)
        value = qty * price
        commission = self.costs.commission(value)
        tax = self.costs.sell_tax(value) if o.side is Side.SELL else 0
        if o.side is Side.BUY:
            self.cash -= value + commission
        else:
            self.cash += value - commission - tax
        self.fees += commission
        self.taxes += tax
        self.traded_value += value
        pos = apply_fill(self.positions.get(o.code), o.code, o.side, qty, price)
        self.positions[o.code] = pos
        if pos.qty:
            self.held[o.code] = pos.qty
        else:
            self.held.pop(o.code, None)
        m = self.meta[o.client_order_id]
        self.fills.append(FillRecord(day=day, client_order_id=o.client_order_id, code=o.code, side=o.side, qty=qty,
                                     price=price, commission=commission, tax=tax, cash_after=self.cash,
                                     reason=m.reason, decision_price=m.decision_price))
        notes.append(("fill", FillView(client_order_id=o.client_order_id, fill_id=fid, code=o.code, side=o.side,
                                       qty=qty, price=price, ts_ns=self.ts_ns), pos))

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


@functools.lru_cache(maxsize=65536)
def _limits(base: int, kind: SecurityKind) -> tuple[int, int]:
    return price_limits(base, kind)
