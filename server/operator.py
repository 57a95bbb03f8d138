"""The operator's facade: what `ktrader status`, the console and `ktrader control` see and do.

Read-only views come from the rooms' memory; every action goes through the room that owns it (trading
state through the risk gate, orders through the order desk, reconciliation through its driver).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import msgspec

from common.enums import ControlAction, TradingState
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import Ack, AgentStatus, Control, Error, Message, StatusReply
from kis.health import broker_health
from server import console_views

if TYPE_CHECKING:
    from server.gateway import Gateway

log = logging.getLogger("ktrader.gateway")

_STATES = {ControlAction.PAUSE: TradingState.HALTED, ControlAction.HALT: TradingState.HALTED,
           ControlAction.REDUCE: TradingState.REDUCING, ControlAction.RESUME: TradingState.ACTIVE}


class Operator:
    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw

    def status(self, re: int = 0) -> StatusReply:
        gw = self.gw
        book, p = gw.book, gw.portfolio
        agents = []
        for rec in gw.registry.agents.values():
            open_n, today_n = book.agent_counts(rec.id)
            held = list(p.positions.get(rec.id, {}).values())
            marked = console_views.agent_positions(p, rec.id)
            agents.append(AgentStatus(
                id=rec.id, name=rec.card.name, strategy=rec.card.strategy, state=rec.state, mode=rec.card.mode,
                trading_state=gw.risk.effective(rec.id), pid=rec.pid, host=rec.host, session=rec.session,
                heartbeat_age_s=round(gw.registry.age(rec), 3), max_ack_gap_ms=rec.max_ack_gap_ms,
                registrations=rec.registrations, codes=rec.codes, open_orders=open_n, orders_today=today_n,
                errors=rec.errors, fills=book.fills_by_agent.get(rec.id, 0),
                position_codes=sum(1 for x in held if x.qty), position_cost=sum(x.cost for x in held),
                realized_pnl=sum(x.realized_pnl for x in held), fees=sum(x.fees for x in held),
                positions=marked, unrealized_pnl=sum(x.unrealized_pnl for x in marked),
                rate_quota_per_s=rec.card.rate_quota_per_s, last_error=console_views.last_error(book.orders, rec.id),
                feed=rec.feed,
            ))
        total, open_n, fills = book.counts()
        counters = dict(gw.counters)
        counters["day_close_errors"] = gw.day.close_errors
        counters["orders_held"] = sum(1 for o in book.orders.values() if o.state is OrderState.HELD)
        counters["send_queue"] = gw.core.live_queue.depth + gw.core.shadow_queue.depth
        counters["reports_written"] = gw.day.reports_written
        if gw.pub is not None:
            counters["pub_sent"] = gw.pub.sent
            counters["pub_dropped"] = gw.pub.dropped
            counters.update(gw.md.counters())
        last = gw.recon.last
        master = gw.master
        return StatusReply(
            h=gw.headers(re), gateway_pid=os.getpid(), gateway_session=gw.headers.sid, started_ns=gw.started_ns,
            session_state=gw.broker.session_state, broker=gw.broker_name, trading_state=gw.risk.global_state,
            agents=agents, orders_today=total, open_orders=open_n, fills_today=fills, counters=counters,
            subscriptions=gw.subs.table(), synced=gw.recon.synced,
            last_reconcile_age_s=round((book.now_ns() - last[0]) / 1e9, 1) if last else -1.0,
            alerts=gw.alerts.texts(20),
            names={c: master.name(c) for a in agents for c in a.codes if master is not None and c in master},
            health=msgspec.structs.replace(broker_health(gw.broker), db_bytes=console_views.db_bytes(str(gw.store.path))),
            account=console_views.account_positions(p), marks=dict(p.marks),
            reconcile_alerts=last[2] if last else 0,
        )

    def control(self, msg: Control) -> Message:
        gw = self.gw
        h = msg.h
        action = msg.action
        if action is ControlAction.RECONCILE:
            gw.request_reconcile("on demand")
            return Ack(h=gw.headers(h.mid), message="reconciliation started")
        if action is ControlAction.FEED_GAP:  # fault injection: subscribers must detect and heal a gap
            gw.md.inject_gap()
            return Ack(h=gw.headers(h.mid), message="market-data messages of the next second are skipped")
        if action is ControlAction.CANCEL_ALL:
            targets = [msg.agent] if msg.agent else sorted({o.agent for o in gw.book.orders.values() if o.is_open})
            n = sum(gw.desk.cancel_all(a) for a in targets)
            return Ack(h=gw.headers(h.mid), message=f"{n} cancels sent")
        if action is ControlAction.FLATTEN:
            rec = gw.registry.agents.get(msg.agent) if msg.agent else None
            if rec is None:
                return Error(h=gw.headers(h.mid), code=ErrorCode.NOT_REGISTERED,
                             message=f"flatten needs a known agent, not {msg.agent!r}")
            n = gw.desk.flatten(rec.card, f"flatten by {h.sender}")  # cancels its orders, then sells its positions
            log.warning("agent %s flattened by %s: %d orders sent", msg.agent, h.sender, n)
            return Ack(h=gw.headers(h.mid), message=f"{msg.agent}: {n} orders sent to flatten")
        state = _STATES[action]
        if msg.agent and msg.agent not in gw.registry.agents:
            return Error(h=gw.headers(h.mid), code=ErrorCode.NOT_REGISTERED, message=f"no agent {msg.agent!r}")
        gw.risk.set_state(msg.agent, state, why=f"{action.value} by {h.sender}")  # persisted: survives a restart
        return Ack(h=gw.headers(h.mid), message=f"{msg.agent or 'gateway'} is {state}")
