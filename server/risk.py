"""The risk gate: the only path from an agent's order to the broker.

Checks return a denial (ErrorCode, reason) or None. Per-agent limits come from the card, global
limits from the gateway config; 0 means no limit of that kind."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Container
from dataclasses import dataclass, field

from common.config import AgentCard, RiskLimits
from common.enums import OrderType, SessionState, Side, TradingState
from common.errors import ErrorCode
from common.krx import PriceRuleError, check_price, on_grid, tick_size
from common.schema import NewOrder

Denial = tuple[ErrorCode, str]


@dataclass
class Exposure:
    """What an agent has at stake right now (computed by the OMS)."""

    position_qty: int = 0  # of the order's code
    position_cost: int = 0  # of the order's code
    sellable_qty: int = 0  # position minus shares held by open sells
    open_orders: int = 0
    reserved_cash: int = 0  # open buys' remaining notional
    spent_cash: int = 0  # net cash used by fills
    day_pnl: int = 0  # realised today + unrealised at the last marks (KRW)


@dataclass
class RateWindow:
    """Orders per rolling minute, per agent."""

    stamps: deque[float] = field(default_factory=deque)

    def count(self, now: float) -> int:
        while self.stamps and now - self.stamps[0] > 60.0:
            self.stamps.popleft()
        return len(self.stamps)


class RiskGate:
    def __init__(self, global_limits: RiskLimits, clock=time.monotonic) -> None:
        self.limits = global_limits
        self.clock = clock
        self.global_state = TradingState.ACTIVE
        self._rates: dict[str, RateWindow] = {}
        # the stock master (None: not checked) and codes an agent may trade beyond its card (universe)
        self.known_codes: Container[str] | None = None
        self.master_source = ""
        self.extra_codes: dict[str, frozenset[str]] = {}

    def check(
        self,
        card: AgentCard,
        agent_state: TradingState,
        order: NewOrder,
        exp: Exposure,
        session: SessionState,
        base_price: int | None,
        notional_price: int = 0,
    ) -> Denial | None:
        """`notional_price`: what one share of the order is judged at (its limit, or for a market
        buy today's upper limit); 0 when unknown."""
        # shape of the order
        if order.order_type is OrderType.LIMIT and order.price <= 0:
            return ErrorCode.BAD_ORDER, "a limit order needs a positive price"
        if order.order_type is OrderType.MARKET and order.price != 0:
            return ErrorCode.BAD_ORDER, "a market order carries no price (send price=0)"
        if self.known_codes is not None and order.code not in self.known_codes:
            return ErrorCode.DENIED_UNKNOWN_CODE, f"{order.code} is not a listed code ({self.master_source})"
        if order.code not in card.codes and order.code not in self.extra_codes.get(card.id, ()):
            return ErrorCode.DENIED_UNKNOWN_CODE, f"{order.code} is not among this agent's codes {card.codes}"
        # trading state: global, then the agent's
        reducing = order.side is Side.SELL and order.qty <= exp.sellable_qty
        for who, state in (("gateway", self.global_state), ("agent", agent_state)):
            if state is TradingState.HALTED:
                return ErrorCode.DENIED_HALTED, f"{who} is halted: cancels only"
            if state is TradingState.REDUCING and not reducing:
                return ErrorCode.DENIED_REDUCING, f"{who} is reducing: only sells of held shares"
        if session is not SessionState.READY:
            return ErrorCode.SESSION_NOT_READY, f"broker session is {session}"
        # price rules
        if order.price > 0:
            if not on_grid(order.price):
                return ErrorCode.DENIED_TICK, f"price {order.price} is off the tick grid (tick {tick_size(order.price)})"
            if base_price:
                try:
                    check_price(order.price, base_price)
                except PriceRuleError as e:
                    return ErrorCode.DENIED_PRICE_BAND, str(e)
        # daily loss: once breached only risk-reducing orders pass
        if not reducing:
            if card.risk.max_daily_loss and -exp.day_pnl >= card.risk.max_daily_loss:
                return ErrorCode.DENIED_DAILY_LOSS, f"day P&L {exp.day_pnl:,} breaches the agent's loss limit {card.risk.max_daily_loss:,}"
        # shares and cash
        if order.side is Side.SELL and order.qty > exp.sellable_qty:
            return ErrorCode.DENIED_NO_SHARES, f"sell of {order.qty} {order.code} but this agent can sell {exp.sellable_qty}"
        if order.side is Side.BUY and notional_price <= 0:
            return ErrorCode.BAD_ORDER, "a market buy needs today's base price, which is not known yet: send a limit order"
        notional = order.qty * notional_price
        for scope, lim in (("agent", card.risk), ("gateway", self.limits)):
            if lim.max_order_value and notional > lim.max_order_value:
                return ErrorCode.DENIED_NOTIONAL, f"order value {notional:,} > {scope} limit {lim.max_order_value:,}"
            if lim.max_open_orders and exp.open_orders + 1 > lim.max_open_orders:
                return ErrorCode.DENIED_OPEN_ORDERS, f"{exp.open_orders} open orders, {scope} limit {lim.max_open_orders}"
            if order.side is Side.BUY and lim.max_position_value and exp.position_cost + notional > lim.max_position_value:
                return ErrorCode.DENIED_POSITION_LIMIT, (
                    f"position in {order.code} would cost {exp.position_cost + notional:,} > {scope} limit {lim.max_position_value:,}")
        if order.side is Side.BUY and card.budget and exp.spent_cash + exp.reserved_cash + notional > card.budget:
            free = card.budget - exp.spent_cash - exp.reserved_cash
            return ErrorCode.DENIED_BUDGET, f"order needs {notional:,} KRW, budget left {free:,}"
        # rate last: a denied order does not use up the rate
        now = self.clock()
        windows = (("agent", card.risk, self._rates.setdefault(card.id, RateWindow())),
                   ("gateway", self.limits, self._rates.setdefault("*", RateWindow())))
        for scope, lim, win in windows:
            if lim.max_orders_per_minute and win.count(now) >= lim.max_orders_per_minute:
                return ErrorCode.DENIED_RATE, f"{scope} limit of {lim.max_orders_per_minute} orders per minute"
        for _, _, win in windows:
            win.stamps.append(now)
        return None
