"""The operator's facade: what the console, `ktrader status`/`control` and the web page ask of the
gateway (StatusQuery, Control), and what the gateway does on the operator's behalf.

- Status lists every agent the books know, registered or not: an agent that is not running but
  holds positions or open orders shows as `offline` (known from the books and its last card).
- Control refuses what it cannot do safely with a typed error: an unknown agent
  (UNKNOWN_AGENT), a gateway-wide action without an explicit `all` (AMBIGUOUS_TARGET), a reload
  whose card changes what only a restart can. Flatten and cancel-all work on an offline agent: the
  gateway acts for it with its last known card. Every action, done or refused, is journaled in the
  store (`operator_log`).
- A reload applies a changed card's risk limits, budget, schedule and params at once (the agent
  gets a CardUpdate event for its params) and keeps the old card when the new one is refused. It is
  the operator's approval of the new card (common/approvals.py). Only the operator's credential
  reaches this room (server/router.py): an agent cannot pause, flatten or halt another.
- Halt is the kill switch: it stops new orders AND cancels every open order at the broker (the
  gateway's halt: every agent's; `halt --agent ID`: that agent's), through the order desk's own cancel
  path, and cancels the orders held for the next session before they are ever sent. A kill switch
  that leaves working orders at KIS is not one: a resting buy can fill after it. Orders placed
  outside ktrader are left to whoever placed them. Protective orders held by the gateway
  (server/protection.py) are not fired by it: they stay armed, and a level met while halted waits for
  the resume (a fired exit the halt cancels is placed again then). Pause only stops new orders (the
  agent's working orders stay): the soft stop.
- Flatten says what it did: the cancels and sells sent, and the sells the risk gate refused. When it
  cannot sell anything (e.g. the market is closed) it is refused with that denial's code and what to do,
  never "0 orders sent" as a success, and the agent's state is left as it was (a paused agent stays
  paused, no loss is accepted for it). A flatten that sells leaves the agent reducing (sells only) until
  the operator resumes it, as the end of day's flatten does: a running strategy does not buy back. The
  order desk's alerts (flatten sells denied — the operator's or the end of day's — and next-session
  orders waiting for a base price) are given a kind that reaches a person (AlertKind.NOT_SENT).
- Every action that changes what trades reaches a person (the notifier), naming who did it and what
  changed: halt (HALT), pause/reduce/resume, reload (each changed field, old → new), reset_peak,
  risk_scale (OPERATOR). A reload's reply lists each change as old → new; `value="preview"` asks for
  that list without applying anything (the console and the web page show it before asking to confirm).
- Risk: the operator's multiplier of every agent's size limits (risk_scale), an order's what-if
  against every limit (risk_explain), a drawdown accepted (reset_peak: the equity peak starts again),
  a protective order cancelled on an agent's behalf (cancel_protection).
- A split the reconciler found in the broker's balance (server/reconciler.py) is applied to the books
  by apply_split ("CODE RATIO"): every holder's shares scaled, its cost unchanged; its holders' orders
  on the code, held meanwhile, go again (OPERATOR alert; the agents get a PositionUpdate).
- `tick()` (from the gateway's lease loop): a silent (stale) agent becomes offline after
  `offline_after_s`; alerts for conditions that last (server/alert_watch.py) and offline agents go
  through the gateway's alerts (the console, status, the day's report) and from there to the notifier;
  closing trades are counted and daily equity snapshots written (server/performance.py): on trading
  days only, and for an agent only while every code it holds has a price (a snapshot at cost would
  store its unrealised P&L as 0)."""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import msgspec

from common import approvals, credentials
from common.calendar import is_trading_day
from common.clock import KST, date_of, when_text
from common.config import BrokerEnv, AgentCard, EndOfDay, GatewayConfig
from common.enums import (
    AgentMode,
    AgentState,
    AlertKind,
    ControlAction,
    Side,
    SystemEventKind,
    TimeInForce,
    TradingState,
)
from common.errors import ErrorCode
from common.ids import CLIENT_ORDER_ID_PATTERN, EXTERNAL_AGENT, make_client_order_id, parse_client_order_id
from common.krx import Phase
from common.market_clock import MarketClock, market_ns
from common.orders import OrderState
from common.portfolio import Portfolio, shares_text
from common.risk_rules import MarketView, market_refusal
from common.views import trading_word
from common.schema import (
    RELOAD_EXPECT,
    RELOAD_PREVIEW,
    Ack,
    AgentPerformance,
    AgentStatus,
    CardUpdate,
    Control,
    Error,
    FeedHealth,
    FillView,
    GetOrders,
    HeaderFactory,
    Message,
    NewOrder,
    Notice,
    OrdersList,
    PositionUpdate,
    PositionView,
    StatusReply,
)
from kis.master import StockMaster
from kis.port import BrokerPort
from server import console_views, daily_report
from server.agent_services import AgentServices
from server.alert_watch import AlertWatch, Facts
from server.alerts import Alerts
from server.core import OrderCore
from server.daycycle import RANK, card_end, end_due, policy_time
from server.equity import ACCOUNT, AccountReader
from server.marketdata import MarketData
from server.md_sanity import MarketSanity
from server.stockmaster import MasterKeeper, master_line
from server.universe import Universe
from server.notifier import Notifier, gateway_label
from server.order_book import OrderBook
from common.orders import is_gateway_exit
from server.order_desk import OPERATOR_FLATTEN, OrderDesk
from server.performance import closing_result, performance
from server.protection import ProtectionDesk
from server.publisher import Publisher
from server.reconciler import Reconciler
from server.recorder import Recorder
from server.registry import AgentRecord, Registry
from server.risk import GLOBAL, RiskGate
from server.risk_views import EXPLAIN_N, explain_text, parse_order, risk_status
from server.store import EquityRow, Store
from server.subscriptions import SubscriptionManager
from server.trading_day import TradingDay

log = logging.getLogger("ktrader.operator")

# what a reload may change; anything else needs the agent restarted (codes and subscriptions decide
# registrations, strategy the code that runs, mode whether orders reach the broker at all)
RELOADABLE = frozenset({"name", "description", "params", "budget", "risk", "rate_quota_per_s", "schedule", "on_error"})
AGENT_SCOPED = frozenset({ControlAction.PAUSE, ControlAction.RESUME, ControlAction.REDUCE, ControlAction.CANCEL_ALL})
STATES = {
    ControlAction.PAUSE: TradingState.HALTED,
    ControlAction.HALT: TradingState.HALTED,
    ControlAction.REDUCE: TradingState.REDUCING,
    ControlAction.RESUME: TradingState.ACTIVE,
}
CARD_META = "card:"  # meta key prefix: the last card each agent registered (or was reloaded) with
# what an operator can do when the risk gate refused every sell of a flatten (the denial's code)
FLATTEN_ADVICE = {
    ErrorCode.DENIED_MARKET_CLOSED: "the market is closed: the gateway will not sell until the session opens; "
    "use flatten again then",
    ErrorCode.SESSION_NOT_READY: "the broker session is not ready: use flatten again once status shows it ready",
    ErrorCode.DENIED_REDUCING: "the agent may only reduce and these sells were not taken as reducing: sell by hand",
}


class GatewayParts(Protocol):
    """What the operator reads and acts on (the gateway's parts; server/gateway.py)."""

    cfg: GatewayConfig
    registry: Registry
    core: OrderCore
    book: OrderBook
    portfolio: Portfolio
    desk: OrderDesk
    recon: Reconciler
    alerts: Alerts
    store: Store
    risk: RiskGate
    broker: BrokerPort
    broker_name: str
    headers: HeaderFactory
    started_ns: int
    counters: Counter[str]  # the gateway's protocol counters
    pub: Publisher | None
    md: MarketData
    sanity: MarketSanity
    universe: Universe
    subs: SubscriptionManager
    master: StockMaster | None
    master_keeper: MasterKeeper | None
    clock: MarketClock
    protection: ProtectionDesk
    account: AccountReader
    day: TradingDay
    recorder: Recorder | None  # market-data recording (None: off)
    services: AgentServices
    approved: approvals.ApprovedCards  # the operator's approved cards, as registrations read them

    def request_reconcile(self, reason: str) -> None: ...

    def publish(self, kind: SystemEventKind, agent: str = "", text: str = "") -> None: ...  # a system event on PUB


OPERATOR_ACTIONS_SHOWN = 10  # the journal's newest actions in every status


NOTE_CHARS = 200  # of an operator's note (ControlAction.NOTE) kept in the journal


def _actor(msg: Control) -> str:
    """Who an action is journaled as: the tool, and the person when the tool said (user@host)."""
    return f"{msg.h.sender} ({msg.by})" if msg.by else msg.h.sender


class Operator:
    def __init__(
        self, gw: GatewayParts, *, notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.gw = gw
        self.publish = gw.publish
        self.clock = clock
        self.notifier = notifier or Notifier(gw.cfg.notify, gateway=gateway_label(gw.cfg.run_dir))
        self.watch = AlertWatch(gw.cfg.notify)
        self.cards: dict[str, AgentCard] = {}
        for agent, raw in gw.store.meta_prefix(CARD_META).items():
            try:
                self.cards[agent] = msgspec.json.decode(raw, type=AgentCard)
            except msgspec.MsgspecError:
                log.warning("stored card of %s is unreadable: ignored", agent)
        self.rows: dict[str, list[EquityRow]] = gw.store.equity_rows()
        self._realized: dict[tuple[str, str], int] = {}  # (agent, code) -> realised P&L last seen
        self._trades: dict[str, list[int]] = {}  # agent -> [wins, losses] today
        self._trades_day = ""
        self._next_check = 0.0
        self._next_equity = 0.0
        # agents the books know but that have not registered since this gateway started are checked once,
        # offline_after_s after the start: one that died with the last gateway is otherwise never alerted
        self._absent_check_at: float | None = clock() + gw.cfg.offline_after_s
        self._offline_alerted: set[str] = set()  # agents a person was told are offline, not said back yet
        # The order desk's alerts are orders a person expected to go out that did not (flatten sells
        # denied, the operator's or the end of day's; next-session orders still waiting for a base
        # price). The desk takes a text only: the kind that makes them reach a person is given here,
        # where the notifier is wired. (A test's partial gateway may have no desk.)
        desk = getattr(gw, "desk", None)
        if desk is not None:
            desk.alert = gw.alerts.to_person(AlertKind.NOT_SENT)

    # ---- who is there ----------------------------------------------------------------------------

    def known_agents(self) -> list[str]:
        """Registered agents, then agents the books know that are not: holding shares, or with an
        order today or still open (the OMS keeps exactly those orders in memory)."""
        books = {a for a, ps in self.gw.portfolio.positions.items() if any(p.qty for p in ps.values())}
        books |= {o.agent for o in self.gw.book.orders.values()}
        return [*self.gw.registry.agents, *sorted(books - set(self.gw.registry.agents))]

    def is_known(self, agent: str) -> bool:
        return agent in self.gw.registry.agents or agent in self.cards or agent in self.known_agents()

    def card_of(self, agent: str) -> AgentCard | None:
        rec = self.gw.registry.agents.get(agent)
        return rec.card if rec is not None else self.cards.get(agent)

    def _acting_card(self, agent: str) -> AgentCard:
        """The card the gateway trades an agent's books with when it acts for it (flatten): its
        last card, with every code it holds (a universe code may not be on the card)."""
        held = {c for c, p in self.gw.portfolio.positions.get(agent, {}).items() if p.qty}
        card = self.card_of(agent) or AgentCard(id=agent, name=agent, strategy="server.operator:OnBehalf")
        return msgspec.structs.replace(card, codes=sorted(set(card.codes) | held))

    # ---- status ----------------------------------------------------------------------------------

    def status(self, re: int = 0) -> StatusReply:
        gw, book, portfolio = self.gw, self.gw.book, self.gw.portfolio
        day = book.day()
        traded: dict[str, int] = {}
        last_fill: dict[str, FillView] = {}
        for coid, o in book.orders.items():
            if o.filled_qty and book.order_day.get(coid) == day:
                traded[o.agent] = traded.get(o.agent, 0) + o.filled_value
                cur = last_fill.get(o.agent)
                if cur is None or o.updated_ns > cur.ts_ns:
                    last_fill[o.agent] = FillView(
                        client_order_id=coid,
                        fill_id="",
                        code=o.code,
                        side=o.side,
                        qty=o.filled_qty,
                        price=o.filled_value // o.filled_qty,
                        ts_ns=o.updated_ns,
                    )
        agents = []
        # no market, no day: a weekend's or a holiday's live row was a flat day in the days, the Sharpe and the curve
        # (Friday's report said days 5, the Saturday's status 6: a hunt), as snapshot_equity keeps none
        market_day = is_trading_day(gw.clock.now().date())
        for agent in self.known_agents():
            rec = gw.registry.agents.get(agent)
            card = self.card_of(agent)
            open_n, today_n = book.agent_counts(agent)
            held = list(portfolio.positions.get(agent, {}).values())
            marked = console_views.agent_positions(portfolio, agent)  # (a pending split's holders: at its ratio)
            budget = card.budget if card is not None else 0
            live = self._live_row(agent, day, traded.get(agent, 0), budget) if market_day else None
            agents.append(
                AgentStatus(
                    id=agent,
                    name=card.name if card else ("placed outside ktrader" if agent == EXTERNAL_AGENT else agent),
                    strategy=card.strategy if card else "",
                    state=rec.state if rec else AgentState.OFFLINE,
                    # the books decide: a shadow agent's books are virtual (left out of the account)
                    mode=AgentMode.SHADOW if agent in portfolio.virtual else AgentMode.LIVE,
                    trading_state=gw.risk.effective(agent),
                    paused=gw.risk.paused(agent),
                    pid=rec.pid if rec else 0,
                    host=rec.host if rec else "",
                    session=rec.session if rec else "",
                    heartbeat_age_s=round(gw.registry.age(rec), 3) if rec else -1.0,
                    max_ack_gap_ms=rec.max_ack_gap_ms if rec else 0,
                    registrations=rec.registrations if rec else 0,
                    codes=rec.codes
                    if rec
                    else sorted({*(card.codes if card else []), *(p.code for p in held if p.qty)}),
                    open_orders=open_n,
                    orders_today=today_n,
                    errors=rec.errors if rec else 0,
                    fills=book.fills_by_agent.get(agent, 0),
                    position_codes=sum(1 for p in held if p.qty),
                    position_cost=sum(p.cost for p in held),
                    realized_pnl=sum(p.realized_pnl for p in held),
                    fees=sum(p.fees for p in held),
                    positions=marked,
                    unrealized_pnl=sum(p.unrealized_pnl for p in marked),
                    rate_quota_per_s=card.rate_quota_per_s if card else 0.0,
                    last_error=console_views.last_error(book.orders, agent, rec),
                    feed=rec.feed if rec else FeedHealth(),
                    position_value=sum(p.mark * p.qty if p.mark else p.cost for p in marked if p.qty),
                    last_fill=last_fill.get(agent),
                    budget=budget,
                    performance=performance(self.rows.get(agent, []), live),
                    known_from="registry" if rec else "books",
                )
            )
        total, open_n, fills = book.counts()
        shadow_total, _, shadow_fills = book.counts(shadow=True)
        counters = dict(gw.counters)
        counters["day_close_errors"] = gw.day.close_errors
        counters["orders_held"] = len(book.held)
        counters["send_queue"] = gw.core.live_queue.depth + gw.core.shadow_queue.depth
        counters["reports_written"] = gw.day.reports_written
        counters["protections_active"] = len(gw.protection.active)
        counters["protections_fired"] = gw.protection.fired
        counters["account_read_failures"] = gw.account.failures
        # codes held with no price at all (valued at cost: peaks and equity snapshots wait for one);
        # their rows show mark 0
        counters["positions_unpriced"] = len({c for a in portfolio.positions for c in portfolio.unpriced(a)})
        if gw.pub is not None:
            counters["pub_sent"] = gw.pub.sent
            counters["pub_dropped"] = gw.pub.dropped
            counters.update(gw.md.counters())
        counters.update(gw.sanity.counters())
        counters.update(gw.universe.counters())
        counters["ws_dropped"] = gw.broker.health().ws_dropped
        if gw.recorder is not None:
            counters["recorder_errors"] = gw.recorder.errors
            counters["recorder_frames_lost"] = gw.recorder.frames_lost
        if gw.services.history is not None:
            counters["query_history_failures"] = gw.services.history.failures
        if gw.store.gc is not None:  # group commit: transactions and the fsyncs that made them durable
            counters["store_commits"] = gw.store.gc.commits
            counters["store_syncs"] = gw.store.gc.syncs
        counters["early_inquiries"] = gw.core.inquiry.looks  # reconciliation passes asked for UNKNOWN submits
        counters["orders_in_doubt"] = gw.core.repair.in_doubt
        counters["chain_repairs"] = gw.core.repair.repaired
        counters["cancels_resent"] = gw.core.repair.resent
        counters["fills_repriced"] = gw.recon.repriced  # orders whose filled value was brought to the broker's
        # orders with notice fills the broker's list did not show at the last pass (taken back after the grace)
        counters["fills_unconfirmed"] = gw.recon.unconfirmed
        if gw.master_keeper is not None:
            counters["master_download_failures"] = gw.master_keeper.failures
        master = gw.master
        codes = {c for a in agents for c in a.codes}
        market_now = gw.clock.now()
        day_start = int(dt.datetime.combine(market_now.date(), dt.time(), KST).timestamp() * 1e9)
        last = gw.recon.last
        return StatusReply(
            h=gw.headers(re),
            gateway_pid=os.getpid(),
            gateway_session=gw.headers.sid,
            started_ns=gw.started_ns,
            session_state=gw.broker.session_state,
            broker=gw.broker_name,
            trading_state=gw.risk.global_state,
            paused=gw.risk.paused(),
            agents=agents,
            orders_today=total,
            open_orders=open_n,
            fills_today=fills,
            shadow_orders_today=shadow_total,
            shadow_fills_today=shadow_fills,
            counters=counters,
            subscriptions=gw.subs.table(),
            synced=gw.recon.synced,
            reconciled_whole=gw.recon.complete,
            last_reconcile_age_s=round((book.now_ns() - last[0]) / 1e9, 1) if last else -1.0,
            alerts=gw.alerts.stamped(20),
            operator_actions=self._journal(OPERATOR_ACTIONS_SHOWN),
            names={c: master.name(c) for c in codes if master is not None and c in master},
            health=msgspec.structs.replace(
                gw.broker.health(),
                db_bytes=console_views.db_bytes(str(gw.store.path)),
                disk_free_bytes=console_views.disk_free(str(gw.store.path)),
            ),
            account=console_views.account_positions(portfolio),
            marks=dict(portfolio.marks),
            reconcile_alerts=last[2] if last else 0,
            market_phase=gw.clock.phase().value,
            market_time=market_now.astimezone(KST).isoformat(timespec="seconds"),
            alerts_today=gw.alerts.count_day(day_start),
            notify=self.notifier.status(),
            risk=risk_status(gw.risk, gw.account.reads),
            protections=gw.protection.of(),
            stock_master=master_line(master, gw.master_keeper),
        )

    # ---- the blotter -----------------------------------------------------------------------------

    def orders(self, msg: GetOrders) -> OrdersList:
        """GetOrders: the blotter (server/console_views.py read_blotter): `since_ns` 0 is the gateway's
        market day (its market clock's), every open order is listed, and what the limit left out is counted."""
        gw = self.gw
        b = console_views.read_blotter(
            gw.book.orders,
            gw.store,
            gw.book.seq,
            msg.agent,
            msg.since_ns,
            msg.limit,
            day_start_ns=console_views.day_start_ns(gw.clock),
            day_seq=gw.book.day_seq,
        )
        return OrdersList(h=gw.headers(msg.h.mid), orders=b.orders, fills=b.fills, truncated=b.truncated)

    # ---- control ---------------------------------------------------------------------------------

    def _journal(self, n: int) -> list[str]:
        """The operator's newest `n` actions as lines, newest last: written to the store (`operator_log`) and
        shown nowhere before (who flattened the agent at 10:02?)."""
        try:
            rows = self.gw.store.operator_log(limit=n)
        except Exception:  # a failed store: the status still answers
            return []
        now = self.gw.book.now_ns()
        return [
            f"{when_text(ts, now)} {actor} {action}"
            + (f" {agent}" if agent else "")
            + (": " if ok else " REFUSED: ")
            + str(detail.get("result", ""))[:100]
            for ts, actor, action, agent, ok, detail in reversed(rows)
        ]

    def control(self, msg: Control) -> Message:
        reply = self._control(msg)
        ok = not isinstance(reply, Error)
        text = reply.message if isinstance(reply, (Ack, Error)) else ""
        detail: dict[str, object] = {"all": msg.all, "result": text}
        if isinstance(reply, Error):
            detail["code"] = reply.code.value
        action = msg.action + (".preview" if _is_preview(msg) else "")  # a look is not a reload
        with self.gw.store.transaction():
            self.gw.store.log_operator(market_ns(self.gw.clock), _actor(msg), action, msg.agent, ok, detail)
        return reply

    def _control(self, msg: Control) -> Message:
        gw, h = self.gw, msg.h

        def err(code: ErrorCode, text: str) -> Error:
            return Error(h=gw.headers(h.mid), code=code, message=text)

        def ack(text: str) -> Ack:
            return Ack(h=gw.headers(h.mid), message=text)

        try:
            action = ControlAction(msg.action)
        except ValueError:
            return err(
                ErrorCode.BAD_MESSAGE,
                f"unknown action {msg.action!r}: one of "
                f"{', '.join(a.value for a in ControlAction if a is not ControlAction.FEED_GAP)}",
            )
        if msg.agent and msg.all:
            return err(ErrorCode.AMBIGUOUS_TARGET, "name an agent or set all, not both")
        if action is ControlAction.NOTE:  # journaled by control(), as every action
            return ack(msg.value[:NOTE_CHARS]) if msg.value else err(ErrorCode.BAD_MESSAGE, "a note needs a text")
        if msg.agent and not self.is_known(msg.agent):
            known = ", ".join(self.known_agents()) or "none"
            return err(ErrorCode.UNKNOWN_AGENT, f"no agent {msg.agent!r} (known: {known})")
        if action is ControlAction.RECONCILE:
            gw.request_reconcile("on demand")
            return ack("reconciliation started")
        if action is ControlAction.FEED_GAP:
            if gw.cfg.broker.env is not BrokerEnv.SIM:  # a fault for tests: never on a paper or real account's data
                return err(ErrorCode.BAD_MESSAGE, "feed_gap is a test fault: the twin's gateway only")
            return ack(self._feed_gap())
        if action is ControlAction.APPLY_SPLIT:
            return self._apply_split(msg, err, ack)
        if action in (
            ControlAction.RISK_SCALE,
            ControlAction.RISK_EXPLAIN,
            ControlAction.RESET_PEAK,
            ControlAction.CANCEL_PROTECTION,
        ):
            return self._risk(action, msg, err, ack)
        if action in AGENT_SCOPED and not msg.agent and not msg.all:
            hint = (
                "ktrader control halt is the kill switch for everything"
                if action is ControlAction.PAUSE
                else "or --all for every agent / the whole gateway"
            )
            return err(ErrorCode.AMBIGUOUS_TARGET, f"{action.value} needs --agent ID ({hint})")
        if action in (ControlAction.FLATTEN, ControlAction.RELOAD) and not msg.agent:
            return err(ErrorCode.AMBIGUOUS_TARGET, f"{action.value} needs --agent ID (one agent at a time)")
        if msg.agent == EXTERNAL_AGENT and action in (
            ControlAction.CANCEL_ALL,
            ControlAction.FLATTEN,
            ControlAction.RELOAD,
            # (no order of it goes through the gateway to pause, reduce or halt: a pause was 'accepted' with a text
            # about its orders working on, a halt 'cancelled' none of its open orders: a hunt)
            ControlAction.PAUSE,
            ControlAction.REDUCE,
            ControlAction.RESUME,
            ControlAction.HALT,
        ):
            return err(
                ErrorCode.UNKNOWN_AGENT,
                f"{EXTERNAL_AGENT!r} holds what was traded outside ktrader: act on it where it was placed",
            )
        if action is ControlAction.CANCEL_ALL:
            targets = [msg.agent] if msg.agent else gw.book.open_agents()
            was_held = [c for c, o in gw.book.orders.items() if o.agent in targets and o.state is OrderState.HELD]
            n, spared = self._cancel_all(targets)
            # (held ones it ended were never sent: no cancel went to the broker; a halt's reply counts them apart too)
            held = sum(1 for c in was_held if (o := gw.book.orders.get(c)) is None or not o.is_open)
            text = f"{n - held} cancels sent" + (f" for {msg.agent}" if msg.agent else f" for {len(targets)} agents")
            if held:
                text += f"; {held} orders held for the next session cancelled (never sent)"
            if spared:
                text += f"; {spared} protective exits keep working: cancel_protection stops one"
            if going := [a for a in targets if gw.desk.is_flattening(a)]:
                text += (
                    f"; the flatten of {', '.join(going)} goes on: it sells again once these close (ktrader control "
                    f"resume --agent {going[0]} stops it)"
                )
            if n:  # (asking to cancel nothing changed nothing)
                self._tell(AlertKind.OPERATOR, h.sender, f"cancel_all: {text}", msg.agent)
            return ack(text)
        if action is ControlAction.FLATTEN:
            # it sells what the agent holds and leaves it reducing: a person hears of it, done or refused
            reply = self._flatten(msg, err, ack)
            told = reply.message if isinstance(reply, Ack) else f"refused: {reply.message}"
            self._tell(AlertKind.OPERATOR, h.sender, f"flatten: {told}", msg.agent)
            return reply
        if action is ControlAction.RELOAD:
            return self._reload(msg, err, ack)
        state = STATES[action]
        # a resume accepts what tripped the state automatically, a reduce what halted it, else the next sweep trips
        # it again
        card = self.card_of(msg.agent) if msg.agent else None
        accepted = (
            gw.risk.accept(msg.agent, card, halting_only=state is TradingState.REDUCING)
            if state in (TradingState.ACTIVE, TradingState.REDUCING)
            else []
        )
        if state is TradingState.ACTIVE and msg.agent and gw.desk.stop_flatten(msg.agent):
            # the operator's way to stop his own flatten of this agent (never by --all, never the end of day's)
            accepted = [*accepted, f"{msg.agent}'s flatten stopped (its sells already sent keep working)"]
        # the risk gate owns trading state: persisted (an operator's halt survives a restart) and announced;
        # set before a halt's cancels, so nothing they set off (a protective exit placed again) goes out
        who = msg.agent or "gateway"
        text = f"{who} is {state}"
        if action is ControlAction.HALT:  # the state and its cancels in one durable write (_halt_cancels)
            text = f"{who} is halted: {self._halt_cancels(msg.agent, f'{action.value} by {h.sender}')}"
            self._tell(AlertKind.HALT, h.sender, text, msg.agent)
        else:
            gw.risk.set_state(msg.agent, state, why=f"{action.value} by {h.sender}")
        if action is ControlAction.PAUSE and gw.risk.hard_halted(msg.agent or GLOBAL):
            text = f"{who} is halted (its halt stands: a pause changes nothing, its orders were cancelled)"
        elif action is ControlAction.PAUSE:
            # not the kill switch: said so, with what goes on working (a pause --all read "gateway is halted" while
            # its resting buys filled, a hunt)
            mine = [
                o
                for o in gw.book.orders.values()
                if o.is_open and o.agent != EXTERNAL_AGENT and (not msg.agent or o.agent == msg.agent)
            ]
            # (held ones wait: released once resumed, if their session still takes them: order_desk._release)
            held_n = sum(1 for o in mine if o.state is OrderState.HELD)
            text = (
                f"{who} is paused: new orders refused; {len(mine) - held_n} open orders keep working at the broker"
                + (f", {held_n} held for the next session wait for the resume" if held_n else "")
                + f" (ktrader control halt{f' --agent {msg.agent}' if msg.agent else ''} cancels them)"
            )
        text += "".join(f"; {a}" for a in accepted)
        if msg.agent and state is TradingState.ACTIVE and gw.risk.effective(msg.agent) is not TradingState.ACTIVE:
            # its own state is active, what it may do is not (a hunt: "X is active" while its buys were denied)
            text += "; today's end of day already ran: it sells only until tomorrow"
        glob = gw.risk.global_state
        if msg.agent and state is not TradingState.HALTED and glob is not TradingState.ACTIVE:
            # the agent's own state changed, the gateway's did not: the gate checks both (server/risk.py)
            text = (
                f"{msg.agent} is {'resumed (active)' if state is TradingState.ACTIVE else state}, but the gateway "
                f"is {trading_word(glob, gw.risk.paused())}: "
                f"{_held_back(glob, gw.risk.paused())} until the "
                "gateway is resumed (resume --all)" + "".join(f"; {a}" for a in accepted)
            )
        if not msg.agent and state is TradingState.ACTIVE:  # agents paused one by one stay so: say which
            states = gw.risk.states.items()
            still = sorted(f"{a} {s}" for a, s in states if a != GLOBAL and s is not TradingState.ACTIVE)
            if still:
                text += f"; still not active: {', '.join(still)} (resume --agent ID)"
        if action is not ControlAction.HALT:
            self._tell(AlertKind.OPERATOR, h.sender, f"{action.value}: {text}", msg.agent)
        return ack(text)

    def _halt_cancels(self, agent: str, why: str) -> str:
        """The kill switch: `agent` ("" the gateway) HALTED with its cancels, in one transaction
        (RiskGate.set_state): every open order of `agent` ("" every agent's) through the order desk's cancel
        path (the one the operator's cancel_all and the agents' cancels take; server/core.py halt_cancels, the
        one rule of a halt's cancels), held next-session orders included (cancelled here: they were never
        sent). The sells the gateway placed for an agent (a stop's exit, a flatten) keep working: they only
        reduce what it holds, and a cancelled exit would leave the position unprotected with its stop already
        spent. What was done, in words."""
        book = self.gw.book
        open_orders = [o for o in book.orders.values() if o.is_open and (not agent or o.agent == agent)]
        outside = sum(1 for o in open_orders if o.agent == EXTERNAL_AGENT)
        targets = [agent] if agent else book.open_agents()
        ours = [o for o in open_orders if o.agent != EXTERNAL_AGENT]
        # held orders are cancelled (never sent), but the gateway's exits held for the next session: spared, they
        # go at its open (under the kill switch once it is resumed: order_desk._waits_for_resume)
        held = sum(1 for o in ours if o.state is OrderState.HELD and not is_gateway_exit(o))
        # (the kill switch refuses the gateway's exits still queued: they wait for the resume; one whose request has
        # begun is at the broker and goes through; an agent's halt stops none)
        queued = (
            sum(
                1
                for o in ours
                if is_gateway_exit(o)
                and o.state is OrderState.PENDING_SUBMIT
                and not self.gw.store.has_trace(o.client_order_id, "broker.request")
            )
            if not agent
            else 0
        )
        exits = sum(1 for o in ours if is_gateway_exit(o) and o.state is not OrderState.HELD) - queued
        held_exits = sum(1 for o in ours if is_gateway_exit(o) and o.state is OrderState.HELD)
        # HALTED with the cancels an automatic halt makes too (server/core.py), in the same transaction: a
        # crash between the two left the scope halted with its resting orders working
        # (its count takes in the held orders it cancels: never sent, no cancel goes to the broker for them)
        n = self.gw.risk.set_state(agent, TradingState.HALTED, why=why, cancel=True) - held
        if n > 0:
            text = f"{n} cancels sent" + ("" if agent else f" for {len(targets)} agents") + " (every open order)"
        else:
            text = "no open orders to cancel"
        if held:
            text += f"; {held} orders held for the next session cancelled (never sent)"
        if exits:
            text += f"; {exits} exit sells the gateway placed (stops, flatten) keep working"
        if queued:
            text += f"; {queued} exit sells the gateway placed and not sent yet wait for the resume"
        if held_exits:
            once = "" if agent else " once resumed"
            text += f"; {held_exits} exit sells the gateway placed held for the next session go at its open{once}"
        if not agent and (waiting := self.gw.desk.flattening):
            text += f"; the flattens of {', '.join(waiting)} go on once resumed (their sells wait)"
        if outside:
            text += f"; {outside} orders placed outside ktrader left alone"
        if self.gw.protection.active:
            text += "; protective orders stay armed: a level met waits for the resume"
        log.warning("halt of %s: %s", agent or "the gateway", text)
        return text

    def _tell(self, kind: AlertKind, who: str, text: str, agent: str = "") -> None:
        """An operator's action, to a person, naming who did it (subject: the moment, so a repeat of the
        same action is news again)."""
        self.notifier.alert(kind, f"{text} (by {who})", agent, subject=str(market_ns(self.gw.clock)))

    def _flatten(self, msg: Control, err: Callable[[ErrorCode, str], Error], ack: Callable[[str], Ack]) -> Ack | Error:
        """Cancel the agent's orders, then sell what it holds (server/order_desk.py flatten). The reply
        is what happened: a flatten that could sell nothing of what the agent holds is refused with
        the sells' denial and what to do, not acknowledged as "0 orders sent".

        A flatten that sells (or has its sells waiting for its cancels) leaves the agent REDUCING (sells
        only) until the operator resumes it, whatever it was (a running agent's strategy would buy straight
        back), as the end of day's flatten leaves it. A refused one changes nothing of the agent's state:
        a paused agent stays paused and no loss is accepted for it."""
        gw, h = self.gw, msg.h
        if gw.risk.global_state is TradingState.HALTED:  # its sells would be denied: say so, start nothing
            paused = gw.risk.paused()  # (a pause --all is no kill switch: its open orders work on)
            return err(
                ErrorCode.DENIED_HALTED,
                f"the gateway is {'paused (new orders refused)' if paused else 'halted (cancels only)'}: nothing "
                "sold; `ktrader control reduce --all` lets sells through, then flatten again",
            )
        agent = msg.agent
        rec = gw.registry.agents.get(agent)
        on_behalf = rec is None or rec.state is not AgentState.ONLINE
        was = gw.risk.agent_state(agent)
        hard = gw.risk.hard_halted(agent)  # (a kill switch's halt, not a pause: restored as it was)
        shut = self._market_refusal()  # the session or the market takes no sell now, whatever the agent's state
        holding = gw.portfolio.holding(agent)
        flattening = agent in gw.desk.flattening  # (the end of day's, say: not the operator's to end)
        if shut is not None and holding and not flattening:
            # nothing can be sold: refused before its state or its sells are touched. Its buys are cancelled (what a
            # flatten asks), its sells stand: a flatten's cancels pulled the agent's own next-session sell of these
            # shares, the one order that would have sold them at the open (a hunt: "nothing sold (1 cancels sent)",
            # and nothing sold at the open either)
            n = gw.desk.cancel_all(agent, side=Side.BUY)
            stays = "paused" if was is TradingState.HALTED else was
            sells = sum(1 for o in gw.book.orders.values() if o.agent == agent and o.is_open and o.side is Side.SELL)
            return err(
                shut[0],
                f"{agent}: nothing sold{f' ({n} cancels sent: its buys)' if n else ''}: "
                f"{FLATTEN_ADVICE.get(shut[0], shut[1])}; still held: {shares_text(holding)}"
                f"{f'; its {sells} open sells stand' if sells else ''}; {agent} stays {stays}",
            )
        reducing = f"flatten by {h.sender}: sells only until resume"
        accepted: list[str] = []
        if was is TradingState.HALTED:
            # a paused (halted) agent takes cancels only: the operator asking to sell lets its sells through
            # (reducing, set before they are placed). A drawdown past its halt level lets nothing pass, sells
            # included, and the next sweep would halt it again: the operator's word to sell accepts it (as a
            # resume does), when the market takes sells at all (else nothing is sold: nothing accepted)
            if shut is None:
                accepted = gw.risk.accept(agent, self.card_of(agent))
            gw.risk.set_state(agent, TradingState.REDUCING, why=reducing)
        before = set(gw.book.orders)
        n = gw.desk.flatten(
            self._acting_card(agent), f"{OPERATOR_FLATTEN}{h.sender}" + (" (agent offline)" if on_behalf else "")
        )
        # the sells it placed now (accepted or denied: a denied order is in the book with its reason)
        mine = [o for c, o in gw.book.orders.items() if c not in before and o.agent == agent and o.side is Side.SELL]
        sent = [o for o in mine if o.state is not OrderState.DENIED]
        denied = [o for o in mine if o.state is OrderState.DENIED]
        cancels = n - len(sent)
        # no sell placed yet while its orders are open: the sells wait for the cancels (a cancel can lose
        # the race to a fill, so they are sized after)
        waiting = bool(holding) and not mine and any(o.is_open for o in gw.book.orders.values() if o.agent == agent)
        # a position worth more than the order-value limit is sold in parts, each once the one before closed
        rest = sum(holding.values()) - sum(o.qty for o in mine)
        log.warning(
            "agent %s flattened by %s%s: %d cancels, %d sells sent, %d denied",
            agent,
            h.sender,
            " on its behalf" if on_behalf else "",
            cancels,
            len(sent),
            len(denied),
        )
        behalf = " (on behalf of the offline agent)" if on_behalf else ""
        did = f" ({cancels} cancels sent)" if cancels else ""
        refused = ", ".join(f"{o.qty} {o.code}" for o in denied)
        denial: tuple[ErrorCode, str] | None = None
        if holding and not sent and denied and not waiting:
            first = denied[0]
            code = ErrorCode(first.reason_code) if first.reason_code in ErrorCode.__members__ else ErrorCode.BAD_ORDER
            denial = code, FLATTEN_ADVICE.get(code, f"the risk gate refused the sells: {first.reason}")
        elif waiting and shut is not None:
            # its sells would wait for the cancels only to be refused: the flatten ends here (its cancels go on)
            if not flattening:
                gw.desk.stop_flatten(agent)
            denial = shut[0], FLATTEN_ADVICE.get(shut[0], shut[1])
            refused = shares_text(holding)
        if denial is not None:
            # nothing sold: the agent is as it was (a paused agent paused, with its open orders' cancels)
            if was is TradingState.HALTED:
                gw.risk.set_state(agent, was, why=f"flatten by {h.sender} sold nothing: paused again", cancel=hard)
            notes = behalf + "".join(f"; {a}" for a in accepted)
            notes += f"; {agent} stays {'paused' if was is TradingState.HALTED else was}"
            return err(denial[0], f"{agent}: nothing sold{did}: {denial[1]}; still held: {refused}{notes}")
        if was is not TradingState.HALTED:  # (a paused agent's was set before its sells)
            gw.risk.set_state(agent, TradingState.REDUCING, why=reducing)
        notes = behalf + {
            TradingState.HALTED: "; it was paused: now reducing (sells only) until resume",
            TradingState.ACTIVE: "; now reducing (sells only) until resume",
        }.get(was, "; still reducing (sells only) until resume")
        notes += "".join(f"; {a}" for a in accepted)
        if not holding and not cancels:
            return ack(f"{agent}: nothing to flatten (no shares, no open orders){notes}")
        parts = [f"{cancels} cancels sent"] if cancels else []
        if sent:
            parts.append(f"{len(sent)} market sells sent ({', '.join(f'{o.qty} {o.code}' for o in sent)})")
            if rest > 0 and agent in gw.desk.flattening:  # (else its account holds fewer: alerted by the desk)
                parts.append(f"{rest} more shares once these have filled (the order-value limit)")
        if waiting:
            parts.append(
                f"the sells of {shares_text(holding)} go out once its open "
                "orders are closed (a refused sell is alerted)" + self._in_doubt(agent)
            )
        if denied:
            parts.append(f"NOT sold: {refused} ({denied[0].reason_code}: {denied[0].reason})")
        return ack(f"{agent}: flatten: {'; '.join(parts) or 'nothing sent'}{notes}")

    def _in_doubt(self, agent: str) -> str:
        """What a flatten's sells wait for beyond its cancels: the agent's orders in doubt (sent, outcome unknown:
        no cancel can reach them) until reconciliation finds them at the broker or gives up on them (a flatten sold
        nothing for 10 minutes behind a resting buy in doubt, its reply saying only 'once its open orders are
        closed': a hunt). Its sells could otherwise meet its own order at the exchange."""
        gw = self.gw
        doubt = [o for o in gw.book.orders.values() if o.agent == agent and o.state is OrderState.UNKNOWN]
        if not doubt:
            return ""
        last = max(o.updated_ns for o in doubt) + gw.recon.unknown_grace_ns
        ids = ", ".join(o.client_order_id for o in doubt[:3]) + (" ..." if len(doubt) > 3 else "")
        return (
            f"; they wait for {ids} (sent, outcome unknown: no cancel reaches it) until reconciliation finds it at "
            f"the broker, or by {when_text(last, gw.book.now_ns())} does not"
        )

    def _market_refusal(self) -> tuple[ErrorCode, str] | None:
        """Why no sell of today's session can go now, whoever places it (the risk gate's own rules:
        common/risk_rules.py market_refusal). None: they may go (the gate still judges each)."""
        session, detail = self.gw.desk.session()
        view = MarketView(session=session, session_detail=detail, phase=self.gw.clock.phase())
        return market_refusal(view, TimeInForce.DAY)

    def _risk(
        self, action: ControlAction, msg: Control, err: Callable[[ErrorCode, str], Error], ack: Callable[[str], Ack]
    ) -> Message:
        gw, who = self.gw, msg.h.sender
        if action is ControlAction.RISK_SCALE:
            if msg.agent:
                return err(ErrorCode.AMBIGUOUS_TARGET, "the risk multiplier scales every agent: no --agent")
            was = gw.risk.multiplier
            try:
                factor = float(msg.value)
                gw.risk.set_multiplier(factor, why=f"by {who}")
            except ValueError as e:
                return err(ErrorCode.BAD_MESSAGE, f"risk_scale needs a multiplier in (0, 1] ({e})")
            text = (
                f"risk multiplier {factor:g} (was {was:g}): every agent's order and position values, exposure "
                f"limits, budget and cash reserve are scaled by it"
                if factor != 1
                else f"risk multiplier 1 (was {was:g}): the cards' own limits"
            )
            self._tell(AlertKind.OPERATOR, who, text)
            return ack(text)
        if action is ControlAction.RESET_PEAK:
            if not msg.agent and not msg.all:
                return err(ErrorCode.AMBIGUOUS_TARGET, "reset_peak needs --agent ID, or --all for the account's peak")
            card = self.card_of(msg.agent)
            limits = card.risk if card is not None else gw.risk.limits
            was = gw.risk.peaks.peak(msg.agent or ACCOUNT, limits.drawdown_peak)
            try:
                eq = gw.risk.reset_peak(msg.agent, card)
            except ValueError as e:
                return err(ErrorCode.BAD_MESSAGE, str(e))
            # the drawdown it accepts lifts what a drawdown limit held back: a person must know
            text = f"{msg.agent or 'account'}: equity peak reset {was:,} → {eq:,} (the drawdown from it is accepted)"
            state = gw.risk.agent_state(msg.agent) if msg.agent else gw.risk.global_state
            if state is not TradingState.ACTIVE:  # (the peak moved, the state did not: a person must not think so)
                scope = f"--agent {msg.agent}" if msg.agent else "--all"
                text += (
                    f"; {msg.agent or 'the gateway'} stays {state.value}: `ktrader control resume {scope}` lets it "
                    f"trade again (`reduce {scope}`: sells only)"
                )
            if unpriced := gw.portfolio.unpriced(msg.agent or None):  # the operator's word stands; say what it is
                text += f"; {', '.join(unpriced)} had no price yet: valued at cost in it"
            self._tell(AlertKind.OPERATOR, who, f"reset_peak: {text}", msg.agent)
            return ack(text)
        if action is ControlAction.CANCEL_PROTECTION:
            p = gw.protection.active.get(msg.value) or gw.protection.ended.get(msg.value)
            agent = msg.agent or (p.agent if p is not None else "")
            code, text = gw.protection.cancel(agent, msg.value, f"cancelled by {who}")
            return err(code, text) if code is not None else ack(text)
        return self._explain(msg, err, ack)

    def _cancel_all(self, agents: list[str]) -> tuple[int, int]:
        """The operator's cancel_all of `agents`' open orders: (cancels sent, protective exits spared). An active
        protection's exit stays, as a halt's cancels leave it: cancelled, its protection would place it again at
        once under a new id (cancel_protection stops one). A flatten's sells already sent go: the operator's way
        to pull them (a resume stops the flatten itself: it sells again once they close, as the reply says)."""
        gw = self.gw
        n = sum(gw.desk.cancel_all(a, spare_exits=True) for a in agents)
        spared = 0
        for o in list(gw.book.orders.values()):
            if o.agent not in agents or not o.is_open or not is_gateway_exit(o):
                continue
            if o.client_order_id in gw.protection.by_order:
                spared += 1
            elif gw.desk.cancel(o.agent, o.client_order_id, exits=True)[0] is None:
                n += 1
        return n, spared

    def _apply_split(self, msg: Control, err: Callable[[ErrorCode, str], Error], ack: Callable[[str], Ack]) -> Message:
        """A split the balance shows goes into the books: each holder's shares × ratio, cost unchanged
        (server/reconciler.py apply_split), its orders on the code released."""
        gw, who = self.gw, msg.h.sender
        if msg.agent or msg.all:
            return err(ErrorCode.AMBIGUOUS_TARGET, "apply_split acts on every holder of the code: no --agent / --all")
        try:
            code, num, den = parse_split(msg.value)
        except ValueError as e:
            return err(ErrorCode.BAD_MESSAGE, f"apply_split needs 'CODE RATIO' (10: 1 share → 10; 1/10: 10 → 1): {e}")
        sp = gw.portfolio.splits.get(code)
        if sp is not None:
            # an order placed before the split is in the old shares' terms: the operator decides what to place anew
            working = sorted(
                c for c, o in gw.book.orders.items() if o.is_open and o.code == code and o.agent in sp.holders
            )
            if working:
                exits = sorted(p for c in working if (p := gw.protection.by_order.get(c)))
                stop = (
                    f"; a protective exit is selling: let it end, or ktrader control cancel_protection --protection "
                    f"{exits[0]}"
                    if exits
                    else ""
                )
                return err(
                    ErrorCode.BAD_MESSAGE,
                    f"{code}: open orders of its holders ({', '.join(working)}) are in the old shares' terms: "
                    f"cancel them first (ktrader control cancel_all --agent ID{stop}); nothing changed",
                )
        try:
            # the books' shares and their protections' levels in one durable write: a stop left in the old
            # shares' prices would sell at the first print (7,000 after a 1:10 split is under a 63,000 stop)
            with gw.store.transaction():
                changes = gw.recon.apply_split(code, num, den)
                rescaled = gw.protection.apply_split(code, num, den, {a for a, _, _ in changes})
        except ValueError as e:
            return err(ErrorCode.BAD_MESSAGE, str(e))
        what = sp.text if sp is not None else "split"  # (apply_split refuses a code with none pending)
        parts = [f"{a} {_split_line(old, new)}" for a, old, new in changes]
        text = (
            f"{code}: {what} applied: {'; '.join(parts) or 'nobody holds it'}; its holders may place orders on it "
            "again, in the new shares' prices"
        )
        text += "".join(f"; {line}" for line in rescaled)
        # the stored bars are in the old shares' prices: the daily ones are dropped (back-filled split-adjusted),
        # the intraday ones before the split rescaled by its ratio (never dropped: the broker cannot give them
        # again). The books changed durably above: a failure here is told, never turned into a refusal
        md: MarketData | None = getattr(gw, "md", None)
        if md is not None:
            try:
                text += f"; {md.split_applied(code, num, den, f'{what} applied by {who}').text}"
                self.publish(SystemEventKind.HISTORY_CHANGED, "", code)  # the agents rebuild their windows
            except Exception as e:
                log.exception("stored bars of %s not adjusted after its split", code)
                text += f"; its stored bars could NOT be adjusted ({e}): history may mix the old prices"
        for a, old, new in changes:
            if a == EXTERNAL_AGENT:
                continue
            why = f"{code}: {what} applied by {who}: {_split_line(old, new)}"
            gw.book.notify(a, PositionUpdate(position=new, reason=why))
            gw.book.notify(a, Notice(level="warning", text=why))
        log.warning("split of %s applied by %s: %s", code, who, text)
        self._tell(AlertKind.OPERATOR, who, f"apply_split: {text}")
        return ack(text)

    def _explain(self, msg: Control, err: Callable[[ErrorCode, str], Error], ack: Callable[[str], Ack]) -> Message:
        """What-if: every limit the order (a spec, or a known order's terms) would meet now."""
        gw, value = self.gw, msg.value.strip()
        agent = msg.agent
        o = None
        if re.match(CLIENT_ORDER_ID_PATTERN, value):
            o = gw.book.orders.get(value) or gw.store.order(value)
            if o is None:
                return err(ErrorCode.UNKNOWN_ORDER, f"no order {value!r}")
            agent = parse_client_order_id(value)[0]
        if not agent:
            return err(ErrorCode.AMBIGUOUS_TARGET, "risk_explain needs --agent ID (whose limits), or an order id")
        card = self.card_of(agent)
        if card is None:
            return err(ErrorCode.UNKNOWN_AGENT, f"no card known for {agent!r}")
        if o is not None:
            # the order's own terms (its type and time in force too: a conditional buy read as a limit, a next-session
            # one as a day order: a hunt); an open one as it stands, beside nothing but the others
            new = NewOrder(
                # (a gateway exit keeps its own number: judged as the exit it is)
                client_order_id=o.client_order_id
                if is_gateway_exit(o)
                else make_client_order_id(agent, gw.clock.now().date(), EXPLAIN_N),
                code=o.code,
                side=o.side,
                qty=o.remaining or o.qty,
                price=o.price,
                order_type=o.order_type,
                tif=o.tif,
                reason="what-if",
            )
            if o.is_open:  # (a held one as at its release now)
                denial, rows = gw.risk.explain_open(card, o, gw.desk.session())
            else:
                denial, rows = gw.risk.explain(card, new, gw.desk.session())
            return ack(explain_text(agent, new, denial, rows, gw.risk.multiplier))
        try:
            new = parse_order(value, agent, gw.clock.now().date())
        except ValueError as e:
            return err(ErrorCode.BAD_ORDER, str(e))
        denial, rows = gw.risk.explain(card, new, gw.desk.session())
        return ack(explain_text(agent, new, denial, rows, gw.risk.multiplier))

    def _feed_gap(self) -> str:
        self.gw.md.inject_gap()
        return "market-data messages skipped: each of the next 8 follows a lost one"

    def _reload(self, msg: Control, err: Callable[[ErrorCode, str], Error], ack: Callable[[str], Ack]) -> Message:
        """Apply a changed card (or, with value "preview", only say what would change). The reply, the
        agent's notice and the alert list every change as old → new: a reload is the operator's approval
        of the card, and "budget" alone would let a raised budget pass as a routine click."""
        new = msg.card
        if new is None:
            return err(
                ErrorCode.BAD_MESSAGE, "reload needs the changed card (ktrader control reload --agent ID --card PATH)"
            )
        if new.id != msg.agent:
            return err(ErrorCode.BAD_CARD, f"the card is {new.id!r}, not {msg.agent!r}: nothing changed")
        old = self.card_of(msg.agent)
        if old is None:
            return err(ErrorCode.UNKNOWN_AGENT, f"no card known for {msg.agent!r}: start it once before reloading")
        a, b = msgspec.to_builtins(old), msgspec.to_builtins(new)
        changed = sorted(k for k in b if a.get(k) != b[k])
        fixed = [k for k in changed if k not in RELOADABLE]
        if fixed:
            return err(
                ErrorCode.BAD_CARD,
                f"{', '.join(fixed)} changed: that is no reload; approve the card (ktrader cards approve CARD), then "
                f"restart {msg.agent} with it (the old card stays in force until then)",
            )
        if not changed:
            return ack(f"{msg.agent}: the card is unchanged")
        run_dir = self.gw.cfg.run_dir
        approved = self.gw.approved  # (the registrations' view of the file, re-read when it changed)
        approved.refresh()
        if approved.error:  # (unanswered, the operator's tool waited for its timeout: a review)
            return err(ErrorCode.BAD_CARD, f"the approvals file cannot be read: {approved.error}: nothing changed")
        if approvals.exists(run_dir) and msg.agent not in approved.cards:
            # (a reload approves: another operator's reload gave back the credential a revoke had taken, unsaid)
            revoked = not credentials.credential_path(run_dir, msg.agent).exists()
            return err(
                ErrorCode.BAD_CARD,
                f"{msg.agent}'s approval was "
                + ("withdrawn (ktrader keys revoke)" if revoked else "not found in the approvals file")
                + ": nothing changed; approve its card (ktrader cards approve CARD) to let it trade again",
            )
        fields = "; ".join(approvals.card_diff(a, b))
        if _is_preview(msg) or msg.value.startswith(RELOAD_EXPECT):
            would = _joined(fields, self._reload_effects(msg.agent, old, new, apply=False))
            preview = f"{msg.agent}: a reload would change {would}"
            if _is_preview(msg):
                return ack(preview)
            shown = msg.value.removeprefix(RELOAD_EXPECT)
            if shown != (fields_text := f"{msg.agent}: a reload would change {fields}") and not shown.startswith(
                fields_text + "; "
            ):
                # another operator's reload since the preview: applying this one would undo it unseen (a hunt: a
                # confirmation of an order-value cut raised back a budget and a loss limit tightened meanwhile)
                return err(
                    ErrorCode.BAD_CARD,
                    f"{msg.agent}: what a reload changes is no longer what your preview showed (the card in force "
                    f"changed since: it would change {would}): nothing applied; preview it again",
                )
        diff = _joined(fields, self._reload_effects(msg.agent, old, new, apply=True))
        # the operator's reload is an approval: the agent registers with this card from now on
        approvals.approve(self.gw.cfg.run_dir, [new], by=f"reload by {msg.h.sender}")
        rec = self.gw.registry.agents.get(msg.agent)
        if rec is not None:
            rec.card = new  # the risk gate, the day cycle and the quotas read the record's card
            services = getattr(self.gw, "services", None)
            if "rate_quota_per_s" in changed and services is not None:
                services.on_register(rec)  # the broker's per-caller rate is set from the card at registration
        self.cards[msg.agent] = new
        with self.gw.store.transaction():
            self.gw.store.set_meta(CARD_META + msg.agent, msgspec.json.encode(new).decode())
            self.gw.store.log_operator(
                market_ns(self.gw.clock),
                _actor(msg),
                "reload.applied",
                msg.agent,
                True,
                {"changed": changed, "old": {k: a.get(k) for k in changed}, "new": {k: b[k] for k in changed}},
            )
        self.gw.book.notify(msg.agent, CardUpdate(card=new, changed=changed))
        self.gw.book.notify(msg.agent, Notice(level="info", text=f"card reloaded by {msg.h.sender}: {diff}"))
        self.publish(SystemEventKind.CARD_RELOADED, msg.agent, ",".join(changed))
        log.warning("card of %s reloaded by %s: %s", msg.agent, msg.h.sender, diff)
        self._tell(AlertKind.OPERATOR, msg.h.sender, f"card of {msg.agent} reloaded: {diff}", msg.agent)
        # (the limits are the gateway's at once; the params reach the strategy if the code it runs accepts them: a
        # Params class changed on disk since it started refuses them, said in its status' last error)
        tail = "; the agent applies the params if its running strategy accepts them" if "params" in changed else ""
        if (state := self.gw.risk.agent_state(msg.agent)) is not TradingState.ACTIVE:
            # (a lifted limit does not lift the state it tripped: buys stayed denied, unsaid: a hunt)
            tail += f"; {msg.agent} stays {state.value}: `ktrader control resume --agent {msg.agent}` trades again"
        return ack(f"{msg.agent}: reloaded {diff}{tail}")

    def _reload_effects(self, agent: str, old: AgentCard, new: AgentCard, apply: bool) -> list[str]:
        """What a changed card does at once, said with the reload: limits lowered below what the agent already holds
        (its buys denied from now on, nothing sold); a changed schedule (a hunt: an end moved to 09:30 at 10:00 sold
        everything 0.1 s after a reply that said only the fields; a flatten switched to hold left its queued sells to
        go out at the next open; a policy already run left the agent sells-only, untold). `apply`: the reload is
        applied (not a preview): a missed flatten's promise of sells, not queued yet, is dropped with it."""
        out: list[str] = self.gw.risk.beyond(new, old) if (new.risk, new.budget) != (old.risk, old.budget) else []
        was, now_policy = old.schedule.end_of_day, new.schedule.end_of_day
        if new.schedule != old.schedule:
            clock = self.gw.clock
            rec = self.gw.registry.agents.get(agent)
            if agent in self.gw.risk.end_of_day:
                out.append("today's end of day already ran: it sells only until tomorrow, whatever the new schedule")
            elif now_policy is not EndOfDay.HOLD and clock.timed and is_trading_day(clock.now().date()):
                phase = clock.phase()
                if RANK[phase] <= RANK[Phase.CLOSING_AUCTION] and end_due(new, clock.now(), phase):  # (as DayCycle.due)
                    held = self.gw.portfolio.holding(agent)
                    if rec is None or rec.state is not AgentState.ONLINE:
                        runs = "it is not running: its end of day runs when it comes back (told at the close)"
                    else:
                        sells = (
                            f": sells {shares_text(held)} at market" if now_policy is EndOfDay.FLATTEN and held else ""
                        )
                        runs = f"its end of day ({now_policy.value}) runs now{sells}"
                    today = clock.now().date()
                    ends = policy_time(new, today, True)
                    said = (
                        f"its new end {new.schedule.end} is at or after the close: its flatten runs as the closing "
                        f"call starts ({ends:%H:%M})"
                        if ends < card_end(new, today)
                        else f"its new end {new.schedule.end} has passed"
                    )
                    out.append(f"{said}: {runs}")
        if was is EndOfDay.FLATTEN and now_policy is not EndOfDay.FLATTEN:
            if n := self.gw.day.flatten_sells_held(agent):
                out.append(
                    f"the {n} sells its flatten placed for the next session stay: ktrader control cancel_all --agent "
                    f"{agent} cancels them"
                )
            if apply and self.gw.day.drop_missed_flatten(agent):
                out.append("the sells its missed flatten promised for the next session are dropped")
        return out

    # ---- events from the gateway -----------------------------------------------------------------

    def alert(self, kind: AlertKind, text: str, agent: str = "", subject: str = "") -> None:
        self.notifier.alert(kind, text, agent, subject)

    def on_alert(self, kind: AlertKind | None, text: str, agent: str, subject: str = "") -> None:
        """The gateway's alerts (server/alerts.py): those with a kind must reach a person. Repeats of a
        subject are suppressed by the notifier; an alert without one is news each time (its moment)."""
        if kind is not None:
            self.notifier.alert(kind, text, agent, subject=subject or str(market_ns(self.gw.clock)))

    def on_agent_offline(self, agent: str, why: str) -> None:
        """Left cleanly (unregistered): alert now if it leaves positions or orders behind. A lease
        that ran out is only `stale`; tick() decides when it is offline."""
        rec = self.gw.registry.agents.get(agent)
        if rec is not None and rec.state is AgentState.OFFLINE:
            self._alert_if_holding(agent, f"stopped ({why})")

    def on_agent_back(self, rec: AgentRecord) -> None:
        """An agent a person was told is offline (holding positions or orders) registered again: they are told
        it is back (the offline page had no all-clear: a person paged at night kept looking for a crash)."""
        if rec.id in self._offline_alerted:
            self._offline_alerted.discard(rec.id)
            self.gw.alerts(
                f"agent {rec.id} is back: registered again (pid {rec.pid} on {rec.host})",
                AlertKind.RECOVERED,
                rec.id,
                subject=str(market_ns(self.gw.clock)),
            )

    def _alert_if_holding(self, agent: str, why: str) -> None:
        held = [f"{p.qty} {p.code}" for p in self.gw.portfolio.positions.get(agent, {}).values() if p.qty]
        open_n = sum(1 for o in self.gw.book.orders.values() if o.agent == agent and o.is_open)
        if held or open_n:
            self._offline_alerted.add(agent)
            what = ", ".join(held) or "no shares"
            # through the gateway's alerts: on the console, the web page, status and the day's report,
            # and to a person (on_alert hands it to the notifier, once)
            self.gw.alerts(
                f"agent {agent} {why}; it holds {what} and {open_n} open orders "
                f"(ktrader control flatten --agent {agent} acts for it)",
                AlertKind.AGENT_OFFLINE,
                agent,
                subject=str(market_ns(self.gw.clock)),
            )

    # ---- periodic --------------------------------------------------------------------------------

    def tick(self) -> None:
        """From the gateway's lease loop (a few times a second); the heavier checks once a second."""
        now = self.clock()
        for rec in self.gw.registry.agents.values():
            if rec.state is AgentState.STALE and self.gw.registry.age(rec) >= self.gw.cfg.offline_after_s:
                self._went_offline(rec)
        if self._absent_check_at is not None and now >= self._absent_check_at:
            self._absent_check_at = None
            for agent in self.known_agents():
                if agent != EXTERNAL_AGENT and agent not in self.gw.registry.agents:
                    self._alert_if_holding(agent, "not back since the gateway started")
        if now >= self._next_check:
            self._next_check = now + 1.0
            self._remember_cards()
            self._count_trades()
            # through the gateway's alerts (the console, status, the day's report; on_alert: the notifier),
            # or to the notifier alone when the console has it already (a reconciliation's differences)
            raised = self.watch.check(self._facts(now))
            for r in [*raised, *self.watch.ended()]:
                if r.on_screen:
                    self.notifier.alert(r.kind, r.text, r.agent, r.subject)
                else:
                    self.gw.alerts(r.text, r.kind, r.agent, subject=r.subject)
        if now >= self._next_equity:
            self._next_equity = now + self.gw.cfg.equity_every_s
            self.snapshot_equity()

    def _went_offline(self, rec: AgentRecord) -> None:
        age = self.gw.registry.age(rec)
        rec.state = AgentState.OFFLINE
        log.warning("agent %s offline: silent for %.0fs", rec.id, age)
        self.publish(SystemEventKind.AGENT_OFFLINE, rec.id, f"silent for {age:.0f}s: offline")
        self._alert_if_holding(rec.id, f"silent for {age:.0f}s (crashed or cut off)")

    def _remember_cards(self) -> None:
        for agent, rec in self.gw.registry.agents.items():
            if self.cards.get(agent) != rec.card:
                self.cards[agent] = rec.card
                with self.gw.store.transaction():
                    self.gw.store.set_meta(CARD_META + agent, msgspec.json.encode(rec.card).decode())

    def _facts(self, now: float) -> Facts:
        gw = self.gw
        last = gw.recon.last
        return Facts(
            now=now,
            session=gw.broker.session_state,
            phase=gw.clock.phase(),
            subscribed=bool(gw.subs.active),
            ws_age_s=(health := gw.broker.health()).ws_last_message_age_s,
            session_detail=health.session_detail,
            reconcile=last,
            reconcile_texts=list(gw.recon.last_texts) if last else [],  # the pass's own texts, not the ring's
            unknown={c: o.agent for c, o in gw.book.orders.items() if o.state is OrderState.UNKNOWN},
            market_ns=market_ns(gw.clock),
            disk_free_bytes=console_views.disk_free(str(gw.store.path)),
            write_failures=self._write_failures(),
        )

    def _write_failures(self) -> dict[str, tuple[int, str, bool]]:
        """What the gateway writes beside its store, and how often each write failed (server/alert_watch.py)."""
        gw = self.gw
        md, rec, history = gw.md, gw.recorder, gw.services.history
        out = {"the bar store": (md.bar_store_failures, md.bar_store_error, md.bar_store_failing)}
        if rec is not None:
            out["market-data recording"] = (rec.errors, rec.last_error, rec.failing)
        if history is not None:
            out["the query history"] = (history.failures, history.last_error, history.failing)
        return out

    # ---- performance -----------------------------------------------------------------------------

    def _count_trades(self) -> None:
        """Today's wins and losses: one per closing order (a sell of the day that ended having filled),
        by the sign of the P&L it realised net of its costs (a +1,000 sale that paid 2,302 in commission
        and tax is a loss). Counting each change of realised P&L this once-a-second check
        happened to see made one sell filled in three parts one to three trades, depending on timing;
        counting from the book's orders is also the same after a restart (today's orders are reloaded)."""
        book = self.gw.book
        day = book.day()
        counts: dict[str, list[int]] = {}
        for coid, o in book.orders.items():
            if o.side is not Side.SELL or not o.is_terminal or not o.filled_qty or book.order_day.get(coid) != day:
                continue
            # net of its commission and tax (server/performance.py: the one rule for a win)
            result = closing_result(o, book)
            if result:  # (break-even after costs, or an order stored without its fills: neither)
                wl = counts.setdefault(o.agent, [0, 0])
                wl[0 if result > 0 else 1] += 1
        if day != self._trades_day:
            self._trades_day, self._trades = day, {}
        changed = {
            a for a in counts.keys() | self._trades.keys() if counts.get(a, [0, 0]) != self._trades.get(a, [0, 0])
        }
        self._trades = counts
        # realised P&L moved (a partial fill of an order still open): today's equity row follows it
        for agent, positions in self.gw.portfolio.positions.items():
            for code, p in positions.items():
                prev = self._realized.get((agent, code))
                self._realized[(agent, code)] = p.realized_pnl
                if prev is not None and p.realized_pnl != prev:
                    changed.add(agent)
        if changed:
            self.snapshot_equity(changed)

    def _live_row(self, agent: str, day: str, traded: int, budget: int) -> EquityRow:
        ps = self.gw.portfolio.positions.get(agent, {}).values()
        wl = self._trades.get(agent, [0, 0]) if day == self._trades_day else [0, 0]
        return EquityRow(
            day=day,
            ts_ns=market_ns(self.gw.clock),
            realized=sum(p.realized_pnl for p in ps),
            fees=sum(p.fees for p in ps),
            unrealized=self.gw.portfolio.unrealized(agent),
            traded_value=traded,
            wins=wl[0],
            losses=wl[1],
            budget=budget,
        )

    def snapshot_equity(self, agents: set[str] | None = None) -> None:
        """Today's row of each agent (registered, or holding something), upserted: the last one of a
        day is that day's close."""
        book = self.gw.book
        if not is_trading_day(self.gw.clock.now().date()):
            return  # no market, no day: a weekend's row would be a flat day in drawdown, Sharpe and today's P&L
        day = book.day()
        traded = daily_report.traded_by_agent(book, day)
        who = agents if agents is not None else set(self.gw.registry.agents) | set(self.gw.portfolio.positions)
        # an agent holding a code with no price is valued at cost: its row waits for the price
        who = {a for a in who if not self.gw.portfolio.unpriced(a)}
        with self.gw.store.transaction():
            for agent in sorted(who):
                card = self.card_of(agent)
                self._put_row(agent, self._live_row(agent, day, traded.get(agent, 0), card.budget if card else 0))

    def _put_row(self, agent: str, row: EquityRow) -> None:
        """`row` is the agent's row of its day: stored (upserted), and kept in day order in memory."""
        self.gw.store.save_equity(agent, row.day, row)
        rows = self.rows.setdefault(agent, [])
        i = bisect.bisect_left(rows, row.day, key=lambda r: r.day)
        if i < len(rows) and rows[i].day == row.day:
            rows[i] = row
        else:
            rows.insert(i, row)

    def performance(
        self, day: str = "", traded: dict[str, int] | None = None, end: dict[str, tuple[int, int]] | None = None
    ) -> dict[str, AgentPerformance]:
        """Per agent, for the daily report of `day` (today's by default), after a final snapshot of its row. A day
        closed once the book has rolled past it (its close ran past midnight, or the gateway was down over it) has
        its row written from its own figures (`traded`: KRW bought + sold by its orders; `end`: each agent's
        cumulative (realised, fees) at its end; None: the totals now), not today's, and the figures stop at it:
        today's row written in its place counted two days' P&L as the new day's and left the old day at 0."""
        if not day or day == self.gw.book.day():
            self.snapshot_equity()
            return {agent: performance(rows) for agent, rows in self.rows.items()}
        self._late_day_row(day, traded or {}, end)
        return {agent: performance([r for r in rows if r.day <= day]) for agent, rows in self.rows.items()}

    def _late_day_row(self, day: str, traded: dict[str, int], end: dict[str, tuple[int, int]] | None) -> None:
        """Each agent's row of `day`, closed late: positions valued at that day's official closes (its daily
        bars, just sealed), not at the marks now (a restart before the open has none: its holders were left
        without a row; one in the next session would count that session's move as the old day's)."""
        portfolio = self.gw.portfolio
        totals = portfolio.totals()
        end = end if end is not None else totals
        who = set(self.gw.registry.agents) | set(portfolio.positions) | set(traded)
        who |= {a for a, rows in self.rows.items() if any(r.day == day for r in rows)}
        held = {p.code for ps in portfolio.positions.values() for p in ps.values() if p.qty}
        closes = {code: self.gw.md.day_close(code, date_of(day)) for code in held}
        priced = {c for c, v in closes.items() if v}
        with self.gw.store.transaction():
            for agent in sorted(who):
                if set(portfolio.unpriced(agent)) - priced:
                    continue  # a code with no price at all: its equity is not known (as a live snapshot)
                # its intraday row: its wins and losses
                kept = next((r for r in self.rows.get(agent, []) if r.day == day), None)
                realized, fees = end.get(agent, totals.get(agent, (0, 0)))
                card = self.card_of(agent)
                row = EquityRow(
                    day=day,
                    ts_ns=kept.ts_ns if kept is not None else market_ns(self.gw.clock),
                    realized=realized,
                    fees=fees,
                    unrealized=portfolio.unrealized(agent, closes),
                    traded_value=traded.get(agent, 0),
                    wins=kept.wins if kept is not None else 0,
                    losses=kept.losses if kept is not None else 0,
                    budget=card.budget if card else 0,
                )
                self._put_row(agent, row)

    def tasks(self) -> list:
        """Coroutines the gateway runs for the operator (the notifier's sender)."""
        return [self.notifier.run()]


def _held_back(state: TradingState, paused: bool) -> str:
    """What the gateway's state keeps from trading, as a resumed agent's reply says it."""
    if state is TradingState.HALTED:
        return "no new order goes out (its open orders keep working)" if paused else "nothing trades"
    return "only sells go out"


def parse_split(value: str) -> tuple[str, int, int]:
    """(code, num, den) of apply_split's value "CODE RATIO": "005930 10" (or "1:10") is 1 share → 10,
    "005930 1/10" (or "10:1") is 10 shares → 1."""
    parts = value.split()
    if len(parts) != 2:
        raise ValueError(f"got {value!r}")
    code, ratio = parts
    if "/" in ratio:
        a, b = ratio.split("/", 1)
        num, den = int(a), int(b)
    elif ":" in ratio:  # old shares : new shares
        a, b = ratio.split(":", 1)
        num, den = int(b), int(a)
    else:
        num, den = int(ratio), 1
    if min(num, den) != 1 or max(num, den) < 2:
        raise ValueError(f"{ratio!r}: a split turns 1 share into k, or k into 1, k an integer of at least 2")
    if not code.isalnum():
        raise ValueError(f"{code!r} is not a stock code")
    return code, num, den


def _split_line(old: PositionView, new: PositionView) -> str:
    """A holder's shares before → after, its cost and average price. The books keep the cost, never the
    average: what a whole-won average leaves over is said, not lost."""
    avg, rem = divmod(new.cost, new.qty) if new.qty else (0, 0)
    was = old.cost // old.qty if old.qty else 0
    cost = (
        f"cost {new.cost:,} unchanged"
        if new.cost == old.cost  # (a shadow holder's fraction of a share is dropped: its cost a realised loss)
        else f"cost {old.cost:,} → {new.cost:,} (a virtual share's fraction dropped: {old.cost - new.cost:,} realised)"
    )
    return f"{old.qty:,} → {new.qty:,} shares, {cost}, average {was:,} → {avg:,}" + (
        f" (and {rem:,} KRW of the cost beyond {avg:,} a share, kept in the cost)" if rem else ""
    )


def _joined(fields: str, effects: list[str]) -> str:
    return "; ".join([fields, *effects])


def _is_preview(msg: Control) -> bool:
    return msg.action == ControlAction.RELOAD.value and msg.value == RELOAD_PREVIEW
