"""The order desk: what an agent (or the operator on its behalf) asks of its orders — submit, cancel,
revise, cancel all, flatten — decided here and carried out through the book of record and a send
queue (the broker's, or the shadow market's for agents in shadow mode).

Orders for the next session (tif NEXT_SESSION) pass the gate at once, are written durably as HELD
and wait here until the session they are for takes orders: then they are checked again and sent, or
denied, or expired unsent if that session passed without them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Collection

import msgspec

from common.calendar import is_trading_day, next_trading_day
from common.clock import date_of, yyyymmdd
from common.config import AgentCard
from common.enums import AlertKind, OrderType, SessionState, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import (
    EXTERNAL_AGENT,
    GATEWAY_ORDER_BASE,
    IdError,
    make_client_order_id,
    parse_client_order_id,
    placed_by_gateway,
)
from common.krx import REGULAR_ORDER_PHASES, Phase, SessionTimes, next_session_day
from common.market_clock import WallClock
from common.orders import (
    AMEND_UNKNOWN,
    AWAITING_ACK,
    CANCELLABLE,
    REVISABLE,
    Cancelled,
    Deny,
    Expire,
    Hold,
    MarkUnknown,
    Order,
    OrderState,
    Reject,
    ReplaceRefused,
    RequestCancel,
    RequestReplace,
    Submit,
    is_gateway_exit,
    revise_refusal,
)
from common.portfolio import shares_text
from common.risk_rules import HELD_TIFS, Denial
from common.schema import NewOrder, OrderResult
from server.marketdata import SKEW_ALERT_S
from server.order_book import OrderBook
from server.risk import GLOBAL, RiskGate, SessionView
from server.send_queue import Call, Job, Priority, SendQueue
from server.shadow import ShadowExecution

log = logging.getLogger("ktrader.orders")

SEND_MARKS_KEY = "send_marks_since"  # meta: ns from which submits are marked durably before the call
SHADOW_KEY = "shadow_agents"
# meta: the flattens in progress ({agent: Flattening}), written in the same unit as the cancels that start one
# and the sells that end it: a restart goes on with them (a flatten kept in memory alone was marked done by
# the end of day and never sold after a crash)
FLATTEN_KEY = "flattening"
# meta: the flattens' sells not ended yet (FlattenSells): what each one's end tells, or revives (under the kill
# switch), is known after a restart too (kept in memory alone, a sell refused at the restart sold nothing, untold)
FLATTEN_SELLS_KEY = "flatten_sells"
# denials at a held order's release that pass by themselves: it stays held and is tried at the next day
# tick (a broker session still connecting at 08:30, e.g. a gateway restarted just before the open while
# KIS holds the old socket's slot), until its session has passed and it expires. (The orders-per-minute
# limit is not applied at release: check_revise weighs no rates.) An end-of-day flatten's sell denied so leaves
# the flatten pending, stepped again at each day tick (OrderDesk.flatten `keep`).
RELEASE_WAITS = frozenset({ErrorCode.SESSION_NOT_READY})
# held orders go this long after their session's opening call starts (08:30 on a normal day), not at its first
# tick: the host's clock may run up to SKEW_ALERT_S ahead of the exchange's before a person is told
# (server/marketdata.py), and an order KIS gets before its 08:30 is refused (APBK0919 at the twin) — a refusal of
# a released order is final and counts towards the kill switch. One second more covers the tick and the latency
# jitter around it. Only on the host's own clock (WallClock): a venue's clock (the twin, a replay) is the
# exchange's, with no skew to cover.
RELEASE_MARGIN = dt.timedelta(seconds=SKEW_ALERT_S + 1.0)

Reply = tuple[ErrorCode | None, str]


# held orders still waiting for their code's base price this long into their session: a person is told
BASE_WAIT_ALERT_NS = 60_000_000_000
# an agent's order or protective order numbered in the gateway's range (common/ids.py): it would pass for an exit the
# gateway placed (spared by halts and the kill switch) or push the gateway's next number past the id's 9 digits
GATEWAY_NUMBERS = (
    f"order numbers from {GATEWAY_ORDER_BASE} up are the gateway's own (its exits for the agent): "
    f"number the agent's orders below {GATEWAY_ORDER_BASE}"
)
OPERATOR_FLATTEN = "flatten by "  # how the operator's flatten names itself (server/operator.py)
FLATTEN_RECANCELS = 3  # a flatten's (or a halt's) cancel refused this often is alerted; asked again after each pass


class Flattening(msgspec.Struct, frozen=True, kw_only=True):
    """A flatten in progress as the store keeps it (FLATTEN_KEY): the card it sells under (the agent's, or
    the operator's acting card for an offline agent), why, and its cancels asked again after a refusal."""

    card: AgentCard
    why: str
    recancels: dict[str, int] = {}
    # the end of day's (its card's promise): kept through a broker session that is not ready (stepped again at
    # each day tick) and, once the market is closed, its sells held for the next session; never dropped so
    keep: bool = False


class FlattenSells(msgspec.Struct, frozen=True, kw_only=True):
    """The flattens' sells not ended yet as the store keeps them (FLATTEN_SELLS_KEY): each sell's agent, why and
    keep, and each agent's card once (a closing call's flatten of 150 parts rewrote 150 cards at every sell's end)."""

    cards: dict[str, AgentCard] = {}
    sells: dict[str, tuple[str, str, bool]] = {}  # coid -> (agent, why, keep)


def gateway_sell(
    agent: str, day: dt.date, n: int, code: str, qty: int, tif: TimeInForce, why: str, mark: int
) -> NewOrder:
    """A market sell the gateway places for `agent`, number `n` of its own range on `day`: a flatten's (DAY), or one
    held for the next session (NEXT_SESSION: a flatten the close came before, server/trading_day.py); `mark`: the
    price the decision saw."""
    return NewOrder(
        client_order_id=make_client_order_id(agent, day, n),
        code=code,
        side=Side.SELL,
        qty=qty,
        order_type=OrderType.MARKET,
        tif=tif,
        reason=why,
        decision_price=mark,
    )


def session_day(now: dt.datetime, phase: Phase) -> str:
    """The trading day (YYYYMMDD) whose session an order placed now for "the next session" is for
    (common/krx.py next_session_day: the backtester's rule too)."""
    return yyyymmdd(next_session_day(now, phase))


# an earlier day's order still open here: KRX ended it with its day, and KIS may have given its number to an order of
# today's (each day's orders are numbered anew): a cancel or revise of that number would reach the other order
_EARLIER_DAY = (
    "{coid} is of {day}: KRX ended it with that day, and its number may be another order's today, so there is "
    "nothing to {what}; it is settled from {day}'s order list (reconciliation)"
)


class OrderDesk:
    def __init__(
        self,
        book: OrderBook,
        risk: RiskGate,
        live: SendQueue,
        shadow: SendQueue,
        shadow_venue: ShadowExecution,
        session: Callable[[], SessionView],
        synced: Callable[[], bool],
        alert: Callable[[str], None],
        card_of: Callable[[str], AgentCard | None],
        complete: Callable[[], bool] | None = None,
    ) -> None:
        self.book = book
        # whose card governs an agent's orders now (None: the agent is not registered; its held
        # orders are still sent, on the terms it was given when it placed them)
        self.card_of = card_of
        self.risk = risk
        self.live = live
        self.shadow = shadow
        self.shadow_venue = shadow_venue
        self.session = session
        self.synced = synced  # reconciled once (a takeover's first pass may read open orders only)
        # reconciled against the day's whole order list: held orders are judged against books that
        # know what filled or ended while no gateway ran (a refusal at release is final)
        self.complete = complete or synced
        self.alert = alert
        # whether the gateway's exit `coid` is placed again by its owner once refused unsent (a protection's is:
        # server/core.py wires it; a flatten's sell is not, and its refusal is told)
        self.placed_again: Callable[[str], bool] = lambda coid: False
        self._cancel_on_accept: set[str] = set()  # cancels asked for before the order had an ODNO
        # agent -> (card, why, keep: see Flattening): its sells wait for its cancels
        self._flattening: dict[str, tuple[AgentCard, str, bool]] = {}
        self._flatten_waits: set[str] = set()  # kept flattens whose sells wait for the broker session (logged once)
        # the flattens' sells sent and not yet ended: coid -> (card, why, keep) of their flatten (a refusal of its last
        # sell came after the flatten was over and was told to nobody: `_flatten_sell_ended`)
        self._flatten_out: dict[str, tuple[AgentCard, str, bool]] = {}
        # flattens whose sells wait for the kill switch's resume (stepped at each day tick; logged once)
        self._resume_waits: set[str] = set()
        self._resume_held: set[str] = set()  # held orders whose release waited for a pause's or halt's resume
        self._flatten_told: dict[tuple[str, str], int] = {}  # (agent, code) -> when a flatten sell's end was told
        # the end of day's flatten whose sells come after the close: held for the next session (server/trading_day.py
        # _sell_next_session, the missed flatten's), their number returned; None (no trading day): sold as any flatten
        self.sell_next_session: Callable[[AgentCard, str], int] | None = None
        self._flatten_recancels: dict[str, int] = {}  # coid -> cancels asked again after a refusal (flatten)
        self._halt_recancels: dict[str, int] = {}  # coid -> ditto, a halt's (in memory: a start cancels them again)
        self._recancel_alerted: set[str] = set()  # orders whose refused cancels reached a person (once each)
        # flattens restored at a start: stepped once the first reconciliation has settled their orders
        self._flatten_resumes: set[str] = set()
        self._release_waits: set[str] = set()  # held orders whose release waits (RELEASE_WAITS), traced once
        # agents whose held orders no release may touch now (server/trading_day.py: an unclosed earlier
        # day's orders still open): every release_due asks it, also the one an agent's own held order starts
        self.held_back: Callable[[], Collection[str]] = tuple
        self._base_waits: dict[str, int] = {}  # code -> market ns its held orders began waiting for its base price
        self._base_alerted: set[str] = set()  # codes whose wait reached a person (once a day)
        self._base_day = ""  # the trading day the two above are of (a new day starts them again)
        # agent -> the trading day one of its held orders denied at release reached a person (once a day each)
        self._release_denied_told: dict[str, str] = {}
        # how long after the opening call starts held orders wait (RELEASE_MARGIN): the host's clock may run ahead
        self.release_margin = RELEASE_MARGIN if isinstance(book.clock, WallClock) else dt.timedelta(0)
        self._requeued: list[
            tuple[SendQueue, Job]
        ] = []  # never sent before a restart: sent after the first reconciliation
        book.listeners.append(self._after_commit)
        live.released_refusal = shadow.released_refusal = self._released_refusal
        live.send_refusal = shadow.send_refusal = self._send_refusal
        live.cancel_asked = shadow.cancel_asked = lambda coid: coid in self._cancel_on_accept

    def _released_refusal(self, o: Order) -> str:
        """Why an order held for a session and released may no longer be sent ("": it may): its session
        is over (a burst at the open is sent however long the budget takes). A halt: `_send_refusal`."""
        if o.valid_day != self.book.day() or self.book.clock.phase() not in REGULAR_ORDER_PHASES:
            return f"its session of {o.valid_day} no longer takes orders"
        return ""

    def _send_refusal(self, o: Order) -> str:
        """Why a queued submit may no longer be sent when a slot takes it ("": it may). It may have
        waited long (an opening burst waits as long as the REST budget takes): a cancel asked for
        meanwhile is done by not sending it (KIS would only be told to cancel an order it never needed),
        and a halt since it passed the gate stops it as the gate would now."""
        if o.client_order_id in self._cancel_on_accept:
            return "its cancel was asked for before it was sent"
        if self._halted(o):
            return "trading is halted"
        if (
            is_gateway_exit(o)
            and o.tif not in HELD_TIFS
            and (
                self.book.order_day.get(o.client_order_id, "") != self.book.day()
                or self.book.clock.phase() not in REGULAR_ORDER_PHASES
            )
        ):
            # (an exit goes however late, but within its own session: one queued on a Friday and found after a
            # crash went out on Monday, or on a Saturday, under Friday's id and price -- a review; its protection
            # places a new one for the session now; a flatten's sell is told: nothing else would say it)
            if not self.placed_again(o.client_order_id):
                self.alert(
                    f"{o.agent}: the gateway's sell {o.client_order_id} of {o.qty} {o.code} was not sent: its session "
                    f"is over (queued when the gateway stopped): flatten again (ktrader control flatten --agent "
                    f"{o.agent}) or sell by hand"
                )
            return "its session is over"
        return ""

    def _halted(self, o: Order) -> bool:
        """A halt with cancels since `o` passed the gate stops it as its cancels would have: the gateway's (the kill
        switch: the gateway's exits too, which wait for its resume), or the agent's (not the exits the gateway
        places: order_state). A pause refuses new orders only: one it took before goes, open and "working on" as
        the pause's reply says (a hunt: 4 of 8 queued submits were refused "trading is halted" under a pause)."""
        if self.risk.hard_halted(GLOBAL):
            return True
        return self.risk.hard_halted(o.agent) and not is_gateway_exit(o)

    def _waits_for_resume(self, o: Order, code: ErrorCode) -> bool:
        """A held order denied at its release by a halt waits for the resume (still held; it expires unsent if
        its session passes first): under a pause (its agent's or the gateway's: nothing new goes, and nothing
        taken before is lost), and a sell the gateway placed (a flatten's, a protective exit's) under the kill
        switch, whose exits "keep working" (a hunt: held orders were denied for good at the open under a pause, and
        an end-of-day flatten's sell under an overnight halt: the resumes brought nothing back). A halt with cancels
        cancelled the agent's own held orders."""
        if code is not ErrorCode.DENIED_HALTED or self.risk.split_hold(o.agent, o.code) is not None:
            return False  # (a split not applied yet denies so too: refused and told, as before)
        if is_gateway_exit(o):
            return self.risk.global_state is TradingState.HALTED
        own = self.risk.agent_state(o.agent)
        halted = self.risk.global_state is TradingState.HALTED or own is TradingState.HALTED
        return halted and not (self.risk.hard_halted(GLOBAL) or self.risk.hard_halted(o.agent))

    # ---- start-up -----------------------------------------------------------------------------------

    def load_shadow_agents(self) -> None:
        """Before the book: which agents trade in shadow, so that their positions and today's fills load into
        virtual books and never into the account's (loaded first and moved out after, the fills stayed in the
        account's traded value and the kept read's baseline moved by their spending: a restart on a day a shadow
        agent traded put its virtual buys into the account's cash, a false drawdown, or a money-moved alert)."""
        saved = self.book.store.get_meta(SHADOW_KEY)
        for agent in msgspec.json.decode(saved) if saved else []:
            self.book.portfolio.set_virtual(agent, True)

    def load(self) -> None:
        """After the book: shadow orders still resting, calls the last process left in flight."""
        for coid, o in self.book.orders.items():
            if (o.state in AWAITING_ACK or o.state is OrderState.PENDING_REPLACE) and self._cancel_queued(coid):
                self._cancel_on_accept.add(coid)
        self._recover_shadow_calls()
        for o in self.book.orders.values():
            if o.agent in self.book.portfolio.virtual and o.broker_order_id and o.state in CANCELLABLE:
                # the line as it was: its fills so far (their numbers, q<filled>, go on from there; from 0
                # the next fill could repeat an earlier one's id and be dropped as a duplicate)
                line = f"{o.broker_order_id}:"
                filled = sum(f.qty for f in o.fills if f.fill_id.startswith(line))
                tif = TimeInForce.DAY if o.tif in HELD_TIFS else o.tif  # (a released held order went as DAY)
                self.shadow_venue.restore(
                    o.broker_order_id, o.code, o.side, o.remaining + filled, o.price, filled, o.order_type, tif
                )
        self._restore_flatten_sells()  # (before the in-flight recovery: a sell it refuses is told, or revived)
        self._recover_in_flight()
        self._restore_flattens()

    def _restore_flatten_sells(self) -> None:
        raw = self.book.store.get_meta(FLATTEN_SELLS_KEY)
        try:
            kept = msgspec.json.decode(raw, type=FlattenSells) if raw else FlattenSells()
        except msgspec.MsgspecError as e:  # (never written so; a card an upgrade's rules refuse): said, not fatal
            log.warning("the flatten sells kept before the restart are unreadable (%s): their ends are not told", e)
            return
        for coid, (agent, why, keep) in kept.sells.items():
            o = self.book.orders.get(coid)
            if o is not None and o.is_open and agent in kept.cards:
                self._flatten_out[coid] = (kept.cards[agent], why, keep)

    def _restore_flattens(self) -> None:
        """The flattens the last process left in progress: the agent's new orders are refused again at once,
        and its sells go out after the first reconciliation (resume_flattens)."""
        raw = self.book.store.get_meta(FLATTEN_KEY)
        if not raw:
            return
        try:
            each = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        except msgspec.MsgspecError as e:  # (never written so): a person must sell by hand
            self.alert(f"the flattens in progress before the restart are unreadable ({e}): check and flatten again")
            return
        kept: dict[str, Flattening] = {}
        for agent, one in each.items():
            try:
                kept[agent] = msgspec.json.decode(one, type=Flattening)
            except msgspec.MsgspecError as e:
                # one agent's only (a card this version's rules refuse, after an upgrade): the others go on
                self.alert(
                    f"the flatten of {agent} in progress before the restart cannot be read ({e}): "
                    f"check its orders and flatten it again (ktrader control flatten --agent {agent})"
                )
        for agent, f in kept.items():
            self._flattening[agent] = (f.card, f.why, f.keep)
            self._flatten_recancels.update(f.recancels)
            self._flatten_resumes.add(agent)
            log.warning("flatten of %s (%s) was in progress at the last stop: it goes on", agent, f.why)

    def resume_flattens(self) -> None:
        """The first reconciliation is done: the restored flattens go on (their sells once the agent's orders
        have closed; the cancels a crash left in doubt are the chain repair's)."""
        agents, self._flatten_resumes = sorted(self._flatten_resumes), set()
        for agent in agents:
            self._flatten_step(agent)

    def stop_flatten(self, agent: str) -> bool:
        """The operator's resume of the agent ends the operator's flatten in progress (its sells already
        sent keep working): else it went on selling, a restart restored it, and the agent's own orders
        stayed refused. Never a flatten the card's end-of-day policy started (the gateway's, not his)."""
        if agent not in self._flattening or not self._flattening[agent][1].startswith(OPERATOR_FLATTEN):
            return False
        with self.book.store.write():
            del self._flattening[agent]
            self._flatten_resumes.discard(agent)
            self._resume_waits.discard(agent)
            self._save_flattening()
        return True

    def is_flattening(self, agent: str) -> bool:
        return agent in self._flattening

    @property
    def flattening(self) -> list[str]:
        """The agents being flattened now."""
        return sorted(self._flattening)

    def _save_flattening(self) -> None:
        """The flattens in progress, into the store (inside the write of what changed them)."""
        recancels: dict[str, dict[str, int]] = {}
        for coid, n in self._flatten_recancels.items():
            o = self.book.orders.get(coid)
            if o is not None and o.agent in self._flattening:
                recancels.setdefault(o.agent, {})[coid] = n
        kept = {
            agent: Flattening(card=card, why=why, recancels=recancels.get(agent, {}), keep=keep)
            for agent, (card, why, keep) in self._flattening.items()
        }
        self.book.store.set_meta(FLATTEN_KEY, msgspec.json.encode(kept).decode())
        sells = FlattenSells(
            cards={card.id: card for card, _, _ in self._flatten_out.values()},
            sells={coid: (card.id, why, keep) for coid, (card, why, keep) in self._flatten_out.items()},
        )
        self.book.store.set_meta(FLATTEN_SELLS_KEY, msgspec.json.encode(sells).decode())

    def _cancel_queued(self, coid: str) -> bool:
        """A cancel asked for before the order had its line (its cancel.queued step is durable with
        the answer "cancel queued") and not sent since: still wanted, whatever happened to the process."""
        if not self.book.store.has_trace(coid, "cancel.queued"):
            return False
        steps = self.book.store.trace(coid)
        last = max(i for i, (_, kind, _) in enumerate(steps) if kind == "cancel.queued")
        return not any(
            kind == "broker.request" and body.get("call") == Call.CANCEL.value for _, kind, body in steps[last:]
        )

    def _recover_shadow_calls(self) -> None:
        """The shadow market lived in the previous process: it is rebuilt from the books (the resting
        lines it acknowledged), so a call to it that was in flight when that process died did not
        happen, whatever its send mark says. A submit was never placed: it goes out again while fresh
        (below, as one never sent), else it is refused NOT_SENT; a cancel completes (its line is not
        rebuilt); a revise is refused and the order rests at its old terms. An order left in doubt by
        an older version (UNKNOWN: nothing resolves a shadow order's doubt) was never placed."""
        book, ts = self.book, self.book.now_ns()
        virtual = book.portfolio.virtual
        for coid, o in list(book.orders.items()):
            if o.agent not in virtual:
                continue
            if o.state is OrderState.PENDING_CANCEL or (
                o.state is OrderState.PENDING_REPLACE and coid in self._cancel_on_accept
            ):
                book.trace(coid, "shadow.restart", call="cancel")
                self._cancel_on_accept.discard(coid)
                book.try_apply(coid, Cancelled(ts_ns=ts))
            elif o.state is OrderState.PENDING_REPLACE:
                book.trace(coid, "shadow.restart", call="revise")
                book.try_apply(
                    coid,
                    ReplaceRefused(
                        ts_ns=ts,
                        code=ErrorCode.RESTARTED.value,
                        reason="the gateway restarted before the revise reached the shadow market: send it again",
                    ),
                )
            elif o.state is OrderState.UNKNOWN and not o.broker_order_id:
                book.trace(coid, "shadow.restart", call="submit")
                self._cancel_on_accept.discard(coid)
                book.try_apply(
                    coid,
                    Reject(
                        ts_ns=ts,
                        code=ErrorCode.NOT_SENT.value,
                        reason="the gateway restarted before the shadow market took it: never placed",
                    ),
                )

    def _may_have_left(self, coid: str) -> bool:
        """Whether a submit's request may have reached the broker: its send mark is on disk (broker.request), and,
        where the venue marks the moment it leaves (BrokerPort.leave_with: the request says so), that mark too. A
        request marked but not leaving waited for its REST slot when the process died: never sent."""
        steps = self.book.store.trace(coid)
        last = max(
            (
                i
                for i, (_, kind, b) in enumerate(steps)
                if kind == "broker.request" and b.get("call") == Call.SUBMIT.value
            ),
            default=-1,
        )
        if last < 0:
            return False
        # (only the last request's: an exit whose first try was proven unsent and queued again is judged by its own)
        return not steps[last][2].get("leaving") or any(kind == "broker.leaving" for _, kind, _ in steps[last:])

    def _recover_in_flight(self) -> None:
        """Broker calls that were queued or in flight when the previous process died are gone.
        A submit proven never sent (no send mark on disk) is sent by this process if it is still
        fresh (younger than `max_send_wait`, the trading state allowing it), else refused NOT_SENT.
        A submit that may have reached the broker: UNKNOWN (never resent; reconciliation decides).
        A cancel/revise may or may not have: in doubt, and the chain repair reads the broker's list
        (a cancel that never arrived goes out again). HELD orders were never sent: they stay."""
        book = self.book
        ts = book.now_ns()
        # Since `send_marks_since`, a submit's broker.request trace is on disk before the call:
        # an order without it never left (older orders could have lost theirs: UNKNOWN as before).
        marks_since = int(book.store.get_meta(SEND_MARKS_KEY) or 0)
        if not marks_since:
            with book.store.transaction():
                book.store.set_meta(SEND_MARKS_KEY, str(ts))
            marks_since = ts
        virtual = book.portfolio.virtual
        for coid, o in list(book.orders.items()):
            if o.state is OrderState.PENDING_SUBMIT:
                # (a shadow submit was never placed, marked or not: _recover_shadow_calls)
                never_sent = o.created_ns >= marks_since and not self._may_have_left(coid)
                if o.agent in virtual or never_sent:
                    queue = self.queue_for(o.agent)
                    # fresh as a live order would be (the shadow queue itself never refuses a late one);
                    # one held for today's session and released is fresh while the session takes orders
                    wait_ns = self.live.max_send_wait_ns
                    age = max(0, ts - o.updated_ns)  # since it was queued (its Submit), on the market clock
                    released = o.tif in HELD_TIFS
                    gateways = not released and is_gateway_exit(o)
                    # (a released one is checked again when a slot takes it: the first reconciliation may be late;
                    # the gateway's exit goes however late, as the send queue sends it, within its session)
                    refusal = self._released_refusal(o) if released else self._send_refusal(o) if gateways else ""
                    fresh = not refusal if released or gateways else not wait_ns or age < wait_ns
                    halted = self._halted(o)
                    cancelled = coid in self._cancel_on_accept
                    if fresh and not halted and not cancelled:
                        # sent once this gateway has reconciled (its start is not slowed by the backlog;
                        # the queue's own max_send_wait still applies from when it was first queued)
                        book.trace(coid, "requeued", after_restart=True, age_ms=age // 1_000_000)
                        prio = (
                            Priority.PROTECT
                            if placed_by_gateway(coid)
                            else Priority.RELEASED
                            if released
                            else Priority.NEW
                        )  # (as when it was first queued: a crash in the 08:30 burst must not reorder it)
                        job = Job(
                            Call.SUBMIT,
                            coid,
                            queued=time.monotonic() - age / 1e9,
                            priority=prio,
                            decided_now=not released,
                        )
                        self._requeued.append((queue, job))
                    else:
                        if cancelled:  # it never left, and its own cancel was asked: cancelled, as asked
                            book.trace(
                                coid, "broker.skipped", call=Call.SUBMIT.value, why="its cancel was asked for first"
                            )
                        why = (
                            "trading is halted"
                            if halted
                            else refusal
                            if refusal
                            else f"queued {age / 1e9:.1f}s ago, too late to send"
                        )
                        queue.end_unsent(coid, f"gateway restarted before the order was sent ({why})")
                        self._cancel_on_accept.discard(coid)
                else:
                    book.try_apply(
                        coid,
                        MarkUnknown(
                            ts_ns=ts,
                            code=ErrorCode.RESTARTED.value,
                            reason="gateway restarted while the order was being sent",
                        ),
                    )
            elif o.state in (OrderState.PENDING_CANCEL, OrderState.PENDING_REPLACE) and not o.in_doubt:
                what = "cancel" if o.state is OrderState.PENDING_CANCEL else "revise"
                book.try_apply(
                    coid,
                    MarkUnknown(
                        ts_ns=ts, code=AMEND_UNKNOWN, reason=f"gateway restarted during the {what}: checking the broker"
                    ),
                )

    def release_requeued(self) -> None:
        """The first reconciliation is done: the orders the previous process never sent go out now."""
        jobs, self._requeued = self._requeued, []
        for queue, job in jobs:
            queue.put(job)

    def is_shadow(self, agent: str) -> bool:
        return agent in self.book.portfolio.virtual

    def queue_for(self, agent: str) -> SendQueue:
        return self.shadow if self.is_shadow(agent) else self.live

    def set_mode(self, agent: str, shadow: bool) -> None:
        """Remember which agents trade in shadow (persisted: a restarted gateway must keep their
        virtual books out of reconciliation before they register again)."""
        virtual = self.book.portfolio.virtual
        if shadow == (agent in virtual):
            return
        if any(o.agent == agent and o.is_open for o in self.book.orders.values()):
            raise ValueError(f"{agent} has open orders: cancel them before switching between shadow and live")
        now = "shadow" if shadow else "live"
        new_id = f"an id's books are of one kind: run the card in the other mode under a new id (e.g. {agent}_{now})"
        past = self.book.portfolio.positions.get(agent, {})
        held = sorted(code for code, p in past.items() if p.qty)
        if held:
            # a shadow agent's shares are virtual and a live one's are the account's: switched, the books
            # would claim virtual shares as real (a real sell of shares the agent never bought) or hide
            # real ones from reconciliation
            kind = "real" if shadow else "virtual (shadow)"
            raise ValueError(f"{agent} holds {kind} shares of {', '.join(held)}: {new_id}")
        if any(o.agent == agent and o.filled_qty for o in self.book.orders.values()):
            # today's P&L and fees would move with it: a real loss out of the account's daily-loss
            # count, or a virtual gain into the account's equity and drawdown peak
            raise ValueError(f"{agent} traded today: {new_id}")
        if any(p.realized_pnl or p.fees or p.cost for p in past.values()):  # (any fill: one that nets to 0 too)
            # its money books are of one kind: switched, a shadow record's virtual gain became real budget (a live
            # agent bought over its approved budget on it) and its P&L, equity and peaks the live agent's (a hunt);
            # a live record's real P&L left the account's
            realized, fees = sum(p.realized_pnl for p in past.values()), sum(p.fees for p in past.values())
            was = "live (real)" if shadow else "shadow (virtual)"
            raise ValueError(
                f"{agent} has a {was} record (realised {realized:+,}, fees {fees:,}): its books stay {was.split()[0]}; "
                f"to trade it {now}, give a copy of the card a new id (e.g. {agent}_{now}), approve it and run that; "
                f"{agent}'s record stays as it is"
            )
        # an agent without a record (never filled) changes sides; the account's cash does not move
        self.book.portfolio.keep_cash_through(lambda: self.book.portfolio.set_virtual(agent, shadow))
        with self.book.store.transaction():
            self.book.store.set_meta(SHADOW_KEY, msgspec.json.encode(sorted(virtual)).decode())

    # ---- commands -----------------------------------------------------------------------------------

    def submit(self, card: AgentCard, new: NewOrder, *, priority: Priority = Priority.NEW) -> OrderResult:
        """An agent's order (or the gateway's on its behalf: `priority` PROTECT for its protective and
        flattening sells, which go out before new orders; only those are numbered from GATEWAY_ORDER_BASE up)."""
        book = self.book
        coid = new.client_order_id
        try:
            owner, day, n = parse_client_order_id(coid)
        except IdError as e:
            return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.BAD_ORDER, message=str(e))
        if owner != card.id:
            return OrderResult(
                client_order_id=coid,
                accepted=False,
                code=ErrorCode.WRONG_AGENT,
                message=f"order id belongs to {owner!r}, not {card.id!r}",
            )
        if n >= GATEWAY_ORDER_BASE and priority is not Priority.PROTECT:
            # the gateway's range: asked before a resend's answer too (the agent never placed an order there)
            return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.BAD_ORDER, message=GATEWAY_NUMBERS)
        known = book.orders.get(coid)
        if known is not None:
            return self._again(known, new)
        today = book.day()
        if yyyymmdd(day) != today:
            return OrderResult(
                client_order_id=coid,
                accepted=False,
                code=ErrorCode.WRONG_DAY,
                message=f"order id is for {yyyymmdd(day)}, the trading day is {today}",
            )
        ts = book.now_ns()
        order = Order(
            client_order_id=coid,
            agent=card.id,
            code=new.code,
            side=new.side,
            qty=new.qty,
            price=new.price,
            order_type=new.order_type,
            tif=new.tif,
            created_ns=ts,
            updated_ns=ts,
        )
        held = new.tif in HELD_TIFS
        # held orders are sent later: the session only has to be ready then (their release checks it)
        session = (SessionState.READY, "") if held and self.synced() else self.session()
        if priority is not Priority.PROTECT and card.id in self._flattening:
            # its flatten sells wait for every open order of the agent to close: a new one (a strategy
            # still running re-quotes its bid) would hold them off for good, and a buy undo them. Asked
            # before the gate, whose pass counts against the orders-per-minute windows the sells need
            denial: Denial | None = (
                ErrorCode.DENIED_REDUCING,
                f"{card.id} is being flattened: no new orders until it is flat",
            )
        else:
            denial = self.risk.check(card, new, session, shadow=self.is_shadow(card.id))
        intent: dict[str, object] = {
            "reason": new.reason,
            "context": new.context,
            "decision_price": new.decision_price,
            "code": new.code,
            "side": new.side.value,
            "qty": new.qty,
            "price": new.price,
            "order_type": new.order_type.value,
            "tif": new.tif.value,
        }
        if new.protect is not None:
            intent["protect"] = msgspec.to_builtins(new.protect)
        if denial is not None:
            code, reason = denial
            book.commit(
                order,
                Deny(ts_ns=ts, code=code.value, reason=reason),
                trace=[("intent", intent), ("risk", {"result": "denied", "code": code.value, "reason": reason})],
            )
            return OrderResult(client_order_id=coid, accepted=False, code=code, message=reason)
        if held:
            valid = session_day(book.clock.now(), book.clock.phase())
            book.commit(
                order,
                Hold(ts_ns=ts, valid_day=valid),
                trace=[("intent", intent), ("risk", {"result": "passed"}), ("held", {"for": valid})],
            )
            self.release_due()  # its session may be taking orders right now
            return OrderResult(client_order_id=coid, accepted=True, message=f"held for the session of {valid}")
        # durable intent before the broker sees it
        book.commit(order, Submit(ts_ns=ts), trace=[("intent", intent), ("risk", {"result": "passed"})])
        self.queue_for(card.id).put(Job(Call.SUBMIT, coid, priority=priority))
        return OrderResult(client_order_id=coid, accepted=True)

    @staticmethod
    def _again(known: Order, new: NewOrder) -> OrderResult:
        """The same order sent again (a lost reply) is harmless; anything else under its id is not.
        A revised order is compared on what a revise cannot change."""
        coid = new.client_order_id
        terms = (known.code, known.side, known.order_type, known.tif)
        same = terms == (new.code, new.side, new.order_type, new.tif) and (
            len(known.broker_chain) > 1 or (known.qty, known.price) == (new.qty, new.price)
        )
        if not same:
            return OrderResult(
                client_order_id=coid,
                accepted=False,
                code=ErrorCode.DUPLICATE_ORDER,
                message="this client order id was used for a different order",
            )
        refused = known.state in (OrderState.DENIED, OrderState.REJECTED)
        code = ErrorCode(known.reason_code) if refused and known.reason_code in ErrorCode.__members__ else None
        return OrderResult(
            client_order_id=coid,
            accepted=not refused,
            duplicate=True,
            code=code,
            message=f"already known, state {known.state}",
            state=known.state,  # the agent takes it (its reply may have been lost with the order's events)
        )

    def cancel(self, agent: str, coid: str, *, exits: bool = False) -> Reply:
        """Cancel one of the agent's orders. `exits`: the sells the gateway placed for it (protective exits,
        flatten sells) may go too: the gateway's and the operator's cancels; the agent's own may not (a
        flatten would end with the position still open, a protective exit be undone)."""
        book = self.book
        o = book.orders.get(coid)
        if o is None or o.agent != agent:
            return ErrorCode.UNKNOWN_ORDER, f"no order {coid} of agent {agent}"
        if not exits and is_gateway_exit(o):
            return ErrorCode.FORBIDDEN, (
                f"{coid} is a sell the gateway placed for {agent} (a protective exit or a flatten): the agent may "
                "not cancel it (cancel its protective order, or ask the operator)"
            )
        if o.state is OrderState.PENDING_CANCEL:
            return None, "cancel already in progress"
        if o.state is OrderState.HELD:
            book.try_apply(coid, Cancelled(ts_ns=book.now_ns()))  # never sent: nothing to tell the broker
            self._release_waits.discard(coid)
            self._resume_held.discard(coid)
            return None, "held order cancelled"
        if day := book.of_an_earlier_day(coid):
            return ErrorCode.ORDER_NOT_OPEN, _EARLIER_DAY.format(coid=coid, day=day, what="cancel")
        if o.state in AWAITING_ACK or o.state is OrderState.PENDING_REPLACE:
            # no ODNO yet, or a revise is moving it to a new one: the cancel goes out the moment the
            # broker's answer (or the repair that reads its order list) says which line is live
            self._cancel_on_accept.add(coid)
            # durable with this turn (the answer waits for it): a restart still knows it is wanted
            book.trace(coid, "cancel.queued", durable=True, state=o.state.value)
            return None, (
                "cancel queued until the revise is settled"
                if o.state is OrderState.PENDING_REPLACE
                else "cancel queued until the broker acknowledges the order"
            )
        if o.state not in CANCELLABLE:
            return ErrorCode.ORDER_NOT_OPEN, f"{coid} is {o.state}: nothing to cancel now"
        book.commit(o, RequestCancel(ts_ns=book.now_ns()))
        self.queue_for(agent).put(Job(Call.CANCEL, coid))
        return None, "cancel sent"

    def modify(self, card: AgentCard, coid: str, price: int, qty: int = 0) -> Reply:
        """Revise the price of an open order (KIS gives the remainder a new ODNO); the revise keeps the
        order's type (a conditional order stays conditional). Quantity changes are refused: a revise of
        part of the remainder splits the order at KIS; cancel and send anew. So are revises of market,
        best and priority orders (no price of their own) and of IOC/FOK orders (they never rest)."""
        book = self.book
        o = book.orders.get(coid)
        if o is None or o.agent != card.id:
            return ErrorCode.UNKNOWN_ORDER, f"no order {coid} of agent {card.id}"
        if is_gateway_exit(o):  # (only agents revise: a repriced exit may never sell)
            return (
                ErrorCode.FORBIDDEN,
                f"{coid} is a sell the gateway placed for {card.id}: the agent may not revise it",
            )
        if o.state not in REVISABLE:
            return ErrorCode.ORDER_NOT_OPEN, f"{coid} is {o.state}: cannot revise now"
        if day := book.of_an_earlier_day(coid):
            return ErrorCode.ORDER_NOT_OPEN, _EARLIER_DAY.format(coid=coid, day=day, what="revise")
        if refusal := revise_refusal(o, qty):
            return ErrorCode.BAD_ORDER, refusal
        denial = self.risk.check_revise(card, o, price, self.session())
        if denial is not None:
            book.trace(coid, "risk", result="revise denied", code=denial[0].value, reason=denial[1])
            return denial
        book.commit(o, RequestReplace(ts_ns=book.now_ns(), price=price, qty=o.qty))
        self.queue_for(card.id).put(Job(Call.MODIFY, coid, price, o.qty))
        return None, "revise sent"

    def cancel_all(
        self,
        agent: str,
        code: str = "",
        *,
        spare_exits: bool = False,
        spare_market_exits: bool = False,
        side: Side | None = None,
    ) -> int:
        """Cancel the agent's open orders (of `code`, of `side`); `spare_exits`: not the sells the gateway placed
        for it (protective exits, flatten sells: they only reduce what it holds); `spare_market_exits`: not
        those of them at market (a flatten's: they sell at once; cancelled, a sell resting at the lower limit
        lost its place in the queue and was placed again behind it)."""
        n = 0
        for o in list(self.book.orders.values()):
            if (
                o.agent == agent
                and (not code or o.code == code)
                and (side is None or o.side is side)
                and not (spare_exits and is_gateway_exit(o))
                and not (spare_market_exits and is_gateway_exit(o) and o.order_type is OrderType.MARKET)
                and (
                    o.state in CANCELLABLE
                    or o.state in AWAITING_ACK
                    or o.state in (OrderState.HELD, OrderState.PENDING_REPLACE)
                )
                # (its cancel already queued for the broker's answer: not a cancel sent again, a halt right after
                # a flatten said "2 cancels sent" for the flatten's two)
                and o.client_order_id not in self._cancel_on_accept
            ):
                if self.cancel(agent, o.client_order_id, exits=True)[0] is None:
                    n += 1
        return n

    def flatten(self, card: AgentCard, why: str = "flatten", *, keep: bool = False) -> int:
        """Cancel all of the agent's open orders, then sell what it holds at market once every one
        of them is closed (a cancel can lose the race to a fill, so the sells are sized after).
        The sells go through the risk gate as reducing orders: a global halt still stops them.
        `keep` (the end of day's): a sell denied for a reason that passes (RELEASE_WAITS: a broker session not
        ready) leaves the flatten pending, stepped again at each day tick (step_flattens); sells that come after
        the close are held for the next session (`sell_next_session`). Else a denied sell is alerted and the
        flatten ends (the operator's: he is told and flattens again).
        Returns the number of cancels and sells started now."""
        # one write: the flatten is kept in the store with its cancels (and with its sells when they go at once),
        # so a crash cannot keep the cancels (or the end of day's mark) and lose the sells that wait for them
        # a flatten's sells that end unsold are told once for all its parts (_flatten_sell_ended), a new flatten's again
        self._flatten_told = {k: t for k, t in self._flatten_told.items() if k[0] != card.id}
        prior = self._flattening.get(card.id)
        if prior is not None and prior[2]:
            # the end of day's flatten is pending (its sells wait for the session, or to be held after the close):
            # a second flatten (the operator's) goes on as that one, never in its place — it would drop the wait
            # and the hold, and the operator's resume (stop_flatten) could end what the card's policy started
            why, keep = prior[1], True
        with self.book.store.write():
            # the gateway's market sells go on (a flatten's before it, a protective exit's): it sells what they leave
            # once they are done. Cancelled, a second click's ended the first one's unsent (a false 'the broker
            # refused' that stopped it, the rest never sold), or pulled them from the queue at the lower limit (a hunt)
            self._flattening[card.id] = (card, why, keep)
            n = self.cancel_all(card.id, spare_market_exits=True)
            self._save_flattening()
            return n + self._flatten_step(card.id)

    def _flatten_sell_ended(self, o: Order, card: AgentCard, why: str, keep: bool) -> None:
        """A flatten's sell ended. Refused unsent by the kill switch (queued when it came), the flatten goes on
        once it is resumed. The operator's, refused by the broker (a suspended stock) or expired unfilled (nothing
        to buy it in a closing call) after the flatten's last step, was told to nobody: the reply had said "market
        sells sent", the shares stayed (a hunt). One refused while the flatten still goes on is told (and the
        flatten stopped) by `_after_commit`; a sell the operator cancelled needs no word; the end of day's unsold
        shares are told at the close (TradingDay's unsold check)."""
        if o.filled_qty >= o.qty or o.state is OrderState.CANCELLED or o.agent in self._flattening:
            return
        if o.state is OrderState.REJECTED and o.reason_code == ErrorCode.NOT_SENT.value:
            if self.risk.hard_halted(GLOBAL):
                with self.book.store.transaction():  # (a restart goes on with it)
                    self._flattening[o.agent] = (card, why, keep)
                    self._save_flattening()
                self._flatten_step(o.agent)  # (waits for the resume)
            return  # (else told where it was refused unsent: `_send_refusal`)
        if keep:
            return
        # once per agent and code a minute: a call auction's flatten places every part at once, and a suspended stock
        # refuses them all (one page per part, with the same advice: a review)
        now, key = self.book.now_ns(), (o.agent, o.code)
        if now - self._flatten_told.get(key, -(10**18)) < 60_000_000_000:
            return
        self._flatten_told[key] = now
        how = f"the broker refused it ({o.reason})" if o.state is OrderState.REJECTED else f"it {o.state.value}"
        self.alert(
            f"{o.agent}: {why}: the sell {o.client_order_id} of {o.qty - o.filled_qty} {o.code} did not sell: {how}; "
            "the shares are still held: flatten again once it can sell, or sell by hand"
        )

    def step_flattens(self) -> None:
        """Each day tick: the kept flattens (the end of day's) go on: their sells waited for the broker session
        (a reconnect, a gateway started just before the policy's time), or for the close to hold them; and every
        flatten whose sells waited for the kill switch's resume."""
        for agent in sorted(a for a, (_, _, keep) in self._flattening.items() if keep or a in self._resume_waits):
            self._flatten_step(agent)

    def _flatten_step(self, agent: str) -> int:
        book = self.book
        if (
            agent not in self._flattening
            or agent in self._flatten_resumes  # restored: the first reconciliation settles its orders first
            or any(o.agent == agent and o.is_open for o in book.orders.values())
        ):
            return 0
        keep = self._flattening[agent][2]
        if self.risk.hard_halted(GLOBAL) and (not keep or book.clock.phase() in REGULAR_ORDER_PHASES):
            # the kill switch: its sells wait for the resume, as the halt says the gateway's exits do (denied, the
            # flatten ended for good, the resume sold nothing: a hunt). After the close the end of day's are held
            # for the next session (their release waits for the resume too)
            if agent not in self._resume_waits:
                self._resume_waits.add(agent)
                log.warning("flatten of %s: the gateway is halted: its sells wait for the resume", agent)
            return 0
        self._resume_waits.discard(agent)
        if keep and book.clock.phase() in REGULAR_ORDER_PHASES:
            state = self.session()[0]
            if state is not SessionState.READY:
                # its sells would be denied SESSION_NOT_READY (a reconnect, a gateway started just before its
                # time): they wait, as a protective exit does, and go at a day tick once it is ready (no denied
                # order booked each tick meanwhile); past the close they are held for the next session
                if agent not in self._flatten_waits:
                    self._flatten_waits.add(agent)
                    log.warning("flatten of %s: the broker session is %s: its sells wait for it", agent, state)
                return 0
        self._flatten_waits.discard(agent)
        with book.store.write():  # the flatten leaves the store with its last sells' Submit, in one write
            return self._flatten_sells(agent)

    def _flatten_sells(self, agent: str) -> int:
        book = self.book
        card, why, keep = self._flattening.pop(agent)
        if keep and self.sell_next_session is not None and book.clock.phase() not in REGULAR_ORDER_PHASES:
            # the market closed before its sells could go (its cancels ended after the close, a session down
            # until then): held for the next session's open, as a missed flatten's; a person is told (the card
            # promised no position overnight)
            held = book.portfolio.holding(agent)
            n = self.sell_next_session(card, why) if held else 0
            self._save_flattening()
            if held:
                self.alert(
                    f"{agent}: {why}: the market closed before its sells could go: its positions "
                    f"({shares_text(held)}) are held overnight, {n} market sells held for the next session's open"
                )
            return n
        day = book.clock.now().date()
        n = book.last_gateway_number(agent)
        sent, more, wait = 0, False, False
        # in a call auction every part goes at once: they all meet its one match (a flatten at 15:25 sold a part
        # and promised the rest "once these have filled", which was after the close: held overnight, a hunt)
        auction = book.clock.phase() in (Phase.OPENING_AUCTION, Phase.CLOSING_AUCTION)
        for pos in sorted(book.portfolio.positions.get(agent, {}).values(), key=lambda p: p.code):
            if pos.qty <= 0:
                continue
            # at most the order-value limit per sell: the rest once these have closed (a step again); a
            # market sell is judged at the day's lower limit (one share over the limit: denied, told)
            fit = self.risk.fitting_qty(card, pos.qty, book.portfolio.notional_price(Side.SELL, 0, pos.code))
            left = pos.qty
            while left > 0:
                qty = fit if 0 < fit < left else left
                qty = book.portfolio.exit_qty(agent, pos.code, qty)  # (what the account still holds: see exit_qty)
                if qty <= 0:
                    self.alert(
                        f"{agent}: {why}: {f'its {left}' if left == pos.qty else f'{left} of its {pos.qty}'} "
                        f"{pos.code} are not in the account (sold outside ktrader: see the 'external is short' "
                        "alert): sell or buy back by hand"
                    )
                    break
                n += 1
                mark = book.portfolio.marks.get(pos.code, 0)
                new = gateway_sell(agent, day, n, pos.code, qty, TimeInForce.DAY, why, mark)
                res = self.submit(card, new, priority=Priority.PROTECT)
                if res.accepted:
                    sent += 1
                    self._flatten_out[new.client_order_id] = (card, why, keep)  # (saved with the flattening)
                    left -= qty
                    more = more or (left > 0 and not auction)
                    if auction:
                        continue
                elif keep and res.code in RELEASE_WAITS:
                    wait = True  # passes by itself: tried again at a day tick (step_flattens)
                else:
                    self.alert(f"{agent}: {why}: sell of {qty} {pos.code} denied: {res.code} {res.message}")
                break
        if (more and sent) or wait:
            self._flattening[agent] = (card, why, keep)  # the rest once these sells have closed, or the wait ends
        self._save_flattening()
        return sent

    def _after_commit(self, old: Order | None, new: Order) -> None:
        coid = new.client_order_id
        if coid in self._flatten_out and not new.is_open:
            ended = self._flatten_out.pop(coid)
            with self.book.store.write():
                self._save_flattening()
            self._flatten_sell_ended(new, *ended)
        if (
            coid in self._cancel_on_accept
            and new.state not in AWAITING_ACK
            and new.state is not OrderState.PENDING_REPLACE
        ):
            self._cancel_on_accept.discard(coid)
            if new.state in CANCELLABLE:
                self.cancel(new.agent, coid, exits=True)  # (asked for when it was allowed)
        if (
            new.agent in self._flattening
            and new.state is OrderState.REJECTED
            and is_gateway_exit(new)
            and new.reason_code != ErrorCode.NOT_SENT.value
        ):
            # a flatten sell the broker refused (a halted stock, ...): the next step would send the same
            # sell again at once, and again (a tight loop of refusals): stop and tell the operator
            self._flattening.pop(new.agent, None)
            with self.book.store.transaction():  # stopped for good before it is told (a restart must not resume it)
                self._save_flattening()
            self.alert(
                f"{new.agent}: flatten stopped: the broker refused the sell {coid} ({new.reason}); "
                "flatten again once it can sell"
            )
        elif new.agent in self._flattening and not new.is_open:
            self._flatten_step(new.agent)
        elif (
            new.agent in self._flattening
            and old is not None
            and old.state is OrderState.PENDING_CANCEL
            and new.state in CANCELLABLE
        ):
            # the flatten's cancel was refused (the exchange said no, the order rests again): asked again,
            # a few times, or its sells would wait for good with the agent's own orders refused meanwhile
            tries = self._flatten_recancels.get(coid, 0)
            if tries < FLATTEN_RECANCELS:
                with self.book.store.write():  # counted with the cancel it asks again (a restart goes on counting)
                    self._flatten_recancels[coid] = tries + 1
                    self._save_flattening()
                    self.cancel(new.agent, coid, exits=True)
            elif coid not in self._recancel_alerted:
                self._recancel_alerted.add(coid)
                self.alert(
                    f"{new.agent}: flatten waits: the cancel of {coid} was refused {tries + 1} times; cancel it "
                    "or flatten again (the agent's new orders are refused until it is flat; the gateway asks "
                    "again after each reconciliation)"
                )
        elif (
            old is not None
            and old.state is OrderState.PENDING_CANCEL
            and new.state in CANCELLABLE
            and self._halted_over(new)
        ):
            # a halt's cancel refused (a rate limit, a dropped connection): the order works on at the broker
            # while the screen reads halted. Asked again a few times at once, then after each reconciliation
            # pass (keep_cancelling), and a person is told: he may have to cancel it in the KIS app
            tries = self._halt_recancels.get(coid, 0)
            if tries < FLATTEN_RECANCELS:
                self._halt_recancels[coid] = tries + 1
                self.cancel(new.agent, coid, exits=True)
            else:
                self._tell_still_working(new, f"its cancel was refused {tries + 1} times ({new.reason})")
        if not new.is_open:
            self._halt_recancels.pop(coid, None)
            self._recancel_alerted.discard(coid)

    def _halted_over(self, o: Order) -> bool:
        """A halt with cancels (the kill switch, a drawdown halt: RiskGate.hard_halted) covers `o`: its scope is
        the gateway or o's agent; the gateway's exits are spared, as the halt's own cancels spare them, and the
        orders placed outside ktrader are never ours to cancel."""
        if o.agent == EXTERNAL_AGENT or is_gateway_exit(o):
            return False
        return self.risk.hard_halted(GLOBAL) or self.risk.hard_halted(o.agent)

    def _tell_still_working(self, o: Order, why: str) -> None:
        """A halted scope's order still working at the broker: critical, once per order."""
        if o.client_order_id in self._recancel_alerted:
            return
        self._recancel_alerted.add(o.client_order_id)
        price = f" at {o.price:,}" if o.price else " at market"
        who = "the gateway" if self.risk.hard_halted(GLOBAL) else o.agent
        self.risk.alert(
            f"{who} is halted, but {o.agent}'s order {o.client_order_id} ({o.side} {o.remaining} {o.code}{price}) is "
            f"still working at the broker: {why}. The gateway asks again after each reconciliation; if it stays, "
            "cancel it in the KIS app",
            kind=AlertKind.HALT,
            agent=o.agent,
            subject=o.client_order_id,
        )

    def keep_cancelling(self) -> int:
        """After each reconciliation pass (the books agree with the broker's list): an order still resting
        where the gateway must see it closed -- a scope halted with cancels, an agent being flattened -- had
        its cancel refused (or never reached the broker): asked again. A halt's tells a person (once per
        order). Returns the cancels sent."""
        n = 0
        for o in list(self.book.orders.values()):
            if o.state not in CANCELLABLE:
                continue
            halted = self._halted_over(o)
            if not halted and (o.agent not in self._flattening or is_gateway_exit(o)):
                continue  # (a flatten's own sells rest in a call, or in parts: never its to cancel)
            if self.cancel(o.agent, o.client_order_id, exits=True)[0] is None:
                n += 1
                log.warning("%s rests, its agent halted or flattened: cancel asked again", o.client_order_id)
                if halted:
                    self._tell_still_working(o, "found resting after its halt's cancel")
        return n

    # ---- orders held for a session ---------------------------------------------------------------------

    def release_due(self, wait: Collection[str] | None = None) -> tuple[int, int]:
        """Send the held orders whose session takes orders now (checked again first: the state, the
        band and the account may have changed overnight); expire those whose session has passed.
        `wait`: agents whose held orders are left as they are this time (neither moved, expired nor
        sent); None: those `held_back` names. Returns (released, expired)."""
        if wait is None:
            wait = self.held_back()
        book = self.book
        phase = book.clock.phase()
        today = book.day()
        released = expired = 0
        early: bool | None = None  # within the release margin of the opening call (worked out once, if needed)
        unresumed: dict[str, list[Order]] = {}  # agent -> its held orders that waited for a resume and expired
        for coid, o in list(book.held.items()):  # (not every order: this runs every day tick)
            if o.agent in wait:
                continue
            if o.valid_day < today and not is_trading_day(held_for := date_of(o.valid_day)):
                # the exchange closed its day after it was held (a holiday the broker's calendar
                # knew, ours did not): it is for the next session, as it would have been then
                nxt = yyyymmdd(next_trading_day(held_for))
                book.try_apply(coid, Hold(ts_ns=book.now_ns(), valid_day=nxt))
                book.trace(coid, "held.moved", closed_day=o.valid_day, valid_day=nxt)
                o = book.orders[coid]
            if o.valid_day < today or (
                o.valid_day == today
                and phase not in REGULAR_ORDER_PHASES
                and phase not in (Phase.PRE_OPEN, Phase.CLOSED)
            ):
                book.try_apply(coid, Expire(ts_ns=book.now_ns()))
                book.trace(coid, "held.expired", valid_day=o.valid_day)
                self._release_waits.discard(coid)
                if coid in self._resume_held:
                    self._resume_held.discard(coid)
                    unresumed.setdefault(o.agent, []).append(o)
                expired += 1
            elif o.valid_day == today and phase in REGULAR_ORDER_PHASES and self.complete():
                if early is None:
                    early = self._before_release(phase)
                if not early:
                    released += self._release(o, self.card_of(o.agent))
        for agent, orders in sorted(unresumed.items()):
            # (they waited untold: a whole session paused or halted, its orders end unsent; a gateway's exit among
            # them leaves the shares it was to sell held)
            what = ", ".join(f"{o.side.value} {o.qty} {o.code}" for o in orders)
            self.alert(
                f"{agent}: {len(orders)} orders held for the session of {orders[0].valid_day} ({what}) waited for the "
                "resume all session and expired unsent; place them again if still wanted"
                + (
                    "; the gateway's exit sells among them leave those shares held"
                    if any(map(is_gateway_exit, orders))
                    else ""
                )
            )
        return released, expired

    def _tell_release_denied(self, o: Order, why: str) -> None:
        """A held order denied at its release never reaches the broker, though its strategy counted on it
        since it was placed: a person is told, once a day per agent (a morning of denials is one alert)."""
        day = self.book.day()
        if self._release_denied_told.get(o.agent) == day:
            return
        self._release_denied_told[o.agent] = day
        price = f" at {o.price:,}" if o.price else " at market"
        self.alert(
            f"{o.agent}: its next-session order {o.client_order_id} ({o.side} {o.remaining} {o.code}{price}) was "
            f"denied at its release today and not sent ({why}); check the agent, and place it again if still wanted "
            "(its other held orders denied today are not told again: see its orders)"
        )

    def _before_release(self, phase: Phase) -> bool:
        """Whether the opening call started less than `release_margin` ago (held orders wait: RELEASE_MARGIN)."""
        if not self.release_margin or phase is not Phase.OPENING_AUCTION:
            return False
        now = self.book.clock.now()
        try:
            call = SessionTimes(now.date()).auction_open
        except ValueError:  # not a trading day by our calendar (the phase says otherwise): no margin to keep
            return False
        return now < call + self.release_margin

    def _release(self, o: Order, card: AgentCard | None) -> int:
        book, coid = self.book, o.client_order_id
        if o.code not in book.portfolio.base_prices:
            # the day's base price first: a limit is checked against the day's band (one outside it
            # is refused by KIS, and its refusal counts towards the kill switch), a market buy is
            # judged at the day's upper limit
            now = book.now_ns()
            if self._base_day != book.day():  # yesterday's waits and alerts are not today's
                self._base_day = book.day()
                self._base_waits.clear()
                self._base_alerted.clear()
            since = self._base_waits.setdefault(o.code, now)
            if coid not in self._release_waits:
                self._release_waits.add(coid)
                book.trace(coid, "held.waiting", reason="the day's base price is not known yet")
            if now - since >= BASE_WAIT_ALERT_NS and o.code not in self._base_alerted:
                self._base_alerted.add(o.code)
                self.alert(
                    f"next-session orders on {o.code} wait for the day's base price, not known "
                    f"{(now - since) // 1_000_000_000} s into the session: check the broker's price inquiry"
                )
            return 0
        self._base_waits.pop(o.code, None)
        self._release_waits.discard(coid)  # (a wait for another reason below is traced of its own)
        ts = book.now_ns()
        if card is not None:
            denial = self.risk.check_revise(card, o, o.price, self.session())
            resume = denial is not None and self._waits_for_resume(o, denial[0])
            if resume:
                self._resume_held.add(coid)  # (told if its session passes first: release_due)
            else:
                self._resume_held.discard(coid)  # (a wait for another reason is not the resume's)
            if denial is not None and (denial[0] in RELEASE_WAITS or resume):
                if coid not in self._release_waits:
                    self._release_waits.add(coid)
                    book.trace(coid, "held.waiting", code=denial[0].value, reason=denial[1])
                return 0
            self._release_waits.discard(coid)
            if denial is not None:
                book.commit(
                    o,
                    Deny(ts_ns=ts, code=denial[0].value, reason=f"at release: {denial[1]}"),
                    trace=[("risk", {"result": "denied at release", "code": denial[0].value, "reason": denial[1]})],
                    day=book.day(),  # its session's, as a released one (in that day's report)
                )
                self._tell_release_denied(o, f"{denial[0].value}: {denial[1]}")
                return 0
        elif self.risk.global_state is not TradingState.ACTIVE:
            book.commit(
                o,
                Deny(ts_ns=ts, code=ErrorCode.DENIED_HALTED.value, reason="gateway not active at release"),
                day=book.day(),
            )
            self._tell_release_denied(o, f"{ErrorCode.DENIED_HALTED.value}: the gateway is not active")
            return 0
        self._resume_held.discard(coid)
        book.commit(o, Submit(ts_ns=ts), trace=[("released", {"day": book.day()})], day=book.day())
        gateways = placed_by_gateway(coid)  # a protective exit held overnight
        prio = Priority.PROTECT if gateways else Priority.RELEASED
        self.queue_for(o.agent).put(Job(Call.SUBMIT, coid, priority=prio, decided_now=False))
        return 1
