"""Agent sessions: registration (lease, snapshot, missed events), heartbeats, leaving, and the market
data a card asks for.

An agent id is held by one process session at a time (server.registry); a restarted agent takes over
its lease and gets its snapshot — open orders, positions, budget, next order number, trading state —
plus the events it missed, so it sends nothing twice.

An agent registers with its own credential (the router checked that the frame is signed by the id
it names) and trades under the card the operator approved (common/approvals.py): a card that differs
from it is refused, naming what differs; the limits, budget and codes the agent declares never count.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from common import calendar
from common.approvals import Approval, checksum, differences
from common.enums import AgentMode, AgentState, AlertKind, SystemEventKind, TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT, GATEWAY_ORDER_BASE
from common.clock import yyyymmdd
from common.market_clock import market_ns
from common.schema import (
    Ack,
    Error,
    EventBatch,
    FeedHealth,
    GetEvents,
    GetSnapshot,
    Heartbeat,
    Message,
    Notice,
    Register,
    Registered,
    Snapshot,
    SnapshotReply,
    Subscribe,
    Unregister,
)
from common.views import order_view
from kis.port import MarketKind
from server.order_book import OrderBook
from server.order_desk import OrderDesk
from server.protection import ProtectionDesk
from server.registry import AgentRecord, RegisterOutcome, Registry
from server.risk import RiskGate
from server.store import Store
from server.subscriptions import SubscriptionManager, refusal_notice
from server.universe import market_kinds

log = logging.getLogger("ktrader.gateway")

MAX_REPLAY = 500  # events sent back with a registration (well under a frame); more via GetEvents
# meta: {agent: [process session, pause number]} of the self-pauses the gateway took, written with the REDUCING
# state they set: after a restart the same pause is not taken as a new one (REDUCING again, a person paged)
PAUSES_KEY = "self_pauses"
# an agent that leaves with a failure this many times within FAILING_WINDOW_S (a supervisor restarting an agent
# whose on_start raises, every few seconds, for days): a person is told once, then again after FAILING_RETELL_S
FAILING_LEAVES = 3
FAILING_WINDOW_S = 600.0
FAILING_RETELL_S = 3600.0

Publish = Callable[[SystemEventKind, str, str], None]


class AgentSessions:
    def __init__(
        self,
        registry: Registry,
        book: OrderBook,
        desk: OrderDesk,
        risk: RiskGate,
        subs: SubscriptionManager,
        headers: Any,
        publish: Publish,
        counters: Counter[str],
        *,
        lease_s: float,
        heartbeat_s: float,
        hold_s: float = 0.0,
        listed: Callable[[str], bool] | None = None,
        listed_source: str = "",
        protection: ProtectionDesk | None = None,
        approved: Callable[[str], Approval | None] = lambda agent: None,
        approval_refusal: Callable[[str], str] = lambda agent: "",
    ) -> None:
        self.registry = registry
        self.book = book
        self.desk = desk
        self.risk = risk
        self.subs = subs
        self.headers = headers
        self.publish = publish
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.hold_s = hold_s  # an expired lease's market data kept this long (the gateway: offline_after_s)
        self.listed = listed  # the stock master (None: every code is taken)
        self.listed_source = listed_source
        # agent -> its card's codes not subscribed at its registration because the master did not list them (yet):
        # subscribed when a newer master lists them (subscribe_newly_listed)
        self._unlisted: dict[str, set[str]] = {}
        self.protection = protection  # protective orders: in the snapshot, and their ids in the numbering
        self.approved = approved  # the operator's approved card of an agent id
        self.approval_refusal = approval_refusal  # why an approval is not honoured here ("": none to say)
        self.pub_endpoint = ""
        self.on_registered: list[Callable[[AgentRecord], None]] = []  # services, universe, base prices
        self.on_offline: list[Callable[[str, str], None]] = []  # (agent, why): feed health, the operator
        self.counters = counters
        # agent -> (process session, number) of the self-pause this gateway took (FeedHealth.pause_n), while the
        # agent says it is paused
        self._pauses: dict[str, tuple[str, int]] = {}
        # agent -> (process session, number) of the latest skipped daily decision told (FeedHealth.skipped_n); a
        # restarted gateway tells it again once (a second page beats none)
        self._skips: dict[str, tuple[str, int]] = {}
        # agent -> when (monotonic) it left with a failure, within FAILING_WINDOW_S; and when that was last told
        self._failed_leaves: dict[str, list[float]] = {}
        self._failing_told: dict[str, float] = {}
        store = self._store()
        raw = store.get_meta(PAUSES_KEY) if store is not None else ""
        if store is not None and raw:
            try:
                saved = msgspec.json.decode(raw, type=dict[str, tuple[str, int]])
            except msgspec.MsgspecError as e:  # (never written so): each pause is taken again, and told
                log.error("the self-pauses taken before the restart are unreadable: %s", e)
            else:
                self._pauses.update(saved)

    # ---- what an agent gets back -------------------------------------------------------------------

    def snapshot(self, rec: AgentRecord, universe: list[str] | None = None) -> Snapshot:
        """`universe`: the codes the universe gave the agent beyond its card's (default: its record's now)."""
        book, p = self.book, self.book.portfolio
        agent = rec.id
        numbers = book.numbers_today(agent)
        prot = self.protection
        taken = [*numbers, *(prot.numbers_today(agent) if prot is not None else [])]
        n = 1 + max((k for k in taken if k < GATEWAY_ORDER_BASE), default=0)  # the agent's own counter
        return Snapshot(
            agent=agent,
            trading_state=self.risk.effective(agent),
            own_state=self.risk.agent_state(agent),
            open_orders=[order_view(o) for o in book.orders.values() if o.agent == agent and o.is_open],
            positions=[x for x in p.positions.get(agent, {}).values() if x.qty or x.realized_pnl or x.fees],
            budget=rec.card.budget,
            reserved_cash=p.reserved_cash(agent),
            spent_cash=p.spent(agent),
            last_seq=book.seq.get(agent, 0),
            next_order_n=n,
            day=book.day(),
            orders_today=len(numbers),
            clock_ns=market_ns(book.clock),
            phase=book.clock.phase().value,
            protections=prot.of(agent) if prot is not None else [],
            session_state=self.desk.session()[0].value,
            gateway_state=self.risk.global_state.value,
            universe_codes=[c for c in rec.codes if c not in rec.card.codes] if universe is None else universe,
            closed_days=[yyyymmdd(d) for d in calendar.closed_by_exchange()],
        )

    # ---- requests -----------------------------------------------------------------------------------

    def register(self, route: bytes, msg: Register) -> Message:
        h = msg.h
        if msg.card.id == EXTERNAL_AGENT:
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.BAD_CARD,
                message=f"{EXTERNAL_AGENT!r} is reserved for orders placed outside ktrader",
            )
        if msg.card.id != h.sender:
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.BAD_CARD,
                message=f"card id {msg.card.id!r} differs from sender {h.sender!r}",
            )
        approval = self.approved(msg.card.id)
        if approval is None:
            self.counters["unapproved_registrations"] += 1
            why = self.approval_refusal(msg.card.id) or "no approved card"
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.NOT_APPROVED,
                message=(
                    f"{msg.card.id!r}: {why}: the operator approves it on the gateway's host "
                    f"(ktrader cards approve CARD)"
                ),
            )
        if approval.sha256 != checksum(msg.card):
            self.counters["cards_refused"] += 1
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.BAD_CARD,
                message=(
                    f"the card differs from the one the operator approved "
                    f"({'; '.join(differences(approval.card, msg.card))}): "
                    f"the approved one stands; to change it, on the gateway's host: ktrader cards approve CARD"
                ),
            )
        live = self.registry.agents.get(msg.card.id)
        duplicate = (
            live is not None
            and live.session != h.sid
            and live.state is AgentState.ONLINE
            and self.registry.age(live) <= self.lease_s
        )
        if not duplicate:
            try:  # (a duplicate's card must not switch a live agent's mode; it is refused below)
                self.desk.set_mode(msg.card.id, msg.card.mode is AgentMode.SHADOW)
            except ValueError as e:
                return Error(h=self.headers(h.mid), code=ErrorCode.BAD_CARD, message=str(e))
        # the codes the universe binder last gave this id beyond its card's (server/universe.py apply keeps them
        # in the record's codes); the registration resets them, and the binder tells this session its list
        # after the snapshot: a restarted agent plans its daily catch-up over them
        given = [c for c in live.codes if c not in live.card.codes] if live is not None else []
        outcome, rec = self.registry.register(msg.card, route, h.sid, msg.pid, msg.host)
        if outcome == RegisterOutcome.DUPLICATE:
            self.counters["duplicate_agents"] += 1
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.DUPLICATE_AGENT,
                message=(
                    f"agent {rec.id!r} is already live: pid {rec.pid} on {rec.host}, "
                    f"last heartbeat {self.registry.age(rec):.1f}s ago"
                ),
            )
        snap = self.snapshot(rec, given if rec.card.universe_top > 0 else [])
        # A fresh process (last_seq 0) rebuilds from the snapshot; a running one that re-registers
        # gets what it missed, capped (it fetches the rest with GetEvents).
        events = (
            self.book.store.agent_events(rec.id, msg.last_seq, MAX_REPLAY) if 0 < msg.last_seq < snap.last_seq else []
        )
        log.info("agent %s registered (%s, pid %d, session %s)", rec.id, outcome, msg.pid, h.sid[:8])
        self.publish(SystemEventKind.AGENT_ONLINE, rec.id, outcome)
        self._subscribe_card(rec)
        for fn in self.on_registered:
            fn(rec)
        return Registered(
            h=self.headers(h.mid),
            snapshot=snap,
            events=events,
            heartbeat_s=self.heartbeat_s,
            lease_s=self.lease_s,
            pub_endpoint=self.pub_endpoint,
        )

    def heartbeat(self, rec: AgentRecord, route: bytes, msg: Heartbeat) -> Message:
        if rec.state is not AgentState.ONLINE:
            # Its lease ran out (a stall: a slow callback, a GC pause, SIGSTOP) and its market data went
            # with it (offline). Accepting the heartbeat would make it online again without them: it must
            # register again, which restores them and replays what it missed (one path for "it came back").
            self.counters["heartbeats_after_expiry"] += 1
            return Error(
                h=self.headers(msg.h.mid),
                code=ErrorCode.NOT_REGISTERED,
                message=f"your lease expired ({rec.state.value}): register again",
            )
        rec.max_ack_gap_ms = max(rec.max_ack_gap_ms, msg.max_ack_gap_ms)
        if msg.errors != rec.errors or msg.last_error != rec.last_error:
            # (when it happened, not when this gateway first heard: one restarted since hears an old error)
            rec.error_ns = market_ns(self.book.clock) - msg.last_error_ago_ms * 1_000_000 if msg.last_error else 0
        rec.errors, rec.last_error = msg.errors, msg.last_error
        rec.feed = msg.feed
        lifted = self._note_pause(rec, msg.feed, msg.h.sid)
        if msg.feed.skipped_n and self._skips.get(rec.id) != (msg.h.sid, msg.feed.skipped_n):
            self._skips[rec.id] = (msg.h.sid, msg.feed.skipped_n)
            self.risk.alert(
                f"{rec.id} skipped its daily decision on {msg.feed.skipped}: it was down at that close and came back "
                "after the next session opened (an order now would be for the session after). Check what it holds "
                f"and would hold (ktrader status); a strategy that acts on a cross may not see it again",
                kind=AlertKind.DECISION_SKIPPED,
                agent=rec.id,
            )
        clock = self.book.clock
        return Ack(h=self.headers(msg.h.mid), clock_ns=market_ns(clock), phase=clock.phase().value, pause_lifted=lifted)

    def _note_pause(self, rec: AgentRecord, feed: FeedHealth, sid: str) -> int:
        """An agent that paused itself after a strategy error (card on_error = "pause") numbers its pauses; a
        pause is known by the agent process's session and that number (a restarted agent counts from 1 again).
        The gateway takes each new pause once: the agent goes to REDUCING if it was ACTIVE (not HALTED: its
        protective exits keep working) and a person is told (OPERATOR: their resume is what lifts it).
        `ktrader control resume --agent ID` sets it ACTIVE; a heartbeat still saying a pause the gateway took
        while the agent is ACTIVE means the operator resumed it since (only an operator sets ACTIVE): the
        reply names that pause lifted, which ends it in the agent, and ACTIVE is published again (a resume of
        an agent already ACTIVE publishes nothing; the agent may have missed it). Returns the pause lifted
        (0: none)."""
        why, pause = feed.paused, (sid, feed.pause_n)
        rec.paused = bool(why)
        store = self._store()
        if not why:
            if self._pauses.pop(rec.id, None) is not None and store is not None:
                with store.write(atomic=False):  # (batched: a pause ended is nobody's news)
                    self._save_pauses(store)
            return 0
        if self._pauses.get(rec.id) != pause:
            self._pauses[rec.id] = pause
            log.warning("agent %s paused itself after a strategy error (pause %d): %s", rec.id, pause[1], why)
            state = self.risk.agent_state(rec.id)
            if state is TradingState.ACTIVE:
                if store is not None:
                    # into the loop turn's batch, which the state's transaction below commits and syncs: the
                    # pause taken is durable with its REDUCING (a pause kept without it would read, after a
                    # restart, as one the operator resumed; one lost, as a new pause: paged again)
                    with store.write(atomic=False):
                        self._save_pauses(store)
                self.risk.set_state(
                    rec.id,
                    TradingState.REDUCING,
                    why=f"the agent paused itself after a strategy error ({why}); "
                    f"ktrader control resume --agent {rec.id} resumes it",
                )
            elif store is not None:
                with store.transaction():  # durable before a person is told
                    self._save_pauses(store)
            self.risk.alert(
                f"{rec.id} paused itself after a strategy error ({why}): "
                f"{'now reducing' if state is TradingState.ACTIVE else f'it stays {state}'}, no new orders until "
                f"ktrader control resume --agent {rec.id}",
                kind=AlertKind.OPERATOR,
                agent=rec.id,
            )
            return 0
        if pause[1] and self.risk.agent_state(rec.id) is TradingState.ACTIVE:
            self.publish(SystemEventKind.TRADING_STATE, rec.id, TradingState.ACTIVE.value)
            return pause[1]
        return 0

    def _store(self) -> Store | None:
        """The store the pauses taken are kept in (a test's partial gateway may give a book without one:
        then they are kept in memory only)."""
        return getattr(self.book, "store", None)

    def _save_pauses(self, store: Store) -> None:
        store.set_meta(PAUSES_KEY, msgspec.json.encode(self._pauses).decode())

    def unregister(self, rec: AgentRecord, route: bytes, msg: Unregister) -> Message:
        self.registry.unregister(rec)
        if msg.exit_code:
            self._failed_leave(rec, msg)
        self.offline(rec.id, msg.reason or "unregistered")
        log.info("agent %s unregistered (%s)", rec.id, msg.reason)
        return Ack(h=self.headers(msg.h.mid), message="bye")

    def _failed_leave(self, rec: AgentRecord, msg: Unregister) -> None:
        """The agent stopped with a failure (its on_start raised, a strategy error, a card refused): the record shows
        it (status, console: a failure before its first heartbeat left nothing there), and an agent failing again
        and again -- a supervisor restarting it every few seconds -- is told to a person once (then hourly)."""
        why = msg.reason or f"exit {msg.exit_code}"
        log.warning("agent %s stopped with a failure (exit %d): %s", rec.id, msg.exit_code, why)
        rec.errors += 1
        rec.last_error = why
        rec.error_ns = market_ns(self.book.clock)
        now = self.registry.clock()
        times = [t for t in self._failed_leaves.get(rec.id, []) if now - t <= FAILING_WINDOW_S] + [now]
        self._failed_leaves[rec.id] = times
        told = self._failing_told.get(rec.id)
        if len(times) < FAILING_LEAVES or (told is not None and now - told < FAILING_RETELL_S):
            return
        self._failing_told[rec.id] = now
        self.risk.alert(
            f"{rec.id} keeps stopping with a failure: {len(times)} times in {(now - times[0]) / 60:.0f} min "
            f"(registered {rec.registrations} times since the gateway started); the last: {why}. Something restarts "
            "it: fix its card or strategy (its log says more), or stop it",
            kind=AlertKind.AGENT_OFFLINE,
            agent=rec.id,
        )

    def get_snapshot(self, rec: AgentRecord, route: bytes, msg: GetSnapshot) -> Message:
        return SnapshotReply(h=self.headers(msg.h.mid), snapshot=self.snapshot(rec))

    def get_events(self, rec: AgentRecord, route: bytes, msg: GetEvents) -> Message:
        events = self.book.store.agent_events(rec.id, msg.after_seq, msg.limit)
        return EventBatch(h=self.headers(msg.h.mid), events=events, last_seq=self.book.seq.get(rec.id, 0))

    def subscribe(self, rec: AgentRecord, route: bytes, msg: Subscribe) -> Message:
        """An agent asks again for a registration it was refused (agent/quotepoll.py)."""
        h = msg.h
        subs = rec.card.subscriptions
        kind = MarketKind(msg.kind)
        if msg.code not in rec.codes or kind not in market_kinds(subs):
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.BAD_MESSAGE,
                message=f"{msg.kind} {msg.code} is not among this agent's subscriptions",
            )
        if self.listed is not None and not self.listed(msg.code):
            return Error(
                h=self.headers(h.mid),
                code=ErrorCode.DENIED_UNKNOWN_CODE,
                message=f"{msg.code} is not a listed code ({self.listed_source})",
            )
        err, text = self.subs.want(rec.id, kind, msg.code)
        self.counters["resubscribe_refused" if err is not None else "resubscribe_granted"] += 1
        if err is not None:
            return Error(h=self.headers(h.mid), code=err, message=text)
        log.info("agent %s asked again for %s %s: %s", rec.id, msg.kind, msg.code, text)
        return Ack(h=self.headers(h.mid), message=text)

    # ---- market data of a card ------------------------------------------------------------------------

    def _subscribe_card(self, rec: AgentRecord) -> None:
        self._unlisted.pop(rec.id, None)
        self._subscribe_codes(rec, rec.card.codes)

    def subscribe_newly_listed(self) -> None:
        """A newer stock master was installed: the codes it lists now that agents' cards named and their
        registrations skipped (today's listing while the gateway still had yesterday's master) are subscribed, each
        agent told; before, the agent got none of that code's prints all day, its orders passing the gate (a hunt)."""
        for agent, codes in list(self._unlisted.items()):
            rec = self.registry.agents.get(agent)
            now = sorted(c for c in codes if self.listed is None or self.listed(c))
            if rec is None or rec.state is not AgentState.ONLINE or not now:
                continue
            codes.difference_update(now)
            if got := self._subscribe_codes(rec, now):  # (a refusal is told by itself: no slot free)
                text = f"{', '.join(got)} listed now ({self.listed_source}): subscribed"
                self.book.notify(agent, Notice(level="info", text=text))

    def _subscribe_codes(self, rec: AgentRecord, codes: Iterable[str]) -> list[str]:
        """The codes subscribed (each of its kinds); a refusal is told to the agent."""
        subs = rec.card.subscriptions
        kinds = market_kinds(subs)
        got: list[str] = []
        for code in codes:
            if self.listed is not None and not self.listed(code):  # no registration slot for a typo
                self._unlisted.setdefault(rec.id, set()).add(code)
                self.book.notify(
                    rec.id,
                    Notice(
                        level="error",
                        text=f"{ErrorCode.DENIED_UNKNOWN_CODE.value}: {code} is not "
                        f"a listed code ({self.listed_source}): not subscribed",
                    ),
                )
                continue
            refused = False
            for kind in kinds:
                code_err, text = self.subs.want(rec.id, kind, code)
                if code_err is not None:  # the agent may poll quotes and ask again (Subscribe)
                    refused = True
                    self.book.notify(rec.id, refusal_notice(code_err, text, kind, code))
            if not refused:
                got.append(code)
        return got

    # ---- leaving ------------------------------------------------------------------------------------

    def offline(self, agent: str, why: str, hold_s: float = 0.0) -> None:
        """The agent left or its lease expired: its registrations go (debounced; `hold_s`, see
        SubscriptionManager.leave), everyone is told."""
        self.subs.leave(agent, hold_s)
        self._unlisted.pop(agent, None)  # (its next registration says which again)
        for fn in self.on_offline:
            fn(agent, why)
        self.publish(SystemEventKind.AGENT_OFFLINE, agent, why)

    def expire_leases(self) -> None:
        for rec in self.registry.expire():
            log.warning("agent %s lease expired (silent %.1fs)", rec.id, self.registry.age(rec))
            # a strategy computing for seconds (a model, pandas) lets its lease go: its market data is kept as
            # long as a silent agent is not yet called offline, so that it comes back to whole bars (released at
            # 2 s, its buckets went partial, its history 'changed', and its on_start ran again: slow again)
            self.offline(rec.id, "lease expired", hold_s=self.hold_s)
