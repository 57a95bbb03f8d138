"""Broker calls: the queue between the book of record and an execution venue (the KIS broker, or the
shadow market), cancels and revises before new orders.

Rules kept here:
- a submit's request (the send mark) is written when a slot takes the job, and the call waits until
  the group commit that holds it is durable: after a crash, an order without it was never sent
  (NOT_SENT), one with it may have been (UNKNOWN, never resent). Every call likewise waits for the
  commit that holds its intent (Submit, RequestCancel, RequestReplace);
- a submit still queued after `max_send_wait_ns` is refused unsent (BROKER_BUSY): a decision made on
  prices that old is not the one the agent made; a submit for an order that is no longer waiting to
  be sent (reconciliation found it, the gateway refused it) is never sent; nor is one whose cancel was
  asked for while it waited, or whose agent (or the gateway) was halted meanwhile (NOT_SENT: the send
  is decided when a slot takes it, so the broker never hears of an order it would only be told to
  cancel; the KIS adapter asks again (`why_not`) once the REST budget lets the request leave, which
  on a paper account is seconds later; one already sent is cancelled after its acknowledgement);
- calls for one order go out one at a time, in the order they were asked for (a cancel never
  overtakes its submit): an order has at most one job in the priority queue, the rest wait behind it;
- up to `workers` calls for different orders are in flight at once (as many as the venue takes:
  KIS 4, a venue in the process more), cancels and revises first, then the gateway's protective
  sells, then new orders; the broker's REST budget paces them, and a call that hangs or fails (a
  cut connection, its retries, a timeout) holds only its own slot;
- a submit the broker adapter did not send (BrokerError.not_sent: its token, a rate slot or a retry
  came past its deadline) proves nothing about the broker and never counts toward the kill switch: an order decided
  now is refused NOT_SENT (the agent decides again); one that must go however late (a held order
  released into its session, the gateway's own exits) is queued again `RESEND_AFTER_S` later, until
  it is sent or the checks at the slot refuse it (cancelled, halted, its session over);
- a revise or cancel whose answer is lost is in doubt, never "refused": its notices and the broker's
  order list decide (server/chain_repair.py). So is a cancel the broker refuses at the number we
  know: the order may live at another number now (a revise we did not see), which the repair
  finds and cancels.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Protocol

from common.enums import Side, TimeInForce
from common.errors import ErrorCode
from common.orders import (
    AMEND_UNKNOWN,
    Accept,
    Cancelled,
    CancelRefused,
    MarkUnknown,
    Order,
    OrderState,
    Reject,
    Replaced,
    ReplaceRefused,
    is_gateway_exit,
)
from kis.netdiag import BrokerUnreachable
from kis.port import (
    BrokerAck,
    BrokerCancel,
    BrokerError,
    BrokerModify,
    BrokerOrder,
    BrokerRejected,
    BrokerUnknownOutcome,
    cash_refusal,
)
from server.notices import NoticeRouter
from server.order_book import OrderBook

log = logging.getLogger("ktrader.send")

# an order that must go, not sent by the adapter: queued again this long after (each try waits up to the
# adapter's write deadline first; this bounds the tries of one whose deadline is spent at once)
RESEND_AFTER_S = 1.0


def not_sent(e: BrokerError) -> bool:
    """The adapter gave up before the request left (its token, a rate slot or a retry came past the
    order's deadline): nothing reached the broker, and nothing is known of it."""
    return e.not_sent


def unreachable(e: BrokerError) -> bool:
    """Not placed either (its connects failed, nothing left this machine), but unlike `not_sent` the
    broker's health: counted toward the kill switch; an order that must go is still sent again."""
    return isinstance(e, BrokerUnreachable) and not e.problem.sent


class Execution(Protocol):
    """Where orders go: the part of a broker that places, revises and cancels, and how many of those
    calls it takes at once (kis.port.BrokerPort.max_in_flight)."""

    max_in_flight: int

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
    # an order held for this session and released into it: after fresh decisions, which go stale in max_send_wait
    # (90 held orders took 50 s to go out at a paper account's 2/s at 08:30, and 22 of 23 orders decided meanwhile
    # were refused as queued too long: a hunt); they are sent however long the budget takes
    RELEASED = 3


Rest = Callable[[], Awaitable[object]]  # what a job does after its synchronous start


@dataclass(frozen=True, slots=True)
class Job:
    call: Call
    coid: str
    price: int = 0
    qty: int = 0
    queued: float = field(default_factory=time.monotonic)  # real time: how long the broker kept it waiting
    priority: Priority = Priority.NEW  # a submit's (cancels and revises always go first)
    # a submit decided now, refused unsent once max_send_wait passed; False: an order held for this
    # session and released (decided for the session, sent as the REST budget lets it, however long
    # a burst of them at the open takes)
    decided_now: bool = True


def broker_order(o: Order) -> BrokerOrder:
    # a next-session order is a day order once its session takes it
    tif = TimeInForce.DAY if o.tif is TimeInForce.NEXT_SESSION else o.tif
    return BrokerOrder(
        client_order_id=o.client_order_id,
        code=o.code,
        side=o.side,
        qty=o.qty,
        price=o.price,
        order_type=o.order_type,
        tif=tif,
    )


class SendQueue:
    def __init__(
        self,
        book: OrderBook,
        notices: NoticeRouter,
        venue: Execution,
        on_broker_error: Callable[[int, str, bool], None],
        *,
        max_send_wait_ns: int = 5_000_000_000,
        workers: int = 0,
        name: str = "broker",
        learn: Callable[[str], None] | None = None,
        on_unknown: Callable[[str], None] | None = None,
        alert: Callable[[str], None] | None = None,
    ) -> None:
        self.book = book
        self.notices = notices
        self.venue = venue
        self.on_broker_error = on_broker_error
        # read the broker's list for an order now (its live line may have moved); None: a venue
        # without an order list (the shadow market), whose answers are never in doubt
        self.learn = learn
        self.on_unknown = on_unknown  # a submit whose outcome is unknown: look for it at the broker soon
        # tells a person (the gateway's alerts); None: logged at ERROR only (and counted)
        self.alert = alert
        # a buy the broker refused for want of cash (the gateway wires an account read and a word to a person);
        # True: excused from the agent's kill switch (the gateway's view was behind), False: counted as any refusal
        self.on_cash_refused: Callable[[Order, str], bool] | None = None
        # the venue calls `leaving` just before a submit's request leaves (BrokerPort.leave_with): its mark is the
        # send mark then (a crash while the order waited for a REST slot left it marked "sent": 10 minutes in doubt)
        # (server/core.py wires it: broker.leave_with(queue.leaving))
        self.marks_leaving = False
        self.owner_conflicts = 0  # acknowledged order numbers another order of ours already held
        self.max_send_wait_ns = max_send_wait_ns  # real time in the queue; 0: send however late
        self.workers = max(1, workers or venue.max_in_flight)  # 0: as many as the venue takes
        self.name = name
        self._heap: list[tuple[int, int, Job]] = []  # at most one job per order: the next one it runs
        self._later: dict[str, deque[Job]] = defaultdict(deque)  # an order's jobs behind its queued/running one
        self._busy: set[str] = set()  # orders with a job in the heap or in flight
        self._n = 0
        self._running: set[asyncio.Task[None]] = set()
        # submits to send again (not sent by the adapter): the job, then its timer; the order stays busy
        self._resend: dict[str, Job] = {}
        self._unreached: set[str] = set()  # orders resent whose host could not be reached, counted once each
        self._withdrawn: dict[str, str] = {}  # submits the venue did not send, asked why_not: why
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._started = False
        self._pumping = False
        # why an order held for its session and released may no longer be sent ("": it may); set by
        # the order desk, which knows the session
        self.released_refusal: Callable[[Order], str] = lambda o: ""
        # why any submit may no longer be sent when a slot takes it ("": it may): its cancel was asked
        # for while it waited, trading was halted meanwhile; set by the order desk, which knows both
        self.send_refusal: Callable[[Order], str] = lambda o: ""
        # whether the order's own cancel was asked for (then the submit that never left ends CANCELLED, as the agent
        # asked and as a backtest ends it, not REJECTED NOT_SENT); set by the order desk, which holds those cancels
        self.cancel_asked: Callable[[str], bool] = lambda coid: False

    def why_not(self, coid: str) -> str:
        """Why a submit handed to the venue may no longer leave ("": it may): asked by a venue that waits
        before it writes (KIS's REST budget: seconds on a paper account), just before the request leaves.
        The reasons of `send_refusal` (its cancel asked, a halt): a cancel asked while the budget held the
        submit then needs no call at all, and nothing can fill meanwhile."""
        o = self.book.orders.get(coid)
        why = self.send_refusal(o) if o is not None and o.state is OrderState.PENDING_SUBMIT else ""
        if why:
            self._withdrawn[coid] = why
        return why

    def put(self, job: Job) -> None:
        if job.coid in self._busy:
            self._later[job.coid].append(job)  # after the job it already has, whatever its priority
        else:
            self._push(job)
        self._pump()

    def _push(self, job: Job) -> None:
        self._busy.add(job.coid)
        self._n += 1
        prio = job.priority if job.call is Call.SUBMIT else Priority.AMEND
        heapq.heappush(self._heap, (prio, self._n, job))

    @property
    def depth(self) -> int:
        waiting = sum(len(v) for v in self._later.values()) + len(self._timers)
        return len(self._heap) + waiting + len(self._running)

    def queued(self) -> list[Job]:
        """Jobs not taken by a slot yet (in no particular order)."""
        resends = [self._resend[c] for c in self._timers]
        return [job for _, _, job in self._heap] + [j for v in self._later.values() for j in v] + resends

    def take(self) -> Job | None:
        """The next job to run: the highest priority, oldest first. The caller runs it with `run()`
        (a slot does; tests drive the queue by hand)."""
        return heapq.heappop(self._heap)[2] if self._heap else None

    def start(self) -> None:
        self._started = True
        self._pump()

    async def stop(self) -> None:
        self._started = False
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        for t in list(self._running):
            t.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running.clear()

    def _pump(self) -> None:
        """Fill the free slots. A job starts in the loop turn that frees its slot or queues it, so
        its request mark joins that turn's group commit (with the intent, when it was just queued)."""
        if self._pumping:  # a job's start can queue another (a listener's cancel): the loop below takes it
            return
        self._pumping = True
        try:
            while self._started and len(self._running) < self.workers and self._heap:
                job = self.take()
                assert job is not None
                task = asyncio.get_running_loop().create_task(
                    self.run(job, self._safe_begin(job)), name=f"send-{self.name}-{job.call}"
                )
                self._running.add(task)
                task.add_done_callback(self._slot_free)
        finally:
            self._pumping = False

    def _slot_free(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._pump()

    async def run(self, job: Job, rest: Rest | None | bool = True) -> None:
        """One job, start to end (`rest`: what `_begin` left to do, when a slot began it already);
        then the order's next job (if any) joins the queue."""
        try:
            if rest is True:
                rest = self._safe_begin(job)
            if callable(rest):
                await rest()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not stop the sender; the order stays as it is, visibly
            log.exception("job %s failed", job)
        finally:
            if job.coid in self._resend:
                self._resend_later(job.coid)  # still its order's first job: a cancel asked meanwhile waits behind
            elif later := self._later.get(job.coid):
                self._push(later.popleft())
                if not later:
                    del self._later[job.coid]
            else:
                self._busy.discard(job.coid)
                self._later.pop(job.coid, None)

    def _resend_later(self, coid: str) -> None:
        self._timers[coid] = asyncio.get_running_loop().call_later(RESEND_AFTER_S, self._requeue, coid)

    def _requeue(self, coid: str) -> None:
        """A submit's turn again: queued anew (a gateway exit is not refused as a stale decision for
        the time it waited; the checks at the slot decide whether it still goes)."""
        self._timers.pop(coid, None)
        job = self._resend.pop(coid, None)
        if job is not None:
            self._push(replace(job, queued=time.monotonic()))
            self._pump()

    def _safe_begin(self, job: Job) -> Rest | None:
        try:
            return self._begin(job)
        except Exception:
            log.exception("job %s failed", job)
            return None

    def _begin(self, job: Job) -> Rest | None:
        """The synchronous start of a job: its checks and its durable request mark. Returns the rest
        (waiting for the mark's commit, then the broker call), or None when nothing is to be sent."""
        o = self.book.orders.get(job.coid)
        if o is None:  # an earlier day's order, finished and let go at the day's roll: nothing to send
            log.info("job %s skipped: %s is no longer held (an earlier day's, finished)", job, job.coid)
            return None
        if job.call is Call.SUBMIT:
            return self._begin_submit(o, job)
        if job.call is Call.CANCEL:
            req = BrokerCancel(
                client_order_id=o.client_order_id,
                broker_order_id=o.broker_order_id,
                org_no=o.org_no,
                code=o.code,
                qty=o.remaining,
            )
            self.book.trace(
                o.client_order_id,
                "broker.request",
                durable=True,
                call=Call.CANCEL.value,
                odno=o.broker_order_id,
                qty=o.remaining,
            )
            return lambda: self._amend(o, Call.CANCEL, lambda: self.venue.cancel(req), CancelRefused)
        mreq = BrokerModify(
            client_order_id=o.client_order_id,
            broker_order_id=o.broker_order_id,
            org_no=o.org_no,
            code=o.code,
            qty=job.qty - o.filled_qty,
            price=job.price,
            all_qty=True,
            # its own ORD_DVSN again (a conditional order stays conditional); only DAY orders are
            # revised (order_desk.modify), so the type is all the adapter needs
            order_type=o.order_type,
        )
        self.book.trace(
            o.client_order_id,
            "broker.request",
            durable=True,
            call=Call.MODIFY.value,
            odno=o.broker_order_id,
            price=job.price,
            qty=job.qty,
            order_type=o.order_type.value,
        )
        return lambda: self._modify(o, job, mreq)

    async def _modify(self, o: Order, job: Job, mreq: BrokerModify) -> None:
        book = self.book
        ack = await self._amend(o, Call.MODIFY, lambda: self.venue.modify(mreq), ReplaceRefused)
        if ack is not None:
            book.try_apply(
                o.client_order_id,
                Replaced(ts_ns=book.now_ns(), broker_order_id=ack.broker_order_id, price=job.price, qty=job.qty),
            )
            self.notices.drain(ack.broker_order_id)

    def _begin_submit(self, o: Order, job: Job) -> Rest | None:
        book, coid = self.book, o.client_order_id
        if o.state is not OrderState.PENDING_SUBMIT:
            # settled without us (reconciliation found it at the broker, the gateway refused it):
            # sending it now could place it twice
            book.trace(coid, "broker.skipped", call=Call.SUBMIT.value, state=o.state.value)
            return None
        waited = int((time.monotonic() - job.queued) * 1e9)
        # decided here, before its send mark: nothing reached the broker, so "not sent" is the truth (a
        # cancel waiting for the order is done by this; a released order goes only into its session)
        why = self.send_refusal(o) or ("" if job.decided_now else self.released_refusal(o))
        if why:
            book.trace(coid, "broker.skipped", call=Call.SUBMIT.value, why=why)
            self.end_unsent(coid, f"not sent: {why}")
            return None
        if job.decided_now and self.max_send_wait_ns and waited > self.max_send_wait_ns and not is_gateway_exit(o):
            # never sent, so safe to refuse; a late order would trade on a stale decision. Never the gateway's exit
            # (a stop, a flatten's sell: it must go however late): on a paper account (2 requests/s) a burst of 40 stops
            # had 51 exits refused so by this queue, and 7 protections FAILED with their shares unsold (a hunt)
            book.trace(coid, "broker.skipped", call=Call.SUBMIT.value, waited_ms=waited // 1_000_000)
            book.try_apply(
                coid,
                Reject(
                    ts_ns=book.now_ns(),
                    code=ErrorCode.BROKER_BUSY.value,
                    reason=f"not sent: queued {waited / 1e9:.1f}s for the broker",
                ),
            )
            return None
        req = broker_order(o)
        book.trace(
            coid,
            "broker.request",
            durable=True,
            leaving=self.marks_leaving,  # (the mark that says it may have left is broker.leaving: _recover_in_flight)
            call=Call.SUBMIT.value,
            code=o.code,
            side=o.side.value,
            qty=o.qty,
            price=o.price,
            order_type=o.order_type.value,
            tif=req.tif.value,
        )
        return lambda: self._send_submit(o, job, req)

    async def leaving(self, coid: str) -> None:
        """The venue is about to write `coid`'s submit (its REST slot had): the mark that it may have left, on disk
        before it does. Before it, after a crash, the order never left (BrokerPort.leave_with)."""
        self.book.trace(coid, "broker.leaving", durable=True)
        await self.book.durable()
        self.book.trace(coid, "broker.sent")  # the mark was on disk: the request leaves now (the story's timing)

    async def _send_submit(self, o: Order, job: Job, req: BrokerOrder) -> None:
        book, coid = self.book, o.client_order_id
        if not self.marks_leaving:
            await book.durable()  # the send mark: after a crash, "no request" means never sent
            book.trace(coid, "broker.sent")  # the mark was on disk: the call leaves now (the story's timing)
        try:
            ack = await self.venue.submit(req)
        except BrokerError as e:
            withdrawn = self._withdrawn.pop(coid, "")
            if withdrawn and not_sent(e):  # (told once: never queued again to be refused at its slot)
                book.trace(coid, "broker.skipped", call=Call.SUBMIT.value, why=withdrawn)
                self.end_unsent(coid, e.message)
                return
            book.trace(
                coid, "broker.error", call=Call.SUBMIT.value, kind=type(e).__name__, code=e.code, message=e.message
            )
            unreached = unreachable(e)
            if (not_sent(e) or unreached) and (not job.decided_now or is_gateway_exit(o)):
                # it must go however late (a held order released into its session, the gateway's exit); a host
                # that could not be reached is the broker's health too: counted, as a refused call is
                if unreached and coid not in self._unreached:
                    # once an order: one exit resent each second must not trip the kill switch by itself (whose
                    # halt then refused the exit at its slot, a failed attempt of its protection)
                    self._unreached.add(coid)
                    self.on_broker_error(book.now_ns(), o.agent, False)
                book.trace(coid, "broker.resend", after_s=RESEND_AFTER_S, why=e.message)
                self._resend[coid] = job
                return
            self._submit_failed(o, e)
            return
        book.trace(
            coid, "broker.ack", call=Call.SUBMIT.value, odno=ack.broker_order_id, org_no=ack.org_no, time=ack.time
        )
        self._check_owner(o, ack.broker_order_id)
        book.by_broker_id[ack.broker_order_id] = coid
        book.try_apply(coid, Accept(ts_ns=book.now_ns(), broker_order_id=ack.broker_order_id, org_no=ack.org_no))
        self.notices.drain(ack.broker_order_id)

    def _check_owner(self, o: Order, odno: str) -> None:
        """The REST reply is authoritative for its own order: `odno` becomes this order's. Another order
        of ours already holding it (an UNKNOWN matched to it by reconciliation) means two books may hold
        one line's shares: a person is told, never silently overwritten."""
        other = self.book.by_broker_id.get(odno)
        if other is None or other == o.client_order_id:
            return
        prev = self.book.orders.get(other)
        if prev is not None and self.book.order_day.get(other, self.book.day()) != self.book.day():
            return  # an earlier day's order still open (a late close): KIS may number each day's orders anew
        agents = sorted({o.agent, prev.agent if prev is not None else "?"})
        self.owner_conflicts += 1
        self.book.trace(o.client_order_id, "broker.owner_conflict", odno=odno, other=other)
        text = (
            f"CRITICAL: two orders claim broker order {odno}: {other} and {o.client_order_id} (agents "
            f"{', '.join(agents)}); the broker's reply names it {o.client_order_id}'s, and {other} still holds it "
            f"too (both books may count its shares, and {other}'s agent may cancel or revise it): halt or pause "
            f"those agents, check both positions against the account and correct the books"
        )
        log.error("%s", text)
        if self.alert is not None:
            self.alert(text)

    def end_unsent(self, coid: str, reason: str) -> None:
        """A submit proven never sent ends here (also one a restart found unsent, server/order_desk.py): CANCELLED if
        its own cancel was asked, else REJECTED NOT_SENT with `reason`."""
        book = self.book
        if self.cancel_asked(coid):
            book.try_apply(coid, Cancelled(ts_ns=book.now_ns()))
        else:
            book.try_apply(coid, Reject(ts_ns=book.now_ns(), code=ErrorCode.NOT_SENT.value, reason=reason))

    def _submit_failed(self, o: Order, e: BrokerError) -> None:
        book, ts = self.book, self.book.now_ns()
        if not_sent(e):
            # nothing reached the broker, and a token or a rate slot that came late proves nothing about
            # it (as BROKER_BUSY): no count toward the kill switch; the agent decides again
            self.end_unsent(o.client_order_id, e.message)
            return
        # the kill switch: a refusal of this order is its agent's (a halted stock halts no one else);
        # a failed call (server error, unknown outcome, auth) is the session's. A refusal of the gateway's own
        # exit is not the agent's decision (its protection counts its attempts, and a halted code refuses every one)
        refused = isinstance(e, BrokerRejected)
        # a buy refused for want of cash: the gateway's view of the account was behind it (money withdrawn since the
        # last read), not the agent's decision: excused (on_cash_refused: once a read period), the account read again
        excused = (
            refused and o.side is Side.BUY and cash_refusal(e) and self.on_cash_refused is not None
            and self.on_cash_refused(o, e.message)
        )  # fmt: skip
        if not (refused and is_gateway_exit(o)) and not excused:
            self.on_broker_error(ts, o.agent, refused)
        if isinstance(e, BrokerUnknownOutcome):
            # maybe placed: never resend; reconciliation (soon, not only the periodic pass) and the
            # notice stream will tell
            book.try_apply(o.client_order_id, MarkUnknown(ts_ns=ts, reason=str(e)))
            if self.on_unknown is not None:
                self.on_unknown(o.client_order_id)
        elif isinstance(e, BrokerRejected):
            book.try_apply(
                o.client_order_id,
                Reject(ts_ns=ts, code=ErrorCode.BROKER_REJECTED.value, reason=f"{e.code} {e.message}".strip()),
            )
        else:
            # the request surely did not reach the broker (temporary, auth): nothing was placed
            book.try_apply(o.client_order_id, Reject(ts_ns=ts, code=ErrorCode.BROKER_ERROR.value, reason=str(e)))

    async def _amend(
        self,
        o: Order,
        call: Call,
        request: Callable[[], Awaitable[BrokerAck]],
        refused: type[CancelRefused | ReplaceRefused],
    ) -> BrokerAck | None:
        """A cancel or revise at the broker (its request traced by `_begin`): acked → the new ODNO is
        ours; unknown outcome, or a cancel refused at this number → in doubt (the chain repair
        decides); any other refusal → back to resting with the reason."""
        book, coid = self.book, o.client_order_id
        await book.durable()  # the request to cancel/revise is on disk before the broker hears it
        now = book.orders.get(coid)
        if now is None or now.is_terminal:
            # it ended meanwhile (a fill, a cancel or an expiry the same reconciliation pass applied
            # after the acknowledgement that sent this): nothing left to ask the broker
            book.trace(coid, "broker.skipped", call=call.value, state=now.state.value if now else "gone")
            return None
        try:
            ack = await request()
        except BrokerError as e:
            book.trace(coid, "broker.error", call=call.value, kind=type(e).__name__, code=e.code, message=e.message)
            ts = book.now_ns()
            if self.learn is None:
                book.try_apply(coid, refused(ts_ns=ts, code=e.code, reason=str(e)))
            elif isinstance(e, BrokerUnknownOutcome):
                # it may have reached the broker: in doubt until notices or the order list say
                book.try_apply(
                    coid, MarkUnknown(ts_ns=ts, code=AMEND_UNKNOWN, reason=f"{call.value} outcome unknown: {e}")
                )
            elif isinstance(e, BrokerRejected) and call is Call.CANCEL:
                # nothing to cancel at this number: filled, cancelled, or moved by a revise we did not
                # see; the repair reads the order list and cancels the live line
                book.try_apply(
                    coid,
                    MarkUnknown(
                        ts_ns=ts,
                        code=AMEND_UNKNOWN,
                        reason=f"cancel refused at {o.broker_order_id} ({e}): finding the live line",
                    ),
                )
            else:
                book.try_apply(coid, refused(ts_ns=ts, code=e.code, reason=str(e)))
                if isinstance(e, BrokerRejected):
                    self.learn(coid)  # a revise refused at this number: learn where the order lives
            return None
        book.trace(coid, "broker.ack", call=call.value, odno=ack.broker_order_id, time=ack.time)
        book.by_broker_id[ack.broker_order_id] = coid
        if call is Call.CANCEL:
            # its notices that waited for the line apply; without its 확인, the order list is asked soon
            self.notices.cancel_acked(coid, ack.broker_order_id)
        return ack
