"""The gateway process's composition root: builds every room once, with one market clock, and runs
them on one asyncio loop.

Rooms (each its own module): the ROUTER and its dispatch table (`router`), agent sessions and leases
(`sessions`), the order desk (`order_desk`), the book of record (`order_book`), the broker send queues
(`send_queue`; `shadow` is the venue of agents in shadow mode), notices (`notices`), reconciliation
(`reconciler`), the risk gate that owns trading state (`risk`), the account's equity (`equity`),
protective orders (`protection`), the trading day (`trading_day`),
market data (`marketdata`), registrations (`subscriptions`), alerts, and the operator facade
(`operator`: status and control). Nothing sets attributes on another room after construction; rooms
talk through the callables they are given here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import os
import secrets
import math
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import msgspec
import zmq

from common.signals import stop_signals
from common import approvals, credentials
from common.views import trading_word
from common.aio import wait_set
from common.calendar import calendar_gaps, previous_trading_day
from common.clock import date_of, elapsed_ns, kst_from_ns
from common.config import AgentCard, BrokerEnv, ConfigError, GatewayConfig, load_card
from common.connection import ConnectionFileError, GatewayInfo, read_info, remove_info, write_info
from common.freshness import Freshness
from common.enums import AgentState, AlertKind, BarInterval, SessionState, SystemEventKind, TradingState
from common.framing import Codec
from common.krx import Phase
from common.market_clock import MarketClock, WallClock, market_day, market_ns
from common.orders import OPEN, Order, OrderState
from server.run_folder import RunFolderWatch, RunLock, ipc_in_use
from common.protection import Protection
from common.schema import (
    INTRADAY_SCOPE,
    AgentEvent,
    Bar,
    CancelAll,
    CancelOrder,
    CancelProtection,
    Control,
    Error,
    GetBars,
    GetMarket,
    GetOrders,
    GetSnapshot,
    GetEvents,
    GetTrace,
    TraceReply,
    GetState,
    HeaderFactory,
    Heartbeat,
    Message,
    Notice,
    ModifyOrder,
    OrdersReply,
    Ping,
    Pong,
    Protect,
    PutState,
    Query,
    Register,
    StatusQuery,
    SubmitOrders,
    Subscribe,
    SYSTEM_TOPIC,
    SystemEvent,
    Unregister,
    Ack,
)
from kis.master import MasterError, StockMaster
from kis.startup import StartExit, StartupError
from kis.port import (
    Book,
    BrokerNotice,
    BrokerPort,
    Capability,
    Gap,
    MarketClock as ClockMark,
    MarketKind,
    SessionChange,
    Trade,
)
from server import trace_views
from common.errors import ErrorCode
from server.core import build_order_core, run_owner
from server.equity import AccountReader
from server import protection as protection_room
from server.shadow import HOLDER as SHADOW_HOLDER, RESERVE_SLOTS as SHADOW_RESERVE_SLOTS
from server.agent_services import AgentServices, GetSummary
from server.zap import ZapGuard
from server.barstore import BarStore
from server.marketdata import MarketData, session_rule
from server.md_sanity import Bad, MarketSanity
from server.marketdata_requests import serve_bars, serve_market
from server.notifier import Owed
from server.operator import Operator
from server.publisher import Publisher, pub_socket
from server.reconciler import OPEN_CHECK, START, START_WHOLE, periodic_wait, retry_after
from server.recorder import Recorder, attach_recorder
from server.registry import AgentRecord, Registry
from server.router import Router
from server.session_days import SessionDays, new_gaps
from server.sessions import AgentSessions
from server.stockmaster import MasterKeeper, downloads, gateway_master
from server.store import Store, StoreFailed
from server.subscriptions import SubscriptionManager
from server.trading_day import BasePrices, TradingDay
from server.universe import Universe, UniverseBinder, held_codes

log = logging.getLogger("ktrader.gateway")
UNLIMITED_KEY = "md:unlimited"  # the store's meta row of the codes in liquidation (Portfolio.unlimited), with days
UNLIMITED_FORGET_SESSIONS = 10  # a liquidation lasts seven sessions: a code without its print this long left it


# phases in which none of today's orders can have traded yet (the opening auction matches at 09:00; a holiday)
_UNTRADED = frozenset({Phase.PRE_OPEN, Phase.OPENING_AUCTION, Phase.CLOSED})


def _day_after(day: str) -> str:
    """The day after `day` (ISO or YYYYMMDD), as YYYYMMDD."""
    d = dt.date.fromisoformat(day) if "-" in day else dt.datetime.strptime(day, "%Y%m%d").date()
    return (d + dt.timedelta(days=1)).strftime("%Y%m%d")


# meta key (+ code): the last day (YYYYMMDD) the code's confirmed base was found on the scale of its stored close
_SCALE_CHECKED = "scale_checked:"
# the alerts the notifier has not delivered yet (server/notifier.py undelivered): a restart sends them again
_UNDELIVERED = "notify:undelivered"
# the wall times of this folder's recent starts after an unclean stop (a restart loop is told as one)
_STARTS = "gateway:unclean_starts"
RESTART_LOOP_S = 600.0


_RESCALED = "a corporate action (a split, a rights or bonus issue) changed its price scale"

# a start whose first pass read only the open orders alerts a person when the whole list stays unread
PARTIAL_ALERT_NS = 120_000_000_000
# who holds the trade registrations of held codes for their marks (no agent id has a ':'), and the slots it leaves
# free (agents and protections take its registrations anyway at full slots: it yields)
MARKS_HOLDER = "gateway:marks"
MARKS_RESERVE_SLOTS = 4
WAL_ALERT_BYTES = 256 << 20  # a store WAL this big: a reader keeps its checkpoints from completing (told)
FOLDER_CHECK_S = 1.0  # how often the run folder's files are looked at (server/run_folder.py): a few stats


def default_endpoints(run_dir: Path) -> tuple[str, str]:
    ipc = run_dir / "ipc"
    ipc.mkdir(parents=True, exist_ok=True)
    return f"ipc://{(ipc / 'router').resolve()}", f"ipc://{(ipc / 'pub').resolve()}"


def clock_of(broker: BrokerPort) -> MarketClock:
    """The broker's market clock when it has one (the KIS twin, a replay), else KST wall time."""
    if Capability.MARKET_CLOCK in broker.capabilities:
        return broker.market_clock  # type: ignore[attr-defined]  # declared by the capability
    return WallClock()


def blind_text(code: str, blind: list[Protection], why: str) -> str:
    """The alert for protections whose code's trades the gateway cannot watch: which, why, what to do."""
    which = "; ".join(f"{p.agent}'s {p.id} ({p.spec.levels()})" for p in blind) or "none active now"
    return (
        f"protective orders on {code} are BLIND and will not fire: the broker stream of {code}'s trades could "
        f"not be registered ({why}). Affected: {which}. Nothing else feeds them (quotes an agent polls reach only "
        "its strategy); the gateway asks for the registration again by itself. Until then the position is "
        "unprotected: free a registration (stop an agent that holds some, or take codes out of its card's "
        f"subscriptions and restart it) or place a stop for these {code} shares at the broker by hand"
    )


class Gateway:
    def __init__(
        self, cfg: GatewayConfig, broker: BrokerPort, broker_name: str = "", clock: MarketClock | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.broker = broker
        self.broker_name = broker_name or type(broker).__name__
        self.clock = clock or clock_of(broker)
        broker.use_phase(self.clock.phase)  # (one market clock: the broker's stream judges its silence by it)
        self.headers = HeaderFactory("gateway")
        self.counters: Counter[str] = Counter()
        self.zap = ZapGuard(self.run_dir, self.counters)  # CURVE on network endpoints (server/zap.py)
        self.key = self.zap.signing_key(cfg.router_endpoint, cfg.pub_endpoint) or secrets.token_bytes(32)
        # who may speak (each request signed by its own credential) and under which card (approved)
        self.keyring = credentials.Keyring(self.run_dir)
        self.approved = approvals.ApprovedCards(self.run_dir)
        self.codec = Codec(
            self.key, cfg.max_frame_bytes, keyring=self.keyring, freshness=Freshness(int(cfg.trust.freshness_s * 1e9))
        )
        self.started_ns = market_ns(self.clock)
        self.ctx: zmq.Context = zmq.Context.instance()
        self.pub: Publisher | None = None
        self.pub_topics: set[str] = set()  # topics with a subscriber (XPUB passes first sub / last unsub)
        self._xpub: zmq.Socket | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._reconcile_wanted = asyncio.Event()
        self._reconcile_reason = START
        self._session_seen_ready = False

        # ---- the rooms ------------------------------------------------------------------------
        self.store = Store(self.run_dir / "db" / "gateway.sqlite", on_failure=self._store_lost, prewrite=True)
        self._store_failure: Exception | None = None
        self.run_lock: RunLock | None = None  # the run folder's lock, when run as a process (server/app.py)
        self._folder: RunFolderWatch | None = None
        self._undelivered_kept = b"[]"  # what the store holds under _UNDELIVERED (rewritten when it changes)
        self._folder_checked = 0.0
        self._wal_alert_bytes = WAL_ALERT_BYTES
        self.registry = Registry(cfg.lease_s)
        self.core = build_order_core(
            cfg,
            self.store,
            broker,
            self.clock,
            self.headers,
            self._send_event,
            self.publish,
            self._card_of,
            request_reconcile=self.request_reconcile,
        )
        core = self.core
        self.portfolio, self.alerts, self.risk, self.book = core.portfolio, core.alerts, core.risk, core.book
        self.notices, self.shadow_venue, self.recon, self.desk = core.notices, core.shadow_venue, core.recon, core.desk
        self.protection = core.protection
        self.account = AccountReader(
            self.portfolio,
            broker.account,
            cfg.account_every_s,
            self.risk.cash_moved,
            store=self.book.store,
            traded_today=lambda: not self.clock.timed or self.clock.phase() not in _UNTRADED,
        )
        core.live_queue.on_cash_refused = self._cash_refused
        self.account.on_ahead = lambda: self.request_reconcile("the account's day totals show trades the books lack")
        self._cash_excused_at: dict[str, float] = {}  # agent -> (monotonic) its last buy refused for cash, excused
        self.base_prices = BasePrices(self.book, broker.day_band)
        self.day = TradingDay(
            self.clock,
            self.book,
            self.desk,
            self.risk,
            self.recon,
            self.base_prices,
            self._running_cards,
            self.publish,
            self.request_reconcile,
            self._spawn,
            self.run_dir,
            self.alerts.of_day,
            lambda day, traded, end: self.operator.performance(day, traded, end),
            lambda day: self.md.close_daily(day, self.broker, self._close_codes()),
            self.protection.of,
            self.broker.account if cfg.daily_cash_check else None,
            self.alerts,
            counters=self.counters,
            approved=self.approved,  # the gateway's, bound to its owner at the start (_trust)
            day_close=lambda code, d: self.md.day_close(code, d),  # (md is made after the day)
            last_print=lambda: self.md.last_print,  # (read on the host's clock only: TradingDay.wall)
            alerts_reported=self.alerts.reported,
        )
        # the broker's holiday calendar: asked until it answers, watched at 08:00, and orders refused as
        # "not a business day" close the day (server/session_days.py)
        self.session_days = SessionDays(
            broker,
            self.alerts,
            (self.store.get_meta, self._set_meta),
            lambda: self.clock.now().date(),
            self.counters,
            phase=self.clock.phase,
        )
        self.day.on_tick.append(self.session_days.watch)
        self.book.listeners.append(self.session_days.on_order)
        self.subs = SubscriptionManager(broker, on_refused=self._subscription_refused)
        # the gateway's own watches that yield their slots to agents' and protections' (virtual orders' first)
        self.subs.yielding = (SHADOW_HOLDER, MARKS_HOLDER)
        self.subs.on_yielded = self._yielded
        self.master: StockMaster | None = None  # installed below, once the sessions exist
        self._protected: set[str] = set()  # codes whose trade registration the protections hold
        self._refused_protected: set[str] = set()  # ... refused (all slots in use): alerted once a day
        # code -> (monotonic time of the next ask, refusals in a row): the broker refused the registration;
        # asked again with back-off, never at every lease tick (KIS blocks subscribe storms)
        self._protected_retry: dict[tuple[str, str], tuple[float, int]] = {}  # (holder, code) -> (next try, tries)
        self._shadowed: set[str] = set()  # codes whose trade registration the shadow venue holds
        self._marked: set[str] = set()  # held codes whose trade registration the gateway holds for their marks
        self.sessions = AgentSessions(
            self.registry,
            self.book,
            self.desk,
            self.risk,
            self.subs,
            self.headers,
            self.publish,
            self.counters,
            lease_s=cfg.lease_s,
            heartbeat_s=cfg.heartbeat_s,
            hold_s=cfg.offline_after_s,
            protection=self.protection,
            approved=self.approved.get,
            approval_refusal=self.approved.refusal,
        )
        master = gateway_master(cfg)  # unknown codes are denied by the risk gate
        if master is not None:
            self._install_master(master)
        # paper/real: the gateway's own copy of KIS's master files, kept current (server/stockmaster.py)
        self.master_keeper = (
            MasterKeeper(cfg, self.clock.now, self._install_master, self.alerts) if downloads(cfg) else None
        )
        self.universe = Universe(broker, refresh_s=cfg.universe_refresh_s, fallback=list(cfg.universe_fallback))
        self.universe.alert = lambda text, back: self.alerts(
            text, AlertKind.RECOVERED if back else AlertKind.STALE_MARKET_DATA
        )
        self.universe.matters = lambda: self.clock.phase() is Phase.CONTINUOUS  # (no ranking before the open)
        self.universe_binder = UniverseBinder(
            self.universe,
            self.registry,
            self.subs,
            self.risk,
            self.book.notify,
            lambda codes: self._task(self.base_prices.ensure(codes)),
            held=lambda agent: held_codes(self.book, agent),  # a held code stays watched after it leaves the top
            # a card's universe_top on a broker without the ranking (KIS paper): on screen and in status, once
            alert=lambda text, agent: self.alerts(text, None, agent),
            store=self.store,
            day=self.book.day,
        )
        self.recorder: Recorder | None = None
        # kv state, market queries on per-agent quotas, order-book summaries (server/agent_services.py)
        self.services = AgentServices(
            self.store, self.portfolio, broker, self.headers, self._reply, self._spawn, clock=self.clock
        )
        self.md = MarketData(BarStore(self.run_dir / "data" / "bars.sqlite"), session_rule(self.clock))
        self.md.wall = self.clock.now  # prints and bars are dated by the market's clock
        if isinstance(self.clock, WallClock):  # the host's clock is the market's: its skew reaches a person
            self.md.on_skew = lambda text: self.alerts(text, AlertKind.GATEWAY_FAULT)
            self.md.wall_steps = True  # and a step of it (NTP) is not the exchange's time passing
        self.md.on_alert = lambda text, kind: self.alerts(text, kind)  # (a day's bar the broker never gave: lost)
        self.md.on_bars_lost = self._bars_lost
        self.risk.day_close = self.md.day_close  # the base of a next-session order's band
        # bars built from prints that stopped (a released registration) are partial; a suspected split drops the
        # stored daily bars of its code (the old shares' prices; server/marketdata.py forget_history)
        self.subs.on_released = self._prints_stopped
        self.subs.on_registered = self._prints_heard  # (with feed_gap at every Gap below: one needs the other)
        self.recon.on_split_found = self._history_changed
        self.base_prices.on_confirmed = self._base_vs_close
        # code -> the market day of its last liquidation print (Portfolio.unlimited, kept in the store: _keep_unlimited)
        self._unlimited_seen: dict[str, str] = {}
        # every print and book is checked before anything uses it; marks move only on confirmed prints
        self.sanity = MarketSanity(
            lambda code: self.portfolio.base_prices.get(code, 0),
            # (a code the master lacks is of no known grid: a held ETF missing from a stale or cut list had its prints
            # dropped as off the stock grid, marks and stops starved: a hunt)
            lambda code: self.portfolio.kind(code) if self.master is not None and code in self.master else None,
            lambda: self.clock.now().date(),
            lambda text: self.alerts(text, AlertKind.BAD_MARKET_DATA),
            self.portfolio.published.get,
            self.portfolio.unlimited,
            self._keep_unlimited,
        )
        self.day.on_new_day += [
            self.md.new_day,
            self.notices.new_day,
            self.universe_binder.new_day,
            self.protection.new_day,
            self._new_day,
        ]
        self.day.closes_before = self._closes_before
        self.operator = Operator(self)  # status, control, offline agents, notifier, equity (server/operator.py)
        self.alerts.sinks.append(self.operator.on_alert)
        self.router = Router(self.codec, self.headers, self.registry, self.counters, hold=self.store.after_commit)
        self.sessions.on_registered += [
            self.services.on_register,
            self.universe_binder.on_register,
            lambda rec: self._spawn(self.base_prices.ensure(list(rec.card.codes))),
            self.operator.on_agent_back,
        ]
        self.sessions.on_offline += [self._forget_feed, self.operator.on_agent_offline]
        self._routes()

    # ---- wiring ------------------------------------------------------------------------------------

    def _routes(self) -> None:
        r, s, h = self.router, self.sessions, self.headers
        r.open(Ping, lambda route, m: Pong(h=h(m.h.mid), payload=m.payload))
        r.enroll(Register, s.register)
        r.tool(StatusQuery, lambda route, m: self.operator.status(m.h.mid))
        r.tool(Control, lambda route, m: self.operator.control(m))
        r.tool(GetOrders, self._get_orders)
        r.tool(GetSummary, lambda route, m: self.services.summary_reply(m))  # tools: any agent's book
        r.tool(GetTrace, self._get_trace)
        r.agent(Heartbeat, s.heartbeat)
        r.agent(Unregister, s.unregister)
        r.agent(GetSnapshot, s.get_snapshot)
        r.agent(GetEvents, s.get_events)
        r.agent(Subscribe, s.subscribe)
        # (acts: refused while the agent's lease has run out: decided by a stalled process, maybe after the
        # operator flattened it; the agent registers again and sends them then, through the gate as it is now)
        r.agent(SubmitOrders, self._submit, acts=True)
        r.agent(CancelOrder, self._cancel, acts=True)
        r.agent(ModifyOrder, self._modify, acts=True)
        r.agent(  # the agent's own: the sells the gateway placed for it stay (the operator's cancel_all takes them)
            CancelAll,
            lambda rec, route, m: Ack(
                h=h(m.h.mid), message=f"{self.desk.cancel_all(rec.id, m.code, spare_exits=True)} cancels sent"
            ),
            acts=True,
        )
        r.agent(Protect, lambda rec, route, m: self._answer(m.h.mid, self.protection.protect(rec.card, m)), acts=True)
        r.agent(
            CancelProtection,
            lambda rec, route, m: self._answer(m.h.mid, self.protection.cancel(rec.id, m.id, "cancelled by the agent")),
            acts=True,
        )
        r.agent(GetMarket, lambda rec, route, m: serve_market(self, m))
        r.agent(GetBars, self._get_bars)
        for t in (PutState, GetState, GetSummary, Query):
            r.agent(t, self._service)

    def _submit(self, rec: AgentRecord, route: bytes, msg: SubmitOrders) -> Message:
        # through the protections: a buy carrying a protective order is journaled with it
        return OrdersReply(h=self.headers(msg.h.mid), results=[self.protection.submit(rec.card, o) for o in msg.orders])

    def _answer(self, mid: int, outcome: tuple[Any, str]) -> Message:
        code, text = outcome
        return Error(h=self.headers(mid), code=code, message=text) if code else Ack(h=self.headers(mid), message=text)

    def _cancel(self, rec: AgentRecord, route: bytes, msg: CancelOrder) -> Message:
        return self._answer(msg.h.mid, self.desk.cancel(rec.id, msg.client_order_id))

    def _modify(self, rec: AgentRecord, route: bytes, msg: ModifyOrder) -> Message:
        o = self.book.orders.get(msg.client_order_id)
        if (
            o is not None
            and o.agent == rec.id
            and (why := self.protection.revise_refusal(o.client_order_id, msg.price))
        ):
            return self._answer(msg.h.mid, (ErrorCode.BAD_PROTECTION, why))
        return self._answer(msg.h.mid, self.desk.modify(rec.card, msg.client_order_id, msg.price, msg.qty))

    def _get_orders(self, route: bytes, msg: GetOrders) -> Message:
        return self.operator.orders(msg)  # the market day of the gateway's clock; every open order; what was cut

    def _get_trace(self, route: bytes, msg: GetTrace) -> Message:
        h = self.headers(msg.h.mid)
        if msg.slippage:
            return TraceReply(h=h, slippage=trace_views.slippage_summary(self.store))
        self.book.flush_traces()  # steps still waiting for the next commit belong to the story too
        return trace_views.trace_reply(self.store, msg.client_order_id, h) or Error(
            h=h,
            code=ErrorCode.UNKNOWN_ORDER,
            message=f"no order or protective order {msg.client_order_id!r} in the store",
        )

    def _get_bars(self, rec: AgentRecord, route: bytes, msg: GetBars) -> None:
        self._spawn(serve_bars(self, route, rec.id, msg))

    def _service(self, rec: AgentRecord, route: bytes, msg: Message) -> None:
        self.services.handle(rec, route, msg)

    def _card_of(self, agent: str) -> AgentCard | None:
        """The agent's card: its live registration's, else the last one it had (the operator keeps it)."""
        return self.operator.card_of(agent)

    def _cards(self) -> list[AgentCard]:
        return [rec.card for rec in self.registry.agents.values()]

    def _running_cards(self) -> list[AgentCard]:
        """The cards of agents running now (online): whose end-of-day policy the day cycle carries out. One stopped,
        or silent past its lease, is as one never registered: told at the close, nothing sold for it (it may have been
        stopped on purpose); before, a stopped agent was flattened at its end while one stopped across a gateway
        restart was not (a hunt). Coming back, its missed policy is worked out then."""
        return [rec.card for rec in self.registry.agents.values() if rec.state is AgentState.ONLINE]

    def _prints_stopped(self, kind: MarketKind, code: str) -> None:
        if kind is MarketKind.TRADES:
            self.md.released(code)

    def _prints_heard(self, kind: MarketKind, code: str) -> None:
        if kind is MarketKind.TRADES:
            self.md.listening(code)

    def _daily_codes(self) -> set[str]:
        """The codes whose day bars a registered agent subscribes to: its card's and its universe's (the
        binder's current list, with the codes it holds that left the ranking; a code whose registration was
        refused has no prints to build a bar from, yet the agent decides on its official one, as the
        backtester does)."""
        out: set[str] = set()
        for rec in self.registry.agents.values():
            if BarInterval.D1 in rec.card.subscriptions.bars:
                out.update(rec.card.codes)
                out.update(self.universe_binder.current.get(rec.id, ()))
        return out

    def _close_codes(self) -> set[str]:
        """The codes whose official daily bar the close asks for: those agents decide on (`_daily_codes`) and every
        code held, by any agent: a late close values what was held at that day's close (server/operator.py
        _late_day_row, the daily report); without the bar, at the prices of the session it was closed in (a hunt:
        -53,500 reported for a day that made +500, kept in the performance history)."""
        return self._daily_codes() | set(self.portfolio.held_codes())

    def _forget_feed(self, agent: str, why: str) -> None:
        from common.schema import FeedHealth

        rec = self.registry.agents.get(agent)
        if rec is not None:
            rec.feed = FeedHealth()

    # ---- sending -------------------------------------------------------------------------------------

    def _reply(self, route: bytes, msg: Message) -> bool:
        return self.router.reply(route, msg)

    def _send_event(self, agent: str, ev: AgentEvent) -> None:
        # A STALE agent may just be slow: its connection is still the one we know, so it gets its
        # events (a dead one's are dropped by ZMQ; everything stays replayable from the store).
        rec = self.registry.agents.get(agent)
        if rec is not None and rec.state.value != "offline":
            self.router.reply(rec.routing_id, ev)

    def publish(self, kind: SystemEventKind, agent: str = "", text: str = "") -> None:
        if self.pub is not None:
            self.pub.publish(SYSTEM_TOPIC, SystemEvent(kind=kind, agent=agent, text=text))

    def request_reconcile(self, reason: str) -> None:
        self._reconcile_reason = reason
        self._reconcile_wanted.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._task(coro)

    def _task(self, coro: Coroutine[Any, Any, Any]) -> "asyncio.Task[Any]":
        """_spawn's task, for a caller that waits on it (kept until done, as every background task)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    # ---- life cycle ------------------------------------------------------------------------------------

    def _endpoints(self) -> tuple[str, str]:
        r_ep, p_ep = self.cfg.router_endpoint, self.cfg.pub_endpoint
        if not r_ep or not p_ep:
            d_r, d_p = default_endpoints(self.run_dir)
            r_ep, p_ep = r_ep or d_r, p_ep or d_p
        return r_ep, p_ep

    def _bind(self) -> None:
        r_ep, p_ep = self._endpoints()
        self.router.bind(self.ctx, r_ep, self.cfg.max_frame_bytes, secure=self.zap.secure)
        xpub = pub_socket(self.ctx)
        self.zap.secure(xpub, p_ep)
        xpub.bind(p_ep)
        self.pub_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sessions.pub_endpoint = self.pub_endpoint
        self.pub = Publisher(xpub, self.codec, self.headers.sid)
        self.md.publisher = self.pub
        self._xpub = xpub

    def _bind_at_start(self) -> None:
        """`_bind`, a failure told in the operator's words (exit 2) with everything opened so far closed."""
        if busy := [ep for ep in self._endpoints() if ipc_in_use(ep)]:
            self._close_stores()  # (nothing bound yet)
            raise StartupError(
                "gateway endpoints",
                f"{', '.join(busy)}: in use by another process (another gateway?)",
                "stop it, or use another --router/--pub (router_endpoint/pub_endpoint)",
                StartExit.CONFIG,
            )
        try:
            self._bind()
        except zmq.ZMQError as e:
            self._unbind()
            self._close_stores()
            if e.errno == errno.EADDRINUSE:
                why, hint = "the port is in use (another gateway or program?)", "use another --router/--pub port"
            elif e.errno == errno.ENAMETOOLONG:
                why = f"the ipc path is too long (at most {getattr(zmq, 'IPC_PATH_MAX_LEN', 107)} characters)"
                hint = "use a shorter --run-dir, or --router/--pub with a short ipc:// path or tcp://"
            else:
                why, hint = e.strerror, "check --router/--pub (router_endpoint/pub_endpoint)"
            raise StartupError("gateway endpoints", f"cannot bind: {why}", hint, StartExit.CONFIG) from None

    def _unbind(self) -> None:
        """Close what `_bind` opened (a failed start: the sockets of a process that exits anyway, but
        closed so the context can terminate)."""
        self.zap.stop()  # before the watched sockets close
        self.router.close(asyncio.get_running_loop())
        if self._xpub is not None:
            self._xpub.close(0)
            self._xpub = None

    @property
    def router_endpoint(self) -> str:
        return self.router.endpoint

    def _trust(self, owner: dict[str, str] | None = None) -> None:
        """The operator's credential, and on the first start on this run folder on the twin (env sim)
        the approval of the cards in `trust.cards_dir` (whoever starts the gateway is its operator; the
        demo relies on it); every agent approved for this gateway's environment and account gets its
        credential. On paper/real nothing is approved but by the operator's `ktrader cards approve`: the
        sample cards are live, and their budgets add up to tens of millions of KRW. An approval made for
        another environment or account (the twin's first start, before `ktrader reset` and a real
        account) is not honoured: its agent is refused at registration (common/approvals.py)."""
        for path in credentials.tighten_credentials(self.run_dir):
            log.warning("%s was readable by others: made private (0600)", path)
        credentials.issue(self.run_dir, credentials.OPERATOR)
        # the one run() checked the store's against (run() hands it over: the owner key file read once)
        owner = owner or run_owner(self.cfg, self.broker, self.run_dir)
        first = not approvals.exists(self.run_dir)
        folder = Path(self.cfg.trust.cards_dir)
        cards: list[tuple[Path, AgentCard]] = []
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                cards.append((path, load_card(path)))
            except ConfigError as e:
                if first:
                    log.warning("first start: card not approved: %s", e)
        if first and self.cfg.broker.env is BrokerEnv.SIM:
            approvals.approve(
                self.run_dir, [c for _, c in cards], by=f"first start of the gateway ({folder})", owner=owner
            )
            log.info(
                "first start on %s: approved %d cards from %s (%s); later: ktrader cards approve CARD",
                self.run_dir,
                len(cards),
                folder,
                ", ".join(c.id for _, c in cards) or "none",
            )
        self.approved.bind(owner)  # registrations: only the approvals for this owner
        try:
            # (read only: the owner is written into the approvals once KIS proved it, run(); approvals that
            # name no owner are this owner's until then)
            reg = approvals.load(self.run_dir)
        except ConfigError as e:
            log.error("%s", e)
        else:
            honoured = [a for a, ap in sorted(reg.cards.items()) if approvals.same_owner(ap.owner, owner)]
            others = sorted(set(reg.cards) - set(honoured))
            if others:
                log.warning(
                    "%s: %d cards were approved for another environment or account (%s), so they may not trade on "
                    "%s; approve each one to trade with here again: ktrader cards approve --run-dir %s CARD",
                    self.run_dir,
                    len(others),
                    ", ".join(f"{a} for {approvals.describe(reg.cards[a].owner)}" for a in others),
                    approvals.describe(owner),
                    self.run_dir,
                )
            if not honoured and self.cfg.broker.env is not BrokerEnv.SIM:
                # every start says it again until the operator has approved a card for this account; one
                # line (a start's output is read whole): the cards found and the command
                log.warning(
                    "%s account: no card is approved on %s, so no agent may trade; cards in %s: %s. Approve each "
                    "one to trade with: ktrader cards approve --run-dir %s %s",
                    self.cfg.broker.env.value,
                    self.run_dir,
                    folder,
                    ", ".join(p.name for p, _ in cards) or "none",
                    self.run_dir,
                    folder / "CARD.toml",
                )
            for agent in honoured:
                credentials.issue(self.run_dir, agent)
        self.keyring.refresh(force=True)

    def _bind_approvals(self, owner: dict[str, str]) -> None:
        """The folder's owner, proven, recorded in the approvals (later approvals are for it), and those made
        before any gateway started here (`ktrader demo`, an older ktrader) bound to it. Not before KIS
        proved it: a start refused for a wrong env or account would bind them to that one."""
        try:
            approvals.bind_owner(self.run_dir, owner)
        except ConfigError as e:
            log.error("%s", e)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        previous = self._left_behind()  # (before this start's own file replaces it)
        # one folder's books are one environment's and account's (server/store.py claim_owner): another's
        # folder is refused before any KIS call; this one's owner is kept once KIS has proven it (below)
        try:
            owner = run_owner(self.cfg, self.broker, self.run_dir)
            self.store.check_owner(owner, self.run_dir)
        except ConfigError:
            self._close_stores()
            raise
        self._trust(owner)
        self.core.load()
        self._load_unlimited()
        self.recorder = attach_recorder(
            self.run_dir, self.cfg.record_market_data, self.cfg.data_retention_days, self.broker
        )
        clock_driven = Capability.CLOCK_MARKS in self.broker.capabilities
        if not clock_driven and self.recorder is not None:
            self.md.on_clock = self.recorder.record_clock  # where bars closed by time, for replay
        # the endpoints before the broker: a port in use or an ipc path too long is the operator's to
        # fix, told before a KIS token is issued (one a minute, each a KakaoTalk message) and a websocket opened
        self._bind_at_start()
        try:
            await self.broker.start()
            # kept once proven (the token and an account inquiry passed): a start KIS refused kept no owner,
            # so the corrected start (broker.env, the account) is not refused as another account's folder
            if self.broker.account_proven:
                self.store.record_owner(owner)
                self._bind_approvals(owner)
            else:
                # the start went on past a KIS hiccup (a 5xx, a rate limit) before KIS answered for the
                # account: a mistyped one must not lock the folder and its approvals to it. Kept at the first
                # successful reconciliation instead (it reads the account's orders: KIS accepted it); orders
                # wait for that pass anyway
                log.info("the run folder's owner is kept once KIS has answered for the account (reconciliation)")

                def proven() -> None:  # (once: on_synced is called at the first successful pass only)
                    try:
                        self.store.record_owner(owner)
                    except Exception:  # the pass stands; the next start records it
                        log.exception("keeping the run folder's owner failed")
                        return
                    self._bind_approvals(owner)
                    log.info("KIS answered for account %s: the run folder's owner is kept", owner.get("account", "-"))

                self.recon.on_synced.append(proven)
        except BaseException:
            self._unbind()
            await self._close_failed_start()  # no unclosed HTTP session or websocket behind the message
            raise
        try:
            await self._master_at_start()  # closes the broker itself when it fails
        except BaseException:
            self._unbind()
            raise
        assert self._xpub is not None
        self.router.attach(loop)
        loop.add_reader(self._xpub.fileno(), self._drain_xpub)
        self.core.start()
        self._tasks = [
            loop.create_task(self._lease_loop(), name="leases"),
            loop.create_task(self._broker_events(), name="broker-events"),
            loop.create_task(self._reconcile_loop(), name="reconcile"),
            loop.create_task(self.day.run(self.cfg.day_tick_s, self._count("day_cycle_errors")), name="day-cycle"),
            *(
                [] if clock_driven else [loop.create_task(self._bar_clock(), name="bar-clock")]
            ),  # a replay brings its marks
            loop.create_task(self.universe.run(), name="universe"),
            loop.create_task(self.account.run(), name="account"),  # reads at once: equity for the limits that need it
        ]
        if self.master_keeper is not None:
            self._tasks.append(loop.create_task(self.master_keeper.run(), name="stock-master"))
        self._watch_protected()
        if self.recorder is not None:
            self._tasks.append(loop.create_task(self.recorder.run(), name="recorder"))
        self._tasks += [loop.create_task(c, name="operator") for c in self.operator.tasks()]
        for sig in stop_signals():  # (a closed terminal too, unless started with nohup)
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        info = GatewayInfo(
            router=self.router_endpoint,
            pub=self.pub_endpoint,
            key=self.key.hex(),
            pid=os.getpid(),
            session=self.headers.sid,
            started_ns=self.started_ns,
            curve_key=self.zap.public_key,
            lease_s=self.cfg.lease_s,  # a restarted agent waits out its crashed copy's lease (agent/runtime.py)
        )
        # counted before this start's file replaces the previous one: a gateway killed right after it (a service
        # manager's restart loop) is still one of the loop's starts
        unclean_starts = self._count_unclean_start() if previous is not None else []
        write_info(self.run_dir, info)
        self._folder = RunFolderWatch(self.run_dir, info, self.run_lock, (self.router_endpoint, self.pub_endpoint))
        log.info("gateway ready: router %s pub %s broker %s", self.router_endpoint, self.pub_endpoint, self.broker_name)
        # told to a person (not on the screen: a start is no alert); the heartbeat pings from the lease loop
        self._started_mono = time.monotonic()
        started = (
            f"gateway started on {os.uname().nodename} (pid {os.getpid()}), run dir {self.run_dir.resolve()}, "
            f"broker {self.broker_name} env {self.cfg.broker.env.value}"
        )
        if previous is not None:  # one message, not two per start (a crash loop sent ten in ten seconds: a hunt)
            self._tell_unclean_stop(previous, started, unclean_starts)
        else:
            self.operator.notifier.alert(AlertKind.GATEWAY_STARTED, started, subject=self.headers.sid)
        self._raise_undelivered()
        self._check_calendar(self.book.day())
        self.router.drain()  # anything that arrived before the reader was armed
        try:
            await self._stop.wait()
        finally:
            try:
                await self._shutdown()
            except Exception:
                if self._store_failure is None:
                    raise
                # (e.g. the embedded twin saving its state into a run folder removed under it): the store's failure
                # and where its books went are the last words a person needs
                log.exception("stopping after the store failed")
        if self._store_failure is not None:
            where = f"; {self.store.rescued}" if self.store.rescued else ""
            raise StoreFailed(f"the store failed: {self._store_failure}{where}")

    def stop(self) -> None:
        self._stop.set()

    def _left_behind(self) -> GatewayInfo | None:
        """The connection file of the previous gateway of this folder, when it is still there: a clean stop
        removes it (_shutdown), so one found at start is that of a gateway that ended without its stop."""
        try:
            info = read_info(self.run_dir, trusted_only=False)  # (its own folder, checked at the start)
        except ConnectionFileError:  # none (a clean stop, a first start); an unreadable one tells nothing
            return None
        return info if info.session != self.headers.sid else None

    def _count_unclean_start(self) -> list[int]:
        """This folder's unclean starts in the last RESTART_LOOP_S, this one included, kept in the store."""
        now = time.time_ns()
        try:
            recent = msgspec.json.decode(self.store.get_meta(_STARTS) or "[]", type=list[int])
        except msgspec.MsgspecError:
            recent = []
        recent = [t for t in recent if now - t < RESTART_LOOP_S * 1e9][-9:] + [now]
        with self.store.transaction():
            self.store.set_meta(_STARTS, msgspec.json.encode(recent).decode())
        return recent

    def _tell_unclean_stop(self, previous: GatewayInfo, started: str, recent: list[int]) -> None:
        """A restart after a crash read like a routine start ("GATEWAY STARTED"): a person learns that the
        previous gateway died, must find out why from its log, and what this start found in flight; and when
        this folder's gateway started several times in RESTART_LOOP_S, that it is a restart loop."""
        orders = [o for o in self.book.orders.values() if o.state in OPEN]
        doubt = sum(1 for o in orders if o.state is OrderState.UNKNOWN or o.in_doubt)
        # (its market clock's time: the host's in KST against KIS, the twin's own on the twin; log lines are real KST)
        at = f"{kst_from_ns(previous.started_ns):%Y-%m-%d %H:%M:%S} KST" + (
            "" if isinstance(self.clock, WallClock) else " by the twin's clock"
        )
        state = self.risk.global_state
        said = trading_word(state, self.risk.paused())
        halted = "" if state is TradingState.ACTIVE else f"; trading stays {said}, as it was (resume to trade)"
        loop = (
            f" ({len(recent)} unclean starts in {RESTART_LOOP_S / 60:.0f} min: a restart loop? its log says why)"
            if len(recent) >= 3
            else ""
        )
        text = (
            f"{started}{loop}; the previous gateway of this folder (pid {previous.pid}, started {at}) ended without "
            "its clean stop (killed, crashed, out of memory or power lost: its log says which); this start found "
            f"{len(orders)} open orders, {doubt} of them in doubt (checked with the broker at the first "
            f"reconciliation, never sent again){halted}"
        )
        self.alerts(text, AlertKind.GATEWAY_RESTARTED, subject=self.headers.sid)  # on the screens too, kept

    def _raise_undelivered(self) -> None:
        """The alerts the previous gateway of this folder raised and never delivered (a channel down, then a kill -9
        or a stop with them queued): raised again, each saying when it was raised (at least once: one delivered just
        before a kill may come twice)."""
        raw = self.store.get_meta(_UNDELIVERED)
        self._undelivered_kept = raw.encode()  # (rewritten at the next change: these once delivered, "[]")
        if not raw:
            return
        try:
            kept = msgspec.json.decode(raw, type=list[Owed])
        except msgspec.MsgspecError as e:  # (never written so)
            log.error("the alerts left undelivered before this start are unreadable: %s", e)
            return
        if kept:
            n = self.operator.notifier.raise_again(kept)
            log.warning("%d alerts the previous gateway never delivered: %d queued again", len(kept), n)

    def _keep_undelivered(self) -> None:
        """The notifier's undelivered alerts into the store when they changed (the lease loop; the stop)."""
        raw = msgspec.json.encode(self.operator.notifier.undelivered())
        if raw != self._undelivered_kept:
            with self.store.write(atomic=False):
                self.store.set_meta(_UNDELIVERED, raw.decode())
            self._undelivered_kept = raw

    def _install_master(self, master: StockMaster) -> None:
        """The stock master the gateway judges codes by (at start, and each newer copy downloaded)."""
        self.master = master
        self.risk.known_codes, self.risk.master_source = master.entries, f"stock master: {master.source}"
        self.sessions.listed, self.sessions.listed_source = master.__contains__, master.source
        self.sessions.subscribe_newly_listed()  # (codes agents' cards named before this master listed them)
        self.portfolio.set_sectors(master.sectors())  # per-sector limits (unknown sectors count together)
        # each code's kind and market, as the backtester reads them: ETF grid and no sell tax, KOSDAQ/KONEX
        # rules (without them every code is a KOSPI stock: ETF prices off the stock grid denied, ETF prints
        # dropped as off-grid, ETF sells taxed)
        # (replaced, not merged: a code that moved from KOSDAQ to KOSPI takes its new board)
        self.portfolio.kinds.clear()
        self.portfolio.kinds.update(master.kinds())
        self.portfolio.boards.clear()
        self.portfolio.boards.update(master.boards())
        set_wire = getattr(self.broker, "set_wire_codes", None)  # KIS spells ETNs 'Q500061' on the wire
        if set_wire is not None:
            set_wire({c: e.wire_code for c, e in master.entries.items() if e.wire_code != c})

    async def _close_io(self) -> None:
        """The broker session, the recorder (it may hold decrypted notices) and the stores: the last
        of a shutdown, and all a start that stops after the session came up has to close."""
        try:
            await self.broker.close()
        finally:
            self._close_stores()

    def _close_stores(self) -> None:
        """The recorder (it may hold decrypted notices) and the stores."""
        if self.recorder is not None:
            self.recorder.close()
        self.store.close()
        self.md.store.close()

    async def _close_failed_start(self) -> None:
        try:
            await self._close_io()
        except Exception:  # the start's own error is the one to report
            log.exception("closing the broker session after the failed start")

    async def _master_at_start(self) -> None:
        """Paper/real on a first start: the stock master is downloaded before any agent is served."""
        if self.master_keeper is None:
            return
        try:
            await self.master_keeper.at_start(self.master)
        except MasterError as e:
            await self._close_failed_start()
            raise StartupError(
                "KIS stock master",
                f"cannot download it: {e}",
                f"the host of master_url ({self.cfg.master_url}) must be reachable once; or put kospi_code.mst and "
                "kosdaq_code.mst (unzipped from KIS) in a folder and set master_dir",
                StartExit.UNREACHABLE,
            ) from None

    def _watch_folder(self) -> None:
        """The run folder's files a cleanup removed under the running gateway (server/run_folder.py)."""
        try:
            folder = self._folder
            why = folder.replaced() if folder is not None else ""
            for text in folder.check() if folder is not None else []:
                self.alerts(text)
            why = why or self.store.displaced()
            size = self.store.wal_size()
            if size >= self._wal_alert_bytes:  # said again at each doubling
                self._wal_alert_bytes = size * 2
                self.alerts(
                    f"the store's WAL is {size >> 20} MB and growing: its checkpoints cannot complete while another "
                    f"program holds a read open on {self.store.path} (a sqlite3 shell, a script): close it"
                )
            elif size < WAL_ALERT_BYTES // 2:
                self._wal_alert_bytes = WAL_ALERT_BYTES  # (cut back: a later growth is told again)
        except Exception:
            self.counters["folder_check_errors"] += 1
            log.exception("run folder check failed")
            return
        if why and self._store_failure is None:
            # the books reach no file a restart would open (or a folder another gateway may use): stop now; the
            # store writes them back as it closes (its last words say where)
            self._store_lost(StoreFailed(f"{why} while the gateway ran; its books are written back as it stops"))

    def _store_lost(self, e: Exception) -> None:
        """A group commit failed: memory is ahead of the disk. Nothing of the lost batch left the
        process (events, replies and broker calls wait for the commit), so the store is the truth:
        stop, and let a restart (or the standby) load it."""
        self._store_failure = e
        # kinded: a person must know the gateway is down (the notifier drains its queue at the stop)
        self.alerts(
            f"the store failed ({e}): the gateway stops; a restart reloads the books from disk", AlertKind.GATEWAY_FAULT
        )
        self._stop.set()

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        log.info("gateway stopping")
        # told to a person before the tasks are cancelled: the notifier's stop sends what is queued
        me = asyncio.current_task()
        if self._store_failure is not None:
            why = f"the store failed ({self._store_failure}); a restart reloads the books from disk"
        elif me is not None and me.cancelling():
            why = "its task was cancelled (the process that runs it is ending)"
        else:
            why = "asked to stop (SIGTERM, SIGINT or SIGHUP: ktrader stop, Ctrl-C, the service manager, its terminal)"
        up = time.monotonic() - getattr(self, "_started_mono", time.monotonic())
        self.operator.notifier.alert(
            AlertKind.GATEWAY_STOPPING,
            f"gateway stopping on {os.uname().nodename} (pid {os.getpid()}, up {up:.0f} s): {why}",
            subject=self.headers.sid,
        )
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store_failure is None:
            try:  # what the notifier's stop could not deliver, for the next start
                with self.store.transaction():
                    self._keep_undelivered()
            except Exception:
                log.exception("the undelivered alerts not kept")
        await self.md.stop()  # (its retries of daily bars the broker did not give at the close)
        await self.core.stop()
        self.zap.stop()
        self.router.close(loop)
        if self._xpub is not None:
            loop.remove_reader(self._xpub.fileno())
            self._xpub.close(0)
        await self._close_io()
        # last: the file left behind is what tells the next start this one ended without its clean stop (removed
        # first, a gateway killed during its stop, a stop timeout's kill -9 on a hung stop, started again as a routine
        # start: no word of the orders it left in doubt, no count toward a restart loop: a hunt)
        remove_info(self.run_dir, self.headers.sid)

    def _count(self, name: str) -> Any:
        def bump() -> None:
            self.counters[name] += 1

        return bump

    # ---- background tasks ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = max(0.05, self.cfg.lease_s / 5)
        checked = time.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                # the dead-man's switch pings from here (a hung loop stops them); a channel failing for a
                # minute is told on the screen only (a kind would queue it on the failing channel)
                for text in self.operator.notifier.tick():
                    self.alerts(text)
                self._keep_undelivered()
            except Exception:
                self.counters["notifier_errors"] += 1
                log.exception("notifier tick failed")
            # from one expiry check to the next: wherever a stall of the gateway's own loop fell (a long commit, a
            # swapped-out process, SIGSTOP), the agents' heartbeats waited in its socket, unread. Their silence
            # meanwhile is the gateway's: not counted (every lease ran out after a 1.6 s stall, and a 12 s one
            # paged "crashed" for live agents)
            now = time.monotonic()
            late, checked = now - checked - period, now
            if late > max(self.cfg.lease_s / 2, 0.5):
                n = self.registry.forgive(late)
                log.warning("the gateway's loop was held for %.1f s: %d agents' silence meanwhile not counted", late, n)
            self.sessions.expire_leases()
            self.keyring.refresh()  # approvals and revocations take effect without a restart
            if now - self._folder_checked >= FOLDER_CHECK_S:
                self._folder_checked = now
                self._watch_folder()
            try:
                self.risk.sweep(self._cards())
            except Exception:
                self.counters["limit_check_errors"] += 1
                log.exception("limit check failed")
            try:
                self.protection.tick()  # exits that wait are tried again
                self._watch_protected()
            except Exception:
                self.counters["protection_errors"] += 1
                log.exception("protection tick failed")
            try:
                self.operator.tick()  # stale → offline, lasting conditions → alerts, equity snapshots
            except Exception:
                self.counters["operator_errors"] += 1
                log.exception("operator tick failed")

    async def _broker_events(self) -> None:
        async for ev in self.broker.events():
            try:
                if isinstance(ev, Trade):
                    if (bad := self.sanity.trade(ev)) is not None:
                        if bad is Bad.BAND:  # outside the band we hold: maybe the band is stale (the night's)
                            self.day.outside_band(ev.code)
                        continue  # dropped, counted and alerted: nobody trades, marks or builds bars on it
                    if self.sanity.beyond_rules(ev.code, ev.price):  # (published limits: stale after their day?)
                        self.day.outside_band(ev.code)
                    if self.sanity.confirmed(ev):  # one outlier never moves P&L (nor the daily-loss state)...
                        self.portfolio.set_mark(ev.code, ev.price)
                        self.protection.on_trade(ev.code, ev.price)  # ...nor fires a stop (agent alive or not)
                        self.shadow_venue.on_trade(  # ...nor fills a shadow order
                            ev.code, ev.price, ev.qty, bid1=ev.bid1, ask1=ev.ask1, change=ev.change, time=ev.time
                        )
                    self.md.on_trade(ev)  # publishes the TradeTick, builds and publishes bars
                elif isinstance(ev, Book):
                    if (bad := self.sanity.book(ev)) is None:
                        self.md.on_book(ev)
                    elif bad is Bad.BAND:
                        self.day.outside_band(ev.code)
                elif isinstance(ev, BrokerNotice):
                    self.notices.on_notice(ev)
                elif isinstance(ev, SessionChange):
                    self.publish(SystemEventKind.SESSION_STATE, "", ev.state.value)
                    if ev.state is SessionState.READY and not self._session_seen_ready:
                        # start did not wait for the stream: reconcile again now that notices flow
                        self._session_seen_ready = True
                        self.request_reconcile("session ready")
                elif isinstance(ev, ClockMark):
                    self.md.flush_at(ev.exchange)
                elif isinstance(ev, Gap):
                    # no registration was heard without a gap across it; buckets open across it are partial
                    self.md.feed_gap(since=ev.since, until=ev.until)
                    self.alerts(
                        f"real-time stream gap {ev.since:%H:%M:%S}-{ev.until:%H:%M:%S} ({ev.reason}): repairing"
                    )
                    self.request_reconcile("gap")
            except Exception:
                self.counters["broker_event_errors"] += 1
                log.exception("broker event %r failed", ev)

    async def _bar_clock(self) -> None:
        # bars close by time even when no later print arrives; only as far as the stream is known live (the
        # session's state and its websocket's last frame of any kind, keepalive pongs included: a bucket closed
        # while the websocket is down would go out without the outage's prints)
        frame_age = getattr(self.broker, "stream_frame_age_s", None)  # KIS; another broker does not tell
        while True:
            await asyncio.sleep(1.0)
            try:
                age = frame_age() if frame_age is not None else None
                self.md.flush(stream=self.broker.session_state, frame_age_s=age)
            except Exception:
                self.counters["bar_flush_errors"] += 1
                log.exception("bar flush failed")

    async def _reconcile_loop(self) -> None:
        """First pass at start (orders are denied until it succeeds), then periodically, after
        websocket gaps and on demand. Failures back off and retry; they never stop the gateway.
        The first pass reads only KIS's unfilled list (a takeover late in a busy day must not wait
        for the whole day's list: 15 rows a page at 2 requests/s on a paper account); a pass over
        the whole list follows at once. When the whole list is slow enough that its passes are
        spaced out, the unfilled list alone is read every reconcile_s between them (OPEN_CHECK):
        a fill whose notice was lost shows there, or brings the whole pass forward."""
        backoff = 0.2
        reason = START
        partial_alerted = False
        failing_since = 0  # elapsed_ns() of the first failed pass since one succeeded (0: none): steps are no time
        failing_alerted = False
        whole_due = 0.0  # monotonic time of the next whole pass while they are spaced out (0: none)
        period = self.cfg.reconcile_s
        while True:
            try:
                t0 = time.monotonic()
                open_only = not self.recon.synced or reason == OPEN_CHECK
                await self.recon.run(reason, open_only=open_only)
                took = time.monotonic() - t0
                self.counters["reconciles"] += 1
                backoff = 0.2
                if failing_alerted:
                    log.warning("reconciliation with KIS succeeds again")
                failing_since, failing_alerted = 0, False
                if reason == OPEN_CHECK:
                    self.counters["reconcile_open_checks"] += 1
                    timeout = max(0.0, min(period, whole_due - time.monotonic()))
                    if self.recon.vanished:  # an order left KIS's unfilled list unheard: the whole list now
                        self.counters["reconcile_brought_forward"] += 1
                        self._reconcile_reason = f"{len(self.recon.vanished)} orders left the open list unheard"
                        self._reconcile_wanted.set()
                elif open_only:  # the whole list next, at once (orders flow meanwhile)
                    timeout = period
                    self._reconcile_reason = START_WHOLE
                    self._reconcile_wanted.set()
                else:
                    timeout, whole_due = periodic_wait(period, took), 0.0
                    if timeout > period:  # a long list at a slow pace (a paper account's 2/s)
                        self.counters["reconcile_stretched"] += 1
                        log.info("reconciliation took %.1fs: the next whole pass in %.0fs", took, timeout)
                        whole_due, timeout = time.monotonic() + timeout, period
            except Exception as e:
                self.counters["reconcile_errors"] += 1
                timeout, backoff = retry_after(backoff, self.recon.synced, self.clock.now())  # a blip costs little
                log.warning("reconciliation (%s) failed: %s; retrying in %.1fs", reason, e, timeout)
                # passes that keep failing (KIS down, a row of the order list it cannot read) are told to a
                # person once per episode, after the same delay as the partial alert below: at the start every
                # new order is denied; later, UNKNOWN orders and fills whose notices were lost stay unresolved
                now_ns = elapsed_ns()
                failing_since = failing_since or now_ns
                if not failing_alerted and now_ns - failing_since > PARTIAL_ALERT_NS:
                    failing_alerted = True
                    what = (
                        "since the start: every new order is denied until it succeeds"
                        if not self.recon.synced
                        else "for minutes: orders in doubt (UNKNOWN) and fills whose notices were lost stay unresolved"
                    )
                    self.alerts(
                        f"reconciliation with KIS has failed {what} ({e}); it is retried; check KIS (ktrader status: "
                        "reconciliation)",
                        AlertKind.RECONCILE_DIFF,
                    )
                since = self.recon.partial_since_ns
                if since and not partial_alerted and self.recon.age(self.book.now_ns(), since) > PARTIAL_ALERT_NS:
                    partial_alerted = True  # trading goes on, on books that only know the open orders
                    self.alerts(
                        f"the day's whole order list could not be read since the start ({e}): orders that filled or "
                        "ended while no gateway ran are still counted as open and held orders are not released; "
                        "check KIS (ktrader status: reconciliation)",
                        AlertKind.RECONCILE_DIFF,
                    )
            if await wait_set(self._reconcile_wanted, timeout):
                reason = self._reconcile_reason
            else:
                # (a whole pass after the open-orders one that failed and is tried again is still the
                # start's recovery, not a periodic pass: the rehearsal audit tells the two apart)
                if whole_due and time.monotonic() < whole_due:
                    reason = OPEN_CHECK
                else:
                    reason = "periodic" if self.recon.complete else START_WHOLE if self.recon.synced else START
            self._reconcile_wanted.clear()

    def _watch_protected(self) -> None:
        """Hold the trade registrations of protected codes in the protections' name, of the codes shadow
        orders rest in in the shadow venue's, and of every held code in the marks' (a code no online agent
        watched kept its mark all session -- an offline agent's, 'external''s -- and the equity the account's
        limits read, the P&L shown, never saw the stock move: a hunt): each sees its prints whether or not an
        agent is online. Registrations an agent holds already cost no slot; the marks' and the shadow's yield."""
        self._watch(protection_room.HOLDER, self.protection.codes(), self._protected)
        # a shadow agent's protections are virtual shares': watched as its orders are, yielding, within the reserve
        shadowed = self.shadow_venue.codes() | self.protection.codes(virtual=True)
        self._watch(SHADOW_HOLDER, shadowed, self._shadowed, SHADOW_RESERVE_SLOTS)
        self._watch(MARKS_HOLDER, set(self.portfolio.held_codes()), self._marked, MARKS_RESERVE_SLOTS)

    def _yielded(self, holder: str, key: tuple[MarketKind, str]) -> None:
        """One of the gateway's yielding watches gave a registration up to an agent or the protections: asked
        again at a later look (if a slot is free by then, within its reserve)."""
        {SHADOW_HOLDER: self._shadowed, MARKS_HOLDER: self._marked}.get(holder, set()).discard(key[1])

    def _watch(self, holder: str, want: set[str], held: set[str], reserve: int = 0) -> None:
        now = time.monotonic()
        for code in sorted(want - held):
            if self._protected_retry.get((holder, code), (0.0, 0))[0] > now:
                continue  # the broker refused it lately: asked again after the back-off
            # (real shares before virtual orders and marks: at full slots the protections take a yielding watch's)
            err, text = self.subs.want(holder, MarketKind.TRADES, code, reserve=reserve)
            if err is None:
                held.add(code)
            elif holder == protection_room.HOLDER:
                self._protected_refused(code, text)
        for code in sorted(held - want):
            self.subs.release(holder, MarketKind.TRADES, code)
            held.discard(code)

    def _subscription_refused(self, agent: str, notice: Notice) -> None:
        """The broker refused a registration want() had granted: an agent is told (its runtime polls
        quotes and asks again); the gateway's own watches ask again at their next look after a back-off, the
        protections' alerted once (a shadow order's virtual fill waits: nothing real is at stake)."""
        if agent not in (protection_room.HOLDER, SHADOW_HOLDER, MARKS_HOLDER):
            self.book.notify(agent, notice)
            return
        {protection_room.HOLDER: self._protected, SHADOW_HOLDER: self._shadowed, MARKS_HOLDER: self._marked}[
            agent
        ].discard(notice.code)
        key = (agent, notice.code)
        n = self._protected_retry.get(key, (0.0, 0))[1] + 1
        self._protected_retry[key] = (time.monotonic() + min(30.0 * 2 ** (n - 1), 600.0), n)
        if agent == protection_room.HOLDER:
            self._protected_refused(notice.code, notice.text)

    def _cash_refused(self, o: Order, why: str) -> bool:
        """KIS refused a buy for want of cash: the account holds less than the gateway's last read said (money
        withdrawn since, a settlement the read did not show). Read again now: every buy until then is judged on
        cash that is gone (a hunt: 15 M withdrawn at 10:20, the next buys refused for up to a read's period, each
        counted toward the agent's kill switch). A person is told: it may be the owner's withdrawal. Excused from the
        agent's kill switch once a read period: refusals the read does not explain (KIS's orderable cash below the
        settlement cash the gate weighs, a strategy retrying) count as any refusal, and ask no further read."""
        now = time.monotonic()
        if now - self._cash_excused_at.get(o.agent, -math.inf) < self.account.every_s:
            return False
        self._cash_excused_at[o.agent] = now
        believed = self.portfolio.cash()
        self.account.read_soon()
        self.alerts(
            f"{o.agent}: its buy {o.client_order_id} ({o.qty} {o.code}) was refused by KIS for want of cash ({why}): "
            f"the account holds less than the {believed:,} KRW the gateway's last read left it (money withdrawn "
            "since?): reading the account now; buys are judged on that read"
            if believed is not None
            else f"{o.agent}: its buy {o.client_order_id} ({o.qty} {o.code}) was refused by KIS for want of cash "
            f"({why}): reading the account now",
            AlertKind.RECONCILE_DIFF,
            o.agent,
            subject=f"buy refused for cash {o.agent}",
        )
        return True

    def _bars_lost(self, lost: list[tuple[str, str]]) -> None:
        """Intraday bars of (code, interval) were not published (prints of their buckets not heard: a restart, a
        websocket outage): the agents on that interval are told, as for a history that changed, so that windows
        built bar by bar are built again from history, where the broker's minute chart fills the stretch
        (MarketData.history). Without it a strategy's 5-minute window silently spanned the outage and a copy
        started later decided otherwise."""
        for code, interval in lost:
            # "<code> intraday <interval>": only agents on that interval's bars of it rebuild (a daily or
            # quote-driven strategy's warm-up, or a 1m strategy's on the 60m bucket's news an hour later, cost REST
            # quota for nothing); an agent of an older version takes it for no code of its
            self.publish(SystemEventKind.HISTORY_CHANGED, "", f"{code} {INTRADAY_SCOPE} {interval}")

    def _history_changed(self, code: str, why: str) -> None:
        """`code`'s stored daily history is on another price scale than today's prints (a split suspected from the
        balance, a base price unlike the last close): dropped (back-filled adjusted from the broker, as a backtest's
        data is) and the agents told, so that they rebuild their windows from it (Strategy.on_history_changed):
        windows of the old prices read a 1:5 split as an 80 % crash and sold."""
        self.md.forget_history(code, why)
        self.publish(SystemEventKind.HISTORY_CHANGED, "", code)

    def _base_vs_close(self, code: str, base: int) -> None:
        """Today's base price, confirmed, against the code's last stored close: KRX sets the base at the last
        close, adjusted for a split, a rights or a bonus issue on its first session; one unlike it means the
        history before today is on another scale (codes nobody holds too: the reconciler sees splits only in the
        balance)."""
        if not self.md.hold_daily:  # (the twin's all-day sessions: bars take every print, no official close)
            return
        today = self.clock.now().date()
        last = self.md.store.last(code, BarInterval.D1.value, 1, today.isoformat())
        if not last:
            return
        bar = last[0]
        if bar.start == previous_trading_day(today).isoformat():
            if bar.close != base:
                self._rescaled(code, bar.close, base)
                self._history_changed(
                    code,
                    f"today's base price {base:,} is not the last close {bar.close:,} ({bar.start}): {_RESCALED}",
                )
            else:
                self._scale_checked(code)
            return
        # an older stored close (the stock halted for its split, a code back in the universe after weeks, a close
        # the gateway missed) differs from today's base by the market's own moves too: the broker's adjusted close
        # of that same day says whether the history changed scale since
        if Capability.CHARTS in self.broker.capabilities:
            self._spawn(self._stored_close_checked(code, bar))

    def _scale_checked(self, code: str) -> None:
        """Today's base of `code` is on the scale of its last close: stored (a later check that finds the scale
        changed since an older close knows the change came after today)."""
        today = self.book.day()
        if self.store.get_meta(_SCALE_CHECKED + code) != today:
            with self.store.transaction():
                self.store.set_meta(_SCALE_CHECKED + code, today)

    def _rescaled(self, code: str, close: int, base: int, set_before: str = "", split_possible: bool = False) -> None:
        """A corporate action priced into today's base (close → base): the protective orders set before move to
        today's prices (ProtectionDesk.rebase) and the holders' equity peaks move by what it took off their shares'
        value at the new prices (RiskGate.corporate_action), unless a split is pending in the books (its valuation
        keeps the value; `split_possible`: the code did not trade the session before, a split's halt may be why)."""
        self.protection.rebase(code, close, base, set_before=set_before.replace("-", ""))
        self.risk.corporate_action(code, close, base, split_possible=split_possible)

    def _closes_before(self, day: str) -> dict[str, int]:
        """The stored daily close of the trading day before `day` (YYYYMMDD) of each code the books hold: a few reads
        a day. Only that day's: an older close (the gateway down over yesterday's, off for days) differs from today's
        prices by more than a day's limit with no split at all, and would hold a stop through a real fall (a review)."""
        today = dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))
        previous = previous_trading_day(today).isoformat()
        out = {}
        for code in self.portfolio.held_codes():
            last = self.md.store.last(code, BarInterval.D1.value, 1, today.isoformat())
            if last and last[0].start == previous:
                out[code] = last[0].close
        return out

    async def _stored_close_checked(self, code: str, bar: Bar) -> None:
        try:
            got = await self.broker.daily_bars(code, 1, dt.date.fromisoformat(bar.start) + dt.timedelta(days=1))
        except Exception as e:  # (checked again at the next morning's confirmation)
            log.info("stored close of %s %s not checked against the broker: %s", code, bar.start, e)
            return
        if got and got[-1].start == bar.start and got[-1].close != bar.close:
            # the stops set by that day are in its prices: to the adjusted ones; those set since too up to the last day
            # this code's base was checked and found on the scale of its close (the change came after: a close missed,
            # its bar stored late and adjusted already; stops set on that day stayed at 65,000 and fired at the
            # ex-rights open, a hunt); those set after it may be in either
            checked = self.store.get_meta(_SCALE_CHECKED + code) or ""
            before = max(_day_after(bar.start), _day_after(checked) if checked else "")
            day = self.book.day()
            self._rescaled(
                code, bar.close, got[-1].close, set_before=before if before < day else "", split_possible=True
            )
            self._history_changed(
                code,
                f"the broker's adjusted close of {bar.start} is {got[-1].close:,}, {bar.close:,} stored: {_RESCALED} "
                "since",
            )
        elif got and got[-1].start == bar.start:
            self._scale_checked(code)

    def _protected_refused(self, code: str, why: str) -> None:
        """A protected code's trade registration refused: its protections see no prints and cannot fire
        (nothing else feeds them: the quotes an agent polls reach only its strategy), so a person is
        told, once a day per code (_new_day clears the set)."""
        if code in self._refused_protected:
            return
        self._refused_protected.add(code)
        blind = [p for p in self.protection.of() if p.is_active and p.code == code]
        agents = sorted({p.agent for p in blind})
        self.alerts(
            blind_text(code, blind, why),
            AlertKind.PROTECTION,
            agents[0] if len(agents) == 1 else "",
            subject=f"{code} trades refused",
        )

    def _new_day(self, day: str) -> None:
        self._refused_protected.clear()  # a refusal that lasts into a new day is alerted again
        self._protected_retry.clear()
        self._check_calendar(day)
        self._forget_unlimited(day)

    def _keep_unlimited(self, code: str, liquidating: bool) -> None:
        """A code's liquidation days (Portfolio.unlimited) outlive the day and a restart, kept with the day of its last
        liquidation print: the next session's orders are released before any print could say so again. A code
        without one for UNLIMITED_FORGET_SESSIONS sessions is let go (delisted: a reused code is an ordinary one)."""
        if liquidating:
            self._unlimited_seen[code] = market_day(self.clock)
        else:
            self._unlimited_seen.pop(code, None)
        self._store_unlimited()

    def _store_unlimited(self) -> None:
        try:
            self._set_meta(UNLIMITED_KEY, msgspec.json.encode(dict(sorted(self._unlimited_seen.items()))).decode())
        except Exception:  # (the store's own failure path stops the gateway; the set stands in memory meanwhile)
            log.exception("the codes in liquidation not kept")

    def _load_unlimited(self) -> None:
        raw = self.store.get_meta(UNLIMITED_KEY)
        if raw:
            try:
                self._unlimited_seen.update(msgspec.json.decode(raw, type=dict[str, str]))
            except msgspec.DecodeError:
                log.warning("the stored codes in liquidation are unreadable: their prints say so again")
        self._forget_unlimited(market_day(self.clock))

    def _forget_unlimited(self, day: str) -> None:
        """The codes whose last liquidation print is more than UNLIMITED_FORGET_SESSIONS sessions before `day` leave
        Portfolio.unlimited (their liquidation ended: seven sessions); the rest are in it."""
        cutoff = date_of(day)
        for _ in range(UNLIMITED_FORGET_SESSIONS):
            cutoff = previous_trading_day(cutoff)
        old = [c for c, seen in self._unlimited_seen.items() if seen < f"{cutoff:%Y%m%d}"]
        for code in old:
            del self._unlimited_seen[code]
            self.portfolio.unlimited.discard(code)
            log.info(
                "%s: no liquidation print for %d sessions: its daily band applies again",
                code,
                UNLIMITED_FORGET_SESSIONS,
            )
        self.portfolio.unlimited.update(self._unlimited_seen)
        if old:
            self._store_unlimited()

    def _set_meta(self, key: str, value: str) -> None:
        with self.store.transaction():
            self.store.set_meta(key, value)

    def _check_calendar(self, day: str) -> None:
        """At start and each new day: what the KRX calendar lacks reaches a person (it would otherwise
        treat a holiday as a session, or an exam day's late session as a normal one, silently), and the
        broker's own holiday calendar is compared with it (server/session_days.py)."""
        date = date_of(day)
        gaps = calendar_gaps(date)
        to_person = new_gaps(date, gaps, (self.store.get_meta, self._set_meta))  # once a day, restarts or not
        for text in gaps:
            self.alerts(text, AlertKind.CALENDAR if to_person else None)
        self.session_days.begin(date)  # (before the task runs: the day tick's watch must see it on its way)
        self._spawn(self.session_days.check(date))  # asked again with back-off until it answers

    def _drain_xpub(self) -> None:
        # Subscription messages from SUB sockets; we only need to consume them (counted for status).
        xpub = self._xpub
        if xpub is None:
            return
        while cast(int, xpub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                frame = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.counters["subscriptions" if frame[:1] == b"\x01" else "unsubscriptions"] += 1
            topic = frame[1:].decode(errors="replace")
            if frame[:1] == b"\x01":
                self.pub_topics.add(topic)
            else:
                self.pub_topics.discard(topic)
