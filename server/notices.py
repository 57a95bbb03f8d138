"""Order and fill notices → events on the book of record.

A notice names a broker order number (ODNO). It may arrive before the REST reply that tells us whose
ODNO it is: it is then buffered by ODNO (bounded) and applied the moment the ODNO is claimed
(`claim`); what is never claimed is adopted by reconciliation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from common.errors import ErrorCode
from common.orders import Accept, Cancelled, CancelRefused, Fill, OrderState, Reject, ReplaceRefused
from kis.port import BrokerNotice, NoticeKind
from server.order_book import OrderBook

MAX_UNMATCHED = 10_000  # ODNOs with buffered notices; beyond it notices are left to reconciliation


class NoticeRouter:
    def __init__(self, book: OrderBook, on_broker_error: Callable[[int], None]) -> None:
        self.book = book
        self.on_broker_error = on_broker_error  # the kill switch counts rejections
        self.unmatched: dict[str, list[BrokerNotice]] = defaultdict(list)

    def claim(self, odno: str, coid: str) -> None:
        """`odno` is `coid`'s (a REST reply or reconciliation said so): apply what waited for it."""
        self.book.by_broker_id[odno] = coid
        self.drain(odno)

    def drain(self, odno: str) -> None:
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
            if owner is not None and book.orders[owner].state not in (OrderState.PENDING_REPLACE, OrderState.PENDING_CANCEL):
                coid = owner
                book.by_broker_id[n.broker_order_id] = coid
        if coid is None:
            if len(self.unmatched) < MAX_UNMATCHED:
                self.unmatched[n.broker_order_id].append(n)
            return
        ts = book.now_ns()
        book.trace(coid, "notice", kind=n.kind.value, odno=n.broker_order_id, orig=n.orig_broker_order_id,
                   fill_qty=n.fill_qty, fill_price=n.fill_price, time=n.time, is_cancel=n.is_cancel, is_modify=n.is_modify)
        if n.kind is NoticeKind.FILLED:
            # KIS notices carry no fill id; a duplicated notice repeats these fields exactly. Two
            # genuine fills with equal time, qty and price collapse into one here; reconciliation
            # against the broker's cumulative filled quantity restores the missing one. A broker that
            # does number its fills (the shadow market) says so in `fill_ref`.
            ref = n.fill_ref or f"{n.time}:{n.fill_qty}:{n.fill_price}"
            book.apply_fill(coid, Fill(ts_ns=ts, fill_id=f"{n.broker_order_id}:{ref}", qty=n.fill_qty,
                                       price=n.fill_price, broker_order_id=n.broker_order_id))
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
