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


_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


def worst(*states: TradingState) -> TradingState:
    """The most restrictive of these trading states (HALTED over REDUCING over ACTIVE)."""
    return max(states, key=_SEVERITY.__getitem__)


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
    CARD_RELOADED = "card_reloaded"  # text: the fields that changed
    # text: a code whose stored price history changed scale (a split, a rights or bonus issue): the agents
    # following it rebuild what they built from it (Strategy.on_history_changed)
    HISTORY_CHANGED = "history_changed"


class ControlAction(StrEnum):
    """What an operator can ask of the gateway (`ktrader control`, the console, the web page)."""

    PAUSE = "pause"  # an agent (or, with all, the gateway): cancels only
    RESUME = "resume"
    REDUCE = "reduce"  # only risk-reducing orders
    HALT = "halt"  # the kill switch: the whole gateway (or one agent), its open orders cancelled; then cancels only
    CANCEL_ALL = "cancel_all"
    FLATTEN = "flatten"  # cancel an agent's orders, then sell its positions
    RECONCILE = "reconcile"  # compare the books with the broker now
    RELOAD = "reload"  # apply a changed card's limits and params without a restart
    FEED_GAP = "feed_gap"  # fault injection: skip a second of market data
    RISK_SCALE = "risk_scale"  # value: the operator's multiplier of every agent's size limits (0.5 halves them)
    RISK_EXPLAIN = "risk_explain"  # value: an order ("buy 10 005930 @ 70000" or an order id): the limits it meets
    RESET_PEAK = "reset_peak"  # the all-time equity peak (an agent's, or with all the account's) starts again now
    CANCEL_PROTECTION = "cancel_protection"  # value: a protective order's id (the agent's own, or on its behalf)
    APPLY_SPLIT = "apply_split"  # value: "CODE RATIO" (10: 1 share → 10; 1/10: 10 → 1): a split the balance shows
    # value: what an operator did outside the gateway (an agent's process started, stopped or restarted from the
    # console): written to the operator journal, nothing else (the agent need not be registered)
    NOTE = "note"


class AlertKind(StrEnum):
    """Alerts that must reach a person (server/notifier.py sends them out)."""

    KILL_SWITCH = "kill_switch"  # the automatic kill switch halted trading (burst of broker errors)
    HALT = "halt"  # an operator halted the gateway
    DAILY_LOSS = "daily_loss"  # an agent reached its daily loss limit: reducing only
    SESSION_DOWN = "session_down"  # the broker session is not ready for longer than notify.session_down_s
    RECONCILE_DIFF = "reconcile_diff"  # reconciliation found differences with the broker
    STALE_MARKET_DATA = "stale_market_data"  # no real-time data during the session for notify.stale_data_s
    AGENT_OFFLINE = "agent_offline"  # an agent crashed or stopped while holding positions or open orders
    UNKNOWN_ORDER = "unknown_order"  # an order's outcome at the broker is not known (never resent)
    # account limits (each denial alerts once a minute per agent; drawdown also moves the trading state)
    GROSS_EXPOSURE = "gross_exposure"
    MAX_POSITIONS = "max_positions"
    CONCENTRATION = "concentration"
    SECTOR_EXPOSURE = "sector_exposure"
    DRAWDOWN = "drawdown"  # equity fell from its peak: reducing, then halted
    CASH_RESERVE = "cash_reserve"
    PROTECTION = "protection"  # a protective order fired, or could not be sent
    BAD_MARKET_DATA = (
        "bad_market_data"  # a print or book failed the sanity checks and was dropped (server/md_sanity.py)
    )
    CALENDAR = "calendar"  # the KRX calendar lacks this year's (or next year's) holidays or exam day: update
    STOCK_MASTER = "stock_master"  # the gateway's copy of KIS's stock master is days old and cannot be renewed
    # the gateway cannot keep its books: a store commit failed (it stops), or a day keeps failing to close
    GATEWAY_FAULT = "gateway_fault"
    # an operator changed what trades or how much: resume / pause / reduce, a card reloaded (its changes
    # listed), an equity peak reset, the risk multiplier set (who did it is in the text)
    OPERATOR = "operator"
    # orders the gateway was told to send did not go out: flatten sells the risk gate denied (the
    # operator's or an end-of-day flatten: the shares are still held) or that expired unsold at the close,
    # next-session orders still waiting for their code's base price into the session
    NOT_SENT = "not_sent"
    # the gateway's life, told to a person (information, not critical): started (host, pid, run folder,
    # broker environment) and stopping (why); a gateway that dies without a word is the heartbeat's to tell
    # (notify.heartbeat_url)
    GATEWAY_STARTED = "gateway_started"
    GATEWAY_STOPPING = "gateway_stopping"
    # started where the previous gateway ended without its clean stop (killed, crashed, out of memory, power
    # lost): a person should learn why from its log, and which orders were in flight (not critical: the
    # restart recovered them and checks them with the broker by itself)
    GATEWAY_RESTARTED = "gateway_restarted"
    # an agent skipped a daily decision: it was down at that close and came back after the next session opened
    DECISION_SKIPPED = "decision_skipped"
    # an alerted outage ended: the broker session is ready again, real-time data fresh again (not critical:
    # good news does not jump the queue)
    RECOVERED = "recovered"


class BarInterval(StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M60 = "60m"
    D1 = "1d"
