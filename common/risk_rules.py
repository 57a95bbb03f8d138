"""The pre-trade risk rules: one pure function over a typed exposure, called by the live gateway's
risk gate and by the backtester, so a strategy meets the same refusals with the same codes in both.

Limits: an agent's own (its card; the operator's registry in production) and the gateway's, which
apply across the whole account (every agent's orders and positions together). 0 means no limit of
that kind. The checks run in a fixed order and the first failing one is the answer:
shape → codes → trading state → session and market phase → the card's start (`[schedule] start`: the
agent's own orders wait for it, a next-session order placed on the day it is for too; the gateway's exits
and next-session orders for a later day do not) → price grid and
band → self-trade (another agent's open order on the account it would trade with) → daily loss →
drawdown → shares → notional / open orders / position value → positions / gross exposure / code /
sector → budget → cash reserve → account cash → order rate. A buy needs its commission too (budget
and cash); the shape check refuses an order type and time in force KIS has no order division for.

Percent limits are of the account's equity (the agent's versions too: its share of the same
account); an agent's drawdown is of its own equity (budget + net P&L). `explain` lists every
configured limit the order meets, with the numbers (`ktrader control risk_explain`).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

import msgspec

from common.calendar import NORMAL_HOURS, session_hours
from common.config import DrawdownPeak, RiskLimits
from common.costs import CostModel
from common.enums import OrderType, SessionState, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.krx import REGULAR_ORDER_PHASES, Phase
from common.krx_rules import CURRENT, KrxRules, Market, PriceRuleError, SecurityKind

Denial = tuple[ErrorCode, str]
BP = 10_000  # basis points in one

# Orders held for the next session may be placed in any phase; plain orders need a phase in which the
# exchange takes regular orders.
HELD_TIFS = frozenset({TimeInForce.NEXT_SESSION})
# The phases in which an order held for the next session is for today's (common/krx.py next_session_day: on
# a trading day, until its opening auction ends; from then on, the next trading day's)
TODAYS_SESSION_PHASES = frozenset({Phase.PRE_OPEN, Phase.OPENING_AUCTION})
# KRX takes IOC/FOK only in the continuous session, never in a single-price auction (the opening and the
# closing call; KIS answers APBK0923, and each such rejection counts toward the kill switch)
AUCTION_REFUSED_TIFS = frozenset({TimeInForce.IOC, TimeInForce.FOK})
# Nor does it take 최유리 (BEST, ORD_DVSN 03) or 최우선 (PRIORITY, 04) in a call: they are priced at a best
# quote, which a call does not have (UNCONFIRMED: shared/kis/API.md does not say it; third-party sources do,
# nejooso.com and monstock.tistory.com/47 '동시호가 접수 시간중 해당 호가 지정불가'). A refusal by KIS is final
# and counts toward the kill switch, so the gate refuses them in a call, and held for the next session
# (HELD_TIFS: released at 08:30 into the opening call) at placement.
AUCTION_REFUSED_TYPES = frozenset({OrderType.BEST, OrderType.PRIORITY})
_KRX_NAMES = {OrderType.BEST: "최유리", OrderType.PRIORITY: "최우선"}
AUCTION_PHASES = frozenset({Phase.OPENING_AUCTION, Phase.CLOSING_AUCTION})
# Enum members the per-order checks compare with, as module constants: on Python 3.11 `Side.BUY` is an
# unspecialised class-attribute lookup (~65 ns), a global ~6 ns, and a backtest checks every order.
_BUY, _SELL = Side.BUY, Side.SELL
_PRICED = frozenset({OrderType.LIMIT, OrderType.CONDITIONAL})
# The order types that execute at the market: KIS takes them with ORD_UNPR "0" and fills them at whatever
# the book offers (최유리/최우선 are priced by the exchange at the best quote, not by us), so they carry no
# price and every valuation (notional, reservations, exposure) judges them as a market order. The one
# predicate: kis/adapter.py sends these with price "0".
MARKET_LIKE = frozenset({OrderType.MARKET, OrderType.BEST, OrderType.PRIORITY})
# A 조건부지정가 (CONDITIONAL) order rests at its limit but, unfilled at the closing call, turns into a market
# order (shared/kis/API.md §7.4): a buy may then fill anywhere up to the day's upper limit, so a buy is valued
# as a market buy is (reservations, budget, cash, position and exposure limits); a sell at its limit (the
# lower limit would only overstate a sell, which reserves no cash).
_CONDITIONAL = OrderType.CONDITIONAL
# (order type, time in force) → KIS's ORD_DVSN (shared/kis/API.md §4.1): the only pairs the broker can
# be sent. kis/adapter.py sends by this table and the gate refuses any other pair, so the two cannot
# drift (common/ imports nothing of ours, so the table lives here and kis/ reads it). A held order
# (HELD_TIFS) is sent as a DAY order at its release.
ORDER_DIVISIONS: dict[tuple[OrderType, TimeInForce], str] = {
    (OrderType.LIMIT, TimeInForce.DAY): "00",
    (OrderType.MARKET, TimeInForce.DAY): "01",
    (OrderType.CONDITIONAL, TimeInForce.DAY): "02",
    (OrderType.BEST, TimeInForce.DAY): "03",
    (OrderType.PRIORITY, TimeInForce.DAY): "04",
    (OrderType.LIMIT, TimeInForce.IOC): "11",
    (OrderType.LIMIT, TimeInForce.FOK): "12",
    (OrderType.MARKET, TimeInForce.IOC): "13",
    (OrderType.MARKET, TimeInForce.FOK): "14",
    (OrderType.BEST, TimeInForce.IOC): "15",
    (OrderType.BEST, TimeInForce.FOK): "16",
}
# every pair the gate passes: the table's, and a held order whose DAY pair is in it (the gate's first test)
_SENDABLE = frozenset(ORDER_DIVISIONS) | {
    (o, held) for o, t in ORDER_DIVISIONS if t is TimeInForce.DAY for held in HELD_TIFS
}
_ACTIVE, _HALTED, _REDUCING, _READY = (
    TradingState.ACTIVE,
    TradingState.HALTED,
    TradingState.REDUCING,
    SessionState.READY,
)


def pct_bp(pct: float) -> int:
    """A configured percentage (5.0 = 5 %) in basis points: the checks compare integers."""
    return round(pct * 100)


def drawdown_bp(equity: int, peak: int) -> int:
    """How far `equity` is below `peak`, in basis points of the peak (0 without a peak)."""
    return (peak - equity) * BP // peak if peak > 0 and equity < peak else 0


# Exposure, AccountExposure and MarketView are msgspec Structs, not dataclasses: one of each is built
# per order (the live gate and the backtest) and a Struct's constructor is 4-5x cheaper.
class Exposure(msgspec.Struct, kw_only=True):
    """What one agent has at stake, as far as one order is concerned."""

    position_qty: int = 0  # of the order's code
    position_cost: int = 0  # of the order's code, at cost
    sellable_qty: int = 0  # position minus shares held by open sells
    open_buy_value: int = 0  # open buys of the order's code (their remaining notional)
    open_orders: int = 0
    reserved_cash: int = 0  # every open buy's remaining notional and its buy commission
    spent_cash: int = 0  # net cash used by fills, fees included
    day_pnl: int = 0  # realised today net of fees + unrealised made today (carried positions from the last close)
    # the day P&L the operator accepted today (a resume after a daily-loss breach; <= 0, 0: none): buys pass again
    # until a further max_daily_loss from it (it said "accepted" while every buy stayed denied all day: a hunt)
    loss_accepted: int = 0
    gross_value: int = 0  # positions at the last price (cost without one) + open buys
    positions: int = 0  # codes held or being bought
    has_code: bool = False  # the order's code is one of them
    code_value: int = 0  # the order's code: position at the last price + open buys
    sector: str = ""  # the order's code's sector ("" unknown: counted together)
    sector_value: int = 0  # that sector: positions at the last price + open buys
    equity: int = 0  # budget + net P&L (0: no budget, no drawdown of its own)
    peak: int = 0  # the highest equity of the period the card's drawdown_peak names


class RestingOrder(NamedTuple):
    """Another agent's open order on the same account (the self-trade check)."""

    client_order_id: str
    agent: str
    side: Side
    price: int  # the most marketable price it may trade at; 0: any (market-like, or CONDITIONAL: see crosses)


class AccountExposure(msgspec.Struct, kw_only=True):
    """The same across every agent of the account (the gateway-wide limits)."""

    open_orders: int = 0
    position_cost: int = 0  # of the order's code
    open_buy_value: int = 0  # of the order's code
    day_pnl: int = 0
    loss_accepted: int = 0  # as Exposure's
    gross_value: int = 0
    positions: int = 0
    has_code: bool = False
    code_value: int = 0
    sector_value: int = 0
    equity: int = 0  # the account's equity (0: not known yet: percent limits deny buys)
    # how far the equity may be above `equity` (its cash base held in doubt by the last account read:
    # server/equity.py): the drawdown is judged on equity + this
    equity_doubt: int = 0
    peak: int = 0  # the highest equity of the period the gateway's drawdown_peak names
    free_cash: int | None = None  # cash not held by open buys, their commission included (None: not known yet)
    cash_estimated: bool = False  # free_cash is from the last process's read (none of this one's yet)
    virtual: bool = False  # a shadow agent's order: the account's totals and cash are not its own
    # other agents' open orders of the opposite side on the order's code in its session (the self-trade
    # check; empty: none, a shadow order, an exit the gateway places, a backtest's single agent)
    opposite: tuple[RestingOrder, ...] = ()
    # shares of the code the account can sell: what every owner holds ('external' short of shares sold outside
    # ktrader included) less every open sell (None: not known or not the account's: a backtest, a shadow order)
    sellable_qty: int | None = None


class MarketView(msgspec.Struct, frozen=True, kw_only=True):
    """The order's market context: the session, the phase, the code's band centre and listing, and the
    KRX rules of the day the order lives in (tick grid and band by date, common/krx_rules.py)."""

    session: SessionState = SessionState.READY
    session_detail: str = ""  # why the session is not READY (HTS id refused, port unreachable, ...)
    phase: Phase = Phase.CONTINUOUS
    base_price: int = 0  # the band's centre (yesterday's close); 0 = unknown
    kind: SecurityKind = SecurityKind.STOCK
    board: Market = Market.KOSPI
    rules: KrxRules = CURRENT
    # False: the centre of the band of the order's session is not known yet (a next-session order
    # placed before the close it is based on): no band check, its release checks it; base_price then
    # only values a market order
    band: bool = True
    # the market time the order is judged at (ns since the epoch), for the card's start (before_start);
    # 0: no time of day (a backtest on daily bars: its orders meet the market at the open or the close)
    at_ns: int = 0
    # the (lower, upper) limits of the order's session as the exchange published them (the broker's quote), when
    # known: the band then, whatever the base (a new listing's first day: 60-400 % of its offering price since
    # 2023-06-26, where the rules' band of the base is ±30 %). None: the rules' band of base_price (a backtest)
    limits: tuple[int, int] | None = None
    # the code trades without any daily limit (a delisting's liquidation days, 정리매매): no band to judge a price
    # by, and a buy at the market has no price to be held at (refused: a limit is valued at its own price)
    unlimited: bool = False


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
    # the account's costs: a buy needs its commission in cash as well (the gateway's [costs]; the backtest's)
    costs: CostModel = CostModel()
    # the card's `[schedule] start` (HH:MM of a normal day; "" none): the agent's own orders wait for it
    # (before_start)
    start: str = ""


@dataclass(slots=True)
class RateWindow:
    """Orders in the rolling minute before `now` (seconds on any clock; the caller's)."""

    stamps: deque[float] = field(default_factory=deque)

    def count(self, now: float) -> int:
        while self.stamps and now - self.stamps[0] > 60.0:
            self.stamps.popleft()
        return len(self.stamps)


class Unit(StrEnum):
    KRW = "krw"
    COUNT = "count"
    BP = "bp"  # basis points (of equity, or of the peak for a drawdown)


class Check(NamedTuple):
    """One limit an order meets: where it stands before and with the order."""

    rule: str
    scope: str  # agent | account
    now: int
    after: int
    limit: int
    unit: Unit
    denial: ErrorCode | None  # None: within the limit
    text: str = ""  # the denial's reason (or, explaining, the limit's)


def at_limit(side: Side, price: int, order_type: OrderType | None) -> bool:
    """An order valued at its own price (a limit), not at the band's edge: the one predicate of
    `notional_price` and the portfolio's reservations (common/portfolio.py). A market(-like) order or one
    with no price is not; nor is a CONDITIONAL buy (it may buy at the market in the closing call)."""
    return bool(price) and order_type not in MARKET_LIKE and (side is _SELL or order_type is not _CONDITIONAL)


def notional_price(
    side: Side,
    price: int,
    base_price: int,
    kind: SecurityKind = SecurityKind.STOCK,
    rules: KrxRules = CURRENT,
    board: Market = Market.KOSPI,
    order_type: OrderType | None = None,
    limits: tuple[int, int] | None = None,
) -> int:
    """What one share of an order is judged at: its limit; an order that executes at the market
    (MARKET_LIKE, whatever price it carries; or no price) and a CONDITIONAL buy (a market buy if the
    closing call finds it unfilled) a buy at the day's upper limit (KIS reserves cash there too), a sell
    at the lower; 0 when unknown. `limits`: the day's as the exchange published them (MarketView.limits)."""
    if at_limit(side, price, order_type):
        return price
    if limits is not None:
        return limits[1] if side is _BUY else limits[0]
    if not base_price:
        return 0
    lower, upper = rules.judged_limits(base_price, kind, board)
    return upper if side is _BUY else lower


def unsendable(order_type: OrderType, tif: TimeInForce) -> str:
    """Why KIS cannot be sent this pair (no ORDER_DIVISIONS entry), or "". A held order goes as a DAY order."""
    sent = TimeInForce.DAY if tif in HELD_TIFS else tif
    if (order_type, sent) in ORDER_DIVISIONS:
        return ""
    tifs = "/".join(t.value for o, t in ORDER_DIVISIONS if o is order_type)
    return f"{order_type.value}/{tif.value}: KIS has no order division for it (a {order_type.value} order takes {tifs})"


def crosses(side: Side, price: int, order_type: OrderType, other: RestingOrder) -> bool:
    """Whether an order would trade with `other` (of the opposite side) at once or later in its session: a
    buy at or above a sell's price, a sell at or below a buy's; an order with no price of its own to
    rest at — market-like, or CONDITIONAL, which turns into a market order at the closing call — meets
    any, as `other` at price 0 does."""
    if order_type is not OrderType.LIMIT or not price or not other.price:
        return True
    return price >= other.price if side is _BUY else price <= other.price


def self_trade(
    code: str, side: Side, price: int, order_type: OrderType, opposite: Iterable[RestingOrder]
) -> Denial | None:
    """A BUY that would trade with another agent's open sell on the same account (`opposite`; the owner's own
    orders placed outside ktrader too): one account on both sides pays commission and the sell tax for nothing, and
    a print with the same owner on both sides is what market surveillance reads as a wash trade (가장매매). A sell is
    never denied by this rule: it only reduces a position held (KRX has no retail short selling), and a strategy's
    exit must get out whatever another agent bids (refused, a limit exit waited for its next session, a review); the
    buy side alone is where a self-trade can be refused without risk (the buyer may price below the sell or wait). A
    limit sell that would meet another's resting buy is told instead (`crossing`, the gate's alert)."""
    if side is _SELL:
        return None
    other = crossing(side, price, order_type, opposite)
    if other is None:
        return None
    return ErrorCode.DENIED_SELF_TRADE, (
        f"{code}: this {side.value} {_priced(price, order_type)} would trade with {_whose(other)} "
        f"({_at(other)}) on the same account: a self-trade pays fees and tax for nothing and looks like a wash trade "
        "(가장매매) to market surveillance; price it away from that order, or wait until it is filled or cancelled"
    )


def crossing(side: Side, price: int, order_type: OrderType, opposite: Iterable[RestingOrder]) -> RestingOrder | None:
    """The first of `opposite` an order would trade with (None: none)."""
    return next((o for o in opposite if crosses(side, price, order_type, o)), None)


def self_trade_text(code: str, side: Side, price: int, order_type: OrderType, other: RestingOrder) -> str:
    """A sell let through that would meet `other`, as a person is told it."""
    return (
        f"{code}: its {side.value} {_priced(price, order_type)} would trade with {_whose(other)} ({_at(other)}) on "
        "the same account: a self-trade (fees and tax for nothing, a wash trade to market surveillance); let through "
        "(a sell may be an exit): price the agents' orders apart"
    )


def _priced(price: int, order_type: OrderType) -> str:
    return f"at {price:,}" if price and order_type is OrderType.LIMIT else f"as a {order_type.value} order"


def _whose(other: RestingOrder) -> str:
    if other.agent == EXTERNAL_AGENT:
        return f"the order placed outside ktrader (the KIS app) {other.client_order_id}"
    return f"{other.agent}'s open {other.side.value} {other.client_order_id}"


def _at(other: RestingOrder) -> str:
    return f"at {other.price:,}" if other.price else "at any price"


_NORMAL_OPEN = NORMAL_HOURS[0].hour * 60 + NORMAL_HOURS[0].minute  # minutes after midnight KST
_KST_S = 9 * 3600
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


@lru_cache(maxsize=64)
def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


def before_start(start: str, at_ns: int) -> str:
    """Why an agent's own order judged at `at_ns` (market time, ns since the epoch) waits for its card's
    `[schedule] start` (HH:MM), or "". The caller asks only for orders of today's session the agent
    places itself: a DAY order, or a next-session order placed on the day it is for (before the opening
    auction ends: it goes into the same opening call), not one for a later day (the desk releases it at
    that day's open: a decision of the evening before), not a gateway's exit, not a cancel. `start` is a
    time of a normal day (open 09:00), moved as the session opens late (the CSAT day, the year's first),
    as `[schedule] end` moves with a late close.

    A start at or before the open (the default "09:00") holds nothing back, the opening call included:
    an order placed in it (08:30-09:00) trades at the open, not before, and an explicit "09:00" cannot be
    told from the default (the approvals' checksum leaves default values out: a new default would turn
    every approved card's stored "09:00" into a change). A later start ("09:30"; "09:01" sits out the
    opening auction) refuses them until then."""
    minute = _minutes(start)
    if minute <= _NORMAL_OPEN or not at_ns:
        return ""
    day, second = divmod(at_ns // 1_000_000_000 + _KST_S, 86_400)
    hours = session_hours(dt.date.fromordinal(day + _EPOCH_ORDINAL))
    if hours is None:
        return ""
    late = hours[0].hour * 60 + hours[0].minute - _NORMAL_OPEN
    since = minute + late
    if second >= since * 60:
        return ""
    moved = f" today ({start} moved by the session's {late}-minute late open)" if late else ""
    return (
        f"before this agent's [schedule] start: it may trade from {since // 60:02d}:{since % 60:02d}{moved}; "
        "its own orders for today's session wait until then, next-session ones placed today included (the "
        "gateway's exits and next-session orders for a later day do not)"
    )


def is_reducing(side: Side, qty: int, exp: Exposure) -> bool:
    return side is _SELL and qty <= exp.sellable_qty


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
    explain: list[Check] | None = None,
    by_gateway: bool = False,
    released: bool = False,
) -> Denial | None:
    """The first rule the order breaks, or None. `rates`: orders the agent and the account sent in the
    last minute (see RateWindow). With `explain`, every limit is evaluated and appended to it.
    `by_gateway`: a sell the gateway places for the agent (a protective exit, a flatten sell:
    common/orders.py is_gateway_exit), which the agent's schedule does not hold back.
    `released`: an order held for a session, released into it: the agent's codes and the card's start
    were judged when it was placed (a code that left its universe since is still its order's); every
    other rule (listed, states, session, band, limits) is judged now."""
    first = _gates(code, side, qty, price, order_type, tif, mandate, market, exp, by_gateway, released)
    if first is None and account.opposite:
        first = self_trade(code, side, price, order_type, account.opposite)
    if first is not None and (explain is None or qty <= 0):
        return first
    unit = notional_price(
        side, price, market.base_price, market.kind, market.rules, market.board, order_type, market.limits
    )
    if side is _BUY and unit <= 0:
        return first or (
            ErrorCode.BAD_ORDER,
            f"a {order_type.value} buy needs today's base price, which is not known yet: send a limit order",
        )
    for chk in _limits(code, side, qty, qty * unit, mandate, exp, account, rates, explain is not None, by_gateway):
        if explain is not None:
            explain.append(chk)
        if chk.denial is not None:
            if explain is None:
                return chk.denial, chk.text
            first = first or (chk.denial, chk.text)
    return first


def market_refusal(market: MarketView, tif: TimeInForce) -> Denial | None:
    """The gate's rules that no agent's state passes: the broker session not ready, or the market taking no
    order of `tif` now (the operator's flatten asks them before it changes anything: server/operator.py)."""
    if market.session is not _READY:
        why = f": {market.session_detail}" if market.session_detail else ""
        return ErrorCode.SESSION_NOT_READY, f"broker session is {market.session}{why}"
    return closed_refusal(market, tif)


def closed_refusal(market: MarketView, tif: TimeInForce) -> Denial | None:
    """The market taking no order of `tif` now (a day order outside the sessions), or None."""
    if tif not in HELD_TIFS and market.phase not in REGULAR_ORDER_PHASES:
        return ErrorCode.DENIED_MARKET_CLOSED, (
            f"the market is {market.phase.value.replace('_', ' ')}: send it with tif=next_session to trade at the "
            "next open"
        )
    return None


def auction_refusal(order_type: OrderType, tif: TimeInForce, phase: Phase) -> str:
    """Why KRX would refuse this order as one it takes only in the continuous session, or "": IOC/FOK
    (AUCTION_REFUSED_TIFS) or 최유리/최우선 (AUCTION_REFUSED_TYPES) in a single-price auction, and
    최유리/최우선 held for the next session, which is released into its opening call."""
    if order_type in AUCTION_REFUSED_TYPES and tif in HELD_TIFS:
        return (
            "a 최유리/최우선 order cannot join the opening call: send MARKET or LIMIT for the next session, "
            "or place it as DAY once the continuous session opened (09:00; 10:00 on a late-open day)"
        )
    if phase not in AUCTION_PHASES:
        return ""
    call = f"the market is in its {phase.value.replace('_', ' ')} (a single-price auction)"
    if tif in AUCTION_REFUSED_TIFS:
        what = f"{tif.value.upper()} orders then; send a DAY order, or wait for the continuous session"
        return f"{call}: KRX takes no {what}"
    if order_type in AUCTION_REFUSED_TYPES:
        # (the open is 09:00 but on KRX's late-open days: the year's first session, the CSAT day)
        wait = "wait for the open" if phase is Phase.OPENING_AUCTION else "wait for the next session's open"
        name = f"{order_type.value} ({_KRX_NAMES[order_type]})"
        return f"{call}: KRX takes no {name} orders then; send a LIMIT or MARKET order, or {wait}"
    return ""


def _gates(
    code: str,
    side: Side,
    qty: int,
    price: int,
    order_type: OrderType,
    tif: TimeInForce,
    mandate: Mandate,
    market: MarketView,
    exp: Exposure,
    by_gateway: bool = False,
    released: bool = False,
) -> Denial | None:
    """What the order must be before any limit is weighed: its shape, code, state, session, the card's
    start, price."""
    if qty <= 0:
        return ErrorCode.BAD_ORDER, "quantity must be positive"
    if (order_type, tif) not in _SENDABLE and (why := unsendable(order_type, tif)):
        # refused here, not by the adapter after the intent is written (a local refusal there counted as
        # a broker error toward the kill switch)
        return ErrorCode.BAD_ORDER, why
    if order_type in _PRICED and price <= 0:
        return ErrorCode.BAD_ORDER, "a limit order needs a positive price"
    if order_type in MARKET_LIKE and price != 0:
        # KIS executes it at the market (ORD_UNPR "0"): a price would only misstate its size to the limits
        return ErrorCode.BAD_ORDER, f"a {order_type.value} order carries no price (send price=0)"
    if mandate.listed is not None and code not in mandate.listed and not is_reducing(side, qty, exp):
        # (shares held are always offered for sale: a code gone from the master file -- a delisting's last days, a
        # code change, a master read short -- denied every sell, a stop's exit too; KIS says if it cannot trade)
        return ErrorCode.DENIED_UNKNOWN_CODE, f"{code} is not a listed code ({mandate.listed_source})"
    if code not in mandate.codes and not released and not is_reducing(side, qty, exp):
        # what it holds it may always sell (a code that left its universe, a gateway restarted since); a
        # released order was judged against the codes it had when it was placed (a re-ranking since, or a new
        # day's list, must not drop the order its strategy was promised)
        return ErrorCode.DENIED_UNKNOWN_CODE, f"{code} is not among this agent's codes"
    # the market taking no order of this tif now comes before the states: a day order after the close is refused as
    # such (it said 'agent is reducing' after the card's end, and a strategy answering DENIED_MARKET_CLOSED with a
    # next-session order never heard it); a next-session order is weighed by the states as before
    if market.session is _READY and (closed := closed_refusal(market, tif)):
        return closed
    # trading state: the gateway's, then the agent's
    if mandate.gateway_state is not _ACTIVE or mandate.agent_state is not _ACTIVE:
        reducing = is_reducing(side, qty, exp)
        for who, state in (("gateway", mandate.gateway_state), ("agent", mandate.agent_state)):
            if state is _HALTED and by_gateway and tif in HELD_TIFS and reducing and not released:
                # the gateway's exit for the next session (an end of day's flatten after the close): held, sent by
                # nobody, its release waits for the resume (server/order_desk.py _waits_for_resume); denied, the
                # flatten ended for good under the kill switch and the resume sold nothing (a review)
                continue
            if state is _HALTED:
                return ErrorCode.DENIED_HALTED, f"{who} is halted: cancels only"
            if state is _REDUCING and not reducing:
                return ErrorCode.DENIED_REDUCING, f"{who} is reducing: only sells of held shares"
    if shut := market_refusal(market, tif):
        return shut
    # (a next-session order for a later day is released at that day's open: the evening's decision for the
    # next session; one placed on the day it is for trades in the same opening call as a DAY order: judged so)
    if (
        mandate.start
        and market.at_ns
        and not by_gateway
        and not released
        and (tif not in HELD_TIFS or market.phase in TODAYS_SESSION_PHASES)
    ):
        if why := before_start(mandate.start, market.at_ns):
            return ErrorCode.DENIED_SCHEDULE, why
    if tif in AUCTION_REFUSED_TIFS or order_type in AUCTION_REFUSED_TYPES:
        if why := auction_refusal(order_type, tif, market.phase):
            return ErrorCode.DENIED_AUCTION_TIF, why
    if market.unlimited and side is _BUY and not at_limit(side, price, order_type):
        return ErrorCode.DENIED_PRICE_BAND, (
            "the code trades without a daily limit (a delisting's liquidation days, 정리매매): a buy at the market has "
            "no price to be held at; send a limit buy"
        )
    if price > 0:
        rules, kind, board = market.rules, market.kind, market.board
        if not rules.on_grid(price, kind, board):
            return ErrorCode.DENIED_TICK, (
                f"price {price} is off the tick grid in force since {rules.grid_since(board)} "
                f"(tick {rules.tick_size(price, kind, board)})"
            )
        if market.unlimited:
            pass  # (KRX sets no limit: the broker judges the price)
        elif market.band and (lim := market.limits) is not None:
            if not lim[0] <= price <= lim[1]:
                return ErrorCode.DENIED_PRICE_BAND, (
                    f"price {price} is outside the day's band {lim[0]}..{lim[1]} (the exchange's limits, base "
                    f"{market.base_price})"
                )
        elif market.base_price and market.band:
            try:
                rules.check_price(price, market.base_price, kind, board)
            except PriceRuleError as e:
                return ErrorCode.DENIED_PRICE_BAND, str(e)
    return None


def _pct(v: int, equity: int) -> str:
    return f"{v * 100 / equity:.1f} %" if equity > 0 else "?"


def _sizes(lim: RiskLimits) -> bool:
    return bool(lim.max_order_value or lim.max_open_orders or lim.max_position_value)


def _drawdowns(lim: RiskLimits) -> bool:
    return bool(lim.max_drawdown_pct or lim.halt_drawdown_pct)


def _shapes(lim: RiskLimits) -> bool:
    return bool(lim.max_positions or lim.max_gross_exposure_pct or lim.max_code_pct or lim.max_sector_pct)


def _limits(
    code: str,
    side: Side,
    qty: int,
    notional: int,
    mandate: Mandate,
    exp: Exposure,
    account: AccountExposure,
    rates: tuple[int, int],
    explaining: bool,
    by_gateway: bool = False,
) -> Iterator[Check]:
    """Every configured limit, in the order they are checked (the caller stops at the first denial). A sell the
    gateway places for the agent (`by_gateway`: a protective exit, a flatten's) of shares held passes the limits
    that throttle the strategy -- its drawdown halt, its open orders, its order rate -- as the states let it pass an
    agent's halt: a stop met in a fall past `halt_drawdown_pct`, or while the agent's other orders filled its
    `max_open_orders`, was denied every 5 s and never sold (a hunt; the README promised a drawdown halt never holds
    an exit)."""
    agent_lim, acct_lim = mandate.agent_limits, mandate.account_limits
    reducing = is_reducing(side, qty, exp)
    exit_sell = by_gateway and reducing
    buy = side is _BUY
    # Each group is walked only when one of the two scopes sets one of its limits: most cards set a
    # few, and a backtest asks this for every order.
    # daily loss: once breached only risk-reducing orders pass
    for scope, lim, pnl, accepted in (
        (
            ("agent", agent_lim, exp.day_pnl, exp.loss_accepted),
            ("account", acct_lim, account.day_pnl, account.loss_accepted),
        )
        if agent_lim.max_daily_loss or acct_lim.max_daily_loss
        else ()
    ):
        if lim.max_daily_loss:
            hit = not reducing and accepted - pnl >= lim.max_daily_loss
            if hit or explaining:
                beyond = f" beyond the {-accepted:,} accepted today" if accepted else ""
                yield Check(
                    "daily loss",
                    scope,
                    accepted - pnl,
                    accepted - pnl,
                    lim.max_daily_loss,
                    Unit.KRW,
                    ErrorCode.DENIED_DAILY_LOSS if hit else None,
                    f"{scope} day P&L {pnl:,} breaches the loss limit {lim.max_daily_loss:,}{beyond}",
                )
    # drawdown from the equity peak: reducing only past the first level, nothing past the second
    for scope, lim, equity, peak in (
        (
            ("agent", agent_lim, exp.equity, exp.peak),
            ("account", acct_lim, account.equity + account.equity_doubt if account.equity > 0 else 0, account.peak),
        )
        if _drawdowns(agent_lim) or _drawdowns(acct_lim)
        else ()
    ):
        if not _drawdowns(lim) or equity <= 0:
            continue
        dd = drawdown_bp(equity, peak)
        halt, reduce = pct_bp(lim.halt_drawdown_pct), pct_bp(lim.max_drawdown_pct)
        hit = bool(halt and dd >= halt and not exit_sell) or bool(reduce and dd >= reduce and not reducing)
        level = halt if halt and (dd >= halt or not reduce) else reduce
        if hit or explaining:
            what = "nothing passes" if halt and dd >= halt else "only risk-reducing orders pass"
            yield Check(
                "drawdown",
                scope,
                dd,
                dd,
                level,
                Unit.BP,
                ErrorCode.DENIED_DRAWDOWN if hit else None,
                f"{scope} equity {equity:,} is {dd / 100:.2f} % below its "
                f"{lim.drawdown_peak.value.replace('_', '-')} peak {peak:,} (limit {level / 100:g} %): {what}",
            )
    # shares
    if side is _SELL:
        hit = qty > exp.sellable_qty
        if hit or explaining:
            yield Check(
                "shares",
                "agent",
                exp.sellable_qty,
                exp.sellable_qty - qty,
                0,
                Unit.COUNT,
                ErrorCode.DENIED_NO_SHARES if hit else None,
                f"sell of {qty} {code} but this agent can sell {exp.sellable_qty}",
            )
        # the agents' shares add up to more than the account holds once shares were sold outside ktrader
        # ('external' short): such a sell passed and KIS refused it (APBK0400), each refusal counting towards the
        # agent's kill switch
        acct = account.sellable_qty
        if acct is not None and (qty > acct or explaining):
            yield Check(
                "shares",
                "account",
                acct,
                acct - qty,
                0,
                Unit.COUNT,
                ErrorCode.DENIED_NO_SHARES if qty > acct else None,
                f"sell of {qty} {code} but the account can sell {acct} (shares sold outside ktrader are counted "
                "against the agents' own: see the 'external is short' alert)",
            )
    # size
    for scope, lim, open_n, cost, pending in (
        (
            ("agent", agent_lim, exp.open_orders, exp.position_cost, exp.open_buy_value),
            ("account", acct_lim, account.open_orders, account.position_cost, account.open_buy_value),
        )
        if _sizes(agent_lim) or _sizes(acct_lim)
        else ()
    ):
        if lim.max_order_value:
            hit = notional > lim.max_order_value
            if hit or explaining:
                yield Check(
                    "order value",
                    scope,
                    0,
                    notional,
                    lim.max_order_value,
                    Unit.KRW,
                    ErrorCode.DENIED_NOTIONAL if hit else None,
                    f"order value {notional:,} > {scope} limit {lim.max_order_value:,}",
                )
        if lim.max_open_orders:
            hit = open_n + 1 > lim.max_open_orders and not exit_sell
            if hit or explaining:
                yield Check(
                    "open orders",
                    scope,
                    open_n,
                    open_n + 1,
                    lim.max_open_orders,
                    Unit.COUNT,
                    ErrorCode.DENIED_OPEN_ORDERS if hit else None,
                    f"{open_n} open orders, {scope} limit {lim.max_open_orders}",
                )
        if buy and lim.max_position_value:
            after = cost + pending + notional
            hit = after > lim.max_position_value
            if hit or explaining:
                yield Check(
                    "position value",
                    scope,
                    cost + pending,
                    after,
                    lim.max_position_value,
                    Unit.KRW,
                    ErrorCode.DENIED_POSITION_LIMIT if hit else None,
                    f"{code} would cost {after:,} with open buys > {scope} limit {lim.max_position_value:,}",
                )
    # the account's shape: how many codes, how much in all, in one code, in one sector (buys only)
    if buy and (_shapes(agent_lim) or _shapes(acct_lim)):
        equity = account.equity
        for scope, lim, src in (("agent", agent_lim, exp), ("account", acct_lim, account)):
            if lim.max_positions:
                after = src.positions + (0 if src.has_code else 1)
                hit = after > lim.max_positions
                if hit or explaining:
                    yield Check(
                        "positions",
                        scope,
                        src.positions,
                        after,
                        lim.max_positions,
                        Unit.COUNT,
                        ErrorCode.DENIED_MAX_POSITIONS if hit else None,
                        f"{code} would be position {after} of the {scope}, limit {lim.max_positions}",
                    )
            for rule, pct, value, denial, what in (
                (
                    "gross exposure",
                    lim.max_gross_exposure_pct,
                    src.gross_value,
                    ErrorCode.DENIED_GROSS_EXPOSURE,
                    "gross exposure",
                ),
                ("code", lim.max_code_pct, src.code_value, ErrorCode.DENIED_CONCENTRATION, code),
                ("sector", lim.max_sector_pct, src.sector_value, ErrorCode.DENIED_SECTOR, "sector"),
            ):
                if not pct:
                    continue
                limit = pct_bp(pct)
                after = value + notional
                if equity <= 0:
                    yield Check(
                        rule,
                        scope,
                        0,
                        0,
                        limit,
                        Unit.BP,
                        denial,
                        "the account's equity is not known yet (no account query has answered): "
                        f"{rule} limits deny buys until it is",
                    )
                    continue
                hit = after * BP > limit * equity
                if hit or explaining:
                    yield Check(
                        rule,
                        scope,
                        value * BP // equity,
                        after * BP // equity,
                        limit,
                        Unit.BP,
                        denial if hit else None,
                        f"{scope} {what}{' ' + (exp.sector or 'unknown') if rule == 'sector' else ''} would be "
                        f"{after:,} = "
                        f"{_pct(after, equity)} of equity {equity:,} > limit {pct:g} %",
                    )
    # cash: a buy needs its value and its buy commission (the account's CostModel, as the books charge it)
    need = notional + mandate.costs.commission(notional) if buy else 0
    if buy and mandate.budget:
        used = exp.spent_cash + exp.reserved_cash
        hit = used + need > mandate.budget
        if hit or explaining:
            yield Check(
                "budget",
                "agent",
                used,
                used + need,
                mandate.budget,
                Unit.KRW,
                ErrorCode.DENIED_BUDGET if hit else None,
                f"order needs {need:,} KRW with its commission, budget left {mandate.budget - used:,}",
            )
    # cash reserve: what no buy may use (the agent's of its budget, the account's of its cash)
    if buy and agent_lim.cash_reserve and mandate.budget:
        left = mandate.budget - exp.spent_cash - exp.reserved_cash
        hit = left - need < agent_lim.cash_reserve
        if hit or explaining:
            yield Check(
                "cash reserve",
                "agent",
                left,
                left - need,
                agent_lim.cash_reserve,
                Unit.KRW,
                ErrorCode.DENIED_CASH_RESERVE if hit else None,
                f"budget left after the buy {left - need:,} < the agent's reserve {agent_lim.cash_reserve:,}",
            )
    # the account's cash, whenever it is known: agents' budgets may add up to more than the account holds,
    # and KIS would take the excess on credit (미수, sold by force when unpaid). A shadow order (virtual)
    # spends no account cash. Before this process's first account read the last process's read stands in
    # (Portfolio.cash_before_read: as the books moved it since); with none at all (free_cash None) buys wait only
    # when the operator set a reserve: without one the gateway trades as it always has until the read answers
    # (a first start whose account query is slow or failing would otherwise refuse every buy; server/risk.py
    # tells a person), and KIS still checks its own orderable cash.
    reserve = acct_lim.cash_reserve
    if buy and not account.virtual and (reserve or account.free_cash is not None):
        if account.free_cash is None:
            yield Check(
                "account cash",
                "account",
                0,
                0,
                reserve,
                Unit.KRW,
                ErrorCode.DENIED_CASH_RESERVE,
                "the account's cash is not known yet (no account query has answered): buys wait for it",
            )
        else:
            cash = account.free_cash
            hit = cash - need < reserve
            if hit or explaining:
                kept = f" after the reserve {reserve:,}" if reserve else ""
                est = " (the last read before this start: none since)" if account.cash_estimated else ""
                yield Check(
                    "account cash",
                    "account",
                    cash,
                    cash - need,
                    reserve,
                    Unit.KRW,
                    ErrorCode.DENIED_CASH_RESERVE if hit else None,
                    f"account cash {cash - reserve:,}{kept}{est} < order {need:,} (with its commission)",
                )
    # rate last: a denied order does not use up the rate
    for scope, lim, n in (
        (("agent", agent_lim, rates[0]), ("account", acct_lim, rates[1]))
        if agent_lim.max_orders_per_minute or acct_lim.max_orders_per_minute
        else ()
    ):
        if lim.max_orders_per_minute:
            # the account's window never refuses a sell of held shares: one agent's burst (its orders,
            # its revises) must not keep another's stop-loss from going out (its own window still does)
            hit = n >= lim.max_orders_per_minute and not exit_sell and not (scope == "account" and reducing)
            if hit or explaining:
                yield Check(
                    "orders per minute",
                    scope,
                    n,
                    n + 1,
                    lim.max_orders_per_minute,
                    Unit.COUNT,
                    ErrorCode.DENIED_RATE if hit else None,
                    f"{scope} limit of {lim.max_orders_per_minute} orders per minute",
                )


def already_beyond(budget: int, lim: RiskLimits, held: Mapping[str, Exposure], agent: Exposure) -> list[str]:
    """What an agent holds or has open beyond a card's limits as they now stand (a reload that lowers them):
    the gate then denies the buys (or orders) those limits govern and sells nothing, which a person must be
    told, or a strategy that keeps asking reads as broken. `held`: the exposure of each code it holds;
    `agent`: any one of its exposures (the agent-wide figures)."""
    out: list[str] = []
    used = agent.spent_cash + agent.reserved_cash
    if budget and used >= budget:
        out.append(f"it has used {used:,} of its budget {budget:,}: buys are denied until it sells (nothing is sold)")
    if lim.max_position_value:
        for code, e in sorted(held.items()):
            cost = e.position_cost + e.open_buy_value
            if cost >= lim.max_position_value:
                out.append(
                    f"{code} costs {cost:,} with its open buys, at or over max_position_value "
                    f"{lim.max_position_value:,}: no more buys of it (nothing is sold)"
                )
    if lim.max_positions and agent.positions >= lim.max_positions:
        out.append(
            f"it holds or is buying {agent.positions} codes, at or over max_positions {lim.max_positions}: "
            "no buy of another code (nothing is sold)"
        )
    if lim.max_open_orders and agent.open_orders >= lim.max_open_orders:
        out.append(
            f"it has {agent.open_orders} open orders, at or over max_open_orders {lim.max_open_orders}: "
            "no new order until some close"
        )
    return out


def scale_krw(value: int, factor: float) -> int:
    """A size in KRW times the risk multiplier; a limit stays a limit (0 = none stays 0, a set one
    never rounds down to 0)."""
    return max(1, round(value * factor)) if value else 0  # (round: 10,000,000 × 0.57 is 5,699,999.99… in floats)


def scaled(lim: RiskLimits, factor: float) -> RiskLimits:
    """An agent's size limits times the operator's risk multiplier (0 < factor <= 1): order value,
    position value, the percent exposure limits, and the cash reserve, a part of the budget that is scaled
    too (kept whole, a quarter of a budget at its reserve denied every buy, unsaid: a hunt). Loss, drawdown,
    count and rate limits are not sizes and stay."""
    if factor == 1.0:
        return lim
    return msgspec.structs.replace(
        lim,
        cash_reserve=scale_krw(lim.cash_reserve, factor),
        max_order_value=scale_krw(lim.max_order_value, factor),
        max_position_value=scale_krw(lim.max_position_value, factor),
        max_gross_exposure_pct=lim.max_gross_exposure_pct * factor,
        max_code_pct=lim.max_code_pct * factor,
        max_sector_pct=lim.max_sector_pct * factor,
    )


def fitting_qty(qty: int, unit: int, *limits: RiskLimits) -> int:
    """Of `qty` shares judged at `unit` KRW each, the most one order may carry under the order-value
    limits of `limits` (the agent's, scaled, and the account's); 0: not even one share. What the gateway's
    own sells (protective exits, flattens) are sized by, in as many orders as it takes: live
    (server/risk.py RiskGate.fitting_qty) and the backtest's flatten (tools/backtest/broker.py) alike."""
    caps = [v for v in (lim.max_order_value for lim in limits) if v]
    if not caps or unit <= 0 or qty * unit <= min(caps):
        return qty
    return min(caps) // unit


def peak_of(lim: RiskLimits, day_peak: int, all_time_peak: int) -> int:
    """The peak `lim`'s drawdown is measured from."""
    return all_time_peak if lim.drawdown_peak is DrawdownPeak.ALL_TIME else day_peak
