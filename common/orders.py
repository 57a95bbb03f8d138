"""The order state machine: one transition table, one `apply`.

Every change of an order goes through `apply(order, event)`, which refuses illegal transitions,
duplicate fills and over-fills. Orders are immutable; `apply` returns the next version, so an event
log replays to the same order every time.

States (DESIGN.md §5), with the choices we made:
- NEW            created by the gateway, not yet written as an intent
- PENDING_SUBMIT intent written durably, the broker is being called
- ACCEPTED       the broker took it (we know its ODNO); "SUBMITTED/ACCEPTED" are one state, since KIS
                 answers the order REST call only once it has accepted the order
- PARTIALLY_FILLED, FILLED
- PENDING_CANCEL, CANCELLED (the unfilled remainder is cancelled; fills before stay)
- PENDING_REPLACE: a KIS revise gives the remainder a new ODNO (linked by ORGN_ODNO); our order keeps
                 its client id and continues under the new ODNO, so there is no separate REPLACED
                 end state: a confirmed revise returns to ACCEPTED/PARTIALLY_FILLED with the new terms.
- DENIED         our risk gate said no; never sent
- REJECTED       the broker said no (reconciliation reopens it, `Reopen`, should the broker's order list
                 show it live or filled after all: the refusal was of another of its lines)
- EXPIRED        the day ended with the order open
- UNKNOWN        sent, outcome not known (timeout, dropped connection); still counts against risk and
                 is resolved by reconciliation (accept, reject, fills) before anything else is sent.
                 A revise or cancel whose answer was lost is in doubt the same way: the order stays
                 PENDING_REPLACE / PENDING_CANCEL with reason code AMEND_UNKNOWN (`in_doubt`) until its
                 notices or the broker's order list say which line is live (server/chain_repair.py).
- HELD           an order for the next session (tif NEXT_SESSION): intent written, counted against
                 risk, kept by the gateway until the session it is for takes orders; then checked again
                 and sent (PENDING_SUBMIT), or cancelled, denied or expired without ever being sent.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Union

import msgspec

from common.enums import OrderType, Side, TimeInForce
from common.ids import placed_by_gateway


class OrderState(StrEnum):
    NEW = "new"
    PENDING_SUBMIT = "pending_submit"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    CANCELLED = "cancelled"
    PENDING_REPLACE = "pending_replace"
    DENIED = "denied"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    HELD = "held"


TERMINAL = frozenset(
    {OrderState.FILLED, OrderState.CANCELLED, OrderState.DENIED, OrderState.REJECTED, OrderState.EXPIRED}
)
# Open: the broker may hold live quantity of ours (counts against risk and cash).
OPEN = frozenset(OrderState) - TERMINAL - {OrderState.NEW}


class StateError(ValueError):
    """An event that the state machine refuses; the order is unchanged."""


class IllegalTransition(StateError):
    pass


class DuplicateFill(StateError):
    pass


class Overfill(StateError):
    pass


# ---- events ---------------------------------------------------------------------------------------


class _Ev(msgspec.Struct, frozen=True, kw_only=True, tag_field="e"):
    ts_ns: int = 0


class Submit(_Ev, tag="submit", frozen=True):
    """Intent written; the broker call starts."""


class Hold(_Ev, tag="hold", frozen=True):
    """Intent written for a later session (`valid_day`, YYYYMMDD): nothing is sent before it."""

    valid_day: str


class Deny(_Ev, tag="deny", frozen=True):
    code: str
    reason: str = ""


class Accept(_Ev, tag="accept", frozen=True):
    broker_order_id: str
    org_no: str = ""


class Reject(_Ev, tag="reject", frozen=True):
    code: str
    reason: str = ""


class MarkUnknown(_Ev, tag="unknown", frozen=True):
    """A submit (or, on PENDING_REPLACE / PENDING_CANCEL, a revise or cancel) whose outcome is not known."""

    reason: str = ""
    code: str = ""  # RESTARTED: recovered after a crash, the send itself may never have happened;
    # AMEND_UNKNOWN: a revise/cancel whose answer was lost (or that was refused at a number that may have moved)


AMEND_UNKNOWN = "AMEND_UNKNOWN"  # = common.errors.ErrorCode.AMEND_UNKNOWN (this module imports no errors)


RECON_FILL_PREFIX = "recon:"


class Fill(_Ev, tag="fill", frozen=True):
    """A fill. Ids starting with RECON_FILL_PREFIX come from reconciliation (the broker's cumulative
    quantity was ahead of ours); a later notice of the same quantity is then absorbed, not counted."""

    fill_id: str  # unique per fill; duplicates are refused
    qty: int
    price: int
    broker_order_id: str = ""
    cost_out: int = 0  # a sell: the position's cost it took out (set by the book, so a reversal is exact)
    value: int = 0  # KRW of the whole fill when not qty * price (a reconciled fill at the broker's total value)


class ReverseFill(_Ev, tag="reverse_fill", frozen=True):
    """Reconciliation: the broker does not have (all of) a fill we booked from a notice (forged, or
    misreported). `qty` of fill `fill_id` is taken back at that fill's own average price. The fill id
    stays known, so the same notice arriving again is still a duplicate."""

    fill_id: str
    qty: int
    reason: str = ""


class Reprice(_Ev, tag="reprice", frozen=True):
    """Reconciliation: the broker has the same filled quantity as we do but another filled value (a
    notice with a wrong price, or a forged fill booked where the real one came at another price and
    was then refused as an overfill). The order's filled value becomes the broker's `value` if its
    filled quantity is `qty` (else refused: the pass's other repairs did not all land; the next pass
    looks again)."""

    qty: int
    value: int
    reason: str = ""


class RequestCancel(_Ev, tag="req_cancel", frozen=True):
    pass


class CancelRefused(_Ev, tag="cancel_refused", frozen=True):
    code: str = ""
    reason: str = ""


class ResendCancel(_Ev, tag="resend_cancel", frozen=True):
    """A cancel in doubt goes out again, to the order's live line (server/chain_repair.py)."""

    broker_order_id: str = ""


class Cancelled(_Ev, tag="cancelled", frozen=True):
    """The unfilled remainder is cancelled. `qty`: how much the broker says it cancelled (a cancel's
    확인 notice, its ODER_QTY); 0: not known, the whole remainder. A confirmation of fewer than the
    remainder we count, of a cancel we asked for (PENDING_CANCEL), does not end the order: the
    difference filled at the exchange before the cancel reached it, and its fill notices are still on
    their way (notices can come out of order). The order stays PENDING_CANCEL with that difference
    open (reserved) until those fills make filled + cancelled the whole order, or reconciliation
    closes it (a Cancelled without a quantity: the broker's list has the final word)."""

    broker_order_id: str = ""  # ODNO of the cancel order
    qty: int = 0


class RequestReplace(_Ev, tag="req_replace", frozen=True):
    price: int
    qty: int  # new total quantity (filled + new remainder)


class ReplaceRefused(_Ev, tag="replace_refused", frozen=True):
    code: str = ""
    reason: str = ""


class Replaced(_Ev, tag="replaced", frozen=True):
    broker_order_id: str  # the new ODNO
    price: int
    qty: int


class Expire(_Ev, tag="expire", frozen=True):
    pass


class Reopen(_Ev, tag="reopen", frozen=True):
    """Reconciliation: the broker's order list has this order open or filled beyond what its state here
    allows (REJECTED on a notice about another of its lines; FILLED at a total the books understate).
    It rests again, so that its fills are booked to its agent, never to 'external'. `qty`: the order's
    total as the broker's lines show it (0: unchanged)."""

    reason: str
    qty: int = 0


OrderEvent = Union[
    Submit,
    Hold,
    Deny,
    Accept,
    Reject,
    MarkUnknown,
    Fill,
    RequestCancel,
    CancelRefused,
    Cancelled,
    RequestReplace,
    ReplaceRefused,
    Replaced,
    Expire,
    ReverseFill,
    ResendCancel,
    Reprice,
    Reopen,
]


class FillRec(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What one fill did to the order (after absorption of reconciled quantity): kept so that
    reconciliation can tell notice fills from reconciled ones and take back exactly one of them."""

    fill_id: str
    qty: int  # shares it added
    value: int  # KRW it added
    ts_ns: int  # when it was booked (market clock)
    cost_out: int = 0  # a sell: cost it took out of the position
    reversed_qty: int = 0  # taken back by reconciliation since

    @property
    def live_qty(self) -> int:
        return self.qty - self.reversed_qty

    @property
    def from_notice(self) -> bool:
        return not self.fill_id.startswith(RECON_FILL_PREFIX)


class Order(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    agent: str
    code: str
    side: Side
    qty: int
    price: int
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.DAY
    state: OrderState = OrderState.NEW
    filled_qty: int = 0
    filled_value: int = 0
    broker_order_id: str = ""
    org_no: str = ""
    broker_chain: tuple[str, ...] = ()  # every ODNO this order has had, oldest first
    fill_ids: tuple[str, ...] = ()
    fills: tuple[FillRec, ...] = ()  # what each fill added (orders stored before v21 have none)
    recon_credit: int = 0  # quantity added by reconciliation whose own notices may still arrive
    pending_price: int = 0  # terms asked for by a revise in flight
    pending_qty: int = 0
    reason_code: str = ""
    reason: str = ""
    created_ns: int = 0
    updated_ns: int = 0
    valid_day: str = ""  # HELD orders: the trading day (YYYYMMDD) whose session they are for
    # PENDING_CANCEL only (0 in every other state): what the broker confirmed cancelled while fills of
    # ours are still to come (Cancelled); filled_qty + cancelled_qty < qty always
    cancelled_qty: int = 0

    @property
    def fill_count(self) -> int:
        """Fills that stand: each booked fill not wholly taken back by reconciliation (a fill the broker never had
        counted as a fill in status and the daily report). Orders stored before v21 keep no records: their ids."""
        return sum(1 for r in self.fills if r.live_qty > 0) if self.fills else len(self.fill_ids)

    @property
    def remaining(self) -> int:
        """What may still fill: the quantity neither filled nor confirmed cancelled."""
        return self.qty - self.filled_qty - self.cancelled_qty

    @property
    def is_open(self) -> bool:
        return self.state in OPEN

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def in_doubt(self) -> bool:
        """A revise or cancel of this order went out and its outcome is not known yet."""
        return self.state in AMENDING and self.reason_code == AMEND_UNKNOWN


# Sentinel targets: the resting state follows from the filled quantity.
_RESTING = "resting"  # ACCEPTED, PARTIALLY_FILLED or FILLED by filled_qty
_SAME = "same"  # no state change (e.g. a fill while a cancel is pending, unless it completes)

S = OrderState
# (state, event tag) -> target. Anything not in the table is illegal.
TRANSITIONS: dict[tuple[OrderState, str], str] = {
    (S.NEW, "submit"): S.PENDING_SUBMIT,
    (S.NEW, "deny"): S.DENIED,
    (S.NEW, "hold"): S.HELD,
    (S.HELD, "submit"): S.PENDING_SUBMIT,  # released: the session it is for takes orders
    (S.HELD, "hold"): S.HELD,  # its day turned out closed (the exchange's own calendar): the next session
    (S.HELD, "deny"): S.DENIED,  # checked again at release and refused (never sent)
    (S.HELD, "cancelled"): S.CANCELLED,  # cancelled while held: nothing to tell the broker
    (S.HELD, "expire"): S.EXPIRED,  # its session passed without it being sent
    (S.PENDING_SUBMIT, "accept"): _RESTING,
    (S.PENDING_SUBMIT, "reject"): S.REJECTED,
    (S.PENDING_SUBMIT, "unknown"): S.UNKNOWN,
    (S.PENDING_SUBMIT, "fill"): _RESTING,  # a notice may beat the REST reply
    (S.PENDING_SUBMIT, "cancelled"): S.CANCELLED,  # its cancel came first and stopped it unsent (send_queue)
    (S.UNKNOWN, "accept"): _RESTING,
    (S.UNKNOWN, "reject"): S.REJECTED,
    (S.UNKNOWN, "fill"): _RESTING,
    (S.UNKNOWN, "cancelled"): S.CANCELLED,
    (S.UNKNOWN, "expire"): S.EXPIRED,
    (S.ACCEPTED, "accept"): _SAME,  # a late duplicate acknowledgement is harmless
    # KIS took it (its ODNO), the exchange refused it (a 거부 notice, RFUS_YN 1; the order list's
    # rejected quantity): nothing filled, nothing rests
    (S.ACCEPTED, "reject"): S.REJECTED,
    (S.ACCEPTED, "fill"): _RESTING,
    (S.ACCEPTED, "req_cancel"): S.PENDING_CANCEL,
    (S.ACCEPTED, "req_replace"): S.PENDING_REPLACE,
    (S.ACCEPTED, "cancelled"): S.CANCELLED,  # cancelled outside us (HTS), seen by reconciliation
    (S.ACCEPTED, "expire"): S.EXPIRED,
    (S.PARTIALLY_FILLED, "accept"): _SAME,
    (S.PARTIALLY_FILLED, "fill"): _RESTING,
    (S.PARTIALLY_FILLED, "req_cancel"): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, "req_replace"): S.PENDING_REPLACE,
    (S.PARTIALLY_FILLED, "cancelled"): S.CANCELLED,
    (S.PARTIALLY_FILLED, "expire"): S.EXPIRED,
    (S.PENDING_CANCEL, "fill"): _SAME,  # a fill racing the cancel; FILLED if it completes
    (S.PENDING_CANCEL, "cancelled"): S.CANCELLED,
    (S.PENDING_CANCEL, "cancel_refused"): _RESTING,
    (S.PENDING_CANCEL, "expire"): S.EXPIRED,
    (S.PENDING_CANCEL, "accept"): _SAME,
    (S.PENDING_CANCEL, "unknown"): _SAME,  # the cancel's answer was lost: in doubt until resolved
    (S.PENDING_CANCEL, "replaced"): _SAME,  # the live line moved (a revise we learn of late); cancel that one
    (S.PENDING_CANCEL, "resend_cancel"): _SAME,  # the cancel goes out again, to the live line
    (S.PENDING_REPLACE, "fill"): _SAME,
    (S.PENDING_REPLACE, "replaced"): _RESTING,
    (S.PENDING_REPLACE, "replace_refused"): _RESTING,
    (S.PENDING_REPLACE, "cancelled"): S.CANCELLED,
    (S.PENDING_REPLACE, "expire"): S.EXPIRED,
    (S.PENDING_REPLACE, "accept"): _SAME,
    (S.PENDING_REPLACE, "unknown"): _SAME,  # the revise's answer was lost: in doubt until resolved
    # A fill that happened before the cancel/expiry but whose notice arrives after it (notices can
    # be reordered, reconciliation can close an order before a delayed notice): it still happened.
    (S.CANCELLED, "fill"): _SAME,
    (S.EXPIRED, "fill"): _SAME,
    # A booked fill the broker does not have is taken back: the order rests again if it was filled
    # (reconciliation then closes it the way the broker did, or it stays open as it is at the broker).
    (S.PARTIALLY_FILLED, "reverse_fill"): _RESTING,
    (S.FILLED, "reverse_fill"): _RESTING,
    (S.PENDING_CANCEL, "reverse_fill"): _SAME,
    (S.PENDING_REPLACE, "reverse_fill"): _SAME,
    (S.CANCELLED, "reverse_fill"): _SAME,
    (S.EXPIRED, "reverse_fill"): _SAME,
    # the broker's value of what filled replaces ours; the state stays as it is
    (S.PARTIALLY_FILLED, "reprice"): _SAME,
    (S.FILLED, "reprice"): _SAME,
    (S.PENDING_CANCEL, "reprice"): _SAME,
    (S.PENDING_REPLACE, "reprice"): _SAME,
    (S.CANCELLED, "reprice"): _SAME,
    (S.EXPIRED, "reprice"): _SAME,
    # The broker's list shows the order live or filled after all (a REJECTED order whose refusal was
    # of another line; a FILLED order whose total was understated): it rests again and takes its fills.
    (S.REJECTED, "reopen"): _RESTING,
    (S.FILLED, "reopen"): _RESTING,
}

# A revise or cancel is on its way (or in doubt) in these states.
AMENDING = frozenset({S.PENDING_REPLACE, S.PENDING_CANCEL})


# the orders a revise can reprice (API.md §4.2: a revise changes price or type): a market, best or
# priority order has no price of its own (KIS fills or rests it at a price it chooses), and repricing
# it would make it a limit order our book still calls market: cancel it and send a new one instead
REPRICEABLE_TYPES = frozenset({OrderType.LIMIT, OrderType.CONDITIONAL})
# only resting orders are revised: an IOC/FOK order is filled or killed the moment it arrives
REVISABLE_TIFS = frozenset({TimeInForce.DAY, TimeInForce.NEXT_SESSION})


def is_gateway_exit(o: Order) -> bool:
    """A sell the gateway placed for the agent (a protective exit, a flatten sell): it only reduces what is
    held, and the agent may not cancel or revise it (live's desk and the backtest's context alike)."""
    return o.side is Side.SELL and placed_by_gateway(o.client_order_id)


def revise_refusal(order: Order, qty: int) -> str:
    """Why a revise to total quantity `qty` (0: unchanged) is refused, or "": only the price can be
    revised (a KIS revise of part of the remainder splits the order), of an order that has a price and
    rests; cancel and send anew instead. One rule for the gateway and the backtester."""
    if qty and qty != order.qty:
        return "only the price can be revised; cancel and send a new order to change the quantity"
    if order.order_type not in REPRICEABLE_TYPES:
        return f"a {order.order_type.value} order has no price to revise; cancel it and send a new order"
    if order.tif not in REVISABLE_TIFS:
        return f"an {order.tif.value.upper()} order does not rest: nothing to revise"
    return ""


def allows(state: OrderState, event: type[_Ev]) -> bool:
    """Whether the table takes `event` in `state` (the one source of "may I cancel/revise now")."""
    return (state, event.__struct_config__.tag) in TRANSITIONS


# Derived from the table, never written out by hand elsewhere.
CANCELLABLE = frozenset(s for s in OrderState if allows(s, RequestCancel))
REVISABLE = frozenset(s for s in OrderState if allows(s, RequestReplace))
# Open at the broker as far as we know, but without an ODNO yet: a cancel waits for the acknowledgement
# (or for the reconciliation that finds the order).
AWAITING_ACK = frozenset({OrderState.PENDING_SUBMIT, OrderState.UNKNOWN})
# Resting at the exchange with nothing asked of it: in KIS's unfilled list, and a fill moves it to the
# resting state its filled quantity says.
RESTING = frozenset({OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED})


def _tag(event: OrderEvent) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def _resting(filled: int, qty: int) -> OrderState:
    if filled >= qty:
        return S.FILLED
    return S.PARTIALLY_FILLED if filled > 0 else S.ACCEPTED


def apply(order: Order, event: OrderEvent) -> Order:
    """The next version of `order` after `event`, or StateError (the order stays as it was)."""
    tag = _tag(event)
    target = TRANSITIONS.get((order.state, tag))
    if target is None:
        raise IllegalTransition(f"{order.client_order_id}: {tag} is not allowed in state {order.state}")
    changes: dict[str, object] = {"updated_ns": event.ts_ns or order.updated_ns}
    qty, filled, cancelled = order.qty, order.filled_qty, order.cancelled_qty

    if isinstance(event, Fill):
        if event.fill_id in order.fill_ids:
            raise DuplicateFill(f"{order.client_order_id}: fill {event.fill_id} already applied")
        if event.qty <= 0 or event.price <= 0 or 0 < event.value < event.qty:
            raise IllegalTransition(f"{order.client_order_id}: fill with qty {event.qty} price {event.price}")
        credit = order.recon_credit
        if event.fill_id.startswith(RECON_FILL_PREFIX):
            new_qty, credit = event.qty, credit + event.qty
        else:
            absorbed = min(credit, event.qty)  # the notice of a fill reconciliation already counted
            new_qty, credit = event.qty - absorbed, credit - absorbed
        if filled + new_qty > qty:
            raise Overfill(f"{order.client_order_id}: fill of {new_qty} exceeds remaining {qty - filled}")
        filled += new_qty
        added = event.value if event.value and new_qty == event.qty else new_qty * event.price
        changes.update(
            filled_qty=filled,
            filled_value=order.filled_value + added,
            fill_ids=order.fill_ids + (event.fill_id,),
            fills=order.fills + (FillRec(event.fill_id, new_qty, added, event.ts_ns, event.cost_out),),
            recon_credit=credit,
        )
        if event.broker_order_id and not order.broker_order_id:
            changes.update(broker_order_id=event.broker_order_id, broker_chain=(event.broker_order_id,))
    elif isinstance(event, Accept):
        if not order.broker_order_id:
            changes.update(
                broker_order_id=event.broker_order_id, org_no=event.org_no, broker_chain=(event.broker_order_id,)
            )
    elif isinstance(event, Hold):
        changes.update(valid_day=event.valid_day)
    elif isinstance(event, (Deny, Reject, CancelRefused, ReplaceRefused)):
        changes.update(reason_code=event.code, reason=event.reason, pending_price=0, pending_qty=0)
    elif isinstance(event, MarkUnknown):
        changes.update(reason=event.reason, reason_code=event.code)
    elif isinstance(event, ResendCancel):
        changes.update(reason="", reason_code="")  # a cancel in flight again, no longer in doubt
    elif isinstance(event, ReverseFill):
        recs = list(order.fills)
        i = next((k for k, r in enumerate(recs) if r.fill_id == event.fill_id), -1)
        if i < 0 or event.qty <= 0 or event.qty > recs[i].live_qty:
            raise IllegalTransition(f"{order.client_order_id}: cannot take back {event.qty} of fill {event.fill_id}")
        r = recs[i]
        back = r.value * event.qty // r.qty  # at the fill's own price
        recs[i] = msgspec.structs.replace(r, reversed_qty=r.reversed_qty + event.qty)
        filled -= event.qty
        # nothing filled is worth nothing (a Reprice since may have moved the value off the fill log)
        value = max(filled, order.filled_value - back) if filled else 0  # and a share at least 1 KRW
        changes.update(filled_qty=filled, filled_value=value, fills=tuple(recs), reason=event.reason)
    elif isinstance(event, Reopen):
        qty = event.qty or qty
        if qty < filled or (order.state is S.FILLED and qty <= filled) or not event.reason:
            raise IllegalTransition(f"{order.client_order_id}: reopen at total {qty} with {filled} filled")
        changes.update(qty=qty, reason_code="", reason=event.reason)
    elif isinstance(event, Reprice):
        if not filled or event.qty != filled or event.value < filled or event.value == order.filled_value:
            raise IllegalTransition(
                f"{order.client_order_id}: cannot make {filled} filled worth {event.value} (for {event.qty} filled)"
            )
        changes.update(filled_value=event.value, reason=event.reason)
    elif isinstance(event, RequestReplace):
        if event.qty < filled or event.qty <= 0 or event.price < 0:
            raise IllegalTransition(f"{order.client_order_id}: replace to qty {event.qty} with {filled} filled")
        # (an earlier revise's or cancel's refusal no longer says why the order is as it is: a strategy was shown a
        # cancelled order with "NOT_AT_BROKER: the revise is not in the broker's order list")
        changes.update(pending_price=event.price, pending_qty=event.qty, reason_code="", reason="")
    elif isinstance(event, RequestCancel):
        changes.update(reason_code="", reason="")  # (as a revise's request: the earlier refusal is the past)
    elif isinstance(event, Cancelled):
        if order.state is S.PENDING_CANCEL and 0 < event.qty and filled + event.qty < qty:
            # confirmed for fewer than our remainder: the rest filled, its notices on their way. A repeat
            # of the confirmation changes nothing; of two, the larger stands (never more is taken as
            # cancelled than one confirmation says: what is reserved is never too little)
            target, cancelled = _SAME, max(cancelled, event.qty)
            if order.reason_code == AMEND_UNKNOWN:
                changes.update(reason_code="", reason="")  # the cancel's outcome is known: it was taken
    elif isinstance(event, Replaced):
        if event.qty < filled:
            raise Overfill(f"{order.client_order_id}: replaced qty {event.qty} below filled {filled}")
        qty = event.qty
        chain = (
            order.broker_chain
            if event.broker_order_id in order.broker_chain
            else order.broker_chain + (event.broker_order_id,)
        )
        changes.update(
            qty=qty,
            price=event.price,
            broker_order_id=event.broker_order_id,
            broker_chain=chain,
            pending_price=0,
            pending_qty=0,
        )
        cancelled = 0  # the new total is what the broker's lines hold: no confirmed cancel is in it

    if target == _RESTING:
        state = _resting(filled, qty)
    elif target == _SAME:
        state = S.FILLED if filled >= qty and order.state not in (S.CANCELLED, S.EXPIRED) else order.state
        if state is S.PENDING_CANCEL and cancelled and filled + cancelled >= qty:
            state = S.CANCELLED  # the fills a partial cancel confirmation waited for have all come
    else:
        state = OrderState(target)
    changes["state"] = state
    if state is not S.PENDING_CANCEL:
        cancelled = 0  # ended (or resting again): no confirmed cancel waits for fills
    if cancelled != order.cancelled_qty:
        changes.update(cancelled_qty=cancelled)
    if changes.get("reason_code", order.reason_code) == AMEND_UNKNOWN and state not in AMENDING:
        changes.update(reason_code="", reason="")  # resolved (replaced, cancelled, filled, expired)
    return msgspec.structs.replace(order, **changes)


def replay(order: Order, events: list[OrderEvent]) -> Order:
    """Apply a log of events in order; events the machine refuses are skipped (they were refused
    when they first arrived too), so replaying a log is idempotent."""
    for ev in events:
        try:
            order = apply(order, ev)
        except StateError:
            continue
    return order
