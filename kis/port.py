"""BrokerPort: the one interface the gateway uses to reach a broker (KIS live/paper, the KIS twin).

The gateway depends on this protocol only. Everything here is broker-neutral and typed; the KIS
adapter maps it to KIS TR ids, field names and codes. Prices and money are integer KRW.

Error contract (raise, never return error values):
- `BrokerRejected`      — the broker said no (business rejection, e.g. APBK*, insufficient cash);
                          nothing was placed. Carries the broker's code and message.
- `BrokerUnknownOutcome`— a submit/modify/cancel whose outcome is not known (timeout, connection
                          dropped mid-response). The caller must NOT resend; it resolves the order from
                          `order_reports()` and the notice stream.
- `BrokerTemporary`     — the request surely did not reach the broker or failed before acting
                          (connect refused, 5xx before sending, rate limited); safe to retry later.
- `BrokerAuthError`     — credentials/token problems the adapter could not fix by itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

from common.enums import OrderType, SessionState, Side, TimeInForce

if TYPE_CHECKING:  # the chart replies are KIS's own rows (strings as KIS sends them)
    from kis import wire


class BrokerError(Exception):
    def __init__(self, message: str, *, code: str = "", http_status: int | None = None) -> None:
        super().__init__(f"{code} {message}".strip())
        self.code = code
        self.message = message
        self.http_status = http_status


class BrokerRejected(BrokerError):
    pass


class BrokerUnknownOutcome(BrokerError):
    pass


class BrokerTemporary(BrokerError):
    pass


class BrokerRateLimited(BrokerTemporary):
    pass


class BrokerAuthError(BrokerError):
    pass


# --- requests and acknowledgements -----------------------------------------------------------


class BrokerOrder(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str  # ours, for logs only: KIS has no client order id
    code: str
    side: Side
    qty: int
    price: int  # 0 for market-type orders
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.DAY


class BrokerModify(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    broker_order_id: str  # ODNO of the order being revised (the latest in its chain)
    org_no: str  # KRX_FWDG_ORD_ORGNO of that order
    code: str
    qty: int  # quantity to revise (ignored when all_qty)
    price: int
    all_qty: bool = True  # QTY_ALL_ORD_YN=Y: revise the whole remaining quantity
    order_type: OrderType = OrderType.LIMIT


class BrokerCancel(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    broker_order_id: str
    org_no: str
    code: str
    qty: int  # quantity to cancel (ignored when all_qty)
    all_qty: bool = True


class BrokerAck(msgspec.Struct, frozen=True, kw_only=True):
    broker_order_id: str  # ODNO (a revise/cancel gets a new one)
    org_no: str  # KRX_FWDG_ORD_ORGNO
    time: str  # ORD_TMD, HHMMSS KST
    message: str = ""


# --- reports (inquiries) -------------------------------------------------------------------------


class BrokerOrderReport(msgspec.Struct, frozen=True, kw_only=True):
    """One line of today's orders (inquire-daily-ccld), the broker's view."""

    broker_order_id: str
    orig_broker_order_id: str  # "" for an original order; the ODNO revised/cancelled otherwise
    org_no: str
    code: str
    side: Side
    qty: int
    price: int
    filled_qty: int
    avg_fill_price: int  # rounded average; 0 with no fill
    filled_value: int  # sum of fill qty * price, KRW
    remaining_qty: int
    cancelled_qty: int
    rejected_qty: int
    is_cancel: bool = False  # this line is a cancel order
    is_modify: bool = False  # this line is a revise order
    time: str = ""  # HHMMSS


class BrokerPosition(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    qty: int
    sellable_qty: int
    avg_price: str  # pchs_avg_pric as KIS reports it (a decimal string)
    purchase_value: int
    last_price: int


class BrokerAccount(msgspec.Struct, frozen=True, kw_only=True):
    cash: int  # dnca_tot_amt: deposit
    orderable_cash: int  # ord_psbl_cash (inquire-psbl-order) or best estimate
    settlement_cash: int  # prvs_rcdl_excc_amt (D+2)
    total_eval: int  # tot_evlu_amt
    positions_eval: int  # scts_evlu_amt


# --- stream events --------------------------------------------------------------------------------


class NoticeKind(StrEnum):
    ACCEPTED = "accepted"  # 접수 (new, revise or cancel order accepted)
    FILLED = "filled"  # 체결
    REJECTED = "rejected"  # 거부
    CANCELLED = "cancelled"  # cancel confirmed (확인)
    MODIFIED = "modified"  # revise confirmed (확인)


class BrokerNotice(msgspec.Struct, frozen=True, kw_only=True, tag="notice"):
    """An order/fill notice (H0STCNI0/H0STCNI9), decrypted and typed."""

    kind: NoticeKind
    broker_order_id: str  # ODER_NO
    orig_broker_order_id: str  # OODER_NO ("" or zeros for an original order)
    code: str
    side: Side
    order_qty: int
    order_price: int
    fill_qty: int  # this fill (FILLED), else 0
    fill_price: int  # this fill (FILLED), else 0
    time: str  # STCK_CNTG_HOUR HHMMSS
    account: str = ""
    is_cancel: bool = False
    is_modify: bool = False
    org_no: str = ""  # BRNC_NO (= KRX_FWDG_ORD_ORGNO), needed to revise/cancel the order
    fill_ref: str = ""  # a broker that numbers its fills says which one this is (KIS does not)


class Trade(msgspec.Struct, frozen=True, kw_only=True, tag="trade"):
    """A real-time execution print (H0STCNT0), the fields the system uses."""

    code: str
    time: str  # HHMMSS
    price: int
    qty: int
    side: int  # +1 buyer-initiated, -1 seller-initiated, 0 unknown (auction)
    cum_volume: int
    cum_value: int
    open: int
    high: int
    low: int
    change: int  # vs previous close
    ask1: int
    bid1: int


class Book(msgspec.Struct, frozen=True, kw_only=True, tag="book"):
    """A 10-level order book (H0STASP0)."""

    code: str
    time: str
    asks: tuple[tuple[int, int], ...]  # (price, qty), best first
    bids: tuple[tuple[int, int], ...]
    total_ask_qty: int
    total_bid_qty: int


class SessionChange(msgspec.Struct, frozen=True, kw_only=True, tag="session"):
    state: SessionState
    reason: str = ""


class Gap(msgspec.Struct, frozen=True, kw_only=True, tag="gap"):
    """The real-time stream was interrupted: notices may have been missed since `since`.
    The gateway repairs from order_reports()."""

    since: dt.datetime
    until: dt.datetime
    reason: str = ""


class MarketClock(msgspec.Struct, frozen=True, kw_only=True, tag="clock"):
    """The exchange clock reached `exchange` (KST). Only a replay emits it: it marks where, in the
    recorded stream, the live gateway closed bars by time, so the replay closes the same bars at
    the same point (server/replay.py)."""

    exchange: dt.datetime


class SubscriptionResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    code: str = ""  # OPSP code from the broker, when there is one
    message: str = ""


class MarketKind(StrEnum):
    TRADES = "trades"  # H0STCNT0
    BOOK = "book"  # H0STASP0


BrokerEvent = BrokerNotice | Trade | Book | SessionChange | Gap | MarketClock


@runtime_checkable
class BrokerPort(Protocol):
    """What the gateway needs from a broker. All methods are coroutines on the gateway's loop."""

    @property
    def session_state(self) -> SessionState: ...

    async def start(self) -> None:
        """Authenticate, open the real-time session, register the notice slot."""

    async def close(self) -> None: ...

    async def submit(self, order: BrokerOrder) -> BrokerAck: ...

    async def modify(self, req: BrokerModify) -> BrokerAck: ...

    async def cancel(self, req: BrokerCancel) -> BrokerAck: ...

    async def order_reports(self, day: dt.date) -> list[BrokerOrderReport]:
        """All of the day's orders (all pages), the broker's view."""

    async def positions(self) -> list[BrokerPosition]: ...

    async def account(self) -> BrokerAccount: ...

    async def base_price(self, code: str) -> int:
        """Today's base price of `code` (yesterday's close, the centre of the daily band); 0 if unknown."""

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult: ...

    def set_caller_quota(self, caller: str, rate_per_s: float) -> None:
        """Cap one caller's (an agent's) share of the REST budget; 0 removes the cap. A broker
        without a REST budget ignores it (the gateway calls it only when the broker has it)."""
        return None

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult: ...

    async def daily_chart(self, code: str, start: dt.date, end: dt.date, period: str = "D", *,
                          caller: str = "gateway") -> "wire.DailyChartResponse":
        """Daily bars in [start, end], newest first (KIS period chart; up to 100 a call). Goes through
        the REST budget under `caller`'s quota."""

    async def minute_chart(self, code: str, until_hhmmss: str, *, caller: str = "gateway") -> "wire.TimeChartResponse":
        """Today's one-minute bars up to `until_hhmmss`, newest first (up to 30 a call)."""

    def events(self) -> AsyncIterator[BrokerEvent]:
        """The one stream of notices, trades, books, session changes and gaps, in arrival order."""
        ...
