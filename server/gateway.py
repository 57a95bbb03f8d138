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

import zmq

from common.clock import now_ns
from common.config import GatewayConfig
from common.connection import GatewayInfo, remove_info, write_info
from common.enums import AgentState, TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.framing import Codec, FrameError
from common.schema import (
    Ack, AgentEvent, AgentStatus, CancelAll, CancelOrder, Control, Error, EventBatch, GetEvents,
    GetSnapshot, HeaderFactory, Heartbeat, Message, ModifyOrder, OrdersReply, Ping, Pong, Register,
    Notice, Registered, SnapshotReply, StatusQuery, StatusReply, SubmitOrders, SystemEvent, SYSTEM_TOPIC,
    TradeTick, Unregister, trade_topic,
)
from kis.port import BrokerNotice, BrokerPort, Gap, MarketKind, SessionChange, Trade
from server.oms import OrderManager
from server.publisher import Publisher
from server.registry import AgentRecord, RegisterOutcome, Registry
from server.risk import RiskGate
from server.store import Store
from server.subscriptions import SubscriptionManager

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
        self.key = secrets.token_bytes(32)
        self.codec = Codec(self.key, cfg.max_frame_bytes)
        self.registry = Registry(cfg.lease_s)
        self.counters: Counter[str] = Counter()
        self.started_ns = now_ns()
        self.store = Store(self.run_dir / "db" / "gateway.sqlite")
        self.risk = RiskGate(cfg.risk)
        self.oms = OrderManager(self.store, broker, self.risk, self.headers, self._send_event)
        self.subs = SubscriptionManager(broker)
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
        router.bind(r_ep)
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.XPUB_NODROP, 1)  # HWM reached -> EAGAIN, so drops are counted, not silent
        xpub.setsockopt(zmq.SNDHWM, 100_000)
        xpub.bind(p_ep)
        self.router = router
        self.router_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = Publisher(xpub, self.codec, self.headers)
        self._xpub = xpub

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.oms.load()
        saved = self.store.get_meta("trading_state:*")
        if saved:
            self.risk.global_state = TradingState(saved)
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
        ]
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        info = GatewayInfo(router=self.router_endpoint, pub=self.pub_endpoint, key=self.key.hex(), pid=os.getpid(),
                           session=self.headers.sid, started_ns=self.started_ns)
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
        if self.router is not None:
            loop.remove_reader(self.router.getsockopt(zmq.FD))
            loop.remove_reader(self._xpub.getsockopt(zmq.FD))
            self.router.close(0)
            self._xpub.close(0)
        try:
            await self.broker.close()
        finally:
            self.store.close()

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
            self._reply(route, Ack(h=self.headers(h.mid)))
        elif isinstance(msg, SubmitOrders):
            results = [self.oms.submit(rec.card, rec.trading_state, o) for o in msg.orders]
            self._reply(route, OrdersReply(h=self.headers(h.mid), results=results))
        elif isinstance(msg, CancelOrder):
            code, text = self.oms.cancel(rec.id, msg.client_order_id)
            self._reply(route, Error(h=self.headers(h.mid), code=code, message=text) if code else Ack(h=self.headers(h.mid), message=text))
        elif isinstance(msg, ModifyOrder):
            code, text = self.oms.modify(rec.card, rec.trading_state, msg.client_order_id, msg.price, msg.qty)
            self._reply(route, Error(h=self.headers(h.mid), code=code, message=text) if code else Ack(h=self.headers(h.mid), message=text))
        elif isinstance(msg, CancelAll):
            n = self.oms.cancel_all(rec.id, msg.code)
            self._reply(route, Ack(h=self.headers(h.mid), message=f"{n} cancels sent"))
        elif isinstance(msg, GetSnapshot):
            self._reply(route, SnapshotReply(h=self.headers(h.mid), snapshot=self.oms.snapshot(rec.card, rec.trading_state)))
        elif isinstance(msg, GetEvents):
            events = self.store.agent_events(rec.id, msg.after_seq, msg.limit)
            self._reply(route, EventBatch(h=self.headers(h.mid), events=events, last_seq=self.oms.seq.get(rec.id, 0)))
        elif isinstance(msg, Unregister):
            self.registry.unregister(rec)
            self.subs.leave(rec.id)
            self._reply(route, Ack(h=self.headers(h.mid), message="bye"))
            self._system("agent_offline", rec.id, msg.reason or "unregistered")
            log.info("agent %s unregistered (%s)", rec.id, msg.reason)
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
        outcome, rec = self.registry.register(msg.card, route, h.sid, msg.pid, msg.host)
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
        self._spawn(self.oms.ensure_base_prices(list(rec.card.codes)))

    def _subscribe_card(self, rec: AgentRecord) -> None:
        subs = rec.card.subscriptions
        kinds = ([MarketKind.TRADES] if subs.trades else []) + ([MarketKind.BOOK] if subs.book else [])
        for code in rec.card.codes:
            for kind in kinds:
                code_err, text = self.subs.want(rec.id, kind, code)
                if code_err is not None:
                    self.oms.notify(rec.id, Notice(level="error", text=f"{code_err.value}: {text}"))

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
                realized_pnl=sum(p.realized_pnl for p in held),
            ))
        total, open_n, fills = self.oms.counts()
        counters = dict(self.counters)
        if self.pub is not None:
            counters["pub_sent"] = self.pub.sent
            counters["pub_dropped"] = self.pub.dropped
        return StatusReply(
            h=self.headers(re), gateway_pid=os.getpid(), gateway_session=self.headers.sid, started_ns=self.started_ns,
            session_state=self.broker.session_state, broker=self.broker_name, trading_state=self.risk.global_state,
            agents=agents, orders_today=total, open_orders=open_n, fills_today=fills, counters=counters,
            subscriptions=self.subs.table(), synced=self.oms.synced,
            last_reconcile_age_s=round((now_ns() - self.oms.last_reconcile[0]) / 1e9, 1) if self.oms.last_reconcile else -1.0,
            alerts=[text for _, text in self.oms.alerts[-20:]],
        )

    def control(self, msg: Control) -> Message:
        h = msg.h
        states = {"pause": TradingState.HALTED, "halt": TradingState.HALTED, "reduce": TradingState.REDUCING,
                  "resume": TradingState.ACTIVE}
        if msg.action == "reconcile":
            self.request_reconcile("on demand")
            return Ack(h=self.headers(h.mid), message="reconciliation started")
        if msg.action == "cancel_all":
            targets = [msg.agent] if msg.agent else sorted({o.agent for o in self.oms.orders.values() if o.is_open})
            n = sum(self.oms.cancel_all(a) for a in targets)
            return Ack(h=self.headers(h.mid), message=f"{n} cancels sent")
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
                self.subs.leave(rec.id)
                self._system("agent_offline", rec.id, "lease expired")
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
                    if self.pub is not None:
                        self.pub.publish(trade_topic(ev.code), TradeTick(code=ev.code, time=ev.time, price=ev.price, qty=ev.qty,
                                                                         side=ev.side, cum_volume=ev.cum_volume))
                elif isinstance(ev, BrokerNotice):
                    self.oms.on_notice(ev)
                elif isinstance(ev, SessionChange):
                    self._system("session_state", "", ev.state.value)
                elif isinstance(ev, Gap):
                    self.oms.alert(f"real-time stream gap {ev.since:%H:%M:%S}-{ev.until:%H:%M:%S} ({ev.reason}): repairing")
                    self.request_reconcile("gap")
            except Exception:
                self.counters["broker_event_errors"] += 1
                log.exception("broker event %r failed", ev)

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

    def request_reconcile(self, reason: str) -> None:
        self._reconcile_reason = reason
        self._reconcile_wanted.set()

    async def _reconcile_loop(self) -> None:
        """First pass at start (orders are denied until it succeeds), then periodically, after
        websocket gaps and on demand. Failures back off and retry; they never stop the gateway."""
        backoff = 1.0
        reason = "start"
        while True:
            try:
                await self.oms.reconcile_now(reason)
                self.counters["reconciles"] += 1
                backoff = 1.0
                timeout = self.cfg.reconcile_s
            except Exception as e:
                self.counters["reconcile_errors"] += 1
                log.warning("reconciliation (%s) failed: %s; retrying in %.0fs", reason, e, backoff)
                timeout, backoff = backoff, min(backoff * 2, 30.0)
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

