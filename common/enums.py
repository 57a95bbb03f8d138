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
    # A DAY order for the next session: held durably by the gateway (accepted in any phase, counted
    # against risk at once, cancellable) and sent as a DAY order when the next session takes orders
    # (the opening auction); in a backtest it fills at the next session's open.
    NEXT_SESSION = "next_session"


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


class SystemEventKind(StrEnum):
    """What the gateway announces on the system topic (console, agents, tools)."""

    AGENT_ONLINE = "agent_online"
    AGENT_OFFLINE = "agent_offline"
    TRADING_STATE = "trading_state"
    SESSION_STATE = "session_state"
    ALERT = "alert"
    TRADING_DAY = "trading_day"  # a new trading day (text: YYYYMMDD): agents number orders by it
    END_OF_DAY = "end_of_day"
    DAY_CLOSED = "day_closed"


class ControlAction(StrEnum):
    """Operator actions (`ktrader control`, the console)."""

    PAUSE = "pause"
    RESUME = "resume"
    HALT = "halt"
    REDUCE = "reduce"
    CANCEL_ALL = "cancel_all"
    FLATTEN = "flatten"
    RECONCILE = "reconcile"
    FEED_GAP = "feed_gap"  # fault injection: subscribers must detect and heal a gap


class BarInterval(StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M60 = "60m"
    D1 = "1d"
