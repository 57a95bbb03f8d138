"""Reconciliation: local orders + the broker's reports of the day → the events that make our books
agree with the broker, and alerts for every discrepancy.

Pure: no I/O, no clock of its own. The broker is authoritative for what happened at the exchange
(fills, cancels, rejects, revisions, orders we did not place); we are authoritative for who owns what.

An order is a chain of broker lines: the original and each revise (a revise gets a new ODNO that
names the one it revised). Per chain:
- revise lines we do not know yet are adopted (RequestReplace + Replaced, or Replaced when the
  revise was already pending here); a partial revise leaves part open on the earlier line, which
  stays in the chain and counts toward the order's total;
- the chain's cumulative fill (the sum over its lines) is taken: missing fills are synthesised with
  the broker's value;
- before its fills are taken, the order is made able to take them on the line that is live (see
  `_live_line_and_total`): an order REJECTED here whose lines the broker shows filled or open is
  reopened (the refusal was of a revise or cancel line); one whose live line is a revise the
  exchange refused goes back to the earlier line that is open; a total the broker's lines disagree
  with is corrected;
- when no line of the chain has anything left and the order is open here, it is closed the way
  the broker closed it (rejected, cancelled or expired);
- fills we booked from notices that the broker's cumulative fill does not cover are taken back
  (ReverseFill), newest first, once they are older than `fill_grace_ns` (the broker's list can lag
  behind its notices); younger ones are held as unconfirmed. The books never keep a fill the broker
  does not have;
- when the quantities agree but the value does not (a notice's wrong price; a forged fill booked
  where the real one came at another price and was refused as an overfill), the order's filled value
  is brought to the broker's (Reprice), once its notice fills are past the grace: cash and P&L follow
  the broker's money, not only its shares.
A submit whose outcome is UNKNOWN is matched to an unclaimed broker original with the same code,
side, quantity and price, placed (its ord_tmd) no earlier than the order was created here (less a
skew), never to one a submit of ours still waiting for its REST reply (PENDING_SUBMIT, no ODNO) could be
(its reply names its line; the UNKNOWN waits for a later pass, alerted); if none appears within `grace_ns`
it never reached the exchange and is rejected here. A
market-like order (MARKET, BEST, PRIORITY: sent with price 0) is matched without the price: KIS lists a
최유리/최우선 order at the price the exchange gave it, not at the 0 it was sent with; its order division
(ord_dvsn_cd) must be the one it was sent with when the broker reports one. Lines whose division
agrees with an order's are claimed before any line matched without it. A broker original that
nobody claims is external (HTS app, another program), except one that a submit of ours still in
flight (PENDING_SUBMIT; on a partial list an UNKNOWN too) could be (`_plausible`): the next pass decides.

`partial`: the reports are only some of the day's lines (KIS's unfilled list, read first at a takeover
so that trading resumes in a page or two instead of the whole day's list). A line missing from them
proves nothing, so such a pass only adds what the lines it has prove: fills beyond the books' on
chains whose every line it shows, open orders nobody here placed (not one with the terms of an
UNKNOWN submit of ours). It matches no UNKNOWN (its line may be one the list does not show while
another with the same terms is shown), adopts no revise of a chain it does not see whole, never takes
a fill back, closes, reprices or rejects an order; the whole pass that follows does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from common.calendar import close_ns
from common.clock import KST, ClockSteps, kst_from_ns
from common.enums import Side, TimeInForce
from common.errors import ErrorCode
from common.orders import (
    AMENDING,
    RESTING,
    Accept,
    Cancelled,
    Expire,
    Fill,
    OPEN,
    Order,
    OrderEvent,
    OrderState,
    Reject,
    Reopen,
    Replaced,
    Reprice,
    RequestReplace,
    ReverseFill,
    StateError,
    apply,
)
from common.risk_rules import HELD_TIFS, MARKET_LIKE, ORDER_DIVISIONS
from kis.port import BrokerOrderReport
from server.bars import BarError, parse_hhmmss

NOT_AT_BROKER = ErrorCode.NOT_AT_BROKER.value
FILL_NOT_AT_BROKER = ErrorCode.FILL_NOT_AT_BROKER.value
RESTARTED = ErrorCode.RESTARTED.value  # an UNKNOWN recovered after a crash: its send may never have happened
# An UNKNOWN submit never claims a line KIS says was placed (ord_tmd, whole seconds, KST) more than this
# before the order was created here: such a line is somebody else's (the KIS app), not our send. The
# margin covers the clocks' skew (this machine's against KIS's: a few seconds would otherwise make our
# own filled line look older than the order, reject the order and give its shares to 'external') and
# the truncation of ord_tmd to the second; an app order of the same terms inside it is still claimed.
SEND_SKEW_NS = 60_000_000_000
# a submit of ours still waiting for its REST reply this long after its intent is not waiting for one any more
AWAIT_REPLY_NS = 60_000_000_000


@dataclass
class ReconcileResult:
    events: dict[str, list[OrderEvent]] = field(default_factory=dict)  # client order id → events, in order
    external: list[BrokerOrderReport] = field(default_factory=list)  # broker orders nobody here placed
    alerts: list[str] = field(default_factory=list)
    # code → shares the books hold beyond the broker's fills, held as unconfirmed (inside the grace):
    # the account's holdings are compared with the books without them
    unconfirmed: dict[str, int] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # orders whose excess fills wait (their value is not compared yet)

    def add(self, coid: str, ev: OrderEvent) -> None:
        self.events.setdefault(coid, []).append(ev)


# the KIS order divisions that rest in the regular session until its close (limit, conditional, best, priority):
# KRX ends them early only by a cancel or a refusal, which the list shows; the others (market, IOC/FOK, the
# after-hours sessions' 05-07: the pre-market one ends at 08:40) may end any time without either
_RESTING_DIVISIONS = frozenset({"00", "02", "03", "04"})


def _may_have_expired(
    o: Order, pending: list[OrderEvent], now_ns: int, day: dt.date, latest: BrokerOrderReport
) -> bool:
    """Whether a chain with nothing open, neither cancelled nor refused, can have been expired by the exchange: not
    while a revise of ours is out (it moves the remainder to its own line, maybe not listed yet), and a resting
    regular-session order not before its day's close (judged by its latest line's division: a revise from the KIS
    app may have changed it)."""
    if o.state is OrderState.PENDING_REPLACE and not any(isinstance(e, Replaced) for e in pending):
        return False
    if (latest.order_division or _division(o)) not in _RESTING_DIVISIONS:
        return True
    close = close_ns(day)
    return close is None or now_ns >= close


def reconcile(
    local: list[Order],
    reports: list[BrokerOrderReport],
    *,
    now_ns: int,
    grace_ns: int = 600_000_000_000,
    fill_grace_ns: int = 60_000_000_000,
    partial: bool = False,
    day: dt.date | None = None,
    steps: ClockSteps | None = None,
) -> ReconcileResult:
    """`day`: the trading day the reports are of (their ord_tmd is a time of that day); by default
    the KST date of `now_ns`. `steps`: the machine clock's steps (common.clock.ClockSteps): every grace
    counts the time that passed, not a jump of the clock."""
    res = ReconcileResult()

    def age(ts_ns: int) -> int:
        return steps.age(now_ns, ts_ns) if steps is not None else now_ns - ts_ns

    if day is None:
        day = kst_from_ns(now_ns).date()
    owner_of: dict[str, Order] = {}  # ODNO → local order (its whole chain)
    for o in local:
        for odno in o.broker_chain:
            owner_of[odno] = o
    by_odno = {r.broker_order_id: r for r in reports}
    chain: dict[str, list[str]] = {o.client_order_id: list(o.broker_chain) for o in local}
    claimed: set[str] = set()

    # 1. UNKNOWN / PENDING_SUBMIT orders without an ODNO: find their twin among unclaimed originals
    originals = [r for r in reports if not r.is_cancel and not r.is_modify]
    # only UNKNOWN: a PENDING_SUBMIT order's REST call is in flight and its reply will name its ODNO.
    # Not on a partial list: the line that is the order's may be one it does not show (filled, ended)
    # while another with the same terms is shown, and a claim made here could not be undone
    unresolved = [] if partial else [o for o in local if not o.broker_chain and o.state is OrderState.UNKNOWN]
    # Orders whose send surely happened claim first; crash-recovered ones (maybe never sent) after;
    # oldest first within each. Identical terms from different agents are ambiguous: alerted.
    unresolved.sort(key=lambda x: (x.reason_code == RESTARTED, x.created_ns))
    for o in unresolved:
        twins = [u for u in unresolved if u is not o and u.agent != o.agent and _same_terms(u, o)]
        if twins:
            res.alerts.append(
                f"{o.client_order_id}: UNKNOWN with the same terms as {[u.client_order_id for u in twins]} "
                "of another agent: attribution by send order, check"
            )
    # A submit of ours still waiting for its REST reply (PENDING_SUBMIT, no ODNO) may own a line with the
    # same terms: its reply will name it. Such a line is never given to an UNKNOWN (any agent's, the same
    # agent's too): the claim could not be undone when the reply lands and both books would hold one
    # line's shares. The UNKNOWN waits; a pass after the reply sees the line claimed by its real owner.
    # (a submit's call ends well within AWAIT_REPLY_NS of its intent; one older is queued behind a resend or stuck,
    # with no reply coming, and must not hold an UNKNOWN back all day)
    awaiting_reply = [
        o
        for o in local
        if not o.broker_chain and o.state is OrderState.PENDING_SUBMIT and age(o.updated_ns) <= AWAIT_REPLY_NS
    ]
    # Two rounds: first every order takes a line whose order division is the one it was sent with (the
    # broker reports it), then what is left by the terms alone. So a limit order of ours never takes the
    # line of a 최유리 order of ours that the exchange priced at the limit's price, nor the other way round.
    matched: set[str] = set()
    for agreeing in (True, False):
        for o in unresolved:
            if o.client_order_id in matched:
                continue
            candidates = [
                r
                for r in _free_lines(originals, owner_of, claimed, o)
                if (not agreeing or _agrees(r, o)) and not _awaited(r, awaiting_reply, day)
            ]
            if not agreeing and _market_like(o):
                # matched without the price: a line with the exact terms of a priced order of ours still
                # unmatched is taken last (it is more likely that one's)
                wanted = {
                    (u.code, u.side, u.qty, u.price)
                    for u in unresolved
                    if u.client_order_id not in matched and not _market_like(u)
                }
                candidates.sort(key=lambda r: (r.code, r.side, r.qty, r.price) in wanted)
            # a line placed before this order existed here cannot be its send (the KIS app's, same terms)
            match = next((r for r in candidates if not _placed_before(r, o.created_ns, day)), None)
            if match is not None:
                matched.add(o.client_order_id)
                claimed.add(match.broker_order_id)
                owner_of[match.broker_order_id] = o
                chain[o.client_order_id] = [match.broker_order_id]
                res.add(
                    o.client_order_id, Accept(ts_ns=now_ns, broker_order_id=match.broker_order_id, org_no=match.org_no)
                )
                res.alerts.append(
                    f"{o.client_order_id}: outcome was unknown; the broker has it as {match.broker_order_id}"
                )
    for o in unresolved:
        if o.client_order_id in matched or partial:
            continue
        if _hold_for_pending(res, o, originals, owner_of, claimed, awaiting_reply, day):
            continue  # not "never reached the exchange" either: a line with its terms is there
        if age(o.updated_ns) <= grace_ns:
            continue
        before_send = [r for r in _free_lines(originals, owner_of, claimed, o) if _placed_before(r, o.created_ns, day)]
        res.add(
            o.client_order_id,
            Reject(
                ts_ns=now_ns,
                code=NOT_AT_BROKER,
                reason="sent but never reached the exchange (not in the day's orders)",
            ),
        )
        res.alerts.append(
            f"{o.client_order_id}: outcome was unknown; not at the broker after the grace period: rejected"
            + (
                f" (line(s) {[r.broker_order_id for r in before_send]} with its terms were placed at "
                f"{[r.time for r in before_send]}, before it was sent: not taken as its; check)"
                if before_send
                else ""
            )
        )

    # 1b. An order KIS refused in its REST reply carries no ODNO here, but KIS lists it among the
    # day's orders as a refused line: it is ours (already REJECTED), never an external order.
    refused = [
        o
        for o in local
        if not o.broker_chain and o.state is OrderState.REJECTED and o.reason_code == ErrorCode.BROKER_REJECTED.value
    ]
    for o in sorted(refused, key=lambda x: x.created_ns):
        lines = [
            r
            for r in originals
            if r.broker_order_id not in owner_of
            and r.broker_order_id not in claimed
            and not r.filled_qty
            and not r.remaining_qty
            and _plausible(r, o)
        ]
        match = next((r for r in lines if _agrees(r, o)), lines[0] if lines else None)
        if match is not None:
            claimed.add(match.broker_order_id)

    # 2. revise and cancel lines belong to the chain whose ODNO they name (revisions of revisions too)
    for r in sorted((r for r in reports if r.is_modify or r.is_cancel), key=lambda r: r.broker_order_id):
        owner = owner_of.get(r.orig_broker_order_id)
        if owner is None:
            continue  # of an external order, or of an order we never knew: handled with externals
        claimed.add(r.broker_order_id)
        if r.is_modify and r.broker_order_id not in chain[owner.client_order_id]:
            if r.rejected_qty and not r.qty - r.rejected_qty:
                continue  # a refused revise changed nothing
            earlier = chain[owner.client_order_id]
            if partial and any(x not in by_odno for x in earlier):
                continue  # the fills on a line the list does not show decide the total: the full pass
            # a revise carries the remainder it moves: the new total is what the earlier lines filled
            # (the broker's count, or the books' when notices are ahead of the list) plus that remainder,
            # plus what the earlier lines still have open: a partial revise (QTY_ALL_ORD_YN=N, e.g. from
            # the KIS app) moves only part of it, and the original line keeps the rest, which can fill too
            shown = [by_odno[x] for x in earlier if x in by_odno]
            done = max(owner.filled_qty, sum(x.filled_qty + x.remaining_qty for x in shown))
            chain[owner.client_order_id].append(r.broker_order_id)
            owner_of[r.broker_order_id] = owner
            new_total = done + r.qty
            if owner.state not in AMENDING:  # a revise we did not ask for (HTS, or before a restart)
                res.add(owner.client_order_id, RequestReplace(ts_ns=now_ns, price=r.price, qty=new_total))
            res.add(
                owner.client_order_id,
                Replaced(ts_ns=now_ns, broker_order_id=r.broker_order_id, price=r.price, qty=new_total),
            )

    # 3. per chain: cumulative fills and how the broker closed it
    for o in local:
        lines = [by_odno[x] for x in chain[o.client_order_id] if x in by_odno]
        if foreign := [r for r in lines if r.code != o.code or r.side != o.side]:
            # a number of its chain is another order's line at the broker (a number reused: a KIS twin that lost
            # its last seconds to a kill, an earlier day's): its fills were booked as this order's (another
            # code's shares, another agent's loss). Never merged: a person is told
            lines = [r for r in lines if r not in foreign]
            res.alerts.append(  # (led by the order's id: the per-order passes keep the alerts of their orders)
                f"{o.client_order_id}: CRITICAL: it ({o.side} {o.code}) holds broker number(s) "
                + ", ".join(f"{r.broker_order_id} (at the broker: {r.side} {r.qty} {r.code})" for r in foreign)
                + ": not taken as its; check the order and both positions against the account"
            )
        if not lines or (partial and len(lines) < len(chain[o.client_order_id])):
            continue  # partial: a line not shown may hold fills (a revised order's original never is)
        coid = o.client_order_id
        claimed.update(r.broker_order_id for r in lines)
        filled = sum(r.filled_qty for r in lines)
        value = sum(r.filled_value for r in lines)
        whole = not partial and len(lines) == len(chain[coid])  # every line of the chain shown
        _live_line_and_total(res, o, lines, filled, now_ns, age(o.updated_ns) > fill_grace_ns, whole)
        books_value = o.filled_value  # what the books' fills are worth once this pass's repairs apply
        if filled > o.filled_qty:
            qty, add_value = filled - o.filled_qty, value - o.filled_value
            if add_value >= qty:  # booked at the broker's value exactly (its price: the average)
                price = add_value // qty
            else:  # what we booked is worth more than the broker's whole fill: repriced by the next pass
                price = lines[-1].avg_fill_price or lines[-1].price
                add_value = qty * price
            books_value += add_value
            # one synthesised fill for all we missed; the state machine absorbs the late notices of it
            res.add(
                coid,
                Fill(
                    ts_ns=now_ns,
                    fill_id=f"recon:{lines[-1].broker_order_id}:{filled}",
                    qty=qty,
                    price=price,
                    broker_order_id=lines[-1].broker_order_id,
                    value=add_value,
                ),
            )
            res.alerts.append(f"{coid}: {qty} filled at the broker but missing here: added at {price}")
        if partial:
            continue  # fewer fills, other values, a closed chain: only the whole list can tell
        if not whole:
            # a whole pass without a line of this chain: KIS lists every line of the day, so the list lags a
            # revise, or it is short (a continuation page lost: kis/rest.py asks an empty one again), or the
            # number is not KIS's (a garbled notice). Within the grace the next pass decides: fewer fills or a
            # closed chain judged on part of it took real fills back and expired a live order. Past it the
            # lines shown decide, as before, and a person is told what they were judged without
            if age(o.updated_ns) <= fill_grace_ns:
                continue
            missing = [x for x in chain[coid] if x not in by_odno]  # (a foreign line is told above)
            judged = o.state in OPEN and all(r.remaining_qty == 0 for r in lines)
            if judged and not (lines[-1].cancelled_qty or lines[-1].rejected_qty):
                # (kept open for the close or for its revise's line: nothing is judged, nothing to say at each pass)
                judged = _may_have_expired(o, res.events.get(coid, []), now_ns, day, lines[-1])
            if missing and (filled < o.filled_qty or judged):
                res.alerts.append(
                    f"{coid}: its line(s) {missing} are not in KIS's order list of the day (a list cut short, or "
                    "a number KIS never gave): judged on the lines it shows; check it in the KIS app"
                )
        if filled < o.filled_qty:
            books_value -= _take_back(res, o, o.filled_qty - filled, filled, now_ns, fill_grace_ns, age)
        if (
            filled
            and books_value != value
            and filled <= o.filled_qty  # after a synthesised fill: the next pass (if that fill is refused, never)
            and coid not in res.held
            and not any(r.from_notice and age(r.ts_ns) < fill_grace_ns for r in o.fills if r.live_qty)
        ):
            # the same shares at another value (a notice's wrong price, or a forged fill booked where
            # the real one came at another price and was refused as an overfill): the broker's value
            # wins, once every notice fill is past the grace (the list may lag a notice), and only
            # when its two figures agree (total value and average price, each line)
            if _value_plausible(lines):
                res.add(
                    coid,
                    Reprice(
                        ts_ns=now_ns,
                        qty=filled,
                        value=value,
                        reason=f"the broker's filled value is {value} KRW, the books had {books_value}",
                    ),
                )
                res.alerts.append(
                    f"{coid}: {filled} filled worth {value} KRW at the broker, {books_value} here: corrected"
                )
            else:
                res.alerts.append(
                    f"{coid}: {filled} filled worth {value} KRW at the broker (its average price says "
                    f"otherwise), {books_value} here: left as is, check"
                )
        latest = lines[-1]
        total_qty = max(o.qty, filled)
        for ev in res.events.get(coid, []):
            if isinstance(ev, Replaced) or (isinstance(ev, Reopen) and ev.qty):
                total_qty = ev.qty
        pending = res.events.get(coid, [])
        reopened = (o.state is OrderState.FILLED and any(isinstance(e, ReverseFill) for e in pending)) or any(
            isinstance(e, Reopen) for e in pending
        )
        open_here = o.state in OPEN or reopened or any(isinstance(e, Accept) for e in pending)
        # closed only when no line of the chain has anything left (after a partial revise the earlier
        # line keeps an open part of its own)
        if open_here and all(r.remaining_qty == 0 for r in lines) and filled < total_qty:
            if latest.rejected_qty and not filled:
                res.add(
                    coid, Reject(ts_ns=now_ns, code=ErrorCode.BROKER_REJECTED.value, reason="rejected at the exchange")
                )
            elif latest.cancelled_qty or any(
                by_odno[x].is_cancel for x in by_odno if by_odno[x].orig_broker_order_id in chain[coid]
            ):
                res.add(coid, Cancelled(ts_ns=now_ns))
            elif _may_have_expired(o, pending, now_ns, day, latest):
                # (else nothing open and neither cancelled nor refused, in the session: the exchange expires a DAY
                # order only at the close, so its remainder was moved -- by a revise whose line the list does not
                # show yet (API.md §15: the list lags). Expired here, a revise whose REST answer was lost stayed live
                # at KIS, unreserved, and filled for an agent told its order had expired (a hunt). Our own revise is
                # the chain repair's (taken up once listed, or refused after its grace); the close settles the rest)
                res.add(coid, Expire(ts_ns=now_ns))
        elif (
            o.state is OrderState.CANCELLED
            and age(o.updated_ns) > fill_grace_ns  # (the list may lag the cancel's confirmation)
            and (live := [r for r in lines if r.remaining_qty])
        ):
            # cancelled here, while a line of its chain still rests at KIS (a cancel reaches the latest
            # line only; after a partial revise from the KIS app the earlier one keeps its own open
            # part): its shares can still fill with nobody's cash reserved for them. (EXPIRED is not
            # asked: after the close KIS may list what the exchange expired as still open.)
            res.alerts.append(
                f"{coid}: {o.state.value} here, but at KIS "
                + ", ".join(f"line {r.broker_order_id} still has {r.remaining_qty} open" for r in live)
                + ": cancel it in the KIS app"
            )

    # 4. broker originals nobody claims: placed outside ktrader
    # A line with the terms of a submit of ours whose ODNO is not known yet is not taken for an order
    # of somebody else's: the submit's REST reply may still be on its way (PENDING_SUBMIT), or, on a
    # partial list, an UNKNOWN was not matched; the next (whole) pass decides
    # (a market-like one's line is listed at the price the exchange gave it: matched without the price)
    in_flight = [
        o
        for o in local
        if not o.broker_chain and (o.state is OrderState.PENDING_SUBMIT or (partial and o.state is OrderState.UNKNOWN))
    ]
    for r in originals:
        if r.broker_order_id not in claimed and r.broker_order_id not in owner_of:
            if any(_plausible(r, o) for o in in_flight):
                continue
            res.external.append(r)
    return res


def _market_like(o: Order) -> bool:
    """Sent with price 0 (ORD_UNPR "0"): executed at the market, or priced by the exchange (최유리, 최우선)."""
    return o.order_type in MARKET_LIKE or not o.price


def _division(o: Order) -> str:
    """The order division (KIS ORD_DVSN) the order was sent with; "" for a pair KIS has none for (never
    sent). A held order (HELD_TIFS) is sent as a DAY order."""
    tif = TimeInForce.DAY if o.tif in HELD_TIFS else o.tif
    return ORDER_DIVISIONS.get((o.order_type, tif), "")


def _plausible(r: BrokerOrderReport, o: Order) -> bool:
    """The broker line `r` may be the send of `o` (an order of ours whose ODNO is not known): the same
    code, side and quantity, and the same price for a priced order. A market-like order is listed at the
    price the exchange gave it (최유리/최우선 at the best quote; a market order at 0 or at its price),
    so its price is not compared; its division is, when the broker reports one."""
    if r.code != o.code or r.side != o.side or r.qty != o.qty:
        return False
    if not _market_like(o):
        return r.price == o.price
    want = _division(o)
    return not r.order_division or not want or r.order_division == want


def _awaited(r: BrokerOrderReport, pending: list[Order], day: dt.date) -> list[Order]:
    """The submits of ours waiting for their REST reply (`pending`) that the broker line `r` may be the
    send of: plausible, and not placed before the submit existed here."""
    return [p for p in pending if _plausible(r, p) and not _placed_before(r, p.created_ns, day)]


def _free_lines(
    originals: list[BrokerOrderReport], owner_of: dict[str, Order], claimed: set[str], o: Order
) -> list[BrokerOrderReport]:
    """The broker's lines nobody owns or claimed in this pass whose terms `o` could have (step 1's candidates)."""
    free = (r for r in originals if r.broker_order_id not in owner_of and r.broker_order_id not in claimed)
    return [r for r in free if _plausible(r, o)]


def _hold_for_pending(
    res: ReconcileResult,
    o: Order,
    originals: list[BrokerOrderReport],
    owner_of: dict[str, Order],
    claimed: set[str],
    pending: list[Order],
    day: dt.date,
) -> bool:
    """An UNKNOWN `o` left unmatched whose only possible lines may be the send of a submit still waiting
    for its reply: alerted (the ambiguity), True. The next pass decides, once that reply has landed."""
    lines = [r for r in _free_lines(originals, owner_of, claimed, o) if not _placed_before(r, o.created_ns, day)]
    awaited = {r.broker_order_id: _awaited(r, pending, day) for r in lines}
    twins = {p.client_order_id: p for ps in awaited.values() for p in ps}
    if not twins:
        return False
    lines = [r for r in lines if awaited[r.broker_order_id]]
    res.alerts.append(
        f"{o.client_order_id}: outcome was unknown; line(s) {[r.broker_order_id for r in lines]} with its terms "
        f"may be the send of {sorted(twins)} (agents {sorted({p.agent for p in twins.values()})}), whose broker "
        "reply is still awaited: not attributed in this pass, the next pass decides"
    )
    return True


def _agrees(r: BrokerOrderReport, o: Order) -> bool:
    """The broker reports the line's division and it is the one `o` was sent with."""
    return bool(r.order_division) and r.order_division == _division(o)


def _same_terms(a: Order, b: Order) -> bool:
    """Two orders of ours one broker line could be the send of (the ambiguity alerted in step 1)."""
    if (a.code, a.side, a.qty) != (b.code, b.side, b.qty) or _market_like(a) != _market_like(b):
        return False
    return _division(a) == _division(b) if _market_like(a) else a.price == b.price


def _preview(o: Order, events: list[OrderEvent]) -> Order:
    """The order as the events of this pass so far would leave it (those the machine refuses skipped)."""
    for ev in events:
        try:
            o = apply(o, ev)
        except StateError:
            continue
    return o


def _live_line_and_total(
    res: ReconcileResult,
    o: Order,
    lines: list[BrokerOrderReport],
    filled: int,
    now_ns: int,
    settled: bool,
    whole: bool,
) -> None:
    """Before the chain's fills are taken (`lines`: the chain's lines the broker shows, `filled`: their
    cumulative fill), the order is made able to take them on the line that is live:
    - REJECTED here, while the broker's lines have fills, or are still open past the grace (the list
      may lag a refusal): the refusal was of another line (a notice about a revise or cancel), so the
      order is reopened, and its fills are its agent's rather than refused and left to 'external';
    - its live line is a revise the exchange refused (nothing filled or open there) while an earlier
      line of the chain is open: the order goes back to that line, at its price;
    - its total is not the broker's (what the lines filled plus what they still hold open; with
      nothing open, at least what they filled): corrected at once when the broker filled more than the
      total (the fill would be refused as an overfill), otherwise only by a whole pass that shows
      every line of the chain, on an order nothing happened to within the grace (the list can lag a
      revise), while a line is open. `settled`: the order's last change is older than that grace."""
    coid = o.client_order_id
    cur = _preview(o, res.events.get(coid, []))
    open_qty = sum(r.remaining_qty for r in lines)
    broker_total = filled + open_qty if open_qty else max(cur.qty, filled)
    if cur.state is OrderState.REJECTED and (filled or (open_qty and settled)):
        what = f"{filled} filled" + (f", {open_qty} open" if open_qty else "") if filled else f"{open_qty} open"
        res.add(
            coid,
            Reopen(
                ts_ns=now_ns,
                qty=broker_total if broker_total != cur.qty else 0,
                reason=f"rejected here, but {what} at the broker: reopened",
            ),
        )
        res.alerts.append(
            f"{coid}: rejected here, but {what} at the broker (the refusal was of another line): reopened, "
            f"its fills are {o.agent}'s"
        )
        cur = _preview(o, res.events[coid])
    by_odno = {r.broker_order_id: r for r in lines}
    live = by_odno.get(cur.broker_order_id)
    moving = any(isinstance(e, Replaced) for e in res.events.get(coid, []))  # (step 2 adopted a revise)
    if (
        not moving
        and (cur.state in RESTING or cur.state is OrderState.PENDING_CANCEL)
        and live is not None
        and live.is_modify
        and live.rejected_qty
        and not live.filled_qty
        and not live.remaining_qty
        and (back := next((r for r in reversed(lines) if r.remaining_qty), None)) is not None
    ):
        if cur.state in RESTING:  # (a cancel pending takes the move as it is: it must reach the live line)
            res.add(coid, RequestReplace(ts_ns=now_ns, price=back.price, qty=cur.qty))
        res.add(coid, Replaced(ts_ns=now_ns, broker_order_id=back.broker_order_id, price=back.price, qty=cur.qty))
        res.alerts.append(
            f"{coid}: its revise {live.broker_order_id} was refused at the exchange; live at the broker as "
            f"{back.broker_order_id} at {back.price}: moved back"
        )
        cur, moving = _preview(o, res.events[coid]), True
    if broker_total == cur.qty or not (filled > cur.qty or (open_qty and settled and whole and not moving)):
        return
    if cur.state in RESTING:
        res.add(coid, RequestReplace(ts_ns=now_ns, price=cur.price, qty=broker_total))
        res.add(coid, Replaced(ts_ns=now_ns, broker_order_id=cur.broker_order_id, price=cur.price, qty=broker_total))
    elif cur.state is OrderState.PENDING_CANCEL:
        res.add(coid, Replaced(ts_ns=now_ns, broker_order_id=cur.broker_order_id, price=cur.price, qty=broker_total))
    elif cur.state is OrderState.FILLED:
        res.add(
            coid,
            Reopen(ts_ns=now_ns, qty=broker_total, reason=f"the broker's lines hold {broker_total} in all: reopened"),
        )
    else:  # a revise in flight (the repair settles it), or closed here: told (of a fill it refuses), not changed
        if filled > cur.qty:
            res.alerts.append(
                f"{coid}: {cur.qty} in all here ({cur.state.value}), {filled} filled in the broker's lines: check"
            )
        return
    res.alerts.append(
        f"{coid}: {cur.qty} in all here, the broker's lines hold {broker_total} ({filled} filled, {open_qty} "
        "open): total corrected"
    )


def _placed_before(r: BrokerOrderReport, created_ns: int, day: dt.date) -> bool:
    """The line's order time (ord_tmd, HHMMSS KST of `day`) is more than SEND_SKEW_NS before
    `created_ns`. False when either is unknown (no time, an order without a creation time)."""
    if not created_ns:
        return False
    try:
        sec = parse_hhmmss(r.time.strip())
    except BarError:
        return False
    placed_ns = (int(dt.datetime.combine(day, dt.time(), KST).timestamp()) + sec) * 1_000_000_000
    return placed_ns < created_ns - SEND_SKEW_NS


def _value_plausible(lines: list[BrokerOrderReport]) -> bool:
    """Each line's filled value agrees with its average fill price (rounded either way), a share
    worth 1 KRW at least."""
    return all(
        r.avg_fill_price > 0
        and r.filled_value >= r.filled_qty
        and abs(r.filled_value - r.avg_fill_price * r.filled_qty) < r.filled_qty
        for r in lines
        if r.filled_qty
    )


def _take_back(
    res: ReconcileResult,
    o: Order,
    excess: int,
    broker_filled: int,
    now_ns: int,
    grace_ns: int,
    age: Callable[[int], int],
) -> int:
    """We booked `excess` more than the broker's cumulative fill. Notice fills younger than the grace
    may be real and not in the (lagging) list yet: held as unconfirmed. The rest is taken back from
    the older notice fills, newest first; reconciled fills are the broker's own numbers, never.
    Returns the value taken back."""
    coid = o.client_order_id
    young = sum(r.live_qty for r in o.fills if r.from_notice and age(r.ts_ns) < grace_ns)
    held = min(excess, young)
    if held:
        res.unconfirmed[o.code] = res.unconfirmed.get(o.code, 0) + (held if o.side is Side.BUY else -held)
        res.held.add(coid)
    due = excess - young
    if due <= 0:
        return 0  # all of it may still appear in the list: held as unconfirmed
    taken = 0
    for r in reversed(o.fills):
        if due <= 0:
            break
        if not r.from_notice or r.live_qty <= 0 or age(r.ts_ns) < grace_ns:
            continue
        q = min(due, r.live_qty)
        taken += r.value * q // r.qty  # at the fill's own price, as the state machine takes it back
        res.add(
            coid,
            ReverseFill(
                ts_ns=now_ns,
                fill_id=r.fill_id,
                qty=q,
                reason=f"the broker's order list does not have this fill ({FILL_NOT_AT_BROKER})",
            ),
        )
        res.alerts.append(
            f"{coid}: the broker has {broker_filled} filled, we booked {o.filled_qty}: "
            f"{q} of fill {r.fill_id} taken back (not at the broker)"
        )
        due -= q
    if due > 0:
        res.alerts.append(
            f"{coid}: we count {o.filled_qty} filled, the broker {broker_filled}; {due} cannot be "
            "matched to a notice fill (left as is: check)"
        )
        res.held.add(coid)
    return taken
