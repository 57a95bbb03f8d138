"""The wire schema: every message between gateway, agents and tools, in one module.

Encoding: msgspec msgpack of tagged, frozen Structs (tag field "t"). Every message starts with a
Header. Replies carry the `mid` of the request they answer in `header.re`. Never pickle.

Channels (DESIGN.md §3):
- ROUTER ⇄ DEALER: requests, replies, and each agent's own order events (`AgentEvent`, with a
  per-agent sequence number, replayable from the gateway's event log).
- PUB → SUB: market data and public system events (`Published`, per-topic sequence numbers).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Annotated, Union

import msgspec

from common.clock import now_ns
from common.config import AgentCard
from common.enums import AgentMode, AgentState, OrderType, SessionState, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import ClientOrderId, StockCode
from common.orders import OrderState

SCHEMA_VERSION = 1

PosInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Price = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]  # KRW; 0 for market orders
Qty = Annotated[int, msgspec.Meta(gt=0, le=100_000_000)]
ContextValue = Union[str, int, float, bool, None]  # trace context only, never money


class Header(msgspec.Struct, frozen=True, array_like=True):
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
    reason: str = ""  # why the strategy wants this (kept in the order's trace)
    context: dict[str, ContextValue] = {}  # signal / indicator values at decision time
    decision_price: int = 0  # the price the strategy saw when deciding (slippage baseline)


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
    cost: int  # KRW paid for the shares held (average-cost basis)
    realized_pnl: int


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    trading_state: TradingState
    open_orders: list[OrderView]
    positions: list[PositionView]
    budget: int
    reserved_cash: int  # held by open buy orders
    spent_cash: int  # net cash used by fills (buys - sells, fees included)
    last_seq: int  # last event sequence number of this agent
    next_order_n: int  # next free n of <agent>-<today>-<n>
    day: str  # YYYYMMDD (KST) the snapshot's order numbering refers to
    orders_today: int


# ---- agent / tool → gateway -----------------------------------------------------------------


class Register(_Msg, tag="register"):
    card: AgentCard
    pid: int
    host: str
    last_seq: NonNegInt = 0  # events after this are sent back with the reply


class Heartbeat(_Msg, tag="heartbeat"):
    max_ack_gap_ms: int = 0  # the worst gap between heartbeat replies this agent has seen
    errors: int = 0  # strategy errors so far


class Unregister(_Msg, tag="unregister"):
    reason: str = ""


class SubmitOrders(_Msg, tag="submit"):
    """A batch travels as one message; the gateway still sends the orders to the broker one by one."""

    orders: Annotated[list[NewOrder], msgspec.Meta(min_length=1, max_length=100)]


class CancelOrder(_Msg, tag="cancel"):
    client_order_id: ClientOrderId


class ModifyOrder(_Msg, tag="modify"):
    client_order_id: ClientOrderId
    price: Price
    qty: NonNegInt = 0  # 0: keep the remaining quantity


class CancelAll(_Msg, tag="cancel_all"):
    code: str = ""  # "" = every code


class GetSnapshot(_Msg, tag="get_snapshot"):
    pass


class GetEvents(_Msg, tag="get_events"):
    after_seq: NonNegInt
    limit: Annotated[int, msgspec.Meta(gt=0, le=10_000)] = 1000


class Ping(_Msg, tag="ping"):
    payload: bytes = b""


class StatusQuery(_Msg, tag="status"):
    pass


class Control(_Msg, tag="control"):
    """Operator actions (console, CLI): pause/resume/halt an agent or the whole gateway."""

    action: str  # pause | resume | halt | reduce | cancel_all
    agent: str = ""  # "" = global


# ---- gateway → agent / tool -----------------------------------------------------------------


class Ack(_Msg, tag="ack"):
    message: str = ""


class Error(_Msg, tag="error"):
    code: ErrorCode
    message: str = ""


class Registered(_Msg, tag="registered"):
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


class OrdersReply(_Msg, tag="orders_reply"):
    results: list[OrderResult]


class SnapshotReply(_Msg, tag="snapshot"):
    snapshot: Snapshot


class EventBatch(_Msg, tag="events"):
    events: list["AgentEvent"]
    last_seq: int


class Pong(_Msg, tag="pong"):
    payload: bytes = b""


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


class StatusReply(_Msg, tag="status_reply"):
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
    last_reconcile_age_s: float = -1.0
    alerts: list[str] = []  # the most recent alerts, newest last


# ---- per-agent events (ROUTER → DEALER, sequenced, replayable) -------------------------------


class OrderUpdate(msgspec.Struct, frozen=True, tag="order", kw_only=True):
    order: OrderView


class FillUpdate(msgspec.Struct, frozen=True, tag="fill", kw_only=True):
    fill: FillView
    position: PositionView


class Notice(msgspec.Struct, frozen=True, tag="notice", kw_only=True):
    level: str  # info | warning | error
    text: str


EventBody = Union[OrderUpdate, FillUpdate, Notice]


class AgentEvent(_Msg, tag="event"):
    seq: int
    body: EventBody


# ---- PUB → SUB ---------------------------------------------------------------------------------


class TradeTick(msgspec.Struct, frozen=True, tag="trade", kw_only=True):
    code: str
    time: str
    price: int
    qty: int
    side: int
    cum_volume: int


class Bar(msgspec.Struct, frozen=True, tag="bar", kw_only=True):
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


class SystemEvent(msgspec.Struct, frozen=True, tag="system", kw_only=True):
    kind: str  # agent_online | agent_offline | trading_state | session_state | alert
    agent: str = ""
    text: str = ""


PubBody = Union[TradeTick, Bar, SystemEvent]


class Published(_Msg, tag="pub"):
    topic: str
    seq: int  # per-topic sequence number, from 1
    body: PubBody


Request = Union[
    Register, Heartbeat, Unregister, SubmitOrders, CancelOrder, ModifyOrder, CancelAll,
    GetSnapshot, GetEvents, Ping, StatusQuery, Control,
]
Reply = Union[Ack, Error, Registered, OrdersReply, SnapshotReply, EventBatch, Pong, StatusReply, AgentEvent]
Message = Union[Request, Reply, Published]

# Topics end in a delimiter so "md.H0STCNT0.00593" never prefix-matches "md.H0STCNT0.005930.".
SYSTEM_TOPIC = "sys."


def trade_topic(code: str) -> str:
    return f"md.H0STCNT0.{code}."


def bar_topic(code: str, interval: str) -> str:
    return f"md.bar.{interval}.{code}."

