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


class NoticeRouter:
    def __init__(
        self, book: OrderBook, on_broker_error: Callable[[int], None], learn: Callable[[str], None] = lambda coid: None
    ) -> None:
        self.book = book
        self.on_broker_error = on_broker_error  # the kill switch counts rejections
        self.learn = learn  # read the broker's list for this order now (server/chain_repair.py)
        self.unmatched: dict[str, list[BrokerNotice]] = defaultdict(list)

    def new_day(self, day: str = "") -> None:
        """Notices still waiting for an order of theirs (an acknowledgement that never came, an ODNO of
        nobody's) cannot be matched on a later day: let them go, as a restart would."""
        if self.unmatched:
            log.info("new day: %d ODNOs' unmatched notices let go", len(self.unmatched))
            self.unmatched.clear()

    def claim(self, odno: str, coid: str) -> None:
        """`odno` is `coid`'s (a REST reply or reconciliation said so): apply what waited for it."""
        self.book.by_broker_id[odno] = coid
        self.drain(odno)

    def drain(self, odno: str) -> None:
        for notice in self.unmatched.pop(odno, []):
            self.on_notice(notice)

    def replay_chain(self, coid: str) -> None:
        """The order went into doubt: buffered notices of lines that name its chain apply now."""
        chain = set(self.book.orders[coid].broker_chain) if coid in self.book.orders else set()
        for odno in [k for k, ns in self.unmatched.items() if any(n.orig_broker_order_id in chain for n in ns)]:
            for notice in self.unmatched.pop(odno, []):
                self.on_notice(notice)

    def on_notice(self, n: BrokerNotice) -> None:
        book = self.book
        coid = book.by_broker_id.get(n.broker_order_id)
        if coid is None and n.orig_broker_order_id:
            # a cancel/revise line whose REST reply we did not see (lost, or sent before a restart):
            # the ODNO it names tells whose it is. While our own request is in flight, its reply
            # claims the ODNO first (so a revise is applied before the fills of its new line).
            owner = book.by_broker_id.get(n.orig_broker_order_id)
            if owner is not None and (book.orders[owner].state not in AMENDING or book.orders[owner].in_doubt):
                coid = owner
                book.by_broker_id[n.broker_order_id] = coid
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
        elif n.kind is NoticeKind.REJECTED:
            self.on_broker_error(ts)
            o = book.orders[coid]
            code = ErrorCode.BROKER_REJECTED.value
            if o.state is OrderState.PENDING_CANCEL:
                book.try_apply(coid, CancelRefused(ts_ns=ts, code=code, reason="cancel rejected"))
            elif o.state is OrderState.PENDING_REPLACE:
                book.try_apply(coid, ReplaceRefused(ts_ns=ts, code=code, reason="revise rejected"))
            else:
                book.try_apply(coid, Reject(ts_ns=ts, code=code, reason="rejected by the exchange"))
        elif n.kind is NoticeKind.CANCELLED:
            # 확인 (confirmed) or an IOC/FOK remainder: final. A cancel's 접수 (accepted) is not: a
            # fill can still come first, so the order stays PENDING_CANCEL until confirmation.
            book.try_apply(coid, Cancelled(ts_ns=ts, broker_order_id=n.broker_order_id))

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
        moved = Replaced(
            ts_ns=ts, broker_order_id=n.broker_order_id, price=n.order_price, qty=o.filled_qty + n.order_qty
        )
        if o.state in AMENDING:
            book.try_apply(coid, moved)
        elif o.state in REVISABLE:  # a revise we did not send (HTS), or one sent before a restart
            if book.try_apply(coid, RequestReplace(ts_ns=ts, price=n.order_price, qty=moved.qty)) is not None:
                book.try_apply(coid, moved)
        else:
            self.learn(coid)
            return
        self.drain(n.broker_order_id)
