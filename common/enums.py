"""Small shared vocabularies (order sides, types, validity, modes, states)."""

from __future__ import annotations

from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"  # 지정가
    MARKET = "market"  # 시장가
    CONDITIONAL = "conditional"  # 조건부지정가: limit, converts to market in the closing call
    BEST = "best"  # 최유리: priced at the best opposite quote
    PRIORITY = "priority"  # 최우선: priced at the best same-side quote


class TimeInForce(StrEnum):
    DAY = "day"
    IOC = "ioc"
    FOK = "fok"


class AgentMode(StrEnum):
    LIVE = "live"
    SHADOW = "shadow"  # orders are journaled, never sent


class TradingState(StrEnum):
    ACTIVE = "active"
    REDUCING = "reducing"  # only risk-reducing orders
    HALTED = "halted"  # cancels only


class AgentState(StrEnum):
    ONLINE = "online"  # registered, heartbeats arriving
    STALE = "stale"  # lease expired, not yet taken over
    OFFLINE = "offline"  # unregistered or never seen since the gateway started


class SessionState(StrEnum):
    """The broker session watchdog (DESIGN.md §6)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    SYNCING = "syncing"
    READY = "ready"
    DEGRADED = "degraded"
