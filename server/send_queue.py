"""Broker calls: the queue between the book of record and an execution venue (the KIS broker, or the
shadow market), cancels and revises before new orders.

Rules kept here:
- a submit's request is written durably before the call (the send mark): after a crash, an order
  without it was never sent (NOT_SENT), one with it may have been (UNKNOWN, never resent);
- a submit still queued after `max_send_wait_ns` is refused unsent (BROKER_BUSY): a decision made on
  prices that old is not the one the agent made;
- calls for one order never overlap or overtake each other; with `workers` > 1, calls for different
  orders go out concurrently (the broker's REST budget paces them);
- a revise or cancel whose answer is lost is in doubt, never "refused": its notices and the broker's
  order list decide (server/chain_repair.py). So is a cancel the broker refuses at the number we
  know: the order may live at another number now (a revise we did not see), which the repair
  finds and cancels.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
import time
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Protocol

from common.enums import TimeInForce
from common.errors import ErrorCode
from common.orders import (
    AMEND_UNKNOWN, Accept, CancelRefused, MarkUnknown, Order, OrderState, Reject, Replaced, ReplaceRefused,
)
from kis.port import (
    BrokerAck, BrokerCancel, BrokerError, BrokerModify, BrokerOrder, BrokerRejected, BrokerUnknownOutcome,
)
from server.notices import NoticeRouter
from server.order_book import OrderBook

log = logging.getLogger("ktrader.send")


class Execution(Protocol):
    """Where orders go: the part of a broker that places, revises and cancels."""

    async def submit(self, order: BrokerOrder) -> BrokerAck: ...

    async def modify(self, req: BrokerModify) -> BrokerAck: ...

    async def cancel(self, req: BrokerCancel) -> BrokerAck: ...


class Call(StrEnum):
    SUBMIT = "submit"
    CANCEL = "cancel"
    MODIFY = "modify"


class Priority(IntEnum):
    AMEND = 0  # cancels and revises first: they reduce risk or keep a resting order right
    PROTECT = 1  # the gateway's own sells: protective exits (server/protection.py) and flattens
    NEW = 2


@dataclass(frozen=True, slots=True)
class Job:
    call: Call
    coid: str
    price: int = 0
    qty: int = 0
    queued: float = field(default_factory=time.monotonic)  # real time: how long the broker kept it waiting
    priority: Priority = Priority.NEW  # a submit's (cancels and revises always go first)


def broker_order(o: Order) -> BrokerOrder:
    # a next-session order is a day order once its session takes it
    tif = TimeInForce.DAY if o.tif is TimeInForce.NEXT_SESSION else o.tif
    return BrokerOrder(client_order_id=o.client_order_id, code=o.code, side=o.side, qty=o.qty, price=o.price,
                       order_type=o.order_type, tif=tif)


class SendQueue:
    def __init__(self, book: OrderBook, notices: NoticeRouter, venue: Execution,
                 on_broker_error: Callable[[int], None], *, max_send_wait_ns: int = 5_000_000_000,
                 workers: int = 1, name: str = "broker", learn: Callable[[str], None] | None = None) -> None:
        self.book = book
        self.notices = notices
        self.venue = venue
        self.on_broker_error = on_broker_error
        # read the broker's list for an order now (its live line may have moved); None: a venue
        # without an order list (the shadow market), whose answers are never in doubt
        self.learn = learn
        self.max_send_wait_ns = max_send_wait_ns  # real time in the queue; 0: send however late
        self.workers = max(1, workers)
        self.name = name
        self._queue: asyncio.PriorityQueue[tuple[int, int, Job]] = asyncio.PriorityQueue()
        self._n = 0
        self._busy: set[str] = set()  # orders with a call in flight
        self._deferred: dict[str, list[tuple[int, int, Job]]] = defaultdict(list)
        self._tasks: list[asyncio.Task[None]] = []

    def put(self, job: Job) -> None:
        self._n += 1
        prio = job.priority if job.call is Call.SUBMIT else Priority.AMEND
        self._queue.put_nowait((prio, self._n, job))

    @property
    def depth(self) -> int:
        return self._queue.qsize() + sum(len(v) for v in self._deferred.values()) + len(self._busy)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker(), name=f"send-{self.name}-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            job = item[2]
            if job.coid in self._busy:
                self._deferred[job.coid].append(item)  # after the call in flight for the same order
                continue
            self._busy.add(job.coid)
            try:
                await self._run(job)
            except Exception:  # a bug must not stop the sender; the order stays as it is, visibly
                log.exception("job %s failed", job)
            finally:
                self._busy.discard(job.coid)
                self.book.flush_traces()
                for later in self._deferred.pop(job.coid, []):
                    self._queue.put_nowait(later)

    async def _run(self, job: Job) -> None:
        book = self.book
        o = book.orders[job.coid]
        if job.call is Call.SUBMIT:
            await self._submit(o, job)
        elif job.call is Call.CANCEL:
            req = BrokerCancel(client_order_id=o.client_order_id, broker_order_id=o.broker_order_id, org_no=o.org_no,
                               code=o.code, qty=o.remaining)
            await self._amend(o, Call.CANCEL, lambda: self.venue.cancel(req), CancelRefused,
                              odno=o.broker_order_id, qty=o.remaining)
        else:
            mreq = BrokerModify(client_order_id=o.client_order_id, broker_order_id=o.broker_order_id, org_no=o.org_no,
                                code=o.code, qty=job.qty - o.filled_qty, price=job.price, all_qty=True)
            ack = await self._amend(o, Call.MODIFY, lambda: self.venue.modify(mreq), ReplaceRefused,
                                    odno=o.broker_order_id, price=job.price, qty=job.qty)
            if ack is not None:
                book.try_apply(o.client_order_id, Replaced(ts_ns=book.now_ns(), broker_order_id=ack.broker_order_id,
                                                           price=job.price, qty=job.qty))
                self.notices.drain(ack.broker_order_id)

    async def _submit(self, o: Order, job: Job) -> None:
        book, coid = self.book, o.client_order_id
        waited = int((time.monotonic() - job.queued) * 1e9)
        if self.max_send_wait_ns and waited > self.max_send_wait_ns and o.state is OrderState.PENDING_SUBMIT:
            # never sent, so safe to refuse; a late order would trade on a stale decision
            book.trace(coid, "broker.skipped", call=Call.SUBMIT.value, waited_ms=waited // 1_000_000)
            book.try_apply(coid, Reject(ts_ns=book.now_ns(), code=ErrorCode.BROKER_BUSY.value,
                                        reason=f"not sent: queued {waited / 1e9:.1f}s for the broker"))
            return
        req = broker_order(o)
        book.trace(coid, "broker.request", call=Call.SUBMIT.value, code=o.code, side=o.side.value, qty=o.qty,
                   price=o.price, order_type=o.order_type.value, tif=req.tif.value)
        book.flush_traces()  # durable before the call: after a crash, "no request" means never sent
        try:
            ack = await self.venue.submit(req)
        except BrokerError as e:
            book.trace(coid, "broker.error", call=Call.SUBMIT.value, kind=type(e).__name__, code=e.code, message=e.message)
            self._submit_failed(o, e)
            return
        book.trace(coid, "broker.ack", call=Call.SUBMIT.value, odno=ack.broker_order_id, org_no=ack.org_no, time=ack.time)
        book.by_broker_id[ack.broker_order_id] = coid
        book.try_apply(coid, Accept(ts_ns=book.now_ns(), broker_order_id=ack.broker_order_id, org_no=ack.org_no))
        self.notices.drain(ack.broker_order_id)

    def _submit_failed(self, o: Order, e: BrokerError) -> None:
        book, ts = self.book, self.book.now_ns()
        self.on_broker_error(ts)
        if isinstance(e, BrokerUnknownOutcome):
            # maybe placed: never resend; reconciliation and the notice stream will tell
            book.try_apply(o.client_order_id, MarkUnknown(ts_ns=ts, reason=str(e)))
        elif isinstance(e, BrokerRejected):
            book.try_apply(o.client_order_id, Reject(ts_ns=ts, code=ErrorCode.BROKER_REJECTED.value,
                                                     reason=f"{e.code} {e.message}".strip()))
        else:
            # the request surely did not reach the broker (temporary, auth): nothing was placed
            book.try_apply(o.client_order_id, Reject(ts_ns=ts, code=ErrorCode.BROKER_ERROR.value, reason=str(e)))

    async def _amend(self, o: Order, call: Call, request: Callable[[], Awaitable[BrokerAck]],
                     refused: type[CancelRefused] | type[ReplaceRefused], **trace: object) -> BrokerAck | None:
        """A cancel or revise at the broker: traced; acked → the new ODNO is ours; unknown outcome, or a
        cancel refused at this number → in doubt (the chain repair decides); any other refusal →
        back to resting with the reason."""
        book, coid = self.book, o.client_order_id
        book.trace(coid, "broker.request", call=call.value, **trace)
        try:
            ack = await request()
        except BrokerError as e:
            book.trace(coid, "broker.error", call=call.value, kind=type(e).__name__, code=e.code, message=e.message)
            ts = book.now_ns()
            if self.learn is None:
                book.try_apply(coid, refused(ts_ns=ts, code=e.code, reason=str(e)))
            elif isinstance(e, BrokerUnknownOutcome):
                # it may have reached the broker: in doubt until notices or the order list say
                book.try_apply(coid, MarkUnknown(ts_ns=ts, code=AMEND_UNKNOWN, reason=f"{call.value} outcome unknown: {e}"))
            elif isinstance(e, BrokerRejected) and call is Call.CANCEL:
                # nothing to cancel at this number: filled, cancelled, or moved by a revise we did not
                # see; the repair reads the order list and cancels the live line
                book.try_apply(coid, MarkUnknown(ts_ns=ts, code=AMEND_UNKNOWN,
                                                 reason=f"cancel refused at {o.broker_order_id} ({e}): finding the live line"))
            else:
                book.try_apply(coid, refused(ts_ns=ts, code=e.code, reason=str(e)))
                if isinstance(e, BrokerRejected):
                    self.learn(coid)  # a revise refused at this number: learn where the order lives
            return None
        book.trace(coid, "broker.ack", call=call.value, odno=ack.broker_order_id, time=ack.time)
        book.by_broker_id[ack.broker_order_id] = coid
        if call is Call.CANCEL:
            self.notices.drain(ack.broker_order_id)
        return ack
