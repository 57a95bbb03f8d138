"""The wire schema: every message between gateway, agents and tools, in one module.

Encoding: msgspec msgpack of tagged, frozen Structs (tag field "t"). Every message starts with a
Header. Replies carry the `mid` of the request they answer in `header.re`. Never pickle.

Channels (DESIGN.md §3):
- ROUTER ⇄ DEALER: requests, replies, and each agent's own order events (`AgentEvent`, with a
  per-agent sequence number, replayable from the gateway's event log).
- PUB → SUB: market data and public system events (`Published`, per-topic sequence numbers).
"""

from __future__ import annotations

import operator

import itertools
import uuid
from typing import Annotated, ClassVar, Literal, Union

import msgspec

from common.clock import now_ns
from common.config import AgentCard
from common.enums import (
    AgentMode,
    AgentState,
    BarInterval,
    OrderType,
    SessionState,
    Side,
    SystemEventKind,
    TimeInForce,
    TradingState,
)
from common.errors import ErrorCode
from common.ids import STOCK_CODE_PATTERN, ClientOrderId, StockCode
from common.orders import OrderState
from common.enums import SessionProblem  # issue-18a
from common.protection import Protection, ProtectionSpec

SCHEMA_VERSION = 3  # v2: a PUB message is one frame (common/framing.py encode_pub); v3: PUB frames carry the
# publisher's token instead of a per-message MAC

MAX_LISTED = 100  # codes listed in a heartbeat / status row; more are counted, not listed
SUBMIT_MAX_ORDERS = 100  # orders in one SubmitOrders (a bigger batch is refused whole)
RefusedKey = Annotated[
    str, msgspec.Meta(pattern=r"^(trades|book):" + STOCK_CODE_PATTERN.lstrip("^"))
]  # "trades:005930"
INT64_MAX = 2**63 - 1  # the store's (SQLite's) integers: a bigger one crashed the handler that stored it
PosInt = Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Price = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]  # KRW; 0 for market orders
Qty = Annotated[int, msgspec.Meta(gt=0, le=100_000_000)]
# An order's trace context and reason are bounded, so that any order fits a SubmitOrders far below the gateway's
# max_frame_bytes (an unbounded one made a batch too large to take, and its orders were never answered)
CONTEXT_MAX_KEYS = 64
CONTEXT_MAX_CHARS = 256  # a key or a string value
REASON_MAX_CHARS = 500
ERROR_TEXT_MAX_CHARS = 200  # a strategy error as an agent's heartbeat tells it
ContextKey = Annotated[str, msgspec.Meta(max_length=CONTEXT_MAX_CHARS)]
ContextValue = Union[
    Annotated[str, msgspec.Meta(max_length=CONTEXT_MAX_CHARS)], int, float, bool, None
]  # trace context only, never money
Context = Annotated[dict[ContextKey, ContextValue], msgspec.Meta(max_length=CONTEXT_MAX_KEYS)]


class Header(msgspec.Struct, frozen=True, array_like=True, gc=False):  # scalars: no cycles to collect
    mid: int  # message id: counter within the sender's process session
    sender: str  # agent id, tool name, or "gateway"
    sid: str  # process session id (new uuid per process start)
    ts: int  # wall clock, ns since epoch
    v: int = SCHEMA_VERSION
    re: int = 0  # the mid this message answers (0: not a reply)


class HeaderFactory:
    """Makes headers for one process session."""

    def __init__(self, sender: str, sid: str | None = None) -> None:
        self.sender = sender
        self.sid = sid or uuid.uuid4().hex
        self._ids = itertools.count(1)

    def __call__(self, re: int = 0) -> Header:
        return Header(next(self._ids), self.sender, self.sid, now_ns(), SCHEMA_VERSION, re)


class _Msg(msgspec.Struct, frozen=True, tag_field="t", kw_only=True):
    h: Header


# ---- shared views ------------------------------------------------------------------------------


class NewOrder(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: ClientOrderId
    code: StockCode
    side: Side
    qty: Qty
    price: Price = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.DAY
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX_CHARS)] = ""  # why (kept in the order's trace)
    context: Context = {}  # signal / indicator values at decision time
    decision_price: Price = 0  # the price the strategy saw when deciding (slippage baseline; 0: none)
    # a buy only: the protective order (stop / take-profit / trailing stop) the gateway arms with its fills
    protect: ProtectionSpec | None = None


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    agent: str
    code: str
    side: Side
    qty: int
    price: int
    order_type: OrderType
    tif: TimeInForce
    state: OrderState
    filled_qty: int
    filled_value: int  # sum of fill qty*price, KRW
    broker_order_id: str = ""
    reason_code: str = ""  # last denial/rejection code
    reason: str = ""
    created_ns: int = 0
    updated_ns: int = 0


class FillView(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    fill_id: str
    code: str
    side: Side
    qty: int
    price: int
    ts_ns: int


class PositionView(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    qty: int
    cost: int  # KRW paid for the shares held (average-cost basis, fees excluded)
    realized_pnl: int  # gross of fees: proceeds minus cost of the shares sold
    fees: int = 0  # commission and sell taxes paid on this code so far (net P&L = realized_pnl - fees)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    trading_state: TradingState  # what it may do now (its own state, reducing after its end of day)
    open_orders: list[OrderView]
    positions: list[PositionView]
    budget: int
    reserved_cash: int  # held by open buy orders
    spent_cash: int  # net cash used by fills (buys - sells, fees included)
    last_seq: int  # last event sequence number of this agent
    next_order_n: int  # next free n of <agent>-<today>-<n>
    day: str  # YYYYMMDD (KST) the snapshot's order numbering refers to
    orders_today: int
    clock_ns: int = 0  # the gateway's market clock when the snapshot was taken
    phase: str = ""  # the market's phase then (common.krx.Phase value)
    protections: list[Protection] = []  # active, and those that ended today (a fired stop, a cancelled one)
    session_state: str = ""  # the broker session as orders see it (SessionState value; "": not said)
    gateway_state: str = ""  # the gateway-wide trading state (TradingState value; "": not said)
    # the codes the gateway's universe gave this agent (card universe_top) beyond its card's, as it last gave
    # them (at a registration: before this session's own UniverseUpdate): a restarted agent catches up their
    # missed daily bars too. [] from an older gateway, or when it gave none since it started
    universe_codes: list[str] = []
    # sessions of the calendar table the exchange closed (the broker's holiday calendar: server/session_days.py),
    # YYYYMMDD: the agent closes them in its own calendar, which decides its daily catch-up and next sessions
    closed_days: list[str] = []
    # its own state (a pause, the operator's halt or reduce), kept across its restarts: a new process is told why it
    # is held (ACTIVE: none; trading_state may still be reducing after its end of day)
    own_state: TradingState = TradingState.ACTIVE


# ---- agent / tool → gateway -----------------------------------------------------------------


class Register(_Msg, tag="register", frozen=True):
    card: AgentCard
    pid: int
    host: str
    last_seq: NonNegInt = 0  # events after this are sent back with the reply


class FeedHealth(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's health as it sees it (its market data, and whether it paused itself): sent in its
    heartbeats, shown in its AgentStatus."""

    gaps: NonNegInt = 0  # market-data sequence gaps this agent detected
    heals: NonNegInt = 0  # ... and healed with a fresh market snapshot
    conflated: NonNegInt = 0  # trade/book messages skipped for a newer one (card subscriptions.conflate, `behind`)
    bad: NonNegInt = 0  # PUB messages that did not decode (wrong key, another wire version, corrupt)
    # registrations refused (every slot in use) and still asked for, and codes polled over REST
    # meanwhile; the first MAX_LISTED of each (the counts are exact)
    refused: Annotated[list[RefusedKey], msgspec.Meta(max_length=MAX_LISTED)] = []
    refused_n: NonNegInt = 0
    polled: Annotated[list[StockCode], msgspec.Meta(max_length=MAX_LISTED)] = []
    polled_n: NonNegInt = 0
    last_daily: str = ""  # start (YYYY-MM-DD) of the newest daily bar the strategy was given and returned from
    # why the agent paused itself after a strategy error (card on_error = "pause"); "": not paused.
    # Here, not in Heartbeat itself, because the operator's AgentStatus shows the latest FeedHealth.
    paused: str = ""
    # which of the agent's self-pauses that is (1, 2, ...): the gateway acts on each new one (0: an older agent)
    pause_n: NonNegInt = 0
    # its strategy is set up: on_start returned and the missed daily bars were handed over (False while it
    # warms up, and after a failed start): what a harness or an operator waits for before moving on
    started: bool = False
    # the newest closed day (YYYY-MM-DD) whose daily bars the strategy was all given and returned from: the
    # gateway's DAY_CLOSED, published after that day's bars, was reached with none waiting (last_daily moves with
    # each code's bar: one of several codes decided on)
    decided: str = ""
    # its strategy is slower than its prints now: each drain's newest trade and book per code are delivered
    # (agent/runtime.py _pace; counted in `conflated`)
    behind: bool = False
    # orders its agent did not send: the gateway kept denying orders of those terms (agent/denials.py)
    held_back: NonNegInt = 0
    # daily decisions its catch-up skipped (down at a close, back after the next session opened): the latest
    # ("CODE YYYY-MM-DD, ..."), numbered per agent process; the gateway tells a person of each new one
    skipped: Annotated[str, msgspec.Meta(max_length=ERROR_TEXT_MAX_CHARS)] = ""
    skipped_n: NonNegInt = 0


class Heartbeat(_Msg, tag="heartbeat", frozen=True):
    max_ack_gap_ms: NonNegInt = 0  # the worst gap between heartbeat replies this agent has seen
    errors: NonNegInt = 0  # strategy errors so far
    feed: FeedHealth = msgspec.field(default_factory=FeedHealth)
    # the latest of them ("ValueError in on_trade: ..."): the operator's status shows it, not only a count
    last_error: Annotated[str, msgspec.Meta(max_length=ERROR_TEXT_MAX_CHARS)] = ""
    last_error_ago_ms: NonNegInt = 0  # how long before this heartbeat it happened (a gateway restarted meanwhile)


class Unregister(_Msg, tag="unregister", frozen=True):
    reason: str = ""
    # the code the agent process exits with (agent/runtime.py EXIT_*): 0 a clean stop; else a failure (its on_start
    # raised, a strategy error stopped it, its card was refused), which the gateway shows and, repeated, tells
    exit_code: int = 0


class SubmitOrders(_Msg, tag="submit", frozen=True):
    """A batch travels as one message; the gateway still sends the orders to the broker one by one."""

    orders: Annotated[list[NewOrder], msgspec.Meta(min_length=1, max_length=SUBMIT_MAX_ORDERS)]


class CancelOrder(_Msg, tag="cancel", frozen=True):
    client_order_id: ClientOrderId


class ModifyOrder(_Msg, tag="modify", frozen=True):
    client_order_id: ClientOrderId
    price: Price
    qty: NonNegInt = 0  # 0: keep the remaining quantity


class CancelAll(_Msg, tag="cancel_all", frozen=True):
    code: str = ""  # "" = every code


class Protect(_Msg, tag="protect", frozen=True):
    """Protect `qty` shares of a position the agent holds (0: all of it when a level is met) with a
    stop / take-profit / trailing stop the gateway holds and fires (common/protection.py). `id` comes
    from the agent's order numbers (<agent>-<yyyymmdd>-<n>); sending it again is harmless.
    Ack, or Error(BAD_PROTECTION / WRONG_DAY / DUPLICATE_ORDER / DENIED_UNKNOWN_CODE)."""

    id: ClientOrderId
    code: StockCode
    spec: ProtectionSpec
    qty: NonNegInt = 0


class CancelProtection(_Msg, tag="cancel_protection", frozen=True):
    """Cancel one of the agent's protective orders (an exit already working is cancelled too)."""

    id: ClientOrderId


class GetSnapshot(_Msg, tag="get_snapshot", frozen=True):
    pass


class GetEvents(_Msg, tag="get_events", frozen=True):
    after_seq: NonNegInt
    limit: Annotated[int, msgspec.Meta(gt=0, le=10_000)] = 1000


class Ping(_Msg, tag="ping", frozen=True):
    payload: bytes = b""


class StatusQuery(_Msg, tag="status", frozen=True):
    pass


class Control(_Msg, tag="control", frozen=True):
    """Operator actions (console, CLI, web): common.enums.ControlAction. pause/resume/reduce and
    cancel_all name an agent, or set `all` for the whole gateway (no agent and no `all`: refused
    with AMBIGUOUS_TARGET); halt is the gateway's kill switch; flatten and reload name an agent.
    An agent the gateway never knew: UNKNOWN_AGENT. Each action is journaled (server/operator.py)."""

    action: str  # a ControlAction value (a str, so an unknown one gets a typed Error, not a decode failure)
    agent: str = ""
    all: bool = False  # explicitly the whole gateway
    card: AgentCard | None = None  # reload: the changed card, checked by the tool before it is sent
    value: str = ""  # risk_scale: the multiplier; risk_explain: the order; cancel_protection: its id
    # who asked: the operator's OS user@host (the web page adds the browser's address); journaled with the tool's
    # name (two consoles on one desk were one "ktrader-top")
    by: Annotated[str, msgspec.Meta(max_length=120)] = ""


RELOAD_PREVIEW = "preview"  # Control.value of a reload that only asks what would change (nothing applied)
# Control.value of a reload confirmed on a preview: this prefix and the preview's text. The gateway applies it only
# if the fields it changes, old → new, are still the ones shown: the card in force changed since (a second operator's
# reload) is refused, not undone unseen. (What the preview said of the agent's orders and holdings may have moved
# with its trading: not compared)
RELOAD_EXPECT = "expect:"


def reload_expect(preview: str) -> str:
    """The Control.value of a reload confirmed on the gateway's `preview` reply."""
    return RELOAD_EXPECT + preview


class Subscribe(_Msg, tag="subscribe", frozen=True):
    """Ask again for a market-data registration the gateway refused (a `Notice` with
    error=SUBSCRIPTION_LIMIT). `code` must be one of the agent's codes (card or universe) and `kind`
    one its card subscribes to. Ack ("subscribed" / "already subscribed") or Error(SUBSCRIPTION_LIMIT)
    while every slot is still in use. Asking twice is harmless."""

    kind: Literal["trades", "book"]
    code: StockCode


class GetOrders(_Msg, tag="get_orders", frozen=True):
    """The blotter (console, CLI): orders updated and fills made since `since_ns` (0: the gateway's
    market day), every open order included, newest first (server/console_views.py read_blotter)."""

    agent: str = ""  # "" = every agent
    since_ns: NonNegInt = 0
    limit: Annotated[int, msgspec.Meta(gt=0, le=5_000)] = 500


# ---- gateway → agent / tool -----------------------------------------------------------------


class Ack(_Msg, tag="ack", frozen=True):
    message: str = ""
    clock_ns: int = 0  # heartbeat replies: the gateway's market clock (an agent's ctx.now() follows it)
    phase: str = ""  # ... and the market's phase then (common.krx.Phase value; "" when not a heartbeat reply)
    # heartbeat replies: the agent's self-pause (FeedHealth.pause_n) the operator resumed since the gateway took it
    pause_lifted: int = 0


class Error(_Msg, tag="error", frozen=True):
    code: ErrorCode
    message: str = ""


class Registered(_Msg, tag="registered", frozen=True):
    snapshot: Snapshot
    events: list["AgentEvent"]
    heartbeat_s: float
    lease_s: float
    pub_endpoint: str


class OrderResult(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    accepted: bool  # taken by the gateway (sent or about to be sent to the broker)
    code: ErrorCode | None = None  # why not
    message: str = ""
    duplicate: bool = False  # this id was already known: the earlier outcome is reported
    # a duplicate: the order's state at the gateway now (None from an older gateway: see `message`)
    state: OrderState | None = None


class OrdersReply(_Msg, tag="orders_reply", frozen=True):
    results: list[OrderResult]


class SnapshotReply(_Msg, tag="snapshot", frozen=True):
    snapshot: Snapshot


class EventBatch(_Msg, tag="events", frozen=True):
    events: list["AgentEvent"]
    last_seq: int


class Pong(_Msg, tag="pong", frozen=True):
    payload: bytes = b""


class OrdersList(_Msg, tag="orders_list", frozen=True):
    orders: list[OrderView]  # every open order, then the newest others up to the limit
    fills: list[FillView]  # newest first (`limit` of them: there may be more)
    truncated: int = 0  # orders (not open) left out for the limit; 0 from an older gateway too


class AgentPerformance(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's live performance from its daily equity snapshots (server/performance.py).
    P&L is net of fees and includes unrealised P&L at the last marks; money integer KRW, ratios float."""

    days: int = 0  # days with a snapshot (today included)
    net_pnl: int = 0  # cumulative: realised - fees + unrealised
    today_pnl: int = 0  # net P&L change since the previous day's snapshot
    max_drawdown: int = 0  # KRW, largest fall of the cumulative P&L from a peak
    drawdown: int = 0  # KRW below the peak now
    sharpe: float = 0.0  # of daily P&L, annualised (sqrt 252); 0.0 with fewer than 2 days
    wins: int = 0  # closing trades (sells) with positive realised P&L
    losses: int = 0
    win_rate: float = 0.0  # wins / (wins + losses); 0.0 without closing trades
    traded_value: int = 0  # KRW bought + sold over the days
    turnover: float = 0.0  # traded value / budget (0.0 without a budget)
    curve: list[tuple[str, int]] = []  # (YYYYMMDD, cumulative net P&L), oldest first, the last 250 days


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    strategy: str
    state: AgentState
    mode: AgentMode
    trading_state: TradingState
    pid: int
    host: str
    session: str
    heartbeat_age_s: float
    max_ack_gap_ms: int
    registrations: int  # how many times this id registered since the gateway started
    codes: list[str]
    open_orders: int
    orders_today: int
    errors: int
    fills: int = 0
    position_codes: int = 0  # codes with shares held
    position_cost: int = 0  # KRW at cost
    realized_pnl: int = 0
    fees: int = 0  # commission and taxes booked to this agent
    unrealized_pnl: int = 0  # at the last trade prices
    positions: list["PositionMark"] = []
    rate_quota_per_s: float = 0.0  # the card's share of the REST budget
    last_error: str = ""  # the latest denial/rejection or error notice
    feed: FeedHealth = msgspec.field(default_factory=FeedHealth)  # from the current session's heartbeats
    position_value: int = 0  # shares held at the last marks (at cost where no mark is known)
    last_fill: FillView | None = None  # the agent's newest fill today
    budget: int = 0
    performance: AgentPerformance = msgspec.field(default_factory=AgentPerformance)
    known_from: str = (
        "registry"  # registry | books (not registered since the gateway started: listed for its positions/orders)
    )
    paused: bool = False  # its HALTED is a pause: new orders refused, its open orders work on


class PositionMark(msgspec.Struct, frozen=True, kw_only=True):
    """A position valued at the last trade price the gateway saw (`mark` 0: none seen yet)."""

    code: str
    qty: int
    cost: int  # KRW at cost (average-cost basis)
    avg_price: int  # cost / qty, rounded KRW (0 when flat)
    mark: int = 0
    unrealized_pnl: int = 0  # mark * qty - cost (0 without a mark)
    realized_pnl: int = 0
    fees: int = 0


class BrokerHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What the broker session keeps about itself; defaults mean "this broker does not say"."""

    session_state: SessionState = SessionState.DISCONNECTED
    token_expires_ns: int = 0  # wall clock; 0: unknown / no token
    rest_limit_per_s: float = 0.0  # the REST budget's rate
    rest_calls: int = 0  # REST calls granted since start (the console derives calls/s)
    rest_calls_by: dict[str, int] = {}  # the same per caller (agent id; "" for the gateway's own)
    rest_waiting: int = 0  # calls queued for the budget now
    rest_penalties: int = 0  # EGW00201 "too many requests" pauses
    ws_last_message_age_s: float = -1.0  # -1: unknown
    ws_sessions: int = 0  # websocket sessions opened (reconnects = sessions - 1)
    ws_dropped: int = 0  # real-time frames and records dropped because they did not read (never a session kill)
    others_notices: int = 0  # order notices of another account under the same HTS ID, not ours (dropped)
    registrations: dict[str, int] = {}  # "TR:key" -> reference count (the notice slot included)
    max_registrations: int = 41
    db_bytes: int = 0  # the gateway's store on disk (db + WAL)
    disk_free_bytes: int = -1  # free space on the run folder's disk (-1: unknown)
    # why the session is not READY (the notice feed orders wait for), and what to check
    session_problem: SessionProblem = SessionProblem.NONE
    session_detail: str = ""


class RiskStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The account's risk figures (server/risk.py, server/equity.py); money integer KRW."""

    multiplier: float = 1.0  # the operator's scale of every agent's size limits and budget
    equity: int = -1  # cash + positions at the last prices (-1: the account was not read yet)
    cash: int = -1
    positions_value: int = 0  # every share the account holds at the last prices
    gross_exposure_bp: int = 0  # positions + open buys, basis points of equity
    positions: int = 0  # codes held or being bought
    peak_day: int = 0
    peak_all_time: int = 0
    drawdown_day_bp: int = 0  # below the day's peak, basis points of it
    drawdown_all_time_bp: int = 0
    sectors: dict[str, int] = {}  # sector -> positions in it at the last prices ("" unknown)
    account_reads: int = 0  # broker account reads that answered (failures in counters)
    # codes valued at the start's reference price (a restart) until a print or the balance: no drawdown or day loss
    # is judged on the account's equity meanwhile (server/risk.py unjudged)
    unjudged: list[str] = []


class StatusReply(_Msg, tag="status_reply", frozen=True):
    gateway_pid: int
    gateway_session: str
    started_ns: int
    session_state: SessionState
    broker: str
    trading_state: TradingState
    agents: list[AgentStatus]
    orders_today: int
    open_orders: int
    fills_today: int
    counters: dict[str, int]  # protocol counters: bad frames, drops, ...
    subscriptions: dict[str, list[str]] = {}  # "trades:005930" -> agents sharing that registration
    synced: bool = False  # reconciled with the broker since start (orders are denied before)
    # ... against the day's whole order list, not only its open orders (a takeover's first pass)
    reconciled_whole: bool = False
    last_reconcile_age_s: float = -1.0
    alerts: list[str] = []  # the most recent alerts, newest last
    health: BrokerHealth = msgspec.field(default_factory=BrokerHealth)
    account: list[PositionMark] = []  # every agent's positions summed per code
    marks: dict[str, int] = {}  # code -> last trade price
    names: dict[str, str] = {}  # code -> name (stock master) for the agents' codes
    reconcile_alerts: int = 0  # differences the last reconciliation found
    market_phase: str = ""  # common.krx.Phase of the market clock (pre_open, continuous, closed, ...)
    market_time: str = ""  # the market clock, ISO 8601 in KST
    alerts_today: int = 0  # alerts raised since the start of the market day
    notify: dict[str, int] = {}  # notifier counters: sent, failed, suppressed, dropped, queued
    risk: RiskStatus = msgspec.field(default_factory=RiskStatus)
    protections: list[Protection] = []  # active, and those that ended today
    stock_master: str = ""  # where the codes' listing comes from ("" none: codes not checked)
    # the operator's newest actions from the journal (who, when, what, its outcome), newest last
    operator_actions: list[str] = []
    paused: bool = False  # the gateway's HALTED is a pause (not the kill switch's): open orders work on
    # the shadow agents' (virtual) orders today and fills today: not in orders_today / fills_today (the account's)
    shadow_orders_today: int = 0
    shadow_fills_today: int = 0


# ---- per-agent events (ROUTER → DEALER, sequenced, replayable) -------------------------------


class OrderUpdate(msgspec.Struct, frozen=True, tag="order", kw_only=True):
    order: OrderView


class FillUpdate(msgspec.Struct, frozen=True, tag="fill", kw_only=True):
    fill: FillView
    position: PositionView


class PositionUpdate(msgspec.Struct, frozen=True, tag="position", kw_only=True):
    """The agent's position changed without a fill of its own: reconciliation took back a fill the
    broker does not have, or brought an order's filled value to the broker's (`reason` says which and why)."""

    position: PositionView
    client_order_id: str = ""
    reason: str = ""


class Notice(msgspec.Struct, frozen=True, tag="notice", kw_only=True):
    level: str  # info | warning | error
    text: str
    # machine-readable subject, when the notice is about one market-data registration (e.g. a
    # refused one: error=SUBSCRIPTION_LIMIT, kind="trades", code="005930"); defaults: none
    error: ErrorCode | None = None
    kind: str = ""  # trades | book
    code: str = ""


class UniverseUpdate(msgspec.Struct, frozen=True, tag="universe", kw_only=True):
    """The gateway's current universe for an agent with `universe_top` (ranked, best first), then the codes
    that left the ranking while the agent still holds shares or open orders in them (`held`): their market
    data goes on until it is flat in them."""

    codes: list[str]
    source: str = ""  # volume_rank | fallback
    held: list[str] = []  # the held-over codes, last in `codes`


class CardUpdate(msgspec.Struct, frozen=True, tag="card", kw_only=True):
    """The operator reloaded this agent's card (`ktrader control reload`): new risk limits, budget,
    params... The agent applies the params (its strategy's `Params` validate them first); the gateway
    already applies the limits."""

    card: AgentCard
    changed: list[str] = []  # the card fields that changed


class ProtectionUpdate(msgspec.Struct, frozen=True, tag="protection", kw_only=True):
    """A protective order of this agent changed (armed, met, fired, done, cancelled, failed)."""

    protection: Protection


EventBody = Union[OrderUpdate, FillUpdate, Notice, UniverseUpdate, CardUpdate, ProtectionUpdate, PositionUpdate]


class AgentEvent(_Msg, tag="event", frozen=True):
    seq: int
    body: EventBody


# ---- PUB → SUB ---------------------------------------------------------------------------------
# Market-data bodies are array-like (positional, tag first): half the decode time and ~40 % fewer
# bytes than field-name maps, paid by every agent for every tick. Fields are only ever appended.
# gc=False where a body holds scalars only (no reference cycles possible).


class TradeTick(msgspec.Struct, frozen=True, tag="trade", kw_only=True, array_like=True, gc=False):
    code: str
    time: str
    price: int
    qty: int
    side: int
    cum_volume: int
    change: int = 0  # vs the previous close (0 when the broker does not say)
    ask1: int = 0  # best ask / bid at the print (0: unknown)
    bid1: int = 0
    polled: ClassVar[bool] = False  # True on PolledTrade (not a field: nothing more on the wire)


class PolledTrade(TradeTick, tag="polled_trade", frozen=True):
    """A TradeTick the agent runtime synthesised from a REST quote (agent/quotepoll.py), for a code
    whose trade registration the gateway refused, when the card sets `subscriptions.poll_quotes_s`.
    Never sent on the wire. `price` is the quote's last price, `cum_volume` its volume today, `qty`
    the volume since the previous poll (0 on the first), `time` the agent's clock (KST HHMMSS),
    `side` 0 (unknown), ask1/bid1 0."""

    polled: ClassVar[bool] = True


class Bar(msgspec.Struct, frozen=True, tag="bar", kw_only=True, array_like=True, gc=False):
    """An OHLCV candle. `start` is the bar's opening time in KST as "YYYY-MM-DDTHH:MM" ("YYYY-MM-DD"
    for daily bars); prices are integer KRW; `value` is the traded value in KRW (0 when unknown)."""

    code: str
    interval: str  # 1m | 5m | 15m | 60m | 1d
    start: str
    open: int
    high: int
    low: int
    close: int
    volume: int
    value: int = 0


class SystemEvent(msgspec.Struct, frozen=True, tag="system", kw_only=True, array_like=True, gc=False):
    kind: SystemEventKind
    agent: str = ""
    text: str = ""


# SystemEventKind.HISTORY_CHANGED's text: "<code>", the code's whole history changed scale (a split, a rights or
# bonus issue); "<code> intraday <interval>", bars of that interval were lost (prints not heard) and history has
# them again
INTRADAY_SCOPE = "intraday"


class BookTick(msgspec.Struct, frozen=True, tag="book", kw_only=True, array_like=True):
    """A 10-level order book (H0STASP0): (price, qty) pairs, best first; prices integer KRW."""

    code: str
    time: str  # HHMMSS KST
    asks: list[tuple[int, int]]
    bids: list[tuple[int, int]]
    total_ask_qty: int = 0
    total_bid_qty: int = 0


PubBody = Union[TradeTick, Bar, SystemEvent, BookTick]


class Published(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False, tag="pub"):
    """One PUB message. Compact, with no per-process Header: every subscriber decodes and verifies
    every one, and under 128 bytes a trade's signature is one BLAKE2b block. Scalar-only bodies:
    never part of a cycle (gc=False)."""

    v: int = SCHEMA_VERSION  # first, so another version is recognised before the rest is read
    topic: str
    seq: int  # per-topic sequence number, from 1
    ts: int = msgspec.field(default_factory=now_ns)  # gateway wall clock (ns) when published
    body: PubBody


# ---- market data on request (ROUTER ⇄ DEALER) ------------------------------------------------


class GetMarket(_Msg, tag="get_market", frozen=True):
    """The current market state of `codes`, asked after subscribing and after a feed gap."""

    codes: Annotated[list[str], msgspec.Meta(max_length=100)]


class MarketState(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    trade: TradeTick | None = None  # the last print
    book: BookTick | None = None  # the last book
    bars: list[Bar] = []  # bars in progress (partial), one per interval
    closed: list[Bar] = []  # the last closed bar of each interval
    seqs: dict[str, int] = {}  # topic -> last sequence number published on it


class MarketSnapshot(_Msg, tag="market", frozen=True):
    markets: list[MarketState]


# how long an agent waits for a GetBars reply; the gateway gives its back-fill a little less and then stops it (a
# back-fill left running after its agent gave up spent the agent's REST quota on an answer nobody read, and each
# next request queued behind it: none of 23 warm-ups at 0.2 calls/s got through)
HISTORY_WAIT_S = 15.0
HISTORY_MAX_BARS = 5000  # bars one history request returns at most


_INTERVALS = tuple(i.value for i in BarInterval)


def history_count(code: str, interval: str, n: object) -> int:
    """ctx.history's count as an int (a numpy integer is one), or ValueError for the strategy's own mistakes, live
    and in a backtest alike: an unknown interval ('1D', '1w'), a count that is no whole number (window / 2) or over
    what one call returns. Sent to the gateway they came back BAD_MESSAGE and were skipped as 'history unavailable'
    for ever, never counted as the strategy's error."""
    if interval not in _INTERVALS:
        raise ValueError(f"history {code}: unknown interval {interval!r}; known: {', '.join(_INTERVALS)}")
    try:
        count = operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"history: n={n!r} is not a whole number of bars") from None
    if count > HISTORY_MAX_BARS:
        raise ValueError(f"history {code} {interval}: n={count} is over the {HISTORY_MAX_BARS} bars one call returns")
    return count


class GetBars(_Msg, tag="get_bars", frozen=True):
    """Completed bars for warm-up: the newest `n` before the bar in progress, oldest first."""

    code: str
    interval: str  # 1m | 5m | 15m | 60m | 1d
    n: Annotated[int, msgspec.Meta(gt=0, le=HISTORY_MAX_BARS)] = 100


class BarsReply(_Msg, tag="bars", frozen=True):
    code: str
    interval: str
    bars: list[Bar]
    backfilled: int = 0  # how many came from the broker's chart API for this request


# ---- agent services: persistent key-value state, market queries, book summary ----------------
# Served by server/agent_services.py; the agent side is agent/services.py.

STATE_MAX_KEY_CHARS = 128
STATE_MAX_VALUE_BYTES = 64 * 1024
STATE_MAX_KEYS = 256
STATE_MAX_TOTAL_BYTES = 512 * 1024  # a whole state fits in one reply frame (1 MiB by default)
# Keys starting with this are the agent runtime's own (e.g. its daily catch-up marker), never the
# strategy's: they do not count against the limits above (a strategy at its limit must not make the
# runtime's bookkeeping fail) but against their own small allowance, checked apart on both sides.
STATE_RESERVED_PREFIX = "__ktrader__."
STATE_RESERVED_MAX_KEYS = 8
STATE_RESERVED_MAX_BYTES = 32 * 1024  # the daily marker of 1,000 codes is ~18 KB (msgpack code -> date)


class PutState(_Msg, tag="put_state", frozen=True):
    """Write/delete keys of the sender's persistent state: all or nothing, one durable commit.
    Values are opaque bytes to the gateway (the agent runtime stores msgpack of the value).
    Over a limit → Error(STATE_LIMIT) and nothing is written."""

    items: dict[str, bytes] = {}
    delete: list[str] = []
    replace: bool = False  # `items` is the whole state: every other key is deleted


class GetState(_Msg, tag="get_state", frozen=True):
    pass


class StateReply(_Msg, tag="state", frozen=True):
    items: dict[str, bytes]


class Query(_Msg, tag="query", frozen=True):
    """A market query run by the gateway on the agent's REST quota (card.rate_quota_per_s).
    price → PriceReply (inquire-price); investor → InvestorReply (inquire-investor)."""

    kind: Literal["price", "investor"]
    code: StockCode


class PriceQuote(msgspec.Struct, frozen=True, kw_only=True):
    """inquire-price, typed. Money in integer KRW; ratios (not money) as float, 0.0 when KIS gives none."""

    code: str
    last: int
    change: int  # vs the base price
    change_pct: float
    open: int
    high: int
    low: int
    base: int  # yesterday's close, the centre of today's price band
    upper_limit: int
    lower_limit: int
    volume: int  # shares traded today
    value: int  # KRW traded today
    per: float
    pbr: float
    eps: int  # KRW per share
    bps: int  # KRW per share
    market_cap: int  # KRW (KIS reports 억원; converted)
    listed_shares: int
    high_250d: int = 0
    low_250d: int = 0
    tick: int = 0  # the tick size at `last`
    halted: bool = False  # trading in the code is suspended (거래정지: temp_stop_yn Y or iscd_stat_cls_code 58)


class InvestorDay(msgspec.Struct, frozen=True, kw_only=True):
    """One completed day of inquire-investor: net buying (buy - sell) by investor type."""

    day: str  # YYYYMMDD
    close: int
    foreign_qty: int
    institution_qty: int
    individual_qty: int
    foreign_value: int  # KRW (KIS reports millions of KRW; converted)
    institution_value: int
    individual_value: int


class PriceReply(_Msg, tag="price_reply", frozen=True):
    quote: PriceQuote


class InvestorReply(_Msg, tag="investor_reply", frozen=True):
    code: str
    days: list[InvestorDay]  # newest first; today's row is left out until the market has closed


class GetSummary(_Msg, tag="get_summary", frozen=True):
    """An agent's order book across days with totals. Agents get their own (`agent` ignored);
    tools (console, `ktrader status`) name the agent."""

    agent: str = ""
    limit: Annotated[int, msgspec.Meta(ge=0, le=5_000)] = 200  # most recent orders listed; totals cover all


class CodeSummary(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    orders: int
    fills: int
    buy_qty: int
    buy_value: int  # KRW
    sell_qty: int
    sell_value: int
    avg_buy_price: int  # buy_value // buy_qty (0 without buys)
    avg_sell_price: int
    position_qty: int
    position_cost: int
    mark: int  # last trade price the gateway saw (0: none)
    realized_pnl: int  # gross of fees (the books' view)
    unrealized_pnl: int  # mark * qty - cost (0 without a mark)
    fees: int


class AgentSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Every order of an agent across days (from the gateway's store) with totals; P&L from its books."""

    agent: str
    first_day: str  # YYYYMMDD of the first order ("" without orders)
    last_day: str
    days: int  # days with orders
    orders: int
    open_orders: int
    filled_orders: int  # orders with at least one fill
    fills: int
    buy_qty: int
    buy_value: int
    sell_qty: int
    sell_value: int
    avg_buy_price: int
    avg_sell_price: int
    realized_pnl: int
    unrealized_pnl: int
    fees: int
    net_pnl: int  # realized + unrealized - fees
    unmarked: list[str] = []  # codes held without a mark (their unrealised P&L counts as 0)
    codes: list[CodeSummary] = []
    recent: list[OrderView] = []  # newest first, up to the request's limit
    truncated: bool = False  # more orders exist than `recent` lists


class SummaryReply(_Msg, tag="summary", frozen=True):
    summary: AgentSummary


class GetTrace(_Msg, tag="get_trace", frozen=True):
    """An order's story (`ktrader trace`), or with `slippage` the per-agent slippage summary."""

    client_order_id: str = ""
    slippage: bool = False


class TraceStep(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    ts_ns: int
    step: str  # "state: <event>" or a trace kind (intent, risk, broker.request, notice ...)
    details: str


class SlippageRow(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    orders: int
    mean_bps: float  # a statistic in basis points, not money
    value_weighted_bps: float
    worst_bps: float


class TraceReply(_Msg, tag="trace", frozen=True):
    order: OrderView | None = None
    protection: Protection | None = None  # the protective order with this id (a buy's, or one on a position)
    broker_chain: list[str] = []
    steps: list[TraceStep] = []
    decision_price: int = 0
    slippage: list[SlippageRow] = []


Request = Union[
    Register,
    Heartbeat,
    Unregister,
    SubmitOrders,
    CancelOrder,
    ModifyOrder,
    CancelAll,
    GetSnapshot,
    GetEvents,
    Ping,
    StatusQuery,
    Control,
    GetOrders,
    GetMarket,
    GetBars,
    PutState,
    GetState,
    Query,
    GetSummary,
    Subscribe,
    GetTrace,
    Protect,
    CancelProtection,
]
Reply = Union[
    Ack,
    Error,
    Registered,
    OrdersReply,
    SnapshotReply,
    EventBatch,
    Pong,
    StatusReply,
    AgentEvent,
    OrdersList,
    MarketSnapshot,
    BarsReply,
    StateReply,
    PriceReply,
    InvestorReply,
    SummaryReply,
    TraceReply,
]

# Each request's reply (besides Error, which any request may get): clients check what they receive.
REPLY_TO: dict[type, type] = {
    Register: Registered,
    Heartbeat: Ack,
    Unregister: Ack,
    SubmitOrders: OrdersReply,
    CancelOrder: Ack,
    ModifyOrder: Ack,
    CancelAll: Ack,
    GetSnapshot: SnapshotReply,
    GetEvents: EventBatch,
    Ping: Pong,
    StatusQuery: StatusReply,
    Control: Ack,
    GetOrders: OrdersList,
    GetMarket: MarketSnapshot,
    GetBars: BarsReply,
    PutState: Ack,
    GetState: StateReply,
    GetSummary: SummaryReply,
    Subscribe: Ack,
    GetTrace: TraceReply,
    Protect: Ack,
    CancelProtection: Ack,
}
Message = Union[Request, Reply]  # ROUTER ⇄ DEALER; PUB carries only Published

# Topics end in a delimiter so "md.H0STCNT0.00593" never prefix-matches "md.H0STCNT0.005930.".
SYSTEM_TOPIC = "sys."


def trade_topic(code: str) -> str:
    return f"md.H0STCNT0.{code}."


def bar_topic(code: str, interval: str) -> str:
    return f"md.bar.{interval}.{code}."


def book_topic(code: str) -> str:
    return f"md.H0STASP0.{code}."
