"""The gateway process: one ROUTER (commands, replies, per-agent events), one XPUB (market data and
system events), the registry, the OMS and the broker, on one asyncio loop.

The ROUTER is read by draining the ZMQ socket whenever its file descriptor signals (no polling
loop); handlers are synchronous and fast; broker calls run as tasks. Nothing an agent sends can
crash the loop: every frame either decodes or gets a typed Error reply (or is dropped and counted
when there is no one to answer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections import Counter
from pathlib import Path

import msgspec
import zmq

from common.clock import now_ns, yyyymmdd
from common.config import AgentCard, EndOfDay, GatewayConfig
from common.costs import CostModel
from common.connection import GatewayInfo, remove_info, write_info
from common.enums import AgentMode, AgentState, SessionState, TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.framing import Codec, FrameError
from common.schema import (
    Ack, AgentEvent, AgentStatus, CancelAll, CancelOrder, Control, Error, EventBatch, GetEvents,
    FeedHealth, GetBars, GetMarket, GetOrders, GetSnapshot, HeaderFactory, Heartbeat, Message, ModifyOrder, OrdersList, OrdersReply, Ping, Pong, Register,
    Notice, Registered, SnapshotReply, StatusQuery, StatusReply, SubmitOrders, Subscribe, SystemEvent, SYSTEM_TOPIC,
    Unregister,
)
from kis.port import Book, BrokerNotice, BrokerPort, Gap, MarketClock, MarketKind, SessionChange, Trade
from kis.health import broker_health
from server import console_views
from server.agent_services import AgentServices, GetSummary
from server import daily_report
from server.daycycle import DayCycle
from server.market_clock import market_clock_for
from server.oms import OrderManager
from server.publisher import Publisher
from server.registry import AgentRecord, RegisterOutcome, Registry
from server.risk import RiskGate
from server.store import Store
from server.subscriptions import SubscriptionManager, refusal_notice
from server.zap import ZapGuard
from server.recorder import Recorder, attach_recorder
from server.stockmaster import gateway_master
from server.universe import Universe, UniverseBinder
from server.barstore import BarStore
from server.marketdata import MarketData, session_rule
from server.marketdata_requests import serve_bars, serve_market

log = logging.getLogger("ktrader.gateway")

MAX_REPLAY = 500  # events sent back with a registration (well under a frame); more via GetEvents


def default_endpoints(run_dir: Path) -> tuple[str, str]:
    ipc = run_dir / "ipc"
    ipc.mkdir(parents=True, exist_ok=True)
    return f"ipc://{(ipc / 'router').resolve()}", f"ipc://{(ipc / 'pub').resolve()}"


class Gateway:
    def __init__(self, cfg: GatewayConfig, broker: BrokerPort, broker_name: str = "") -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.broker = broker
        self.broker_name = broker_name or type(broker).__name__
        self.headers = HeaderFactory("gateway")
        self.counters: Counter[str] = Counter()
        self.zap = ZapGuard(self.run_dir, self.counters)  # issue 18b: CURVE on network endpoints (server/zap.py)
        self.key = self.zap.signing_key(cfg.router_endpoint, cfg.pub_endpoint) or secrets.token_bytes(32)
        self.codec = Codec(self.key, cfg.max_frame_bytes)
        self.registry = Registry(cfg.lease_s)
        self.started_ns = now_ns()
        self.store = Store(self.run_dir / "db" / "gateway.sqlite")
        self.risk = RiskGate(cfg.risk)
        self.clock = market_clock_for(broker)
        self.oms = OrderManager(self.store, broker, self.risk, self.headers, self._send_event,
                                today=lambda: self.clock.now().date(),
                                costs=CostModel(cfg.costs.commission_ppm, cfg.costs.sell_tax_ppm))
        self.oms.unknown_grace_ns = int(cfg.unknown_grace_s * 1e9)
        self.oms.max_send_wait_ns = int(cfg.max_send_wait_s * 1e9)
        self.daycycle = DayCycle(self.store)
        self._session_seen_ready = False
        self._closing_day = False
        self.subs = SubscriptionManager(broker)
        self.master = gateway_master(cfg)  # unknown codes are denied by the risk gate
        if self.master is not None:
            self.risk.known_codes, self.risk.master_source = self.master.entries, f"stock master: {self.master.source}"
        self.universe = Universe(broker, refresh_s=cfg.universe_refresh_s, fallback=list(cfg.universe_fallback))
        self.universe_binder = UniverseBinder(self.universe, self.registry, self.subs, self.risk, self.oms.notify,
                                              lambda codes: self._spawn(self.oms.ensure_base_prices(codes)))
        self.recorder: Recorder | None = None
        self.pub_topics: set[str] = set()  # topics with a subscriber (XPUB passes first sub / last unsub)
        # kv state, market queries on per-agent quotas, order-book summaries (server/agent_services.py)
        self.services = AgentServices(self.store, self.oms, broker, self.headers, self._reply, self._spawn)
        self.md = MarketData(BarStore(self.run_dir / "data" / "bars.sqlite"), session_rule(cfg))
        self.oms.on_alert = lambda text: self._system("alert", "", text)
        self._reconcile_wanted = asyncio.Event()
        self._reconcile_reason = "start"
        self.ctx = zmq.Context.instance()
        self.router: zmq.Socket | None = None
        self.pub: Publisher | None = None
        self._stop = asyncio.Event()
        self._recheck_scheduled = False
        self.router_endpoint = ""
        self.pub_endpoint = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[None]] = set()

    # ---- life cycle ---------------------------------------------------------------------------

    def _bind(self) -> None:
        r_ep, p_ep = self.cfg.router_endpoint, self.cfg.pub_endpoint
        if not r_ep or not p_ep:
            d_r, d_p = default_endpoints(self.run_dir)
            r_ep, p_ep = r_ep or d_r, p_ep or d_p
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_frame_bytes * 4)  # hard cap; app cap below it
        router.setsockopt(zmq.SNDHWM, 10_000)
        router.setsockopt(zmq.RCVHWM, 10_000)
        self.zap.secure(router, r_ep)  # issue 18b
        router.bind(r_ep)
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.XPUB_NODROP, 1)  # HWM reached -> EAGAIN, so drops are counted, not silent
        xpub.setsockopt(zmq.SNDHWM, 100_000)
        self.zap.secure(xpub, p_ep)  # issue 18b
        xpub.bind(p_ep)
        self.router = router
        self.router_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = Publisher(xpub, self.codec)
        self.md.publisher = self.pub
        self._xpub = xpub

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.oms.load()
        saved = self.store.get_meta("trading_state:*")
        if saved:
            self.risk.global_state = TradingState(saved)
        self.recorder = attach_recorder(self.run_dir, self.cfg.record_market_data, self.cfg.data_retention_days, self.broker)
        clock_driven = getattr(self.broker, "drives_market_clock", False)
        if clock_driven:
            self.md.wall = self.broker.wall  # type: ignore[attr-defined]  # prints dated by the recording's clock
        elif self.recorder is not None:
            self.md.on_clock = self.recorder.record_clock  # where bars closed by time, for replay
        await self.broker.start()
        self._bind()
        assert self.router is not None
        loop.add_reader(self.router.getsockopt(zmq.FD), self._drain)
        loop.add_reader(self._xpub.getsockopt(zmq.FD), self._drain_xpub)
        self.oms.start()
        self._tasks = [
            loop.create_task(self._lease_loop(), name="leases"),
            loop.create_task(self._broker_events(), name="broker-events"),
            loop.create_task(self._reconcile_loop(), name="reconcile"),
            loop.create_task(self._day_loop(), name="day-cycle"),
            *([] if clock_driven else [loop.create_task(self._bar_clock(), name="bar-clock")]),  # a replay brings its marks
            loop.create_task(self.universe.run(), name="universe"),
        ]
        if self.recorder is not None:
            self._tasks.append(loop.create_task(self.recorder.run(), name="recorder"))
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        info = GatewayInfo(router=self.router_endpoint, pub=self.pub_endpoint, key=self.key.hex(), pid=os.getpid(),
                           session=self.headers.sid, started_ns=self.started_ns, curve_key=self.zap.public_key)
        write_info(self.run_dir, info)
        log.info("gateway ready: router %s pub %s broker %s", self.router_endpoint, self.pub_endpoint, self.broker_name)
        self._drain()  # anything that arrived before the reader was armed
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        log.info("gateway stopping")
        remove_info(self.run_dir, self.headers.sid)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.oms.stop()
        self.zap.stop()  # issue 18b
        if self.router is not None:
            loop.remove_reader(self.router.getsockopt(zmq.FD))
            loop.remove_reader(self._xpub.getsockopt(zmq.FD))
            self.router.close(0)
            self._xpub.close(0)
        try:
            await self.broker.close()
        finally:
            if self.recorder is not None:
                self.recorder.close()
            self.store.close()
            self.md.store.close()

    # ---- ROUTER: receive ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Read every message the ROUTER holds. ZMQ's FD is edge-triggered, so we loop until
        EVENTS says there is nothing left (sends can consume the edge, see _schedule_recheck)."""
        self._recheck_scheduled = False
        sock = self.router
        if sock is None:
            return
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as e:  # e.g. a frame above MAXMSGSIZE: the peer is dropped by ZMQ
                self.counters["recv_errors"] += 1
                log.warning("router receive error: %s", e)
                continue
            try:
                self._handle(frames)
            except Exception:  # a bug in a handler must not take the gateway down
                self.counters["handler_errors"] += 1
                log.exception("handler failed")

    def _schedule_recheck(self) -> None:
        if not self._recheck_scheduled:
            self._recheck_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.counters["dropped_frames"] += 1
            return
        route, rest = frames[0], frames[1:]
        try:
            msg = self.codec.decode(rest)
        except FrameError as e:
            self.counters[f"bad_{e.code.value.lower()}"] += 1
            if e.code is ErrorCode.BAD_SIGNATURE:
                # Unsigned garbage gets no reply: we do not answer what we cannot authenticate,
                # but we count it.
                return
            self._reply(route, Error(h=self.headers(e.header.mid if e.header else 0), code=e.code, message=e.message))
            return
        self.counters["messages"] += 1
        self._dispatch(route, msg)

    # ---- ROUTER: send ---------------------------------------------------------------------------

    def _reply(self, route: bytes, msg: Message) -> bool:
        assert self.router is not None
        try:
            self.router.send_multipart([route, *self.codec.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters["reply_drops"] += 1  # peer's queue full; per-agent events are replayable
            return False
        except zmq.ZMQError as e:
            self.counters["send_errors"] += 1
            log.warning("send failed: %s", e)
            return False
        finally:
            self._schedule_recheck()

    def _send_event(self, agent: str, ev: AgentEvent) -> None:
        # A STALE agent may just be slow: its connection is still the one we know, so it gets its
        # events (a dead one's are dropped by ZMQ; everything stays replayable from the store).
        rec = self.registry.agents.get(agent)
        if rec is not None and rec.state is not AgentState.OFFLINE:
            self._reply(rec.routing_id, ev)

    # ---- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self, route: bytes, msg: Message) -> None:
        h = msg.h
        if isinstance(msg, Ping):
            self._reply(route, Pong(h=self.headers(h.mid), payload=msg.payload))
            return
        if isinstance(msg, StatusQuery):
            self._reply(route, self.status(h.mid))
            return
        if isinstance(msg, Register):
            self._on_register(route, msg)
            return
        if isinstance(msg, Control):
            self._reply(route, self.control(msg))
            return
        if isinstance(msg, GetOrders):
            orders, fills = console_views.blotter(self.oms, self.store, msg.agent, msg.since_ns, msg.limit)
            self._reply(route, OrdersList(h=self.headers(h.mid), orders=orders, fills=fills))
            return
        if isinstance(msg, GetSummary) and self.registry.by_route(route) is None:  # tools: any agent's book
            self._reply(route, self.services.summary_reply(msg))
            return
        rec = self.registry.by_route(route)
        if rec is None or rec.session != h.sid:
            self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.NOT_REGISTERED,
                                     message="register first (or your lease was taken over by a newer session)"))
            return
        if rec.id != h.sender:
            self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.WRONG_AGENT,
                                     message=f"this connection is registered as {rec.id!r}"))
            return
        self.registry.touch(rec)
        if isinstance(msg, Heartbeat):
            rec.max_ack_gap_ms = max(rec.max_ack_gap_ms, msg.max_ack_gap_ms)
            rec.errors = msg.errors
            self.md.feed_health[rec.id] = msg.feed
            self._reply(route, Ack(h=self.headers(h.mid)))
        elif isinstance(msg, SubmitOrders):
            state = self.effective_state(rec)
            results = [self.oms.submit(rec.card, state, o) for o in msg.orders]
            self._reply(route, OrdersReply(h=self.headers(h.mid), results=results))
        elif isinstance(msg, CancelOrder):
            code, text = self.oms.cancel(rec.id, msg.client_order_id)
            self._reply(route, Error(h=self.headers(h.mid), code=code, message=text) if code else Ack(h=self.headers(h.mid), message=text))
        elif isinstance(msg, ModifyOrder):
            code, text = self.oms.modify(rec.card, self.effective_state(rec), msg.client_order_id, msg.price, msg.qty)
            self._reply(route, Error(h=self.headers(h.mid), code=code, message=text) if code else Ack(h=self.headers(h.mid), message=text))
        elif isinstance(msg, CancelAll):
            n = self.oms.cancel_all(rec.id, msg.code)
            self._reply(route, Ack(h=self.headers(h.mid), message=f"{n} cancels sent"))
        elif isinstance(msg, GetSnapshot):
            self._reply(route, SnapshotReply(h=self.headers(h.mid), snapshot=self.oms.snapshot(rec.card, rec.trading_state)))
        elif isinstance(msg, GetMarket):
            self._reply(route, serve_market(self, msg))
        elif isinstance(msg, GetBars):
            self._spawn(serve_bars(self, route, rec.id, msg))
        elif isinstance(msg, GetEvents):
            events = self.store.agent_events(rec.id, msg.after_seq, msg.limit)
            self._reply(route, EventBatch(h=self.headers(h.mid), events=events, last_seq=self.oms.seq.get(rec.id, 0)))
        elif isinstance(msg, Subscribe):
            self._reply(route, self._resubscribe(rec, msg))
        elif isinstance(msg, Unregister):
            self.registry.unregister(rec)
            self._reply(route, Ack(h=self.headers(h.mid), message="bye"))
            self._agent_offline(rec.id, msg.reason or "unregistered")
            log.info("agent %s unregistered (%s)", rec.id, msg.reason)
        elif self.services.handle(rec, route, msg):
            pass
        else:
            self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.UNSUPPORTED,
                                     message=f"{type(msg).__name__} is not a request the gateway serves"))

    def _on_register(self, route: bytes, msg: Register) -> None:
        h = msg.h
        if msg.card.id == EXTERNAL_AGENT:
            self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.BAD_CARD,
                                     message=f"{EXTERNAL_AGENT!r} is reserved for orders placed outside ktrader"))
            return
        if msg.card.id != h.sender:
            self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.BAD_CARD,
                                     message=f"card id {msg.card.id!r} differs from sender {h.sender!r}"))
            return
        live = self.registry.agents.get(msg.card.id)
        duplicate = (live is not None and live.session != h.sid and live.state is AgentState.ONLINE
                     and self.registry.age(live) <= self.cfg.lease_s)
        if not duplicate:
            try:  # (a duplicate's card must not switch a live agent's mode; it is refused below)
                self.oms.set_mode(msg.card.id, msg.card.mode is AgentMode.SHADOW)
            except ValueError as e:
                self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.BAD_CARD, message=str(e)))
                return
        outcome, rec = self.registry.register(msg.card, route, h.sid, msg.pid, msg.host)
        if outcome != RegisterOutcome.DUPLICATE:
            self.md.feed_health.pop(rec.id, None)  # a new session reports its own in its heartbeats
        if outcome == RegisterOutcome.NEW:
            saved = self.store.get_meta(f"trading_state:{rec.id}")
            if saved:
                rec.trading_state = TradingState(saved)
        if outcome == RegisterOutcome.DUPLICATE:
            self.counters["duplicate_agents"] += 1
            self._reply(route, Error(h=self.headers(h.mid), code=ErrorCode.DUPLICATE_AGENT, message=(
                f"agent {rec.id!r} is already live: pid {rec.pid} on {rec.host}, "
                f"last heartbeat {self.registry.age(rec):.1f}s ago")))
            return
        snap = self.oms.snapshot(rec.card, rec.trading_state)
        # A fresh process (last_seq 0) rebuilds from the snapshot; a running one that re-registers
        # gets what it missed, capped (it fetches the rest with GetEvents).
        events = self.store.agent_events(rec.id, msg.last_seq, MAX_REPLAY) if 0 < msg.last_seq < snap.last_seq else []
        self._reply(route, Registered(h=self.headers(h.mid), snapshot=snap, events=events, heartbeat_s=self.cfg.heartbeat_s,
                                      lease_s=self.cfg.lease_s, pub_endpoint=self.pub_endpoint))
        log.info("agent %s registered (%s, pid %d, session %s)", rec.id, outcome, msg.pid, h.sid[:8])
        self._system("agent_online", rec.id, outcome)
        self._subscribe_card(rec)
        self.services.on_register(rec)
        self._spawn(self.oms.ensure_base_prices(list(rec.card.codes)))
        self.universe_binder.on_register(rec)

    def _subscribe_card(self, rec: AgentRecord) -> None:
        subs = rec.card.subscriptions
        kinds = ([MarketKind.TRADES] if subs.trades or subs.bars else []) + ([MarketKind.BOOK] if subs.book else [])
        for code in rec.card.codes:
            if self.master is not None and code not in self.master:  # no registration slot for a typo
                self.oms.notify(rec.id, Notice(level="error", text=f"{ErrorCode.DENIED_UNKNOWN_CODE.value}: {code} is not "
                                                                   f"a listed code ({self.master.source}): not subscribed"))
                continue
            for kind in kinds:
                code_err, text = self.subs.want(rec.id, kind, code)
                if code_err is not None:  # the agent may poll quotes and ask again (Subscribe)
                    self.oms.notify(rec.id, refusal_notice(code_err, text, kind, code))

    def _resubscribe(self, rec: AgentRecord, msg: Subscribe) -> Message:
        """An agent asks again for a registration it was refused (agent/quotepoll.py)."""
        h = msg.h
        subs = rec.card.subscriptions
        kind = MarketKind(msg.kind)
        wanted = subs.book if kind is MarketKind.BOOK else (subs.trades or bool(subs.bars))
        if msg.code not in rec.codes or not wanted:
            return Error(h=self.headers(h.mid), code=ErrorCode.BAD_MESSAGE,
                         message=f"{msg.kind} {msg.code} is not among this agent's subscriptions")
        if self.master is not None and msg.code not in self.master:
            return Error(h=self.headers(h.mid), code=ErrorCode.DENIED_UNKNOWN_CODE,
                         message=f"{msg.code} is not a listed code ({self.master.source})")
        err, text = self.subs.want(rec.id, kind, msg.code)
        self.counters["resubscribe_refused" if err is not None else "resubscribe_granted"] += 1
        if err is not None:
            return Error(h=self.headers(h.mid), code=err, message=text)
        log.info("agent %s asked again for %s %s: %s", rec.id, msg.kind, msg.code, text)
        return Ack(h=self.headers(h.mid), message=text)

    # ---- operations (the facade the console and CLI use) -----------------------------------------

    def status(self, re: int = 0) -> StatusReply:
        agents = []
        for rec in self.registry.agents.values():
            open_n, today_n = self.oms.agent_counts(rec.id)
            held = [p for p in self.oms.positions.get(rec.id, {}).values()]
            agents.append(AgentStatus(
                id=rec.id, name=rec.card.name, strategy=rec.card.strategy, state=rec.state, mode=rec.card.mode,
                trading_state=rec.trading_state, pid=rec.pid, host=rec.host, session=rec.session,
                heartbeat_age_s=round(self.registry.age(rec), 3), max_ack_gap_ms=rec.max_ack_gap_ms,
                registrations=rec.registrations, codes=rec.codes, open_orders=open_n, orders_today=today_n,
                errors=rec.errors, fills=self.oms.fills_by_agent.get(rec.id, 0),
                position_codes=sum(1 for p in held if p.qty), position_cost=sum(p.cost for p in held),
                realized_pnl=sum(p.realized_pnl for p in held), fees=sum(p.fees for p in held),
                positions=(marked := console_views.agent_positions(self.oms, rec.id)),
                unrealized_pnl=sum(p.unrealized_pnl for p in marked), rate_quota_per_s=rec.card.rate_quota_per_s,
                last_error=console_views.last_error(self.oms, rec.id),
                feed=self.md.feed_health.get(rec.id) or FeedHealth(),
            ))
        total, open_n, fills = self.oms.counts()
        counters = dict(self.counters)
        if self.pub is not None:
            counters["pub_sent"] = self.pub.sent
            counters["pub_dropped"] = self.pub.dropped
            counters.update(self.md.counters())
        return StatusReply(
            h=self.headers(re), gateway_pid=os.getpid(), gateway_session=self.headers.sid, started_ns=self.started_ns,
            session_state=self.broker.session_state, broker=self.broker_name, trading_state=self.risk.global_state,
            agents=agents, orders_today=total, open_orders=open_n, fills_today=fills, counters=counters,
            subscriptions=self.subs.table(), synced=self.oms.synced,
            last_reconcile_age_s=round((now_ns() - self.oms.last_reconcile[0]) / 1e9, 1) if self.oms.last_reconcile else -1.0,
            alerts=[text for _, text in self.oms.alerts[-20:]],
            names={c: self.master.name(c) for a in agents for c in a.codes if self.master is not None and c in self.master},
            health=msgspec.structs.replace(broker_health(self.broker), db_bytes=console_views.db_bytes(str(self.store.path))),
            account=console_views.account_positions(self.oms), marks=dict(self.oms.marks),
            reconcile_alerts=self.oms.last_reconcile[2] if self.oms.last_reconcile else 0,
        )

    def control(self, msg: Control) -> Message:
        h = msg.h
        states = {"pause": TradingState.HALTED, "halt": TradingState.HALTED, "reduce": TradingState.REDUCING,
                  "resume": TradingState.ACTIVE}
        if msg.action == "reconcile":
            self.request_reconcile("on demand")
            return Ack(h=self.headers(h.mid), message="reconciliation started")
        if msg.action == "feed_gap":  # fault injection: subscribers must detect and heal a gap
            self.md.inject_gap()
            return Ack(h=self.headers(h.mid), message="market-data messages of the next second are skipped")
        if msg.action == "cancel_all":
            targets = [msg.agent] if msg.agent else sorted({o.agent for o in self.oms.orders.values() if o.is_open})
            n = sum(self.oms.cancel_all(a) for a in targets)
            return Ack(h=self.headers(h.mid), message=f"{n} cancels sent")
        if msg.action == "flatten":
            rec = self.registry.agents.get(msg.agent) if msg.agent else None
            if rec is None:
                return Error(h=self.headers(h.mid), code=ErrorCode.NOT_REGISTERED, message=f"flatten needs a known agent, not {msg.agent!r}")
            n = self.oms.flatten(rec.card, f"flatten by {h.sender}")  # cancels its orders, then sells its positions
            log.warning("agent %s flattened by %s: %d orders sent", msg.agent, h.sender, n)
            return Ack(h=self.headers(h.mid), message=f"{msg.agent}: {n} orders sent to flatten")
        if msg.action not in states:
            return Error(h=self.headers(h.mid), code=ErrorCode.BAD_MESSAGE, message=f"unknown action {msg.action!r}")
        state = states[msg.action]
        if msg.agent:
            rec = self.registry.agents.get(msg.agent)
            if rec is None:
                return Error(h=self.headers(h.mid), code=ErrorCode.NOT_REGISTERED, message=f"no agent {msg.agent!r}")
            rec.trading_state = state
        else:
            self.risk.global_state = state
        # an operator's halt must survive a gateway restart
        with self.store.transaction():
            self.store.set_meta(f"trading_state:{msg.agent or '*'}", state.value)
        self._system("trading_state", msg.agent, state.value)
        log.warning("trading state of %s set to %s by %s", msg.agent or "gateway", state, h.sender)
        return Ack(h=self.headers(h.mid), message=f"{msg.agent or 'gateway'} is {state}")

    def _agent_offline(self, agent: str, why: str) -> None:
        """The agent left or its lease expired: its registrations go (debounced), its feed health
        is forgotten (a new session reports its own), and everyone is told."""
        self.subs.leave(agent)
        self.md.feed_health.pop(agent, None)
        self._system("agent_offline", agent, why)

    def _system(self, kind: str, agent: str = "", text: str = "") -> None:
        if self.pub is not None:
            self.pub.publish(SYSTEM_TOPIC, SystemEvent(kind=kind, agent=agent, text=text))

    # ---- background tasks ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = max(0.05, self.cfg.lease_s / 5)
        while True:
            await asyncio.sleep(period)
            for rec in self.registry.expire():
                log.warning("agent %s lease expired (silent %.1fs)", rec.id, self.registry.age(rec))
                self._agent_offline(rec.id, "lease expired")
            try:
                self._check_limits()
            except Exception:
                self.counters["limit_check_errors"] += 1
                log.exception("limit check failed")

    async def _broker_events(self) -> None:
        async for ev in self.broker.events():
            try:
                if isinstance(ev, Trade):
                    self.oms.marks[ev.code] = ev.price
                    self.oms.on_market_trade(ev.code, ev.price, ev.qty)
                    self.md.on_trade(ev)  # publishes the TradeTick, builds and publishes bars
                elif isinstance(ev, Book):
                    self.md.on_book(ev)
                elif isinstance(ev, BrokerNotice):
                    self.oms.on_notice(ev)
                elif isinstance(ev, SessionChange):
                    self._system("session_state", "", ev.state.value)
                    if ev.state is SessionState.READY and not self._session_seen_ready:
                        # start did not wait for the stream: reconcile again now that notices flow
                        self._session_seen_ready = True
                        self.request_reconcile("session ready")
                elif isinstance(ev, MarketClock):
                    self.md.flush_at(ev.exchange)
                elif isinstance(ev, Gap):
                    self.oms.alert(f"real-time stream gap {ev.since:%H:%M:%S}-{ev.until:%H:%M:%S} ({ev.reason}): repairing")
                    self.request_reconcile("gap")
            except Exception:
                self.counters["broker_event_errors"] += 1
                log.exception("broker event %r failed", ev)

    async def _bar_clock(self) -> None:
        # bars close by time even when no later print arrives
        while True:
            await asyncio.sleep(1.0)
            try:
                self.md.flush()
            except Exception:
                self.counters["bar_flush_errors"] += 1
                log.exception("bar flush failed")

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _check_limits(self) -> None:
        """Daily-loss breaches put an agent in REDUCING; a burst of broker errors halts everything."""
        for rec in self.registry.agents.values():
            limit = rec.card.risk.max_daily_loss
            if limit and rec.trading_state is TradingState.ACTIVE and -self.oms.day_pnl(rec.id) >= limit:
                rec.trading_state = TradingState.REDUCING
                text = f"{rec.id}: day P&L {self.oms.day_pnl(rec.id):,} breached the loss limit {limit:,}: reducing only"
                self.oms.alert(text)
                self.oms.notify(rec.id, Notice(level="error", text=text))
                self._system("trading_state", rec.id, TradingState.REDUCING.value)
        if self.cfg.kill_errors and self.risk.global_state is not TradingState.HALTED:
            n = self.oms.recent_broker_errors(int(self.cfg.kill_window_s * 1e9))
            if n >= self.cfg.kill_errors:
                self.risk.global_state = TradingState.HALTED
                self.oms.alert(f"kill switch: {n} broker errors in {self.cfg.kill_window_s:.0f}s: trading halted (cancels only)")
                self._system("trading_state", "", TradingState.HALTED.value)

    # ---- the trading day (server/daycycle.py decides, this acts) -----------------------------------

    def effective_state(self, rec: AgentRecord) -> TradingState:
        """After its end-of-day clean-up an agent may only reduce risk for the rest of the day."""
        if rec.trading_state is TradingState.ACTIVE and rec.id in self.daycycle.cleaned:
            return TradingState.REDUCING
        return rec.trading_state

    async def _day_loop(self) -> None:
        while True:
            try:
                self._day_tick()
            except Exception:
                self.counters["day_cycle_errors"] += 1
                log.exception("day cycle failed")
            await asyncio.sleep(self.cfg.day_tick_s)

    def _day_tick(self) -> None:
        now, phase = self.clock.now(), self.clock.phase()
        day = yyyymmdd(now.date())
        first = not self.daycycle.day
        if self.daycycle.roll(day):
            self.oms.roll_pnl_day()
            self._system("trading_day", "", day)  # agents number their orders by the gateway's day
            if not first:
                log.info("new trading day %s", day)
                self.request_reconcile("new day")  # expires what is left of earlier days
                codes = sorted({c for rec in self.registry.agents.values() for c in rec.card.codes})
                self._spawn(self.oms.ensure_base_prices(codes))
        if not self.oms.synced:
            return  # nothing is decided before the books agree with the broker
        due = self.daycycle.due(now, phase, self.clock.timed, [rec.card for rec in self.registry.agents.values()])
        for card in due.cleanup:
            self._end_of_day(card)
        if due.close_day and not self._closing_day:
            self._closing_day = True
            self._spawn(self._close_day(day))

    def _end_of_day(self, card: AgentCard) -> None:
        policy = card.schedule.end_of_day
        if policy is EndOfDay.CANCEL:
            n = self.oms.cancel_all(card.id)
        elif policy is EndOfDay.FLATTEN:
            n = self.oms.flatten(card, "end of day: flatten")
        else:
            n = 0
        with self.store.transaction():
            self.daycycle.mark_cleaned(card.id)
        self.oms.notify(card.id, Notice(level="info", text=f"end of day: {policy.value} ({n} orders); reducing only until tomorrow"))
        self._system("end_of_day", card.id, policy.value)
        log.info("end of day for %s: %s (%d orders)", card.id, policy.value, n)

    async def _close_day(self, day: str) -> None:
        """After the close: the broker's final word, then expiry of what is left, then the report."""
        try:
            await self.oms.reconcile_now("close")
            expired = self.oms.expire_through(day)
            report = daily_report.build(day, self.oms, expired)
            path = daily_report.write(report, self.run_dir)
            with self.store.transaction():
                self.daycycle.mark_closed()
            self._system("day_closed", "", day)
            log.info("day %s closed: %d orders expired, report %s", day, expired, path)
        except Exception as e:  # retried on the next tick
            self.counters["day_close_errors"] += 1
            log.warning("closing day %s failed: %s; will retry", day, e)
        finally:
            self._closing_day = False

    def request_reconcile(self, reason: str) -> None:
        self._reconcile_reason = reason
        self._reconcile_wanted.set()

    async def _reconcile_loop(self) -> None:
        """First pass at start (orders are denied until it succeeds), then periodically, after
        websocket gaps and on demand. Failures back off and retry; they never stop the gateway."""
        backoff = 0.2
        reason = "start"
        while True:
            try:
                await self.oms.reconcile_now(reason)
                self.counters["reconciles"] += 1
                backoff = 0.2
                timeout = self.cfg.reconcile_s
            except Exception as e:
                self.counters["reconcile_errors"] += 1
                log.warning("reconciliation (%s) failed: %s; retrying in %.0fs", reason, e, backoff)
                timeout, backoff = backoff, min(backoff * 2, 30.0)  # 0.2, 0.4, ... a blip costs little
            try:
                await asyncio.wait_for(self._reconcile_wanted.wait(), timeout)
                reason = self._reconcile_reason
            except asyncio.TimeoutError:
                reason = "periodic" if self.oms.synced else "start"
            self._reconcile_wanted.clear()

    def _drain_xpub(self) -> None:
        # Subscription messages from SUB sockets; we only need to consume them (counted for status).
        while self._xpub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frame = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.counters["subscriptions" if frame[:1] == b"\x01" else "unsubscriptions"] += 1
            topic = frame[1:].decode(errors="replace")
            if frame[:1] == b"\x01":
                self.pub_topics.add(topic)
            else:
                self.pub_topics.discard(topic)

