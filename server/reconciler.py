"""The reconciliation driver: brings the book of record in line with the broker's view of the day
(orders, fills, positions) using the pure `server.reconcile.reconcile`, adopts orders placed outside
ktrader (owned by the pseudo-agent 'external'), checks what the account holds against the books, and
expires what the close left open.

The position check also gives every code the balance quotes a reference price (BrokerPosition.last_price)
where no print was seen, and recognises a stock split: the account holding k times the books' shares
(or 1/k of them) at the books' cost is a split, not shares of nobody's. Its holders' orders on the code
are held (server/risk.py) and a person is told, until the operator applies it (`apply_split`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import msgspec

from common.clock import ClockSteps, date_of, elapsed_ns
from common.ids import EXTERNAL_AGENT
from common.krx import REGULAR_ORDER_PHASES, Phase, SessionTimes
from common.portfolio import PendingSplit
from common.orders import (
    AMENDING,
    AWAITING_ACK,
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
from common.books import apply_fill_value
from common.enums import Side
from common.schema import PositionView
from kis.port import BrokerOrderReport, BrokerPosition
from server.equity import save_cash_kept
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
# An order still open from an earlier day (the gateway was down at that day's close) is checked against
# that day's order list before it is expired: it may have filled (the closing auction) with nobody
# listening. KIS answers inquire-daily-ccld for the last 3 months (API.md §1); days further back are
# expired unchecked (alerted). 88 days is inside 3 calendar months whatever the month.
EARLIER_DAYS_MAX = 88
# States in which an order's shares may be at the broker before the books know (a send or a revise
# whose answer is outstanding): no account difference on its code is given to 'external' meanwhile.
IN_FLIGHT = AWAITING_ACK | AMENDING | {OrderState.NEW}
# States of an order that never went to the broker (unless it has a line there): it has no fills to come
NEVER_SENT = frozenset({OrderState.NEW, OrderState.DENIED, OrderState.HELD})
# meta key (+ code): shares 'external' holds because the position check gave it an account difference;
# only these can be taken back when the books later turn out ahead of the account on that code
EXTERNAL_ADJUSTED_META = "recon.external_adjusted:"
# meta key (+ code): a split the balance shows and the books have not taken yet (JSON: num, den, holders)
SPLIT_META = "recon.split_pending:"
# how far the account's purchase value may be from the books' cost for a quantity ratio to read as a split
# (KIS recomputes its average price after one: a won a share of rounding, and 0.5 % besides)
SPLIT_COST_TOLERANCE_BP = 50


@dataclass(frozen=True)
class Note:
    """A difference of the position check that is expected to settle by itself (fills not yet in the
    broker's list, an order on the code in flight or just filled, a difference too young to act on): shown
    on the console, not a difference a person is paged about, unless the code keeps one past the grace
    (`Reconciler.note_grace_ns`)."""

    code: str
    text: str


def periodic_wait(period_s: float, last_pass_s: float) -> float:
    """Seconds until the next periodic pass: the configured period, stretched when the last pass took
    long enough that passes would use more than PERIODIC_SHARE of the time (passes asked for, after
    a gap, at a new day or by the operator, are not held back by this)."""
    return max(period_s, min(last_pass_s * (1 - PERIODIC_SHARE) / PERIODIC_SHARE, PERIODIC_MAX_WAIT_S))


# a failing pass is retried after a back-off doubling from 0.2 s up to this; until the first pass succeeds in the
# session every new order is denied, so then it stays short: a pass asleep for 30 s after KIS was back kept
# the desk shut that long. Failures at night wait the long one (1,200 passes an hour against KIS in its
# maintenance would be no help): the short cap starts RETRY_SOON_BEFORE_OPEN before the opening auction.
RETRY_MAX_S = 30.0
RETRY_MAX_UNSYNCED_S = 3.0
RETRY_SOON_BEFORE_OPEN = dt.timedelta(minutes=10)


def retry_after(backoff_s: float, synced: bool, now: dt.datetime) -> tuple[float, float]:
    """(this wait, the next back-off) after a failed reconciliation pass that waited `backoff_s` before;
    `now`: the market clock (KST)."""
    cap = RETRY_MAX_UNSYNCED_S if not synced and _orders_soon(now) else RETRY_MAX_S
    return min(backoff_s, cap), min(backoff_s * 2, cap)


def _orders_soon(now: dt.datetime) -> bool:
    """The regular session's phases, or its opening auction minutes away."""
    try:
        times = SessionTimes(now.date())
    except ValueError:  # not a trading day
        return False
    phase = times.phase_at(now)
    soon = phase is Phase.PRE_OPEN and now >= times.auction_open - RETRY_SOON_BEFORE_OPEN
    return phase in REGULAR_ORDER_PHASES or soon


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
        # (code, why) of a split suspected from the balance: the gateway wires MarketData.forget_history (its
        # stored daily bars are in the old shares' prices: dropped, back-filled adjusted; intraday bars are
        # rescaled only when the operator applies the split)
        self.on_split_found: Callable[[str, str], object] | None = None
        # the account's equity moved by shares given to (taken from) 'external' with no cash of their own seen (held
        # before ktrader, gone while no gateway ran): its drawdown peaks move with it (server/risk.py shares_moved),
        # as with money moved, or a write-off reads as a drawdown (the sale's cash already raised them: a review)
        self.on_value_moved: Callable[[int], object] | None = None
        # A fill booked from a notice that the list does not show is held as unconfirmed this long,
        # then taken back (a forged or misreported notice must not stay in the books).
        self.fill_grace_ns = fill_grace_ns
        self.resolves = 0  # targeted passes (chain repair), for status
        self.on_synced: list[Callable[[], None]] = []  # once, after the first pass (orders wait for it)
        self.on_pass: list[Callable[[], object]] = []  # after every pass (the first after on_synced)
        self.synced = False  # no orders before the first reconciliation with the broker
        self.complete = False  # a pass over the day's whole order list has succeeded (not only the open ones)
        self.partial_since_ns = 0  # market ns of the first partial pass, while no whole pass followed
        # open orders here that the last open-orders pass did not find in KIS's unfilled list
        self.vanished: list[str] = []
        self.last: tuple[int, str, int] | None = None  # (market ns, reason, alerts) of the last pass
        # the last pass's difference texts, as alerted: what a page about that pass quotes (the alert
        # ring's newest entries may be anything raised since)
        self.last_texts: list[str] = []
        # the last pass's notes (differences expected to settle by themselves: Note), shown only
        self.last_notes: list[str] = []
        # code -> (market ns of the first pass that noted it, told as a difference already): a code noted at
        # every position check since; one past note_grace_ns is told once as a difference
        self._noted: dict[str, tuple[int, bool]] = {}
        # code -> (account minus books, market ns it was first seen) as of the last pass: a difference is
        # acted on only once it stayed the same for fill_grace_ns (the day's list can lag the balance)
        self._unexplained: dict[str, tuple[int, int]] = {}
        self._external_adjusted: dict[str, int] | None = None  # code -> shares (EXTERNAL_ADJUSTED_META), lazily
        # (day, code) -> the largest 'external' short under an agent's shares told that day (a larger one is told again)
        self._short_alerted: dict[tuple[str, str], int] = {}
        # code -> the difference the start's first pass found the books ahead by, no order of ours to explain it
        # (shares gone while no gateway ran): attributed to 'external' once a later pass past the grace agrees on it
        self._gone_before: dict[str, int] = {}
        self._earlier_failed: set[str] = set()  # earlier days whose list could not be read (alerted once)
        self._lock = asyncio.Lock()  # the periodic pass and the day's close never interleave
        self.repriced = 0  # orders whose filled value was brought to the broker's (same shares, other value)
        self.unconfirmed = 0  # orders whose notice fills the broker's list did not show yet at the last pass
        # the machine clock's steps, when the market clock is the machine's (live): graces count time that
        # passed, not an NTP jump (a twin's or a replay's clock moving on is the market's time passing)
        self.steps = ClockSteps()
        self._wall = bool(getattr(book.clock, "machine_wall", False))
        self._load_splits()

    def _now(self) -> int:
        """The market clock (ns), a step of the machine's clock since the last look noted (and logged)."""
        now = self.book.now_ns()
        if self._wall and (step := self.steps.look(now, elapsed_ns())):
            log.warning(
                "the machine's clock jumped %.1fs ahead: reconciliation's graces count the time that passed, "
                "not the jump; check the machine's time sync (NTP)",
                step / 1e9,
            )
        return now

    def age(self, now_ns: int, ts_ns: int) -> int:
        """How long ago `ts_ns` was (market ns), the machine clock's steps left out."""
        return self.steps.age(now_ns, ts_ns)

    async def run(self, reason: str, *, open_only: bool = False) -> ReconcileResult:
        """A pass over the day's whole order list; `open_only`: over KIS's unfilled list alone (the
        first pass of a takeover: a page or two however busy the day was, so orders flow again at
        once; it repairs only what those lines prove, see server/reconcile.py, and checks no
        positions: the full pass must follow)."""
        async with self._lock:
            return await self._run(reason, open_only)

    async def _run(self, reason: str, open_only: bool = False) -> ReconcileResult:
        book = self.book
        # One day for the whole pass, taken at its start: every "today" below is this one, never the
        # clock read again (a pass that awaits the broker across midnight would otherwise read the
        # day's list as its own and match it against the next day's orders: see the check below).
        day = book.day()
        today = date_of(day)
        # Earlier days' open orders: their own day's list first (fills while no gateway ran), then expiry
        # of what is still open; orders of a day whose list could not be read stay open (they keep
        # reserving cash and counting against risk: the safe side) and are tried again next pass.
        kept, earlier_alerts, settled = await self._settle_earlier_days(open_only, day)
        if not self.expire_previous_days(keep=kept, day=day) and settled:
            book.forget_before(day)  # (orders those lists closed: let go as expired ones are)
        # The balance first, then the orders: a fill landing between the two calls then shows in
        # the orders (and the books) but not yet in the balance, which reads as "books ahead" (an
        # alert) — never as shares of nobody's that would be wrongly given to 'external'.
        balance: list[BrokerPosition] | Exception | None = None
        if not open_only:
            try:
                balance = await self.broker.positions()
            except Exception as e:
                balance = e
            else:
                # its prices are the account's now, whatever the order list's read does (a pass that fails after it
                # threw them away and left a scope's drawdown unjudged: a review)
                self.book.portfolio.seed_balance_prices(balance)
        reports = await self.broker.order_reports(today, open_only=open_only)
        if book.day() != day:
            # The market day turned while the pass awaited the broker (a pass begun at 23:59:59). The day's
            # roll may have let that day's finished orders go from memory meanwhile (OrderBook.roll_day), so
            # its list can no longer be matched against the books: its lines would read as nobody's and be
            # adopted as 'external' (phantom shares, "books ahead" for good). Nothing of it is applied: the
            # pass is dropped and the next one (the roll asks for it) settles the day turned from through
            # _settle_earlier_days. Dropping is simplest and obviously safe; nothing is marked synced.
            log.info("reconcile (%s): the day turned from %s to %s during the pass: dropped", reason, day, book.day())
            for text in earlier_alerts:  # (what the earlier days' lists showed was applied: told as usual)
                self.alert(f"reconcile ({reason}): {text}")
            return ReconcileResult(alerts=earlier_alerts)
        virtual = book.portfolio.virtual
        # (an earlier day's order kept open is never matched against today's list: its lines are not there)
        local = [
            o
            for c, o in book.orders.items()
            if (o.is_open or book.order_day.get(c) == day) and o.agent not in virtual and c not in kept
        ]
        now = self._now()
        res = reconcile(
            local,
            reports,
            now_ns=now,
            grace_ns=self.unknown_grace_ns,
            fill_grace_ns=self.fill_grace_ns,
            partial=open_only,
            day=today,
            steps=self.steps,
        )
        res.alerts[:0] = earlier_alerts
        self._apply(res)
        if not open_only:
            self.unconfirmed = len(res.held)
        else:
            shown = {r.broker_order_id for r in reports}
            self.vanished = [
                o.client_order_id
                for o in local
                if o.state in RESTING
                and o.broker_chain
                and self.age(now, o.updated_ns) > VANISH_GRACE_NS
                and not any(x in shown for x in o.broker_chain)
            ]
        for r in res.external:
            try:
                self._adopt_external(r, day)
                self.notices.drain(r.broker_order_id)
            except Exception as e:
                res.alerts.append(f"external order {r.broker_order_id}: adoption failed: {e}")
                log.exception("adopting external order %s failed", r.broker_order_id)
        notes: list[str] = []  # differences expected to settle by themselves: shown, not told
        if isinstance(balance, Exception):  # a failed balance query must not undo the order repair above
            res.alerts.append(f"position check failed: {balance}")
        elif balance is not None:
            # (the start's first whole pass: holdings no order of ours explains were there before ktrader)
            start = not open_only and not self.complete
            found, pending = self._check_positions(balance, res.unconfirmed, day, start=start)
            persisted, notes = self._persisting(pending)
            res.alerts.extend([*found, *persisted])
        differences = list(res.alerts)
        res.alerts.extend(notes)  # (the pass's result lists everything it found, its notes last)
        first = not self.synced
        self.synced = True
        if open_only:
            if not self.complete:  # (an open-orders check between whole passes is not the start's)
                self.partial_since_ns = self.partial_since_ns or book.now_ns()
        else:
            self.complete, self.partial_since_ns = True, 0
        # the differences (a person is told: server/alert_watch.py), then the notes (shown only)
        texts = [f"reconcile ({reason}): {text}" for text in differences]
        noted = [f"reconcile ({reason}): {text}" for text in notes]
        self.last, self.last_texts, self.last_notes = (book.now_ns(), reason, len(texts)), texts, noted
        for text in [*texts, *noted]:
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
        for after in self.on_pass:
            try:
                after()
            except Exception:  # the pass is done and its result stands; a step after it is its own failure
                log.exception("after the reconciliation pass: %s failed", getattr(after, "__qualname__", after))
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
                    if isinstance(ev, (Accept, Replaced)) and book.number(ev.broker_order_id, coid):
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
        lines adopted, fills, how the broker closed them). Returns the list it read. `coids` are today's orders
        (ChainRepair leaves an earlier day's to the periodic pass, which reads that day's own list: its numbers may
        be other orders' in today's)."""
        async with self._lock:
            book = self.book
            # the day whose list is read is the day its lines' times are of (not the clock's after the await)
            day = date_of(book.day())
            reports = await self.broker.order_reports(day)
            local = [book.orders[c] for c in coids if c in book.orders and book.orders[c].broker_chain]
            res = reconcile(
                local,
                reports,
                now_ns=self._now(),
                grace_ns=self.unknown_grace_ns,
                fill_grace_ns=self.fill_grace_ns,
                day=day,
                steps=self.steps,
            )
            res.events = {c: evs for c, evs in res.events.items() if c in coids}
            self._apply(res)
            self.resolves += 1
            for text in res.alerts:
                if any(text.startswith(c) for c in coids):
                    self.alert(f"chain repair ({reason}): {text}")
            return reports

    # ---- expiry ------------------------------------------------------------------------------------

    async def _settle_earlier_days(self, open_only: bool, today: str) -> tuple[set[str], list[str], int]:
        """Before earlier days' open orders are expired, each such day's own order list is read and
        those orders are reconciled against it (as `resolve` does): a resting order that filled at
        that day's close while no gateway ran is booked for its agent instead of expiring with nothing
        filled (its shares would otherwise go to 'external'). Returns the client order ids to keep
        open (their day's list could not be read, or this is an open-orders pass, which reads only
        today's unfilled list: the whole pass that follows settles them), the alerts, and how many
        orders were checked against their day's list. `today`: the pass's day (not the clock's: these
        reads may take until after midnight)."""
        book = self.book
        virtual = book.portfolio.virtual
        by_day: dict[str, list[Order]] = defaultdict(list)
        for coid, o in book.orders.items():
            d = book.order_day.get(coid, today)
            if d < today and o.is_open and o.state is not OrderState.HELD and o.agent not in virtual:
                by_day[d].append(o)
        kept: set[str] = set()
        alerts: list[str] = []
        settled = 0
        for d, orders in sorted(by_day.items()):
            coids = [o.client_order_id for o in orders]
            if open_only:
                kept.update(coids)
                continue
            try:
                day = date_of(d)
            except ValueError:
                continue  # not a day key: expired as before
            if (date_of(today) - day).days > EARLIER_DAYS_MAX:
                alerts.append(
                    f"{coids} of {d}: still open, older than the broker's order inquiry reaches: expired "
                    "without checking their fills (check the account)"
                )
                continue
            try:
                reports = await self.broker.order_reports(day)
            except Exception as e:
                kept.update(coids)
                if d not in self._earlier_failed:  # once; every pass tries again
                    self._earlier_failed.add(d)
                    alerts.append(
                        f"{coids} of {d}: still open, and that day's order list could not be read ({e}): "
                        "not expired, tried again next pass"
                    )
                log.warning("reading the orders of %s failed: %s", d, e)
                continue
            self._earlier_failed.discard(d)
            res = reconcile(
                orders,
                reports,
                now_ns=self._now(),
                grace_ns=self.unknown_grace_ns,
                fill_grace_ns=self.fill_grace_ns,
                day=day,
                steps=self.steps,
            )
            # (its events are these orders' only; that day's lines of nobody's, res.external, are not
            # adopted now: their shares, if any, show in the position check)
            self._apply(res)
            settled += len(coids)
            alerts.extend(f"day {d}: {text}" for text in res.alerts if any(text.startswith(c) for c in coids))
        return kept, alerts, settled

    def expire_previous_days(self, keep: Collection[str] = (), day: str | None = None) -> int:
        """KRX orders are day orders: whatever is still open from an earlier day has expired (and, now
        finished, is let go from memory as the day's roll let the others go); `keep`: client order ids
        left open (their day's fills are not known yet); `day`: the pass's day (by default the clock's)."""
        today = day or self.book.day()
        n = self.expire_through(today, inclusive=False, keep=keep)
        if n:
            self.book.forget_before(today)
        return n

    def expire_through(self, day: str, inclusive: bool = True, keep: Collection[str] = ()) -> int:
        """Expire the open orders of `day` (and earlier), except those in `keep`; after the close they
        are gone at KRX. A fill that still arrives for one is applied (late fills are legal on EXPIRED).
        Orders held for a later session are not day orders of their decision day (server.held decides
        about them)."""
        book, n = self.book, 0
        for coid, o in list(book.orders.items()):
            d = book.order_day.get(coid, day)
            if coid in keep:
                continue
            if o.is_open and o.state is not OrderState.HELD and (d < day or (inclusive and d == day)):
                if book.try_apply(coid, Expire(ts_ns=book.now_ns())) is not None:
                    n += 1
        return n

    # ---- orders and shares of nobody's --------------------------------------------------------------

    def _adopt_external(self, r: BrokerOrderReport, day: str) -> None:
        """An order placed outside ktrader: keep it, owned by `external`, so its shares are attributed;
        `day`: the day of the list it is from (the pass's)."""
        book = self.book
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
        book.number(r.broker_order_id, coid)
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

    def _check_positions(
        self,
        balance: list[BrokerPosition],
        unconfirmed: dict[str, int] | None = None,
        day: str | None = None,
        start: bool = False,
    ) -> tuple[list[str], list[Note]]:
        """The account's holdings against the books. Shares the books hold from fills the broker's list
        does not show yet (`unconfirmed`, inside the grace) are left out of the comparison, and a code
        with such fills is never attributed to 'external' (its difference may be that fill).

        A difference is acted on only when no order on its code is in flight or filled within the
        grace, and it stayed the same over passes for at least fill_grace_ns of market time: the day's
        order list can lag the balance (API.md §8.15) and early-inquiry passes come seconds apart, so
        'seen twice' alone would give an agent's fresh shares to 'external'. Shares the account holds
        beyond the books then go to 'external' -- at once on the start's first whole pass (`start`) where
        no order in the books could explain them (`_explainable_codes`: shares held before ktrader), so
        that the limits count them from the start; books ahead of the account are taken back from
        'external' only as far as it holds shares such an attribution gave it (the orders' own fills
        were booked since); anything else is alerted, never papered over. Returns the differences and
        the notes: what waits for the list, an order in flight or the grace (Note), shown only. `day`:
        the pass's day (by default the clock's)."""
        unconfirmed = unconfirmed or {}
        book = self.book
        day = day or book.day()
        portfolio = book.portfolio
        now = book.now_ns()
        broker = {p.code: p for p in balance}  # (its prices were seeded when its read answered: _run)
        ours: dict[str, int] = defaultdict(int)
        for agent, agent_pos in portfolio.positions.items():
            if agent in portfolio.virtual:
                continue  # virtual shares
            for code, p in agent_pos.items():
                ours[code] += p.qty
        for code, q in unconfirmed.items():
            ours[code] -= q
        busy = self._busy_codes(now, day)
        explainable = self._explainable_codes(day) if start else set()  # (asked only on the start's pass)
        self._clamp_external_adjusted()
        alerts = []
        notes: list[Note] = []
        previous, self._unexplained = self._unexplained, {}
        for code in sorted(set(broker) | set(ours)):
            theirs = broker[code].qty if code in broker else 0
            books = ours.get(code, 0)
            split = portfolio.splits.get(code)
            if split is not None:
                if theirs == books and not unconfirmed.get(code):
                    self._drop_split(code)
                    alerts.append(
                        f"{code}: account holds {theirs}, as the books do: the {split.text} seen earlier is no "
                        "longer shown; its holders may place orders on it again"
                    )
                    continue
                # compared as the books will be once the operator applies it: only what differs beyond is
                held = sum(self._held(a, code) for a in split.holders if a not in portfolio.virtual)  # (the account's)
                books += split.scaled(held) - held
            diff = theirs - books
            if split is not None and not diff:
                alerts.append(self._split_text(code, split, theirs, books))
                continue
            if split is None and diff and code not in busy and not unconfirmed.get(code):
                found = self._split_of(code, theirs, books, broker.get(code))
                if found is not None:
                    self._hold_split(code, found)
                    alerts.append(self._split_text(code, found, theirs, books))
                    continue
            if diff and unconfirmed.get(code):
                notes.append(
                    Note(
                        code,
                        f"{code}: account holds {theirs}, books have {books + unconfirmed[code]} of which "
                        f"{unconfirmed[code]:+d} from fills not yet in the broker's list: waiting",
                    )
                )
                continue
            if not diff:
                self._gone_before.pop(code, None)
                continue
            settled = False
            if code not in busy:  # (while an order on it is in flight, the difference's age starts over)
                prev = previous.get(code)
                since = prev[1] if prev is not None and prev[0] == diff else now
                self._unexplained[code] = (diff, since)
                settled = prev is not None and prev[0] == diff and self.age(now, since) >= self.fill_grace_ns
            if diff < 0:
                # the books hold more than the account. 'external' holds shares an earlier attribution gave it
                # (the list lagged, then showed the orders those shares were from): those are taken back. Found at the
                # start's first whole pass, with no order of ours that could have taken them, they left the account
                # while no gateway ran (sold in the KIS app, moved out): once a later pass agrees, 'external' short,
                # as a sale in the app today is, so the holders are told (the short's alert) and their sells denied,
                # not sent to be refused (alerted at every pass with nothing to clear it, a flatten refused: a hunt).
                # Found later: an error somewhere (or a balance read behind): never papered over, alerted
                ahead = f"{code}: account holds {theirs}, books have {books}: books are ahead of the account"
                take = min(-diff, self._external_adjusted_held(code))
                if take and settled:
                    self._take_back_external(code, take)
                    alerts.append(
                        f"{code}: account holds {theirs}, books had {books}: {take} taken back from external "
                        "(given to it by an earlier position check; the orders they were from are booked since)"
                    )
                    if take < -diff:
                        alerts.append(f"{code}: account holds {theirs}, books have {books + take}: still ahead")
                elif take:
                    notes.append(
                        Note(code, f"{ahead}; {take} that external was given earlier are taken back if it persists")
                    )
                elif code in busy:
                    # a fill of ours landed between the balance's read and the list's (a restart's pass at the open
                    # spans seconds at 2 calls/s): shown, and alerted once the code is quiet if it persists (a hunt:
                    # 'books are ahead' at once, never cleared, the next pass agreeing)
                    notes.append(Note(code, f"{ahead}: an order on it is in flight or just filled: waiting"))
                elif (start and code not in explainable) or self._gone_before.get(code) == diff:
                    # (once a second balance read past the grace agrees on the same difference: one read is not
                    # trusted to deny the holders' sells; their cash, if they were sold, is in the account's reads)
                    if self._gone_before.get(code) == diff and settled:
                        del self._gone_before[code]
                        self._adjust_external(code, diff, broker.get(code), traded=False)
                        self._unexplained.pop(code, None)
                        alerts.append(
                            f"{code}: account holds {theirs}, books had {books}: {diff:+d} attributed to external "
                            "(sold or moved out of the account outside ktrader while no gateway ran: no order of "
                            "ours could have taken them; a sale's cash may have been told as money moved in)"
                        )
                    else:
                        self._gone_before[code] = diff
                        notes.append(
                            Note(
                                code,
                                f"{ahead}: gone before this gateway started? attributed to external if it persists",
                            )
                        )
                else:
                    self._gone_before.pop(code, None)  # (another difference than the start's: told, never written off)
                    alerts.append(
                        f"{ahead} (no order of ours explains it: shares sold or moved out outside ktrader that the "
                        "day's order list does not show? check the account in the KIS app)"
                    )
            elif code in busy:
                notes.append(
                    Note(
                        code,
                        f"{code}: account holds {theirs}, books have {books}: an order on it is in flight or "
                        "just filled: waiting",
                    )
                )
            elif start and code not in explainable:
                # The start's first whole pass (`start`): no order in the books could bring these shares (none
                # open, none of today) and the day's whole list was read, so they were held before ktrader:
                # waiting the grace would only leave the limits blind to them meanwhile (a first start on an
                # account with holdings). Later, a difference may be a buy in the KIS app whose list line lags
                # the balance (API.md §8.15): it waits the grace, or it would be counted twice.
                self._adjust_external(code, diff, broker.get(code), traded=False)
                if not books:  # (all of them carried into the day: its P&L from today's base, not their cost)
                    self.book.portfolio.carried_in(EXTERNAL_AGENT, code)
                self._unexplained.pop(code, None)
                alerts.append(
                    f"{code}: account holds {theirs}, books had {books}: {diff:+d} attributed to external (held "
                    "before ktrader or bought outside it: no order of ours on it could explain them; they count "
                    "toward the account's limits)"
                )
            elif settled:
                # The broker is authoritative for what the account holds; a difference that persisted
                # past the grace with nothing of ours in flight is nobody's here (held before ktrader,
                # or traded elsewhere): external's.
                self._adjust_external(code, diff, broker.get(code))
                alerts.append(f"{code}: account holds {theirs}, books had {books}: {diff:+d} attributed to external")
            else:
                notes.append(
                    Note(
                        code,
                        f"{code}: account holds {theirs}, books have {books}: attributed to external "
                        f"if it persists (a notice may be on its way)",
                    )
                )
        alerts.extend(self._external_short_alerts(broker, ours, unconfirmed, day))
        return alerts, notes

    @property
    def note_grace_ns(self) -> int:
        """How long a code may keep a note before it is told as a difference: an order's shares may be in
        flight until its unknown outcome is settled (unknown_grace_ns), and a fill is confirmed within
        fill_grace_ns after that."""
        return self.unknown_grace_ns + self.fill_grace_ns

    def _persisting(self, notes: list[Note]) -> tuple[list[str], list[str]]:
        """A position check's notes, split: those of a code noted at every check for longer than
        note_grace_ns, told once (a difference that did not settle), and the rest (shown only). A code
        without a note at a check starts over."""
        now, grace = self.book.now_ns(), self.note_grace_ns
        previous, self._noted = self._noted, {}
        told: list[str] = []
        shown: list[str] = []
        for n in notes:
            since, done = previous.get(n.code, (now, False))
            if not done and (unsettled := self.age(now, since)) >= grace:
                told.append(
                    f"{n.text} (unsettled for {unsettled / 1e9:.0f}s, past the {grace / 1e9:.0f}s grace: check)"
                )
                done = True
            else:
                shown.append(n.text)
            self._noted[n.code] = (since, done)
        return told, shown

    # ---- splits --------------------------------------------------------------------------------------

    def _held(self, agent: str, code: str) -> int:
        p = self.book.portfolio.position(agent, code)
        return p.qty if p is not None else 0

    def _split_of(self, code: str, theirs: int, books: int, bp: BrokerPosition | None) -> PendingSplit | None:
        """The split the account's holding of `code` reads as, if any: k (≥ 2, an integer) times the
        books' shares, or 1/k of them, with the purchase value the books' cost (within the tolerance)."""
        portfolio = self.book.portfolio
        if bp is None or theirs <= 0 or books <= 0 or bp.purchase_value <= 0:
            return None
        holders = {
            a: pos[code]
            for a, pos in portfolio.positions.items()
            if a not in portfolio.virtual and code in pos and pos[code].qty
        }
        if any(p.qty < 0 for p in holders.values()):
            return None  # ('external' short: the shares' owners are not known)
        cost = sum(p.cost for p in holders.values())
        if abs(bp.purchase_value - cost) > max(cost * SPLIT_COST_TOLERANCE_BP // 10_000, theirs):
            return None
        if theirs > books and theirs % books == 0:
            num, den = theirs // books, 1
        elif books > theirs and books % theirs == 0:
            num, den = 1, books // theirs
        else:
            return None
        # the shadow agents holding it too: their virtual shares are the same shares' (their stops judged in the new
        # shares' terms, their positions valued so, their orders on it held), though the balance cannot show them
        virtual = {
            a for a, pos in portfolio.positions.items() if a in portfolio.virtual and code in pos and pos[code].qty > 0
        }
        return PendingSplit(num=num, den=den, holders=frozenset(holders) | frozenset(virtual))

    def _split_text(self, code: str, sp: PendingSplit, theirs: int, books: int) -> str:
        virtual = self.book.portfolio.virtual
        held = ", ".join(f"{a}{' (shadow)' if a in virtual else ''} {self._held(a, code)}" for a in sorted(sp.holders))
        return (
            f"{code}: account holds {theirs} at the books' cost, the books {held}: a {sp.text}, not applied "
            f"to the books: nothing moved to or from external, orders of its holders on it are held until "
            f"the operator applies it (ktrader control apply_split --split '{code} {sp.ratio}')"
        )

    def _load_splits(self) -> None:
        for code, raw in self.book.store.meta_prefix(SPLIT_META).items():
            if not raw:
                continue  # (applied, or gone)
            try:
                d = json.loads(raw)
                sp = PendingSplit(num=int(d["num"]), den=int(d["den"]), holders=frozenset(d["holders"]))
            except (ValueError, KeyError, TypeError):
                log.warning("stored pending split of %s unreadable: ignored (the next position check finds it)", code)
                continue
            self.book.portfolio.set_split(code, sp)

    def _hold_split(self, code: str, sp: PendingSplit) -> None:
        """Persisted before it holds orders: a restart keeps the hold (and the valuation at the ratio)."""
        raw = json.dumps({"num": sp.num, "den": sp.den, "holders": sorted(sp.holders)})
        with self.book.store.transaction():
            self.book.store.set_meta(SPLIT_META + code, raw)
        self.book.portfolio.set_split(code, sp)
        log.warning(
            "%s: %s found in the balance: orders of %s on it held", code, sp.text, ", ".join(sorted(sp.holders))
        )
        # the stored daily bars of the code are in the old shares' prices from now: the market data drops them
        # (the broker's daily history is split-adjusted already) and keeps its intraday bars (only a suspicion:
        # they are rescaled when the operator applies it); a failure there must not stop the position check
        if self.on_split_found is not None:
            try:
                self.on_split_found(code, f"{sp.text} suspected from the balance")
            except Exception:
                log.exception("%s: stored daily bars not dropped after its suspected %s", code, sp.text)

    def _drop_split(self, code: str) -> None:
        with self.book.store.transaction():
            self.book.store.set_meta(SPLIT_META + code, "")
        self.book.portfolio.set_split(code, None)

    def apply_split(self, code: str, num: int, den: int) -> list[tuple[str, PositionView, PositionView]]:
        """The operator's word: the pending split of `code` goes into the books. Every holder's shares are
        scaled (qty × num / den), its cost, realised P&L and fees unchanged (the average price follows);
        the shares 'external' was given by position checks are scaled with it. Durable in one
        transaction. Raises ValueError (nothing changed) when no such split is pending, or when a
        holder's shares do not divide by a reverse split's ratio (its fraction is the broker's to settle
        in cash: the books cannot say whose). Returns (holder, before, after)."""
        portfolio = self.book.portfolio
        sp = portfolio.splits.get(code)
        if sp is None:
            raise ValueError(f"no split is pending on {code}: the account's balance showed none to apply")
        if (sp.num, sp.den) != (num, den):
            raise ValueError(f"the balance shows a {sp.text} of {code}, not {PendingSplit(num, den, sp.holders).text}")
        before = {a: p for a in sorted(sp.holders) if (p := portfolio.position(a, code)) is not None and p.qty}
        # a live holder's fraction is the broker's to settle in cash; a shadow holder's virtual one is dropped (its
        # record errs low, never better; one shadow agent's odd lot must not hold the account's split back: a review)
        odd = {a: p.qty for a, p in before.items() if p.qty * num % den and a not in portfolio.virtual}
        if odd:
            raise ValueError(
                f"{', '.join(f'{a} holds {q}' for a, q in odd.items())}: not a multiple of {den}; nothing changed "
                f"(the fraction of a share is settled in cash by the broker: whose it is, the books cannot say)"
            )
        changes = [(a, p, _split_position(p, num, den)) for a, p in before.items()]
        adjusted = self._adjusted().get(code, 0)
        with self.book.store.transaction():
            for a, _, new in changes:
                self.book.store.save_position(a, new)
            self.book.store.set_meta(SPLIT_META + code, "")
            if adjusted:
                self._save_adjusted(code, adjusted * num // den)
        portfolio.set_split(code, None, applied=True)
        for a, old, new in changes:
            if new.cost != old.cost:  # (a shadow holder's dropped fraction) the split first: its day's start in the new
                # shares' terms, as every holder's; then the fraction's loss (one step left the start in the old
                # shares: a day's P&L of -9,450,000 on a 700,000 position: a review)
                portfolio.set_position(a, msgspec.structs.replace(old, qty=new.qty))
            portfolio.set_position(a, new)
        self._unexplained.pop(code, None)
        return changes

    def _busy_codes(self, now_ns: int, today: str) -> set[str]:
        """Codes with an order of ours (not a virtual agent's) whose shares may be at the broker before
        the books or the list show them: a send or revise in flight (UNKNOWN, PENDING_*), a fill
        booked within fill_grace_ns, or an earlier day's order still open (its day's list could not
        be read: it may have filled)."""
        book = self.book
        virtual = book.portfolio.virtual
        busy: set[str] = set()
        for coid, o in book.orders.items():
            if o.agent in virtual or o.agent == EXTERNAL_AGENT or o.code in busy:
                continue  # (an order of 'external' is adopted from the list: its fills are the list's)
            if (
                o.state in IN_FLIGHT
                or any(f.live_qty and self.age(now_ns, f.ts_ns) < self.fill_grace_ns for f in o.fills)
                or (o.is_open and o.state is not OrderState.HELD and book.order_day.get(coid, today) < today)
            ):
                busy.add(o.code)
        return busy

    def _explainable_codes(self, today: str) -> set[str]:
        """Codes on which an order in the books may bring shares the books do not have yet: its fill notice
        on its way, or its fills in a list line not read yet (the list lags the balance). Such an order is
        one still open (any day's) or one of today (a cancelled or expired one may have filled before it
        ended; a balance read before a sell's fill was booked still shows those shares), of any non-virtual
        agent ('external' too while open: its fills come from the list), that may have reached the broker (has a line
        there, or is in a state other than never sent). A finished order of an earlier day has no notice to come (KRX
        orders end with their day) and no line in the list this pass reads."""
        book = self.book
        virtual = book.portfolio.virtual
        return {
            o.code
            for coid, o in book.orders.items()
            if o.agent not in virtual
            and (o.is_open or book.order_day.get(coid, today) >= today)
            and (o.broker_chain or o.state not in NEVER_SENT)
            # an ended order placed outside ktrader was booked from the list this pass read: all of it is known
            # (the KIS app sold 10 of 30 held before: 'external' short -10 waited the grace, equity 2 M too low)
            and not (o.agent == EXTERNAL_AGENT and not o.is_open)
        }

    def _external_short_alerts(
        self, broker: dict[str, BrokerPosition], ours: dict[str, int], unconfirmed: dict[str, int], day: str
    ) -> list[str]:
        """'external' short on a code an agent holds: shares sold outside ktrader (the KIS app) that
        were most likely the agent's; the books' total nets to the account, so the comparison above
        sees nothing. Told once per code and day, and again if it grows (sold again); nothing is moved
        between owners (who sold whose shares is not known here). A short that an account surplus on the
        code covers (shares held before ktrader, sold outside it: attributed to 'external' once it
        persists) is not told."""
        portfolio = self.book.portfolio
        out = []
        self._short_alerted = {k: n for k, n in self._short_alerted.items() if k[0] == day}  # (earlier days': gone)
        for code, ext in sorted(portfolio.positions.get(EXTERNAL_AGENT, {}).items()):
            if ext.qty >= 0 or -ext.qty <= self._short_alerted.get((day, code), 0):
                continue
            theirs = broker[code].qty if code in broker else 0
            surplus = 0 if unconfirmed.get(code) else max(0, theirs - ours.get(code, 0))
            if ext.qty + surplus >= 0:
                continue
            holders = {
                agent: pos[code].qty
                for agent, pos in portfolio.positions.items()
                if agent != EXTERNAL_AGENT and agent not in portfolio.virtual and code in pos and pos[code].qty > 0
            }
            if not holders:
                continue
            before = self._short_alerted.get((day, code), 0)
            self._short_alerted[(day, code)] = -ext.qty
            names = ", ".join(f"{a} ({q})" for a, q in sorted(holders.items()))
            grown = f" (was {before} when told earlier today: sold again)" if before else ""
            out.append(
                f"{code}: external is short {-ext.qty}{grown} (sold outside ktrader) while {names} hold(s) it: the "
                f"account holds {theirs}; the agents' shares may have been sold in the KIS app: check "
                "(nothing moved between owners)"
            )
        return out

    # ---- 'external' adjustments ----------------------------------------------------------------------

    def _adjusted(self) -> dict[str, int]:
        if self._external_adjusted is None:
            raw = self.book.store.meta_prefix(EXTERNAL_ADJUSTED_META)
            self._external_adjusted = {c: int(v) for c, v in raw.items() if v.lstrip("-").isdigit() and int(v) > 0}
        return self._external_adjusted

    def _save_adjusted(self, code: str, qty: int) -> None:
        """(inside the caller's transaction)"""
        self.book.store.set_meta(EXTERNAL_ADJUSTED_META + code, str(max(0, qty)))
        self._adjusted()[code] = max(0, qty)

    def _external_adjusted_held(self, code: str) -> int:
        """Shares 'external' holds on `code` that position checks gave it (at most what it holds)."""
        ext = self.book.portfolio.position(EXTERNAL_AGENT, code)
        return min(self._adjusted().get(code, 0), max(0, ext.qty if ext is not None else 0))

    def _clamp_external_adjusted(self) -> None:
        """What 'external' sold since is no longer there to take back: the count never exceeds its holding."""
        for code, n in list(self._adjusted().items()):
            held = self._external_adjusted_held(code)
            if held < n:
                with self.book.store.transaction():
                    self._save_adjusted(code, held)

    def _adjust_external(self, code: str, diff: int, bp: BrokerPosition | None, traded: bool = True) -> None:
        """`diff` shares to (from) 'external' at the broker's average price. `traded` False: held before ktrader, or
        gone before this gateway's first look (a start's pass): no cash moved for them since the account's first
        read (the cash estimate's baseline moves with them); else shares traded outside ktrader, or ours whose
        notice and list line never came: their cash moved at the broker."""
        portfolio = self.book.portfolio
        cur = portfolio.position(EXTERNAL_AGENT, code) or PositionView(code=code, qty=0, cost=0, realized_pnl=0)
        avg = int(Decimal(bp.avg_price)) if bp is not None and bp.avg_price else 0
        qty = cur.qty + diff
        if (cur.qty < 0 < diff) or (diff < 0 and qty < 0):
            # a short (shares sold outside ktrader: held at their proceeds, common/books.py) met or made as by a
            # trade at the broker's average price: a cover realises its proceeds less that (its cost was set to 0,
            # and the next buy covering it realised a loss of its whole value)
            side = Side.BUY if diff > 0 else Side.SELL
            moved = apply_fill_value(cur, code, side, abs(diff), abs(diff) * avg, allow_short=True)
            pos = PositionView(code=code, qty=qty, cost=moved.cost, realized_pnl=moved.realized_pnl, fees=cur.fees)
        else:
            cost = max(0, cur.cost + diff * avg) if qty > 0 else 0
            pos = PositionView(code=code, qty=qty, cost=cost, realized_pnl=cur.realized_pnl, fees=cur.fees)
        # the shares this gives 'external' (of a short, only what lifts it above zero) may be taken back
        # later, should the books turn out ahead of the account on this code
        given = max(0, qty) - max(0, cur.qty)
        before = portfolio.equity()
        portfolio.set_position(EXTERNAL_AGENT, pos, traded=traded)  # (first: the baseline it moves is saved with it)
        after = portfolio.equity()
        if not traded and before is not None and after is not None and after != before and self.on_value_moved:
            self.on_value_moved(after - before)
        with self.book.store.transaction():
            self.book.store.save_position(EXTERNAL_AGENT, pos)
            if given > 0:
                self._save_adjusted(code, self._adjusted().get(code, 0) + given)
            if not traded:
                save_cash_kept(self.book.store, portfolio)

    def _take_back_external(self, code: str, qty: int) -> None:
        """`qty` shares out of 'external' (that an earlier attribution gave it), at its average cost."""
        portfolio = self.book.portfolio
        cur = portfolio.position(EXTERNAL_AGENT, code)
        if cur is None or not 0 < qty <= cur.qty:
            return  # (never: the caller bounds qty by what 'external' holds)
        left = cur.qty - qty
        cost = cur.cost - cur.cost * qty // cur.qty if left else 0
        pos = PositionView(code=code, qty=left, cost=cost, realized_pnl=cur.realized_pnl, fees=cur.fees)
        with self.book.store.transaction():
            self.book.store.save_position(EXTERNAL_AGENT, pos)
            self._save_adjusted(code, self._adjusted().get(code, 0) - qty)
        portfolio.set_position(EXTERNAL_AGENT, pos)  # (the reverse of an attribution whose cash moved: a traded one)


class EarlyInquiry:
    """A submit whose outcome is unknown is looked for at the broker soon after (EARLY_LOOKS_S), not only
    by the periodic pass, so that a placed order is ACCEPTED within seconds and a strategy that waits
    for it is not blocked for the reconciliation period. Each look is a whole reconciliation pass,
    asked of the gateway's reconcile loop (which coalesces requests): an UNKNOWN is matched among all
    of the day's orders, never paired with another of ours of the same terms. An order that does not
    appear stays UNKNOWN until the grace (server/reconcile.py): a late KIS may still list it.

    A cancel the broker acknowledged (its REST reply or its 접수 notice) and did not confirm (no 확인:
    whether KIS sends one for a cancel is UNCONFIRMED, API.md §5.8/§11) is looked for likewise
    (CANCEL_LOOKS_S, `watch_cancel`): the order has a line, so each look is the chain repair's targeted
    read of the order list for it (`learn`; the orders due at once share one read), which closes it as
    the list does (CANCELLED, or the fills it shows) instead of leaving it PENDING_CANCEL (cash and risk
    held, its agent not told) until the periodic pass. A cancel confirmed (or an order ended) before a
    look costs nothing; one the list does not show closed yet waits for the next look, then the
    periodic pass."""

    EARLY_LOOKS_S = (1.0, 3.0, 10.0)
    CANCEL_LOOKS_S = (2.0, 6.0)

    def __init__(self, book: OrderBook, request: Callable[[str], None], learn: Callable[[str], None]) -> None:
        self.book = book
        self.request = request
        self.learn = learn  # the chain repair's targeted read of the order list for one order
        self.looks = 0  # passes asked for UNKNOWN submits (status: early_inquiries)
        self.cancel_looks = 0  # reads of the order list asked for unconfirmed cancels
        self._cancels: set[tuple[str, str]] = set()  # (order, cancel line) with looks to come

    def watch(self, coid: str) -> None:
        loop = asyncio.get_running_loop()
        for delay in self.EARLY_LOOKS_S:
            loop.call_later(delay, self._look, coid)

    def _look(self, coid: str) -> None:
        o = self.book.orders.get(coid)
        if o is not None and o.state is OrderState.UNKNOWN and not o.broker_chain:
            self.looks += 1
            self.request(f"unknown outcome of {coid}")

    def watch_cancel(self, coid: str, line: str) -> None:
        """`coid`'s cancel (its line `line`) was acknowledged, not confirmed: the order list is read for it
        at CANCEL_LOOKS_S while it stays so. Its REST reply and its 접수 notice arm the looks once."""
        key = (coid, line)
        if key in self._cancels:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (a notice applied outside the gateway's loop: the periodic pass settles it)
            return
        self._cancels.add(key)
        for n, delay in enumerate(self.CANCEL_LOOKS_S, 1):
            loop.call_later(delay, self._look_cancel, key, n)

    def _look_cancel(self, key: tuple[str, str], n: int) -> None:
        if n == len(self.CANCEL_LOOKS_S):
            self._cancels.discard(key)
        coid, line = key
        o = self.book.orders.get(coid)
        if o is None or o.state is not OrderState.PENDING_CANCEL or o.in_doubt:
            return  # confirmed, filled or refused meanwhile; in doubt: the chain repair is on it
        self.cancel_looks += 1
        self.book.trace(coid, "cancel.unconfirmed", line=line, look=n)
        self.learn(coid)


def _split_position(p: PositionView, num: int, den: int) -> PositionView:
    """A holder's position after a split: qty x num / den, the cost unchanged. A shadow holder's fraction of a share
    (a live holder's odd lot is refused: the broker's to settle) is dropped with its share of the cost, booked as a
    realised loss (kept in the cost, a lot rounded down to 0 shares held a cost no P&L counted: a review)."""
    qty = p.qty * num // den
    rest = p.qty * num % den
    if not rest:
        return msgspec.structs.replace(p, qty=qty)
    dropped = p.cost * rest // (p.qty * num)
    return msgspec.structs.replace(p, qty=qty, cost=p.cost - dropped, realized_pnl=p.realized_pnl - dropped)
