"""Agent registry and leases.

An agent id is held by one process session at a time. Heartbeats keep the lease; a second live
registration of the same id is refused with DUPLICATE_AGENT; once the holder has been silent for a
lease period, a new session takes over (a restarted agent)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.config import AgentCard
from common.enums import AgentState
from common.schema import FeedHealth


@dataclass
class AgentRecord:
    card: AgentCard
    routing_id: bytes
    session: str
    pid: int
    host: str
    last_seen: float  # monotonic
    state: AgentState = AgentState.ONLINE
    registrations: int = 1
    max_ack_gap_ms: int = 0
    errors: int = 0
    last_error: str = ""  # the latest strategy error its heartbeats told
    error_ns: int = 0  # when it happened, as its heartbeat says (the market clock: compared with the orders' stamps)
    codes: list[str] = field(default_factory=list)
    feed: FeedHealth = field(default_factory=FeedHealth)  # from this session's latest heartbeat
    paused: bool = False  # its heartbeats say it paused itself after a strategy error (card on_error)

    @property
    def id(self) -> str:
        return self.card.id


class RegisterOutcome:
    NEW = "new"  # first registration of this id (since the gateway started)
    SAME = "same"  # same session again (e.g. after a gateway restart or a reconnect)
    TAKEOVER = "takeover"  # new session, the old one silent
    DUPLICATE = "duplicate"  # another live session holds the id


class Registry:
    def __init__(self, lease_s: float, clock=time.monotonic) -> None:
        self.lease_s = lease_s
        self.clock = clock
        self.agents: dict[str, AgentRecord] = {}
        self._by_route: dict[bytes, str] = {}

    def register(
        self, card: AgentCard, routing_id: bytes, session: str, pid: int, host: str
    ) -> tuple[str, AgentRecord]:
        now = self.clock()
        rec = self.agents.get(card.id)
        if rec is None:
            rec = AgentRecord(
                card=card,
                routing_id=routing_id,
                session=session,
                pid=pid,
                host=host,
                last_seen=now,
                codes=list(card.codes),
            )
            self.agents[card.id] = rec
            self._by_route[routing_id] = card.id
            return RegisterOutcome.NEW, rec
        alive = rec.state is AgentState.ONLINE and now - rec.last_seen <= self.lease_s
        if rec.session != session and alive:
            return RegisterOutcome.DUPLICATE, rec
        outcome = RegisterOutcome.SAME if rec.session == session else RegisterOutcome.TAKEOVER
        rec.feed = FeedHealth()  # this registration's session reports its own in its heartbeats
        self._by_route.pop(rec.routing_id, None)
        rec.card, rec.routing_id, rec.session, rec.pid, rec.host = card, routing_id, session, pid, host
        rec.codes = list(card.codes)
        rec.last_seen = now
        rec.state = AgentState.ONLINE
        if outcome == RegisterOutcome.TAKEOVER:
            rec.registrations += 1
        self._by_route[routing_id] = card.id
        return outcome, rec

    def by_route(self, routing_id: bytes) -> AgentRecord | None:
        agent = self._by_route.get(routing_id)
        return self.agents.get(agent) if agent else None

    def touch(self, rec: AgentRecord) -> None:
        """A request from the lease holder keeps its lease. A lease that ran out (STALE, OFFLINE) is not
        revived here: its market data was released when it expired, so the agent must register again
        (its heartbeat is answered NOT_REGISTERED, server/sessions.py), which restores them."""
        if rec.state is AgentState.ONLINE:
            rec.last_seen = self.clock()

    def unregister(self, rec: AgentRecord) -> None:
        rec.state = AgentState.OFFLINE
        self._by_route.pop(rec.routing_id, None)

    def expire(self) -> list[AgentRecord]:
        """Mark agents whose lease ran out as STALE; returns the newly stale ones."""
        now = self.clock()
        out = []
        for rec in self.agents.values():
            if rec.state is AgentState.ONLINE and now - rec.last_seen > self.lease_s:
                rec.state = AgentState.STALE
                out.append(rec)
        return out

    def forgive(self, seconds: float) -> int:
        """Move every live agent's last heartbeat `seconds` later (never past now): a stall of the gateway's own
        loop is not their silence. Returns how many."""
        now = self.clock()
        n = 0
        for rec in self.agents.values():
            if rec.state is AgentState.ONLINE:
                rec.last_seen = min(now, rec.last_seen + seconds)
                n += 1
        return n

    def age(self, rec: AgentRecord) -> float:
        return self.clock() - rec.last_seen
