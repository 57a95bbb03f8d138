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
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Protocol, runtime_checkable

import msgspec

from common.enums import OrderType, SessionState, Side, TimeInForce
from common.krx import Phase
from common.schema import Bar, BrokerHealth, InvestorDay, PriceQuote


# code of an order the adapter did not send: its token or rate slot came past its deadline
NOT_SENT = "NOT_SENT"


class BrokerError(Exception):
    def __init__(self, message: str, *, code: str = "", http_status: int | None = None, not_sent: bool = False) -> None:
        super().__init__(f"{code} {message}".strip())
        self.code = code
        self.message = message
        self.http_status = http_status
        # the adapter gave up on an order before any attempt that may have reached the broker (a
        # token, a rate slot or a retry came past its deadline): nothing was placed, and nothing is
        # known of the broker (never counted toward the kill switch; resent if it must go)
        self.not_sent = not_sent or code == NOT_SENT


class BrokerRejected(BrokerError):
    pass


# KIS's refusal of a buy beyond the account's orderable cash: APBK0952 "주문가능금액을 초과 했습니다" (the twin's;
# APBK0919 is recorded with the same text too: API.md, UNCONFIRMED which code is canonical): the text decides
CASH_REFUSAL_TEXT = "주문가능금액"


def cash_refusal(e: BrokerError) -> bool:
    """A refusal of an order for want of orderable cash (the account had less than the gateway believed)."""
    return isinstance(e, BrokerRejected) and (CASH_REFUSAL_TEXT in e.message or e.code == "APBK0952")


class BrokerUnknownOutcome(BrokerError):
    def __init__(self, message: str, *, code: str = "", http_status: int | None = None) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.not_sent = False  # it may have been placed, whatever code it carries: never resent


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


class DayBand(msgspec.Struct, frozen=True, kw_only=True):
    """A code's base price (0: unknown) and the day's lower/upper price limits as the exchange set them (0: not
    published). They are the rules' band of the base on an ordinary day; not on a new listing's first day
    (60-400 % of the offering price since 2023-06-26) nor for a 2x leveraged or inverse ETF/ETN (twice the
    ±30 %: KRX; press, UNCONFIRMED by API.md)."""

    base: int
    lower: int = 0
    upper: int = 0

    def published(self) -> tuple[int, int] | None:
        """(lower, upper) when both are given, hold the base between them and lie within the widest band KRX
        sets (a leveraged or inverse ETF/ETN's ±60 %, every day; a listing day's 60-400 % of the base; a percent
        of slack for the grid); else None: the rules' band (a garbled answer; a twin dated where no band is
        modelled publishes 1..2^63)."""
        lower, upper, base = self.lower, self.upper, self.base
        if 0 < lower <= base <= upper and lower < upper and lower * 100 >= base * 39 and upper * 100 <= base * 401:
            return lower, upper
        return None


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
    # the order division it was placed with (KIS: ord_dvsn_cd, the ORD_DVSN codes of order-cash, e.g. "00"
    # limit, "01" market, "03" 최유리); "" when the broker does not report it. Reconciliation matches an
    # order of ours whose outcome is unknown by it: a market-like order is listed at the price the exchange
    # gave it (최유리/최우선), never at the 0 it was sent with
    order_division: str = ""


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
    # what the broker counts as traded today (thdt_buy_amt, thdt_sll_amt, thdt_tlex_amt); -1: not reported
    today_bought: int = -1
    today_sold: int = -1
    today_costs: int = -1  # commission and taxes


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


class HourClass(StrEnum):
    """HOUR_CLS_CODE of an H0STCNT0 print or an H0STASP0 book (API.md §5.6-5.7): the regular session, or
    which single-price call's *expected* (indicative) state the record shows."""

    UNSAID = ""  # a record that does not carry it (an older message, a test's)
    REGULAR = "0"  # 장중: continuous trading
    AFTER_CLOSE_EXPECTED = "A"  # 장후예상: the closing call
    PRE_OPEN_EXPECTED = "B"  # 장전예상: the opening call
    LATE_OR_VI_EXPECTED = "C"  # 9시 이후 예상가 / VI 발동: an opening call run past 09:00, a VI's 2-minute call
    AFTER_HOURS_EXPECTED = "D"  # 시간외 단일가 예상: the after-hours single-price call
    OTHER = "?"  # a code API.md does not list: not the regular session, not known to be an expected price

    @classmethod
    def of(cls, code: str) -> HourClass:
        try:
            return cls(code)
        except ValueError:
            return cls.OTHER

    @property
    def in_call(self) -> bool:
        """A single-price call is running (its book may be crossed): any code the broker says but '0'."""
        return self not in (HourClass.UNSAID, HourClass.REGULAR)

    @property
    def expected(self) -> bool:
        """The record shows a call's expected price (API.md: codes A-D), not a trade."""
        return self in _EXPECTED


_EXPECTED = frozenset(
    {
        HourClass.AFTER_CLOSE_EXPECTED,
        HourClass.PRE_OPEN_EXPECTED,
        HourClass.LATE_OR_VI_EXPECTED,
        HourClass.AFTER_HOURS_EXPECTED,
    }
)


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
    date: str = ""  # BSOP_DATE (YYYYMMDD), the exchange's business day of the print; "" when absent
    hour_cls: HourClass = HourClass.UNSAID  # HOUR_CLS_CODE: A-D mark an expected price, not a trade
    market_op: str = ""  # NEW_MKOP_CLS_CODE, 2 chars (API.md §5.6): session (1st) and kind (2nd), e.g. "20"
    halted: bool = False  # TRHT_YN == "Y": trading in the code is halted (carried, not acted on)


class Book(msgspec.Struct, frozen=True, kw_only=True, tag="book"):
    """A 10-level order book (H0STASP0)."""

    code: str
    time: str
    asks: tuple[tuple[int, int], ...]  # (price, qty), best first
    bids: tuple[tuple[int, int], ...]
    total_ask_qty: int
    total_bid_qty: int
    hour_cls: HourClass = HourClass.UNSAID  # HOUR_CLS_CODE: any but "0" is a single-price call (crossed is normal)


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


class Capability(StrEnum):
    """What a broker offers beyond the core (orders, reports, the event stream). Declared once by
    each implementation (`capabilities`); the gateway asks the set, never probes attributes."""

    QUOTES = "quotes"  # quote() and investor_days(): company data and investor flows
    CHARTS = "charts"  # daily_bars() and minute_bars(): warm-up history
    VOLUME_RANK = "volume_rank"  # top_by_value(): the trading universe
    CALLER_QUOTAS = "caller_quotas"  # set_caller_quota(): per-agent shares of the REST budget
    FRAME_HOOK = "frame_hook"  # set_frame_hook(): raw websocket frames for the recorder
    CLOCK_MARKS = "clock_marks"  # a replay: set_clock_hook(), and bars close at its marks (no timer)
    MARKET_CLOCK = "market_clock"  # market_clock: the broker's own clock (the twin, a replay)
    SESSION_DAYS = "session_days"  # session_days(): the exchange's own word on which days open


class BrokerUnsupported(BrokerError):
    """A call the broker does not offer (its `capabilities` say so)."""


class BrokerNoData(BrokerError):
    """The broker answered, with nothing for this request (e.g. no quote for a code)."""


@runtime_checkable
class BrokerPort(Protocol):
    """What the gateway needs from a broker. All calls are coroutines on the gateway's loop and return
    the domain's types (every KIS field name and number string is read inside kis/). Optional calls
    raise BrokerUnsupported unless `capabilities` lists them; an implementation that subclasses this
    protocol gets those defaults."""

    capabilities: frozenset[Capability] = frozenset()
    # Order calls this broker takes at once (the gateway's send slots, server/send_queue.py). KIS takes
    # 20 calls/s per app key and the REST budget spaces them ~55 ms apart: two slots keep the budget
    # busy at a normal round trip, the others are for calls that hang (a cut connection waits for its
    # timeout, retries back off) so that they hold nobody else. A broker that answers at once (in the
    # process) sets more: each call's send mark then joins the commit of its intent.
    max_in_flight: int = 4
    # Whether start() proved the account: the broker took the credentials and answered an inquiry of this
    # account. False after a start that went on past a broker's bad moment (a 5xx, a rate limit) without
    # that answer: the gateway then keeps the run folder's owner only at its first successful
    # reconciliation (it reads the account's orders), never for an account the broker never accepted. A
    # broker with no account to prove (in-process, a replay) leaves it True.
    account_proven: bool = True

    # ---- execution ----------------------------------------------------------------------------

    @property
    def session_state(self) -> SessionState: ...

    async def start(self) -> None:
        """Authenticate, open the real-time session, register the notice slot."""

    async def close(self) -> None: ...

    async def submit(self, order: BrokerOrder) -> BrokerAck: ...

    async def modify(self, req: BrokerModify) -> BrokerAck: ...

    async def cancel(self, req: BrokerCancel) -> BrokerAck: ...

    def withdraw_with(self, why_not: Callable[[str], str]) -> None:
        """`why_not(client_order_id)`: why an order handed to submit() may no longer leave ("": it may). A
        broker that waits before it writes (KIS's REST budget) asks it just before the request leaves, and
        then refuses the order as not sent; one that sends at once has nothing to ask."""
        return None

    def use_phase(self, phase: Callable[[], Phase]) -> None:
        """The market's phase now, by the gateway's one market clock (a twin's replay, a paper account's KST): a
        broker that judges by it (the KIS stream: whether prints are due) asks it rather than this host's clock."""
        return None

    def leave_with(self, leaving: Callable[[str], Awaitable[None]]) -> bool:
        """`await leaving(client_order_id)` just before a submit's request leaves (its token and REST slot had,
        its withdrawal asked): the caller makes its "leaving" mark durable there. A crash while the order waited
        for its slot then leaves no such mark: it was never sent (requeued after the restart, not 10 minutes in
        doubt and then refused: a hunt at the open). True: this broker calls it (one that writes at once: False,
        and the caller's send mark before the call is the one)."""
        return False

    # ---- the account ----------------------------------------------------------------------------

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        """All of the day's orders (all pages), the broker's view; `open_only`: only the lines with a
        remainder (KIS's unfilled list: a page or two even late in a busy day)."""
        ...

    async def positions(self) -> list[BrokerPosition]: ...

    async def account(self) -> BrokerAccount: ...

    # ---- market data ----------------------------------------------------------------------------

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult: ...

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult: ...

    def events(self) -> AsyncIterator[BrokerEvent]:
        """The one stream of notices, trades, books, session changes and gaps, in arrival order."""
        ...

    # ---- reference data -------------------------------------------------------------------------

    async def base_price(self, code: str) -> int:
        """Today's base price of `code` (yesterday's close, the centre of the daily band); 0 if unknown."""
        ...

    async def day_band(self, code: str) -> DayBand:
        """Today's base price of `code` with the day's price limits as the broker publishes them (KIS's
        quote); a broker that publishes none gives the base alone."""
        return DayBand(base=await self.base_price(code))

    async def quote(self, code: str, *, caller: str = "gateway") -> PriceQuote:
        """Price and company data (PER/PBR/EPS/BPS ...) on `caller`'s REST quota (Capability.QUOTES);
        BrokerNoData when the broker has no quote for the code."""
        raise BrokerUnsupported("quotes", code="UNSUPPORTED")

    async def investor_days(self, code: str, *, caller: str = "gateway") -> list[InvestorDay]:
        """Completed days of investor flows, newest first (Capability.QUOTES)."""
        raise BrokerUnsupported("investor flows", code="UNSUPPORTED")

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
        """Up to `n` daily bars of the days before `before`, oldest first (Capability.CHARTS)."""
        raise BrokerUnsupported("daily charts", code="UNSUPPORTED")

    async def minute_bars(
        self, code: str, need: int, day: dt.date, until_hhmmss: str, *, caller: str = "gateway"
    ) -> tuple[list[Bar], bool]:
        """Today's one-minute bars up to `until_hhmmss` (at least `need` when there are that many),
        oldest first and labelled `day`, and whether they reach back to the session's start
        (Capability.CHARTS)."""
        raise BrokerUnsupported("minute charts", code="UNSUPPORTED")

    async def top_by_value(self, *, caller: str = "gateway") -> list[tuple[str, str]]:
        """(code, name) ranked by today's trading value (Capability.VOLUME_RANK)."""
        raise BrokerUnsupported("volume ranking", code="UNSUPPORTED")

    async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
        """Whether the market opens on each day from `start` on, as far as the broker says (KIS: about
        a month; Capability.SESSION_DAYS; KIS asks for at most one call a day)."""
        raise BrokerUnsupported("session days", code="UNSUPPORTED")

    def set_caller_quota(self, caller: str, rate_per_s: float) -> None:
        """Cap one caller's (an agent's) share of the REST budget; 0 removes the cap
        (Capability.CALLER_QUOTAS; a broker without a REST budget ignores it)."""
        return None

    # ---- diagnostics ------------------------------------------------------------------------------

    def health(self) -> BrokerHealth:
        """Token, REST budget, websocket, registrations; a broker without them reports its session."""
        return BrokerHealth(session_state=self.session_state)

    def set_frame_hook(
        self, on_frame: Callable[[bytes], None] | None, on_plain: Callable[[str], None] | None = None
    ) -> None:
        """Recording (Capability.FRAME_HOOK): every websocket frame as received, each decrypted notice."""
        raise BrokerUnsupported("frame recording", code="UNSUPPORTED")
