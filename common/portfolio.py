"""Per-agent books on one account and what open orders hold, kept incrementally.

Pure bookkeeping (no I/O): the live gateway and the backtester both keep one. Every new version of an
order is passed to `order_changed(old, new)`, which takes the old version's contribution out and puts
the new one's in, so an exposure is a few dictionary reads however many orders rest (the gateway used
to scan every open order per submit). Positions change only through `apply_fill` / `set_position`.

Virtual agents (shadow mode) have books like anyone else but count nowhere in the account's totals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from common.books import apply_fill_value
from common.enums import Side
from common.ids import EXTERNAL_AGENT
from common.krx import SecurityKind
from common.orders import OPEN, Order
from common.risk_rules import AccountExposure, Exposure, notional_price
from common.schema import PositionView


class _Held:
    """What one agent's open orders hold."""

    __slots__ = ("open", "limit_buy_value", "market_buy_qty", "buy_value", "sell_qty")

    def __init__(self) -> None:
        self.open = 0
        self.limit_buy_value = 0  # Σ remaining × limit over open limit buys
        self.market_buy_qty: dict[str, int] = defaultdict(int)  # code → Σ remaining of open market buys
        self.buy_value: dict[str, int] = defaultdict(int)  # code → Σ remaining × limit of open limit buys
        self.sell_qty: dict[str, int] = defaultdict(int)  # code → Σ remaining of open sells


class Portfolio:
    def __init__(self) -> None:
        self.positions: dict[str, dict[str, PositionView]] = {}
        self.marks: dict[str, int] = {}  # code → last trade price (unrealised P&L)
        self.base_prices: dict[str, int] = {}  # code → today's base price (band centre), when known
        self.kinds: dict[str, SecurityKind] = {}  # code → security kind when not an ordinary stock
        self.virtual: set[str] = set()  # agents whose books are not the account's (shadow)
        self.day_start: dict[str, tuple[int, int]] = {}  # agent → (realised, fees) at the day's start
        self._held: dict[str, _Held] = defaultdict(_Held)
        # every agent's open orders together, per code (the account's figures are these minus the
        # few virtual agents': no scan of the agents per order, whenever `virtual` changes)
        self._all_open = 0
        self._all_buy_value: dict[str, int] = defaultdict(int)
        self._all_market_qty: dict[str, int] = defaultdict(int)

    # ---- orders ----------------------------------------------------------------------------------

    def order_changed(self, old: Order | None, new: Order | None) -> None:
        if old is not None and old.state in OPEN:
            self._count(old, -1)
        if new is not None and new.state in OPEN:
            self._count(new, +1)

    def load_orders(self, orders: Iterable[Order]) -> None:
        for o in orders:
            self.order_changed(None, o)

    def _count(self, o: Order, sign: int) -> None:
        held = self._held[o.agent]
        held.open += sign
        self._all_open += sign
        rem = o.remaining * sign
        if o.side is Side.SELL:
            held.sell_qty[o.code] += rem
        elif o.price:
            held.limit_buy_value += rem * o.price
            held.buy_value[o.code] += rem * o.price
            self._all_buy_value[o.code] += rem * o.price
        else:
            held.market_buy_qty[o.code] += rem
            self._all_market_qty[o.code] += rem

    def kind(self, code: str) -> SecurityKind:
        return self.kinds.get(code, SecurityKind.STOCK)

    def notional_price(self, side: Side, price: int, code: str) -> int:
        return notional_price(side, price, self.base_prices.get(code, 0), self.kind(code))

    def _market_buys(self, held: _Held, code: str | None = None) -> int:
        codes = [code] if code is not None else list(held.market_buy_qty)
        return sum(held.market_buy_qty.get(c, 0) * self.notional_price(Side.BUY, 0, c) for c in codes)

    def exposure(self, agent: str, code: str) -> Exposure:
        held = self._held.get(agent) or _Held()
        pos = self.positions.get(agent, {}).get(code)
        qty, cost = (pos.qty, pos.cost) if pos else (0, 0)
        return Exposure(
            position_qty=qty, position_cost=cost, sellable_qty=qty - held.sell_qty.get(code, 0),
            open_buy_value=held.buy_value.get(code, 0) + self._market_buys(held, code),
            open_orders=held.open, reserved_cash=held.limit_buy_value + self._market_buys(held),
            spent_cash=self.spent(agent), day_pnl=self.day_pnl(agent),
        )

    def account_exposure(self, code: str) -> AccountExposure:
        cost = 0
        for agent, book in self.positions.items():
            if agent not in self.virtual and (p := book.get(code)) is not None:
                cost += p.cost
        open_n = self._all_open
        buy_value = self._all_buy_value.get(code, 0)
        market_qty = self._all_market_qty.get(code, 0)
        for agent in self.virtual:
            if (held := self._held.get(agent)) is not None:
                open_n -= held.open
                buy_value -= held.buy_value.get(code, 0)
                market_qty -= held.market_buy_qty.get(code, 0)
        pending = buy_value + market_qty * self.notional_price(Side.BUY, 0, code)
        return AccountExposure(open_orders=open_n, position_cost=cost, open_buy_value=pending,
                               day_pnl=self.account_day_pnl())

    def open_orders(self, agent: str) -> int:
        held = self._held.get(agent)
        return held.open if held else 0

    def reserved_cash(self, agent: str) -> int:
        held = self._held.get(agent)
        return held.limit_buy_value + self._market_buys(held) if held else 0

    # ---- positions -------------------------------------------------------------------------------

    def position(self, agent: str, code: str) -> PositionView | None:
        return self.positions.get(agent, {}).get(code)

    def after_fill(self, agent: str, code: str, side: Side, qty: int, value: int, fee: int,
                   allow_short: bool = False) -> PositionView:
        """The agent's position in `code` after fills of `qty` shares worth `value` (not stored yet:
        the caller persists it, then `set_position`)."""
        return apply_fill_value(self.position(agent, code), code, side, qty, value, allow_short=allow_short, fee=fee)

    def set_position(self, agent: str, pos: PositionView) -> None:
        self.positions.setdefault(agent, {})[pos.code] = pos

    # ---- cash and P&L ------------------------------------------------------------------------------

    def spent(self, agent: str) -> int:
        """Net cash in the agent's positions: cost of shares held minus realised P&L, plus fees paid."""
        return sum(p.cost - p.realized_pnl + p.fees for p in self.positions.get(agent, {}).values())

    def roll_day(self, day_start: dict[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
        """Start a day: realised P&L and fees count from here (given, when a restart restores them)."""
        self.day_start = day_start if day_start is not None else {
            a: (sum(p.realized_pnl for p in ps.values()), sum(p.fees for p in ps.values())) for a, ps in self.positions.items()}
        return self.day_start

    def day_totals(self, agent: str) -> tuple[int, int]:
        """(gross realised P&L, fees) of the agent today."""
        ps = self.positions.get(agent, {}).values()
        r0, f0 = self.day_start.get(agent, (0, 0))
        return sum(p.realized_pnl for p in ps) - r0, sum(p.fees for p in ps) - f0

    def unrealized(self, agent: str) -> int:
        marks = self.marks
        return sum(marks[p.code] * p.qty - p.cost for p in self.positions.get(agent, {}).values()
                   if p.qty and p.code in marks)

    def day_pnl(self, agent: str) -> int:
        """Realised today net of fees plus unrealised against the last marks (positions carried from
        earlier days count at cost: conservative, a carried loss shows as today's)."""
        realized, fees = self.day_totals(agent)
        return realized - fees + self.unrealized(agent)

    def account_day_pnl(self) -> int:
        """ktrader's agents together; shares held outside ktrader ('external') move with the market
        but are nobody's trading here, so they do not count against the account's daily loss."""
        return sum(self.day_pnl(a) for a in self.positions if a not in self.virtual and a != EXTERNAL_AGENT)
