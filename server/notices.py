"""Order and fill notices → events on the book of record.

A notice names a broker order number (ODNO). It may arrive before the REST reply that tells us whose
ODNO it is: it is then buffered by ODNO (bounded) and applied the moment the ODNO is claimed
(`claim`); what is never claimed is adopted by reconciliation.

A revise gives the order a new line (ODNO) that names the one it revised. While our own revise or
cancel is in flight, its REST reply claims the new line first; when that reply was lost (the order
is in doubt) or there was none (a revise from the HTS app, or one sent before a restart), the notice
itself says where the order lives now: a revise acceptance naming the live line moves the order to
the new line at once. A notice naming a line of a chain we cannot place asks the chain repair
(`learn`) to read the broker's list for that order now.

A cancel of ours that KIS acknowledged (its REST reply, `cancel_acked`, or its 접수 notice, ACPT_YN 1)
is final only on its 확인 (ACPT_YN 2) or an IOC/FOK kill (ACPT_YN 3): a fill can still come first. A 확인
of fewer shares than the remainder we count is not final either: the rest filled, its notices still to come.
Whether KIS sends a 확인 for a cancel at all is UNCONFIRMED (API.md §5.8, §11: one acceptance notice
per order, revise or cancel), so an acknowledged cancel without it is handed to `cancel_unconfirmed`:
the broker's order list is read for that order within seconds (server/reconciler.py EarlyInquiry), not
only at the next periodic pass (its cash and risk stay held, its agent waits, meanwhile).

A rejection notice (거부, RFUS_YN 1) rejects the order only when it names the order's original line
while that line is the live one. A rejection of a revise or cancel line (RCTF_CLS 1/2, an OODER_NO, or
any line after the original) is a refused revise or cancel: the order stays live on the line it had
before; a revise KIS had already acknowledged over REST is undone (the order goes back to the line it
revised, at that line's terms). A duplicated rejection changes nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from common.errors import ErrorCode
from common.orders import (
    AMENDING,
    REVISABLE,
    Accept,
    Cancelled,
    CancelRefused,
    Fill,
    RESTING,
    Order,
    OrderState,
    Reject,
    Replaced,
    ReplaceRefused,
    RequestReplace,
)
from kis.port import BrokerNotice, NoticeKind
from server.order_book import OrderBook

log = logging.getLogger("ktrader.notices")

MAX_UNMATCHED = 10_000  # ODNOs with buffered notices; beyond it notices are left to reconciliation
EARLIER_SLACK_S = 600  # a notice timed this far past the clock's time of day is of an earlier day


class NoticeRouter:
    def __init__(
        self,
        book: OrderBook,
        on_broker_error: Callable[[int, str, bool], None],
        learn: Callable[[str], None] = lambda coid: None,
        cancel_unconfirmed: Callable[[str, str], None] = lambda coid, line: None,
    ) -> None:
        self.book = book
        self.on_broker_error = on_broker_error  # the kill switch counts rejections
        self.learn = learn  # read the broker's list for this order now (server/chain_repair.py)
        # (order, its cancel's line): the cancel was acknowledged and not confirmed: read the broker's list
        # for the order soon (server/reconciler.py EarlyInquiry.watch_cancel)
        self.cancel_unconfirmed = cancel_unconfirmed
        self.unmatched: dict[str, list[BrokerNotice]] = defaultdict(list)
        self.refused: set[str] = set()  # ODNOs whose rejection notice was applied: a duplicate changes nothing
        self.shrunk: set[str] = set()  # cancel ODNOs that took part of a resting order (below): applied once
        # revise line -> (the line it moved the order from, the order's price there): where the order goes
        # back to should the exchange refuse a revise that KIS had already acknowledged
        self.moved_from: dict[str, tuple[str, int]] = {}
        book.listeners.append(self._moved)

    def new_day(self, day: str = "") -> None:
        """Notices still waiting for an order of theirs (an acknowledgement that never came, an ODNO of
        nobody's) cannot be matched on a later day: let them go, as a restart would."""
        if self.unmatched:
            log.info("new day: %d ODNOs' unmatched notices let go", len(self.unmatched))
            self.unmatched.clear()
        self.refused.clear()  # (ODNOs are numbered per day)
        self.shrunk.clear()
        self.moved_from.clear()

    def _moved(self, old: Order | None, new: Order) -> None:
        """Every move of an order to a new line (a revise acknowledged over REST, a revise notice,
        reconciliation) is remembered with the terms it left."""
        if (
            old is not None
            and old.broker_order_id
            and new.broker_order_id != old.broker_order_id
            and new.broker_order_id not in old.broker_chain
            and len(self.moved_from) < MAX_UNMATCHED
        ):
            self.moved_from[new.broker_order_id] = (old.broker_order_id, old.price)

    def claim(self, odno: str, coid: str) -> None:
        """`odno` is `coid`'s (a REST reply or reconciliation said so): apply what waited for it."""
        self.book.by_broker_id[odno] = coid
        self.drain(odno)

    def drain(self, odno: str) -> None:
        for notice in self.unmatched.pop(odno, []):
            self.on_notice(notice)

    def cancel_acked(self, coid: str, odno: str) -> None:
        """KIS acknowledged our cancel of `coid` over REST, as its line `odno`: the notices that waited
        for that line apply now; unless one of them confirmed it, the order list is asked soon."""
        self.drain(odno)
        self._unconfirmed(coid, odno)

    def _unconfirmed(self, coid: str, odno: str) -> None:
        o = self.book.orders.get(coid)
        # (in doubt: the chain repair reads the list already; ended: the 확인 or a fill came first)
        if o is not None and o.state is OrderState.PENDING_CANCEL and not o.in_doubt:
            self.cancel_unconfirmed(coid, odno)

    def replay_chain(self, coid: str) -> None:
        """The order went into doubt: buffered notices of lines that name its chain apply now."""
        chain = set(self.book.orders[coid].broker_chain) if coid in self.book.orders else set()
        for odno in [k for k, ns in self.unmatched.items() if any(n.orig_broker_order_id in chain for n in ns)]:
            for notice in self.unmatched.pop(odno, []):
                self.on_notice(notice)

    def _owner(self, odno: str, earlier: bool) -> str | None:
        """The order `odno` maps to, if it is of the notice's day: KIS numbers each day's orders anew and ends them
        with their day (after-hours trading ends at 18:00), so a number an earlier day's order still open here
        (its close not settled yet) holds is, in a notice of today's, a new order's of today (a submit or a revise
        whose REST reply has not come, or was lost): that notice waits for the reply or reconciliation to claim
        the line (`claim`, `drain`), and reconciliation settles the old order from its own day's list. A notice of
        an earlier day (`earlier`: a close that ran past midnight) finds only an earlier day's order."""
        coid = self.book.by_broker_id.get(odno)
        # (a market that never closes, an `open` twin or a test broker: no order is of an earlier day, no notice is)
        return coid if coid is None or bool(self.book.of_an_earlier_day(coid)) == earlier else None

    def _of_an_earlier_day(self, n: BrokerNotice) -> bool:
        """A notice in the night (before 08:00, ahead of the day's first session) timed well after the clock's now
        (by more than EARLIER_SLACK_S, a clock's skew): of the day before (a close that ran past midnight), not of
        today. In the day an earlier day's notice cannot come (that day's came by its 18:00)."""
        if not self.book.clock.timed or len(n.time) < 6 or not n.time[:6].isdigit():
            return False
        now = self.book.clock.now()
        if now.hour >= 8:
            return False
        at = int(n.time[:2]) * 3600 + int(n.time[2:4]) * 60 + int(n.time[4:6])
        return at > now.hour * 3600 + now.minute * 60 + now.second + EARLIER_SLACK_S

    def on_notice(self, n: BrokerNotice) -> None:
        book = self.book
        earlier = self._of_an_earlier_day(n)
        coid = self._owner(n.broker_order_id, earlier)
        if coid is None and n.orig_broker_order_id:
            # a cancel/revise line whose REST reply we did not see (lost, or sent before a restart):
            # the ODNO it names tells whose it is. While our own request is in flight, its reply
            # claims the ODNO first (so a revise is applied before the fills of its new line).
            owner = self._owner(n.orig_broker_order_id, earlier)
            if owner is not None and (book.orders[owner].state not in AMENDING or book.orders[owner].in_doubt):
                coid = owner
                book.by_broker_id[n.broker_order_id] = coid
        if coid is None and earlier:
            # never a claim of today's to wait for: that day's own list settles its order (reconciliation)
            log.info(
                "notice %s %s of an earlier day (at %s) for no open order of that day: left to reconciliation",
                n.kind.value,
                n.broker_order_id,
                n.time,
            )
            return
        if coid is None:
            if len(self.unmatched) < MAX_UNMATCHED:
                self.unmatched[n.broker_order_id].append(n)
            return
        ts = book.now_ns()
        book.trace(
            coid,
            "notice",
            kind=n.kind.value,
            odno=n.broker_order_id,
            orig=n.orig_broker_order_id,
            fill_qty=n.fill_qty,
            fill_price=n.fill_price,
            order_qty=n.order_qty,
            time=n.time,
            is_cancel=n.is_cancel,
            is_modify=n.is_modify,
        )
        if n.kind is NoticeKind.FILLED:
            # KIS notices carry no fill id; a duplicated notice repeats these fields exactly. Two
            # genuine fills with equal time, qty and price collapse into one here; reconciliation
            # against the broker's cumulative filled quantity restores the missing one. A broker that
            # does number its fills (the shadow market) says so in `fill_ref`.
            ref = n.fill_ref or f"{n.time}:{n.fill_qty}:{n.fill_price}"
            book.apply_fill(
                coid,
                Fill(
                    ts_ns=ts,
                    fill_id=f"{n.broker_order_id}:{ref}",
                    qty=n.fill_qty,
                    price=n.fill_price,
                    broker_order_id=n.broker_order_id,
                ),
            )
            if n.broker_order_id not in book.orders[coid].broker_chain:
                self.learn(coid)  # a fill on a line of the chain we cannot place: where does it live now?
        elif n.is_modify and n.kind in (NoticeKind.ACCEPTED, NoticeKind.MODIFIED):
            self._revised(coid, n, ts)
        elif n.kind is NoticeKind.ACCEPTED and not n.is_cancel and not n.is_modify:
            book.try_apply(coid, Accept(ts_ns=ts, broker_order_id=n.broker_order_id))
        elif n.kind is NoticeKind.ACCEPTED and n.is_cancel:
            self._unconfirmed(coid, n.broker_order_id)  # 접수: final on its 확인 (below), or the list's word
        elif n.kind is NoticeKind.REJECTED:
            if n.broker_order_id in self.refused:
                return  # a duplicated notice: its line's refusal was applied (and counted) already
            self.refused.add(n.broker_order_id)
            self.on_broker_error(ts, book.orders[coid].agent, True)  # the exchange refused one order: its agent's
            self._rejected(coid, n, ts)
        elif n.kind is NoticeKind.CANCELLED and n.broker_order_id in self.shrunk:
            pass  # a repeat of a cancel that shrank the order (below): applied once
        elif (
            n.kind is NoticeKind.CANCELLED
            and (o := book.orders[coid]).state in RESTING
            and 0 < n.order_qty < o.remaining
        ):
            # a cancel we did not ask for (the KIS app's) confirmed for part of what is open here: a partial cancel
            # (QTY_ALL_ORD_YN N: the rest stays live on its line), or a whole one that fills beat (their notices on
            # their way): either way the order shrinks by what it took and stays open (ended, the rest live at KIS
            # was freed here and filled for an agent told its order had ended: a hunt); the list settles the rest
            self.shrunk.add(n.broker_order_id)
            total = o.qty - n.order_qty
            book.try_apply(coid, RequestReplace(ts_ns=ts, price=o.price, qty=total))
            book.try_apply(coid, Replaced(ts_ns=ts, broker_order_id=o.broker_order_id, price=o.price, qty=total))
            log.warning(
                "%s: %d of it cancelled outside ktrader (line %s): %d in all now, %d still open",
                coid,
                n.order_qty,
                n.broker_order_id,
                total,
                total - o.filled_qty,
            )
            self.learn(coid)  # (the broker's list for it now: a whole cancel that fills beat ends it there)
        elif n.kind is NoticeKind.CANCELLED:
            # 확인 (confirmed) or an IOC/FOK remainder: final. A cancel's 접수 (accepted) is not: a
            # fill can still come first, so the order stays PENDING_CANCEL until confirmation, or until
            # the broker's order list, read soon after the 접수 (above), closes it. A confirmation of
            # fewer than the remainder we count (its quantity, ODER_QTY) is not final either: the
            # difference filled before the cancel reached the exchange and its fill notices are still
            # to come (common/orders.py Cancelled); it stays reserved until they do, or until the
            # broker's list, read soon, closes the order. (No quantity: the whole remainder, as before.)
            book.try_apply(coid, Cancelled(ts_ns=ts, broker_order_id=n.broker_order_id, qty=max(n.order_qty, 0)))
            self._unconfirmed(coid, n.broker_order_id)  # partly confirmed: the list is read soon (ended: nothing)

    def _rejected(self, coid: str, n: BrokerNotice, ts: int) -> None:
        """A line of this order was refused at the exchange. Only a refusal of the order's original
        line, while that line is the live one, rejects the order; any other line's refusal is that of
        a revise or cancel, and the order stays live (a REJECTED order would free its cash and refuse
        the fills still to come on its live line)."""
        book = self.book
        o = book.orders[coid]
        code = ErrorCode.BROKER_REJECTED.value
        odno = n.broker_order_id
        marked_amend = n.is_cancel or n.is_modify or bool(n.orig_broker_order_id)
        original = o.broker_chain[0] if o.broker_chain else odno  # (unacknowledged: the submit's own line)
        if not marked_amend and odno == original and o.state not in AMENDING:
            if odno == (o.broker_order_id or odno):
                book.try_apply(coid, Reject(ts_ns=ts, code=code, reason="rejected by the exchange"))
            else:
                self.learn(coid)  # the original refused after a revise of it moved on: only the list can tell
            return
        if o.state in AMENDING and not marked_amend and odno == original:
            # unmarked, at the live number, with our revise/cancel in flight: taken as the refusal of that
            # (the order rests), while the broker's list tells whether the order itself was refused
            self.learn(coid)
        if n.is_cancel or (not n.is_modify and o.state is OrderState.PENDING_CANCEL):
            if o.state is OrderState.PENDING_CANCEL:
                book.try_apply(coid, CancelRefused(ts_ns=ts, code=code, reason="cancel refused by the exchange"))
            return  # (a cancel no longer pending here, or one sent from the KIS app: nothing changed)
        if o.state is OrderState.PENDING_REPLACE and (
            odno not in o.broker_chain or odno == original == o.broker_order_id
        ):
            # our revise (its REST answer lost or still to come): refused, the old terms stand
            book.try_apply(coid, ReplaceRefused(ts_ns=ts, code=code, reason="revise refused by the exchange"))
        elif odno == o.broker_order_id and odno != original:
            self._move_back(coid, o, odno, ts)
        # else a revise line that is not live here (refused before it moved the order, a revise from the KIS
        # app, a refusal already undone): nothing changed

    def _move_back(self, coid: str, o: Order, odno: str, ts: int) -> None:
        """KIS acknowledged a revise (the order moved to its line `odno`), then the exchange refused it:
        the line it revised is still live at KIS, at its old terms. The order goes back there."""
        book = self.book
        prev = self.moved_from.get(odno)
        if prev is None or prev[0] not in o.broker_chain or o.state not in REVISABLE | {OrderState.PENDING_CANCEL}:
            # its earlier terms are not known here (moved before a restart), or a revise of the refused line
            # is in flight: the broker's list says which line is live (server/reconcile.py moves it back)
            self.learn(coid)
            return
        line, price = prev
        book.trace(coid, "revise.undone", odno=odno, back_to=line, price=price)
        back = Replaced(ts_ns=ts, broker_order_id=line, price=price, qty=o.qty)  # a refused revise changed nothing
        if o.state in REVISABLE:  # (a cancel pending takes the move as it is: it must reach the live line)
            if book.try_apply(coid, RequestReplace(ts_ns=ts, price=price, qty=o.qty)) is None:
                self.learn(coid)
                return
        book.try_apply(coid, back)

    def _revised(self, coid: str, n: BrokerNotice, ts: int) -> None:
        """A revise line of this order was accepted at the broker. When it names the order's live line
        and we do not know it yet, the order moves to it now (its remainder at the notice's price)."""
        book = self.book
        o = book.orders[coid]
        if n.broker_order_id in o.broker_chain:
            return  # ours, already applied from the REST reply or reconciliation
        if n.orig_broker_order_id != o.broker_order_id or n.order_qty <= 0:
            self.learn(coid)  # it revises an older line: only the broker's list can tell what is live
            return
        # The total stays what the order had, or what our revise in flight asked for (pending_qty); never
        # our filled count plus the notice's quantity. API.md §5.8 only names the notice's ODER_QTY
        # 주문수량 (the revise order's quantity; CNTG_QTY "order qty in an acceptance notice"); §4.2 says a
        # revise moves the unfilled remainder to the new line and cannot raise the quantity. That it is
        # the remainder as KIS counted it when it revised is UNCONFIRMED, and our filled count may lag it
        # (the old line's fill notices can come after the revise's), which understated the total and
        # refused the new line's fills as overfills. A revise changes no total (only the price is
        # revisable, server/order_desk.py; a partial one leaves the rest on the earlier line), so the
        # notice's quantity is not used here; reconciliation corrects a total the broker's lines disagree
        # with.
        total = o.pending_qty if o.state in AMENDING and o.pending_qty else o.qty
        moved = Replaced(ts_ns=ts, broker_order_id=n.broker_order_id, price=n.order_price, qty=max(total, o.filled_qty))
        if o.state in AMENDING:
            book.try_apply(coid, moved)
        elif o.state in REVISABLE:  # a revise we did not send (HTS), or one sent before a restart
            if book.try_apply(coid, RequestReplace(ts_ns=ts, price=n.order_price, qty=moved.qty)) is not None:
                book.try_apply(coid, moved)
        else:
            self.learn(coid)
            return
        self.drain(n.broker_order_id)
