"""The shadow market: an execution venue for agents in shadow mode (card `mode = "shadow"`).

Their orders take the same path as live ones — risk gate, book of record, send queue — but the venue
is this one instead of the broker: it acknowledges at once and fills resting orders against the
market's prints (a buy whose limit is at or above a print, a sell at or below, or any market order,
up to the print's size at the print's price), reporting through the same notices a broker sends.
Nothing reaches KIS; reconciliation leaves these books out (they are virtual).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from common.enums import Side
from common.market_clock import MarketClock
from common.orders import TERMINAL, Order
from kis.port import BrokerAck, BrokerCancel, BrokerModify, BrokerNotice, BrokerOrder, BrokerRejected, NoticeKind

SHADOW_PREFIX = "shadow-"


@dataclass(slots=True)
class _Resting:
    code: str
    side: Side
    qty: int
    price: int  # 0: market
    filled: int = 0

    @property
    def remaining(self) -> int:
        return self.qty - self.filled


class ShadowExecution:
    """The shadow market's execution side. Its calls never await: a call and the book's record of
    its answer (Accept, Replaced, the cancel's notice) happen in one step of the send task, so no
    print fills a line the books have not recorded. A restart relies on that: the market is rebuilt
    from the books, and a call the books do not show answered did not happen (server/order_desk.py
    _recover_shadow_calls)."""

    # it answers at once, in the process: every order of a turn gets a slot, so their send marks
    # join the commit of their intents (server/send_queue.py)
    max_in_flight = 64

    def __init__(self, clock: MarketClock, notify: Callable[[BrokerNotice], None]) -> None:
        self.clock = clock
        self.notify = notify
        self._ids = itertools.count(1)
        self.resting: dict[str, _Resting] = {}

    def on_order(self, old: Order | None, new: Order) -> None:
        """The book's word (a listener): an order that ended there (expired at the close, rejected,
        reconciled away) ends here too; a line left resting would fill on later prints, the same
        evening's after-hours ones or the next day's, and move a position nobody bought."""
        if new.state in TERMINAL and self.resting:
            for odno in new.broker_chain:
                self.resting.pop(odno, None)

    def restore(self, odno: str, code: str, side: Side, qty: int, price: int, filled: int) -> None:
        """An open shadow order from before a restart keeps resting."""
        self.resting[odno] = _Resting(code, side, qty, price, filled)

    def _time(self) -> str:
        return self.clock.now().strftime("%H%M%S")

    def _ack(self, odno: str) -> BrokerAck:
        return BrokerAck(broker_order_id=odno, org_no="", time=self._time(), message="shadow: journaled, not sent")

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        odno = f"{SHADOW_PREFIX}{order.client_order_id}"
        self.resting[odno] = _Resting(order.code, order.side, order.qty, order.price)
        return self._ack(odno)

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        line = self.resting.pop(req.broker_order_id, None)
        if line is None:
            raise BrokerRejected("no such shadow order", code="SHADOW")
        odno = f"{req.broker_order_id}-c{next(self._ids)}"
        self._notice(NoticeKind.CANCELLED, odno, line, orig=req.broker_order_id, is_cancel=True)
        return self._ack(odno)

    async def modify(self, req: BrokerModify) -> BrokerAck:
        line = self.resting.pop(req.broker_order_id, None)
        if line is None:
            raise BrokerRejected("no such shadow order", code="SHADOW")
        odno = f"{req.broker_order_id}-r{next(self._ids)}"
        # the revise moves the remainder to the new line at the new price
        self.resting[odno] = _Resting(line.code, line.side, line.remaining, req.price)
        return self._ack(odno)

    def on_trade(self, code: str, price: int, qty: int) -> None:
        for odno, line in list(self.resting.items()):
            if qty <= 0:
                break
            if line.code != code:
                continue
            crosses = not line.price or (price <= line.price if line.side is Side.BUY else price >= line.price)
            take = min(line.remaining, qty)
            if crosses and take > 0:
                qty -= take
                line.filled += take
                self._notice(NoticeKind.FILLED, odno, line, fill_qty=take, fill_price=price)
                if not line.remaining:
                    self.resting.pop(odno, None)  # (the book's listener may have ended it already)

    def _notice(
        self,
        kind: NoticeKind,
        odno: str,
        line: _Resting,
        *,
        fill_qty: int = 0,
        fill_price: int = 0,
        orig: str = "",
        is_cancel: bool = False,
    ) -> None:
        self.notify(
            BrokerNotice(
                kind=kind,
                broker_order_id=odno,
                orig_broker_order_id=orig,
                code=line.code,
                side=line.side,
                order_qty=line.qty,
                order_price=line.price,
                fill_qty=fill_qty,
                fill_price=fill_price,
                time=self._time(),
                is_cancel=is_cancel,
                # cumulative filled: unique per line, and the same after a restart
                fill_ref=f"q{line.filled}" if kind is NoticeKind.FILLED else "",
            )
        )
