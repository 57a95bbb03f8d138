"""The pre-trade risk rules: one pure function over a typed exposure, called by the live gateway's
risk gate and by the backtester, so a strategy meets the same refusals with the same codes in both.

Limits: an agent's own (its card; the operator's registry in production) and the gateway's, which
apply across the whole account (every agent's orders and positions together). 0 means no limit of
that kind. The checks run in a fixed order and the first failing one is the answer:
shape → codes → trading state → session and market phase → price grid and band → daily loss →
shares → notional / open orders / position value → budget → order rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from dataclasses import dataclass, field

from common.config import RiskLimits
from common.enums import OrderType, SessionState, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.krx import REGULAR_ORDER_PHASES, Phase
from common.krx_rules import CURRENT, KrxRules, Market, PriceRuleError, SecurityKind

Denial = tuple[ErrorCode, str]

# Orders held for the next session may be placed in any phase; plain orders need a phase in which the
# exchange takes regular orders.
HELD_TIFS = frozenset({TimeInForce.NEXT_SESSION})


@dataclass(slots=True)
class Exposure:
    """What one agent has at stake, as far as one order is concerned."""

    position_qty: int = 0  # of the order's code
    position_cost: int = 0  # of the order's code, at cost
    sellable_qty: int = 0  # position minus shares held by open sells
    open_buy_value: int = 0  # open buys of the order's code (their remaining notional)
    open_orders: int = 0
    reserved_cash: int = 0  # every open buy's remaining notional
    spent_cash: int = 0  # net cash used by fills, fees included
    day_pnl: int = 0  # realised today net of fees + unrealised at the last marks


@dataclass(slots=True)
class AccountExposure:
    """The same across every agent of the account (the gateway-wide limits)."""

    open_orders: int = 0
    position_cost: int = 0  # of the order's code
    open_buy_value: int = 0  # of the order's code
    day_pnl: int = 0


@dataclass(frozen=True, slots=True)
class MarketView:
    """The order's market context: the session, the phase, the code's band centre and listing, and the
    KRX rules of the day the order lives in (tick grid and band by date, common/krx_rules.py)."""

    session: SessionState = SessionState.READY
    session_detail: str = ""  # why the session is not READY (HTS id refused, port unreachable, ...)
    phase: Phase = Phase.CONTINUOUS
    base_price: int = 0  # the band's centre (yesterday's close); 0 = unknown
    kind: SecurityKind = SecurityKind.STOCK
    board: Market = Market.KOSPI
    rules: KrxRules = CURRENT


@dataclass(frozen=True, slots=True)
class Mandate:
    """Who may trade what: the agent's codes and limits, the account's limits, the trading states."""

    agent_limits: RiskLimits
    account_limits: RiskLimits
    budget: int = 0  # the agent's cash budget (0: none)
    codes: Container[str] = ()
    listed: Container[str] | None = None  # the stock master (None: not checked)
    listed_source: str = ""
    gateway_state: TradingState = TradingState.ACTIVE
    agent_state: TradingState = TradingState.ACTIVE


@dataclass(slots=True)
class RateWindow:
    """Orders in the rolling minute before `now` (seconds on any clock; the caller's)."""

    stamps: deque[float] = field(default_factory=deque)

    def count(self, now: float) -> int:
        while self.stamps and now - self.stamps[0] > 60.0:
            self.stamps.popleft()
        return len(self.stamps)


def notional_price(side: Side, price: int, base_price: int, kind: SecurityKind = SecurityKind.STOCK,
                   rules: KrxRules = CURRENT, board: Market = Market.KOSPI) -> int:
    """What one share of an order is judged at: its limit; a market buy at the day's upper limit (KIS
    reserves cash there too), a market sell at the lower; 0 when unknown."""
    if price:
        return price
    if not base_price:
        return 0
    lower, upper = rules.price_limits(base_price, kind, board)
    return upper if side is Side.BUY else lower


def is_reducing(side: Side, qty: int, exp: Exposure) -> bool:
    return side is Side.SELL and qty <= exp.sellable_qty


def check_order(
    *,
    code: str,
    side: Side,
    qty: int,
    price: int,
    order_type: OrderType,
    tif: TimeInForce,
    mandate: Mandate,
    market: MarketView,
    exp: Exposure,
    account: AccountExposure,
    rates: tuple[int, int] = (0, 0),
) -> Denial | None:
    """The first rule the order breaks, or None. `rates`: orders the agent and the account sent in the
    last minute (see RateWindow)."""
    # shape
    if qty <= 0:
        return ErrorCode.BAD_ORDER, "quantity must be positive"
    if order_type in (OrderType.LIMIT, OrderType.CONDITIONAL) and price <= 0:
        return ErrorCode.BAD_ORDER, "a limit order needs a positive price"
    if order_type is OrderType.MARKET and price != 0:
        return ErrorCode.BAD_ORDER, "a market order carries no price (send price=0)"
    # codes
    if mandate.listed is not None and code not in mandate.listed:
        return ErrorCode.DENIED_UNKNOWN_CODE, f"{code} is not a listed code ({mandate.listed_source})"
    if code not in mandate.codes:
        return ErrorCode.DENIED_UNKNOWN_CODE, f"{code} is not among this agent's codes"
    # trading state: the gateway's, then the agent's
    reducing = is_reducing(side, qty, exp)
    for who, state in (("gateway", mandate.gateway_state), ("agent", mandate.agent_state)):
        if state is TradingState.HALTED:
            return ErrorCode.DENIED_HALTED, f"{who} is halted: cancels only"
        if state is TradingState.REDUCING and not reducing:
            return ErrorCode.DENIED_REDUCING, f"{who} is reducing: only sells of held shares"
    # session and phase
    if market.session is not SessionState.READY:
        why = f": {market.session_detail}" if market.session_detail else ""
        return ErrorCode.SESSION_NOT_READY, f"broker session is {market.session}{why}"
    if tif not in HELD_TIFS and market.phase not in REGULAR_ORDER_PHASES:
        return ErrorCode.DENIED_MARKET_CLOSED, (
            f"the market is {market.phase.value.replace('_', ' ')}: send it with tif=next_session to trade at the next open")
    # price rules
    if price > 0:
        rules, kind, board = market.rules, market.kind, market.board
        if not rules.on_grid(price, kind, board):
            return ErrorCode.DENIED_TICK, (f"price {price} is off the tick grid in force since {rules.since} "
                                           f"(tick {rules.tick_size(price, kind, board)})")
        if market.base_price:
            try:
                rules.check_price(price, market.base_price, kind, board)
            except PriceRuleError as e:
                return ErrorCode.DENIED_PRICE_BAND, str(e)
    # daily loss: once breached only risk-reducing orders pass
    if not reducing:
        for scope, lim, pnl in (("agent", mandate.agent_limits, exp.day_pnl), ("account", mandate.account_limits, account.day_pnl)):
            if lim.max_daily_loss and -pnl >= lim.max_daily_loss:
                return ErrorCode.DENIED_DAILY_LOSS, f"{scope} day P&L {pnl:,} breaches the loss limit {lim.max_daily_loss:,}"
    # shares
    if side is Side.SELL and qty > exp.sellable_qty:
        return ErrorCode.DENIED_NO_SHARES, f"sell of {qty} {code} but this agent can sell {exp.sellable_qty}"
    unit = notional_price(side, price, market.base_price, market.kind, market.rules, market.board)
    if side is Side.BUY and unit <= 0:
        return ErrorCode.BAD_ORDER, "a market buy needs today's base price, which is not known yet: send a limit order"
    notional = qty * unit
    # size
    for scope, lim, open_n, cost, pending in (
            ("agent", mandate.agent_limits, exp.open_orders, exp.position_cost, exp.open_buy_value),
            ("account", mandate.account_limits, account.open_orders, account.position_cost, account.open_buy_value)):
        if lim.max_order_value and notional > lim.max_order_value:
            return ErrorCode.DENIED_NOTIONAL, f"order value {notional:,} > {scope} limit {lim.max_order_value:,}"
        if lim.max_open_orders and open_n + 1 > lim.max_open_orders:
            return ErrorCode.DENIED_OPEN_ORDERS, f"{open_n} open orders, {scope} limit {lim.max_open_orders}"
        if side is Side.BUY and lim.max_position_value and cost + pending + notional > lim.max_position_value:
            return ErrorCode.DENIED_POSITION_LIMIT, (
                f"{code} would cost {cost + pending + notional:,} with open buys > {scope} limit {lim.max_position_value:,}")
    if side is Side.BUY and mandate.budget and exp.spent_cash + exp.reserved_cash + notional > mandate.budget:
        free = mandate.budget - exp.spent_cash - exp.reserved_cash
        return ErrorCode.DENIED_BUDGET, f"order needs {notional:,} KRW, budget left {free:,}"
    # rate last: a denied order does not use up the rate
    for scope, lim, n in (("agent", mandate.agent_limits, rates[0]), ("account", mandate.account_limits, rates[1])):
        if lim.max_orders_per_minute and n >= lim.max_orders_per_minute:
            return ErrorCode.DENIED_RATE, f"{scope} limit of {lim.max_orders_per_minute} orders per minute"
    return None
