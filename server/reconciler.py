"""The reconciliation driver: brings the book of record in line with the broker's view of the day
(orders, fills, positions) using the pure `server.reconcile.reconcile`, adopts orders placed outside
ktrader (owned by the pseudo-agent 'external'), checks what the account holds against the books, and
expires what the close left open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from common.ids import EXTERNAL_AGENT
from common.orders import (
    RESTING,
    Accept,
    Cancelled,
    Expire,
    Fill,
    Order,
    OrderState,
    Replaced,
    Reprice,
    ReverseFill,
)
from common.schema import PositionView
from kis.port import BrokerOrderReport, BrokerPosition
from server.notices import NoticeRouter
from server.order_book import OrderBook
from server.reconcile import ReconcileResult, reconcile

log = logging.getLogger("ktrader.reconcile")

# A periodic pass reads the whole day's order list (page after page at the REST budget's pace); it may
# take at most this share of the time, so that it never crowds out quotes and charts, which queue
# behind it (on a paper account, 15 rows a page at under 2 requests/s: 600 orders take ~22 s a pass)
PERIODIC_SHARE = 0.1
# ... but never longer apart than this: the periodic pass is the backstop for missed fill notices (a pass
# that took long because of a token wait or timeouts must not push the next one out by most of an hour)
PERIODIC_MAX_WAIT_S = 300.0
# the reasons of a start's passes (a restart, a takeover): the open orders first, then the whole day's
# list; what they repair is the recovery of what happened while no gateway ran (tools/rehearse/audit.py)
START = "start"
START_WHOLE = f"{START}, the whole day"
# between whole passes that the list's length stretched (a paper account late in a busy day), the
# unfilled list is read every reconcile_s: a missed fill on an open order shows at once, and an order
# that left the list unheard (its fill notice lost: KIS paper, API.md) brings the whole pass forward
OPEN_CHECK = "open orders"
VANISH_GRACE_NS = 3_000_000_000  # an order this recently changed may have a notice on its way


def periodic_wait(period_s: float, last_pass_s: float) -> float:
    """Seconds until the next periodic pass: the configured period, stretched when the last pass took
    long enough that passes would use more than PERIODIC_SHARE of the time (passes asked for, after
    a gap, at a new day or by the operator, are not held back by this)."""
    return max(period_s, min(last_pass_s * (1 - PERIODIC_SHARE) / PERIODIC_SHARE, PERIODIC_MAX_WAIT_S))


class AccountView(Protocol):
    """The part of the broker reconciliation reads."""

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]: ...

    async def positions(self) -> list[BrokerPosition]: ...


class Reconciler:
    def __init__(
        self,
        book: OrderBook,
        notices: NoticeRouter,
        broker: AccountView,
        alert: Callable[[str], None],
        unknown_grace_ns: int = 600_000_000_000,
        fill_grace_ns: int = 60_000_000_000,
    ) -> None:
        self.book = book
        self.notices = notices
        self.broker = broker
        self.alert = alert
        # The day's order list can lag (API.md §8.15): an UNKNOWN submit missing from it is only
        # declared never-placed after this long; until then it counts against risk.
        self.unknown_grace_ns = unknown_grace_ns
        # A fill booked from a notice that the list does not show is held as unconfirmed this long,
        # then taken back (a forged or misreported notice must not stay in the books).
        self.fill_grace_ns = fill_grace_ns
        self.resolves = 0  # targeted passes (chain repair), for status
        self.on_synced: list[Callable[[], None]] = []  # once, after the first pass (orders wait for it)
        self.synced = False  # no orders before the first reconciliation with the broker
        self.complete = False  # a pass over the day's whole order list has succeeded (not only the open ones)
        self.partial_since_ns = 0  # market ns of the first partial pass, while no whole pass followed
        # open orders here that the last open-orders pass did not find in KIS's unfilled list
        self.vanished: list[str] = []
        self.last: tuple[int, str, int] | None = None  # (market ns, reason, alerts) of the last pass
        # the last pass's difference texts, as alerted: what a page about that pass quotes (the alert
        # ring's newest entries may be anything raised since)
        self.last_texts: list[str] = []
        self._unexplained: dict[str, int] = {}  # code -> shares the account holds beyond the books (last pass)
        self._lock = asyncio.Lock()  # the periodic pass and the day's close never interleave
        self.repriced = 0  # orders whose filled value was brought to the broker's (same shares, other value)
        self.unconfirmed = 0  # orders whose notice fills the broker's list did not show yet at the last pass

    async def run(self, reason: str, *, open_only: bool = False) -> ReconcileResult:
        """A pass over the day's whole order list; `open_only`: over KIS's unfilled list alone (the
        first pass of a takeover: a page or two however busy the day was, so orders flow again at
        once; it repairs only what those lines prove, see server/reconcile.py, and checks no
        positions: the full pass must follow)."""
        async with self._lock:
            return await self._run(reason, open_only)

    async def _run(self, reason: str, open_only: bool = False) -> ReconcileResult:
        book = self.book
        self.expire_previous_days()
        today = book.clock.now().date()
        # The balance first, then the orders: a fill landing between the two calls then shows in
        # the orders (and the books) but not yet in the balance, which reads as "books ahead" (an
        # alert) — never as shares of nobody's that would be wrongly given to 'external'.
        balance: list[BrokerPosition] | Exception | None = None
        if not open_only:
            try:
                balance = await self.broker.positions()
            except Exception as e:
                balance = e
        reports = await self.broker.order_reports(today, open_only=open_only)
        virtual = book.portfolio.virtual
        local = [o for c, o in book.orders.items() if (o.is_open or book.is_today(c)) and o.agent not in virtual]
        res = reconcile(
            local,
            reports,
            now_ns=book.now_ns(),
            grace_ns=self.unknown_grace_ns,
            fill_grace_ns=self.fill_grace_ns,
            partial=open_only,
        )
        self._apply(res)
        if not open_only:
            self.unconfirmed = len(res.held)
        else:
            shown = {r.broker_order_id for r in reports}
            cutoff = book.now_ns() - VANISH_GRACE_NS
            self.vanished = [
                o.client_order_id
                for o in local
                if o.state in RESTING
                and o.broker_chain
                and o.updated_ns < cutoff
                and not any(x in shown for x in o.broker_chain)
            ]
        for r in res.external:
            try:
                self._adopt_external(r)
                self.notices.drain(r.broker_order_id)
            except Exception as e:
                res.alerts.append(f"external order {r.broker_order_id}: adoption failed: {e}")
                log.exception("adopting external order %s failed", r.broker_order_id)
        if isinstance(balance, Exception):  # a failed balance query must not undo the order repair above
            res.alerts.append(f"position check failed: {balance}")
        elif balance is not None:
            res.alerts.extend(self._check_positions(balance, res.unconfirmed))
        first = not self.synced
        self.synced = True
        if open_only:
            if not self.complete:  # (an open-orders check between whole passes is not the start's)
                self.partial_since_ns = self.partial_since_ns or book.now_ns()
        else:
            self.complete, self.partial_since_ns = True, 0
        texts = [f"reconcile ({reason}): {text}" for text in res.alerts]
        self.last, self.last_texts = (book.now_ns(), reason, len(texts)), texts
        for text in texts:
            self.alert(text)
        log.info(
            "reconciled (%s): %d %sorders at the broker, %d repaired, %d external, %d alerts",
            reason,
            len(reports),
            "open " if open_only else "",
            len(res.events),
            len(res.external),
            len(res.alerts),
        )
        if first:
            for fn in self.on_synced:
                fn()
        return res

    def _apply(self, res: ReconcileResult) -> None:
        book = self.book
        to_drain: list[str] = []
        for coid, events in res.events.items():
            try:
                for ev in events:
                    if isinstance(ev, Fill):
                        book.apply_fill(coid, ev)
                    elif isinstance(ev, ReverseFill):
                        book.reverse_fill(coid, ev)
                    elif isinstance(ev, Reprice):
                        if book.reprice(coid, ev) is not None:
                            self.repriced += 1
                    else:
                        book.try_apply(coid, ev)
                    if isinstance(ev, (Accept, Replaced)):
                        book.by_broker_id[ev.broker_order_id] = coid
                        to_drain.append(ev.broker_order_id)
            except Exception as e:  # one order's trouble must not stop the repair of the others
                res.alerts.append(f"{coid}: repair failed: {e}")
                log.exception("reconcile repair of %s failed", coid)
        # Notices buffered for these ODNOs come after the repair: fills reconciliation already
        # counted are then absorbed by the order's reconciled credit instead of counted twice.
        for odno in to_drain:
            self.notices.drain(odno)

    async def resolve(self, coids: list[str], reason: str) -> list[BrokerOrderReport]:
        """A targeted pass for a few orders whose live line is in question (chain repair): the day's
        order list read now, and only these orders' chains brought in line with it (their revise
        lines adopted, fills, how the broker closed them). Returns the list it read."""
        async with self._lock:
            book = self.book
            reports = await self.broker.order_reports(book.clock.now().date())
            local = [book.orders[c] for c in coids if c in book.orders and book.orders[c].broker_chain]
            res = reconcile(
                local, reports, now_ns=book.now_ns(), grace_ns=self.unknown_grace_ns, fill_grace_ns=self.fill_grace_ns
            )
            res.events = {c: evs for c, evs in res.events.items() if c in coids}
            self._apply(res)
            self.resolves += 1
            for text in res.alerts:
                if any(text.startswith(c) for c in coids):
                    self.alert(f"chain repair ({reason}): {text}")
            return reports

    # ---- expiry ------------------------------------------------------------------------------------

    def expire_previous_days(self) -> int:
        """KRX orders are day orders: whatever is still open from an earlier day has expired (and, now
        finished, is let go from memory as the day's roll let the others go)."""
        today = self.book.day()
        n = self.expire_through(today, inclusive=False)
        if n:
            self.book.forget_before(today)
        return n

    def expire_through(self, day: str, inclusive: bool = True) -> int:
        """Expire the open orders of `day` (and earlier); after the close they are gone at KRX. A fill
        that still arrives for one is applied (late fills are legal on EXPIRED). Orders held for a
        later session are not day orders of their decision day (server.held decides about them)."""
        book, n = self.book, 0
        for coid, o in list(book.orders.items()):
            d = book.order_day.get(coid, day)
            if o.is_open and o.state is not OrderState.HELD and (d < day or (inclusive and d == day)):
                if book.try_apply(coid, Expire(ts_ns=book.now_ns())) is not None:
                    n += 1
        return n

    # ---- orders and shares of nobody's --------------------------------------------------------------

    def _adopt_external(self, r: BrokerOrderReport) -> None:
        """An order placed outside ktrader: keep it, owned by `external`, so its shares are attributed."""
        book = self.book
        day = book.day()
        coid = f"{EXTERNAL_AGENT}-{day}-{int(r.broker_order_id)}"
        if coid in book.orders:
            return
        ts = book.now_ns()
        o = Order(
            client_order_id=coid,
            agent=EXTERNAL_AGENT,
            code=r.code,
            side=r.side,
            qty=r.qty,
            price=r.price,
            state=OrderState.PENDING_SUBMIT,
            created_ns=ts,
            updated_ns=ts,
        )
        book.commit(o, Accept(ts_ns=ts, broker_order_id=r.broker_order_id, org_no=r.org_no), day=day)
        book.by_broker_id[r.broker_order_id] = coid
        if r.filled_qty:
            book.apply_fill(
                coid,
                Fill(
                    ts_ns=ts,
                    fill_id=f"recon:{r.broker_order_id}:{r.filled_qty}",
                    qty=r.filled_qty,
                    price=r.filled_value // r.filled_qty if r.filled_value >= r.filled_qty else r.price,
                    broker_order_id=r.broker_order_id,
                    value=r.filled_value if r.filled_value >= r.filled_qty else 0,  # the broker's, exactly
                ),
            )
        if r.remaining_qty == 0 and book.orders[coid].is_open:
            book.try_apply(coid, Cancelled(ts_ns=ts) if r.cancelled_qty else Expire(ts_ns=ts))
        self.alert(
            f"external order {r.broker_order_id}: {r.side} {r.qty} {r.code} @ {r.price} (placed outside ktrader)"
        )

    def _check_positions(self, balance: list[BrokerPosition], unconfirmed: dict[str, int] | None = None) -> list[str]:
        """The account's holdings against the books. Shares the books hold from fills the broker's list
        does not show yet (`unconfirmed`, inside the grace) are left out of the comparison, and a code
        with such fills is never attributed to 'external' (its difference may be that fill)."""
        unconfirmed = unconfirmed or {}
        portfolio = self.book.portfolio
        broker = {p.code: p for p in balance}
        ours: dict[str, int] = defaultdict(int)
        for agent, agent_pos in portfolio.positions.items():
            if agent in portfolio.virtual:
                continue  # virtual shares
            for code, p in agent_pos.items():
                ours[code] += p.qty
        for code, q in unconfirmed.items():
            ours[code] -= q
        alerts = []
        previous, self._unexplained = self._unexplained, {}
        for code in sorted(set(broker) | set(ours)):
            theirs = broker[code].qty if code in broker else 0
            diff = theirs - ours.get(code, 0)
            if diff and unconfirmed.get(code):
                alerts.append(
                    f"{code}: account holds {theirs}, books have {ours.get(code, 0) + unconfirmed[code]} of which "
                    f"{unconfirmed[code]:+d} from fills not yet in the broker's list: waiting"
                )
                continue
            if diff > 0:
                self._unexplained[code] = diff
            if diff < 0:
                # the books hold more than the account: an error somewhere, never papered over
                alerts.append(
                    f"{code}: account holds {theirs}, books have {ours.get(code, 0)}: books are ahead of the account"
                )
            elif diff and previous.get(code) == diff:
                # The broker is authoritative for what the account holds; a difference seen twice in
                # a row is nobody's here (held before ktrader, or traded elsewhere): external's.
                self._adjust_external(code, diff, broker.get(code))
                alerts.append(
                    f"{code}: account holds {theirs}, books had {ours.get(code, 0)}: {diff:+d} attributed to external"
                )
            elif diff:
                alerts.append(
                    f"{code}: account holds {theirs}, books have {ours.get(code, 0)}: attributed to external "
                    f"if it persists (a notice may be on its way)"
                )
        return alerts

    def _adjust_external(self, code: str, diff: int, bp: BrokerPosition | None) -> None:
        portfolio = self.book.portfolio
        cur = portfolio.position(EXTERNAL_AGENT, code) or PositionView(code=code, qty=0, cost=0, realized_pnl=0)
        avg = int(Decimal(bp.avg_price)) if bp is not None and bp.avg_price else 0
        qty = cur.qty + diff
        cost = max(0, cur.cost + diff * avg) if qty > 0 else 0
        pos = PositionView(code=code, qty=qty, cost=cost, realized_pnl=cur.realized_pnl, fees=cur.fees)
        with self.book.store.transaction():
            self.book.store.save_position(EXTERNAL_AGENT, pos)
        portfolio.set_position(EXTERNAL_AGENT, pos)


class EarlyInquiry:
    """A submit whose outcome is unknown is looked for at the broker soon after (EARLY_LOOKS_S), not only
    by the periodic pass, so that a placed order is ACCEPTED within seconds and a strategy that waits
    for it is not blocked for the reconciliation period. Each look is a whole reconciliation pass,
    asked of the gateway's reconcile loop (which coalesces requests): an UNKNOWN is matched among all
    of the day's orders, never paired with another of ours of the same terms. An order that does not
    appear stays UNKNOWN until the grace (server/reconcile.py): a late KIS may still list it."""

    EARLY_LOOKS_S = (1.0, 3.0, 10.0)

    def __init__(self, book: OrderBook, request: Callable[[str], None]) -> None:
        self.book = book
        self.request = request
        self.looks = 0  # passes asked for (status)

    def watch(self, coid: str) -> None:
        loop = asyncio.get_running_loop()
        for delay in self.EARLY_LOOKS_S:
            loop.call_later(delay, self._look, coid)

    def _look(self, coid: str) -> None:
        o = self.book.orders.get(coid)
        if o is not None and o.state is OrderState.UNKNOWN and not o.broker_chain:
            self.looks += 1
            self.request(f"unknown outcome of {coid}")
