"""Revise/cancel chains that heal.

At KIS an order is a chain of lines: a revise gives the remainder a new order number (ODNO) that
names the line it revised. When the answer to a revise or cancel is lost (the connection dropped
after KIS acted), or a cancel is refused at the number we know (KIS says nothing is left there: the
order moved, filled or was cancelled), the order is *in doubt* (`Order.in_doubt`). Its live line is
learned at once — from the notices that name the chain (server/notices.py) and from a targeted pass
over the broker's list of the day's orders for this order (`Reconciler.resolve`), never by waiting
for the periodic sweep — and then:

- a revise the list shows is adopted (the order moves to the new line); one it does not show after
  `grace_ns` never happened: ReplaceRefused NOT_AT_BROKER, the old terms stand;
- a cancel the list shows is applied; one whose live line is still open without a cancel line did
  not arrive: it is sent again, to the live line (at most `max_cancel_tries` times, then
  CancelRefused with the broker's last word and an alert);
- a live number the list does not know (a forged revise notice) is corrected to the chain's line
  that is open at the broker.

Orders of shadow agents never come here (their venue answers for sure).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.errors import ErrorCode
from common.orders import CancelRefused, Order, OrderState, Replaced, ReplaceRefused, ResendCancel
from kis.port import BrokerOrderReport
from server.notices import NoticeRouter
from server.order_book import OrderBook
from server.send_queue import Call

log = logging.getLogger("ktrader.repair")

Resolve = Callable[[list[str], str], Awaitable[list[BrokerOrderReport]]]
NOT_AT_BROKER = ErrorCode.NOT_AT_BROKER.value


class ChainRepair:
    """One worker: the orders due are settled together, one read of the broker's order list per round
    (a burst of lost answers costs one inquiry, not one per order); an order still in doubt after a
    round comes back after a short, growing delay."""

    def __init__(
        self,
        book: OrderBook,
        notices: NoticeRouter,
        resolve: Resolve,
        resend_cancel: Callable[[str], None],
        alert: Callable[[str], None],
        *,
        grace_ns: int = 10_000_000_000,
        max_cancel_tries: int = 3,
        retry_s: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0),
        age: Callable[[int, int], int] = lambda now_ns, ts_ns: now_ns - ts_ns,
    ) -> None:
        self.book = book
        self.notices = notices
        self.resolve = resolve  # targeted pass over the broker's order list (server/reconciler.py)
        self.resend_cancel = resend_cancel  # queue a cancel of this order (its live line) for the broker
        self.alert = alert
        self.grace_ns = grace_ns  # market ns an amend may stay invisible in the list before it is judged absent
        # (now, stamp) -> how long ago: the reconciler's, which leaves a step of the machine's clock out (its
        # `resolve` notes one): a clock stepped ahead must not judge an amend absent seconds after it was sent
        self.age = age
        self.max_cancel_tries = max_cancel_tries
        self.retry_s = retry_s
        self.repaired = 0  # orders that left doubt through a repair pass (status)
        self.resent = 0  # cancels sent again to a live line
        self.rounds = 0  # reads of the order list for repairs
        self._due: set[str] = set()
        self._since: dict[str, int] = {}  # order in doubt -> market ns its repair began
        self._rounds: dict[str, int] = {}  # order -> rounds it has been through
        self._tries: dict[str, int] = {}  # cancels sent again per order
        self._split: dict[str, str] = {}  # order -> the open line its cancel was sent on to (once: the list may lag)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._started = False
        book.listeners.append(self._after_commit)

    # ---- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """After the gateway's first reconciliation (which settles most chains by itself): orders still
        in doubt, e.g. left so by the previous process, are repaired now."""
        if self._started:
            return
        self._started = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="chain-repair")
        for coid, o in list(self.book.orders.items()):
            if o.in_doubt:
                self.check(coid)

    async def stop(self) -> None:
        self._started = False
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def in_doubt(self) -> int:
        return sum(1 for o in self.book.orders.values() if o.in_doubt)

    # ---- triggers --------------------------------------------------------------------------------

    def _after_commit(self, old: Order | None, new: Order) -> None:
        coid = new.client_order_id
        if new.state is not OrderState.PENDING_CANCEL:
            self._tries.pop(coid, None)
            self._split.pop(coid, None)
        if new.in_doubt and (old is None or not old.in_doubt):
            self.check(coid)

    def learn(self, coid: str) -> None:
        """Something says the order's chain moved (a notice on a line we cannot place, a revise
        refused at our number): read the broker's list for it now."""
        self.check(coid)

    def check(self, coid: str) -> None:
        if not self._started:
            return  # start() picks it up
        self._due.add(coid)
        self._wake.set()

    def _later(self, coid: str) -> None:
        n = self._rounds.get(coid, 0)
        delay = self.retry_s[min(n, len(self.retry_s) - 1)]
        handle = asyncio.get_running_loop().call_later(delay, self._timer_fired, coid)
        self._timers.add(handle)

    def _timer_fired(self, coid: str) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()}
        self.check(coid)

    # ---- the repair ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._round()
            except Exception:  # a bug must not stop the repair of the next orders
                log.exception("chain repair round failed")

    async def _round(self) -> None:
        book = self.book
        batch = sorted(c for c in self._due if c in book.orders and book.orders[c].broker_chain)
        self._due.clear()
        # an earlier day's order is settled against its own day's list by the periodic pass, never today's (its
        # numbers may be today's orders' there: their fills booked as its, a cancel sent to them)
        for coid in [c for c in batch if book.of_an_earlier_day(c)]:
            batch.remove(coid)
            self._since.pop(coid, None)
            self._rounds.pop(coid, None)
        if not batch:
            return
        doubt: dict[str, bool] = {}
        for coid in batch:
            if book.orders[coid].in_doubt and coid not in self._since:
                self._since[coid] = book.now_ns()
                self.notices.replay_chain(coid)  # notices buffered while its request was in flight apply now
            doubt[coid] = book.orders[coid].in_doubt
        self.rounds += 1
        try:
            reports: list[BrokerOrderReport] | None = await self.resolve(
                batch, "in doubt" if any(doubt.values()) else "chain moved"
            )
        except Exception as e:  # the list could not be read: each comes back shortly
            log.warning("order list for the chain repair not read: %s", e)
            reports = None
        for coid in batch:
            o = book.orders.get(coid)
            if o is None:
                continue
            if not o.in_doubt:
                if doubt[coid]:
                    self.repaired += 1
                    book.trace(coid, "repair.resolved", state=o.state.value, odno=o.broker_order_id)
                self._since.pop(coid, None)
                self._rounds.pop(coid, None)
                if o.state is OrderState.PENDING_CANCEL and reports is not None:
                    self._cancel_the_open_line(o, reports)
                continue
            now = book.now_ns()
            aged = self.age(now, self._since.get(coid, now)) >= self.grace_ns
            if reports is not None and self._decide(o, reports, aged):
                self._since.pop(coid, None)
                self._rounds.pop(coid, None)
                continue
            self._rounds[coid] = self._rounds.get(coid, 0) + 1
            self._later(coid)
        book.flush_traces()

    def _decide(self, o: Order, reports: list[BrokerOrderReport], aged: bool) -> bool:
        """The order is still in doubt after its chain was brought in line with the list. True when
        something was done about it (a cancel sent again, or the amend judged absent)."""
        book, coid = self.book, o.client_order_id
        by = {r.broker_order_id: r for r in reports}
        live = by.get(o.broker_order_id)
        if live is None or live.remaining_qty <= 0:
            # our live number is not open at the broker: is another line of the chain?
            other = next((by[x] for x in reversed(o.broker_chain) if x in by and by[x].remaining_qty > 0), None)
            if other is not None and other.broker_order_id != o.broker_order_id:
                moved = self._relink(o, other)
                self.alert(f"{coid}: live at the broker as {other.broker_order_id}, not {o.broker_order_id}: corrected")
                o, live = moved or o, other
        if o.state is OrderState.PENDING_CANCEL:
            return self._cancel(o, live, reports, aged)
        if o.state is OrderState.PENDING_REPLACE and aged:
            book.try_apply(
                coid,
                ReplaceRefused(
                    ts_ns=book.now_ns(),
                    code=NOT_AT_BROKER,
                    reason="the revise is not in the broker's order list: the old terms stand",
                ),
            )
            self.alert(
                f"{coid}: revise outcome was unknown; not at the broker after {self.grace_ns / 1e9:.0f}s: old terms "
                "stand"
            )
            return True
        return False

    def _cancel_the_open_line(self, o: Order, reports: list[BrokerOrderReport]) -> None:
        """A cancel that took the line it went to while another line of the order's chain still holds shares: a
        partial revise in the KIS app (QTY_ALL_ORD_YN N) split the order over two lines, the revise line became the
        live one here, and the cancel took only its part; the order sat PENDING_CANCEL untold and the first line's
        shares filled later for an agent that had cancelled (a hunt). The order moves to the open line (if the
        reconciliation has not) and the cancel goes to it: only when the list shows the line our own cancel went to
        closed by a cancel and none of the open one, once per line (a list that lags gets no second cancel)."""
        by = {r.broker_order_id: r for r in reports}
        chain = [by[x] for x in o.broker_chain if x in by and not by[x].is_cancel]
        cancelled = {r.orig_broker_order_id for r in reports if r.is_cancel}
        live = by.get(o.broker_order_id)
        other = live if live is not None and live.remaining_qty > 0 else None
        if other is None:
            other = next((r for r in reversed(chain) if r.remaining_qty > 0), None)
        book, coid = self.book, o.client_order_id
        if other is None or other.broker_order_id in cancelled or self._split.get(coid) == other.broker_order_id:
            return
        # only the line our own cancel went to (its trace: read once the cheap checks pass), shown closed by a cancel:
        # the KIS app's cancel of another line of the chain while ours is not in the list yet is no sign (a second
        # cancel went to the line being cancelled, and a refusal of it showed the order open again: a review)
        took = by.get(self._cancel_line(coid))
        if took is None or took not in chain or took.broker_order_id not in cancelled or took.remaining_qty > 0:
            return
        self._split[coid] = other.broker_order_id
        if other.broker_order_id != o.broker_order_id:
            self._relink(o, other)
        self.alert(
            f"{coid}: its cancel took line {took.broker_order_id}, but {other.remaining_qty} still rest on line "
            f"{other.broker_order_id} (the order was split over two lines, a partial revise in the KIS app?): "
            "cancelling that line too"
        )
        self.resent += 1
        book.trace(coid, "repair.cancel_again", odno=other.broker_order_id, split=True)
        book.try_apply(coid, ResendCancel(ts_ns=book.now_ns(), broker_order_id=other.broker_order_id))  # (no doubt)
        self.resend_cancel(coid)

    def _relink(self, o: Order, line: BrokerOrderReport) -> Order | None:
        """The order moves to `line` of its chain (open at the broker), its total what filled plus what rests there."""
        book = self.book
        book.trace(o.client_order_id, "repair.relinked", odno=line.broker_order_id, was=o.broker_order_id)
        return book.try_apply(
            o.client_order_id,
            Replaced(
                ts_ns=book.now_ns(),
                broker_order_id=line.broker_order_id,
                price=line.price,
                qty=o.filled_qty + line.remaining_qty,
            ),
        )

    def _cancel_line(self, coid: str) -> str:
        """The line the order's last cancel request went to (its trace), "" if none."""
        self.book.flush_traces()
        lines = [
            str(body.get("odno", ""))
            for _, kind, body in self.book.store.trace(coid)
            if kind == "broker.request" and body.get("call") == Call.CANCEL.value
        ]
        return lines[-1] if lines else ""

    def _cancel(self, o: Order, live: BrokerOrderReport | None, reports: list[BrokerOrderReport], aged: bool) -> bool:
        book, coid = self.book, o.client_order_id
        if live is None or live.remaining_qty <= 0:
            if aged:  # nothing of the chain is open at the broker, yet the list does not close it
                book.try_apply(
                    coid,
                    CancelRefused(
                        ts_ns=book.now_ns(), code=NOT_AT_BROKER, reason="no line of the order is open at the broker"
                    ),
                )
                self.alert(f"{coid}: cancel in doubt and no line of the order open at the broker: check")
                return True
            return False
        cancelling = any(r.is_cancel and r.orig_broker_order_id == live.broker_order_id for r in reports)
        if cancelling and not aged:
            return False  # the cancel is there; its line will close (the list can lag a little)
        tries = self._tries.get(coid, 0)
        if tries >= self.max_cancel_tries:
            book.try_apply(
                coid,
                CancelRefused(
                    ts_ns=book.now_ns(),
                    code=ErrorCode.BROKER_REJECTED.value,
                    reason=f"cancel not taken after {tries + 1} tries: {o.reason}",
                ),
            )
            self.alert(
                f"{coid}: cancel not taken after {tries + 1} tries ({o.reason}): the order is open at the broker"
            )
            return True
        self._tries[coid] = tries + 1
        self.resent += 1
        book.trace(coid, "repair.cancel_again", odno=live.broker_order_id, attempt=tries + 2)
        if book.try_apply(coid, ResendCancel(ts_ns=book.now_ns(), broker_order_id=live.broker_order_id)) is not None:
            self.resend_cancel(coid)
        return True
