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


class SessionProblem(StrEnum):
    """Why the broker's real-time session (and with it the notice feed orders wait for) is not
    READY; NONE when nothing is known to be wrong."""

    NONE = "none"
    STARTING = "starting"  # not connected yet
    WS_UNREACHABLE = "ws_unreachable"  # the websocket host/port cannot be reached (DNS, refused, firewall)
    APPROVAL_FAILED = "approval_failed"  # the websocket approval key could not be obtained
    APPROVAL_INVALID = "approval_invalid"  # KIS refused the approval key (OPSP0011)
    KEY_IN_USE = "key_in_use"  # the app key's one websocket is held elsewhere (OPSP8996)
    HTS_ID_REFUSED = "hts_id_refused"  # KIS refused the notice feed for the HTS id (OPSP0017)
    NOTICE_REFUSED = "notice_refused"  # the notice slot was refused for another reason
    DROPPED = "dropped"  # the session dropped; reconnecting


class SessionState(StrEnum):
    """The broker session watchdog (DESIGN.md §6)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    SYNCING = "syncing"
    READY = "ready"
    DEGRADED = "degraded"
