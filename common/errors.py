"""Error codes shared by gateway, agents and tools. Every error reply carries one of these."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # protocol
    BAD_MESSAGE = "BAD_MESSAGE"  # undecodable, malformed or unknown message
    BAD_SIGNATURE = "BAD_SIGNATURE"
    SCHEMA_VERSION = "SCHEMA_VERSION"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED = "UNSUPPORTED"  # a valid message this endpoint does not serve
    INTERNAL = "INTERNAL"  # a bug on the gateway side; the message was not acted on
    TIMEOUT = "TIMEOUT"  # client side: no reply in time
    STALE_MESSAGE = (
        "STALE_MESSAGE"  # its timestamp is outside the gateway's freshness window (a replay, or a clock off)
    )
    REPLAYED = "REPLAYED"  # this message (sender session, message id) was seen already
    FORBIDDEN = "FORBIDDEN"  # this credential may not do that (an agent acting on another, or on the gateway)
    # identity and leases
    NOT_REGISTERED = "NOT_REGISTERED"
    DUPLICATE_AGENT = "DUPLICATE_AGENT"
    WRONG_AGENT = "WRONG_AGENT"  # a message names another agent than the one registered on this socket
    BAD_CARD = "BAD_CARD"
    NOT_APPROVED = "NOT_APPROVED"  # no card of this agent id is approved by the operator (ktrader cards approve)
    UNKNOWN_AGENT = "UNKNOWN_AGENT"  # an operator action names an agent the gateway has never known
    AMBIGUOUS_TARGET = "AMBIGUOUS_TARGET"  # an operator action that needs --agent ID (or an explicit --all)
    # orders
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"  # same client order id, different content
    ORDER_NOT_OPEN = "ORDER_NOT_OPEN"
    BAD_ORDER = "BAD_ORDER"  # malformed order (qty <= 0, limit without price, ...)
    WRONG_DAY = "WRONG_DAY"  # the order id names another trading day than the gateway's (a day change)
    SESSION_NOT_READY = "SESSION_NOT_READY"
    BROKER_REJECTED = "BROKER_REJECTED"  # KIS said no (see the message for msg_cd/msg1)
    BROKER_ERROR = "BROKER_ERROR"
    BROKER_BUSY = "BROKER_BUSY"  # queued too long for the broker (faults, rate limit): refused, never sent
    NOT_SENT = "NOT_SENT"  # the gateway stopped before it called the broker: nothing was placed
    RESTARTED = "RESTARTED"  # in flight when the gateway stopped: the broker may or may not have it
    NOT_AT_BROKER = "NOT_AT_BROKER"  # an unknown outcome the broker's order list never showed: not placed
    AMEND_UNKNOWN = "AMEND_UNKNOWN"  # a revise/cancel whose answer was lost: resolved from notices and the order list
    FILL_NOT_AT_BROKER = "FILL_NOT_AT_BROKER"  # a booked fill the broker's list does not have: taken back
    EXPIRED_UNSENT = "EXPIRED_UNSENT"  # a next-session order the next session never took (not sent)
    # not sent by its agent: the gateway kept denying orders of these terms (agent/denials.py)
    HELD_BACK = "HELD_BACK"
    # risk gate denials
    DENIED_UNKNOWN_CODE = "DENIED_UNKNOWN_CODE"
    DENIED_TICK = "DENIED_TICK"
    DENIED_PRICE_BAND = "DENIED_PRICE_BAND"
    DENIED_MARKET_CLOSED = "DENIED_MARKET_CLOSED"
    DENIED_SCHEDULE = "DENIED_SCHEDULE"  # before the card's [schedule] start: the agent's own orders wait for it
    DENIED_AUCTION_TIF = "DENIED_AUCTION_TIF"  # an order KRX takes only in the continuous session
    DENIED_NOTIONAL = "DENIED_NOTIONAL"
    DENIED_POSITION_LIMIT = "DENIED_POSITION_LIMIT"
    DENIED_OPEN_ORDERS = "DENIED_OPEN_ORDERS"
    DENIED_RATE = "DENIED_RATE"
    DENIED_BUDGET = "DENIED_BUDGET"
    DENIED_NO_SHARES = "DENIED_NO_SHARES"
    DENIED_DAILY_LOSS = "DENIED_DAILY_LOSS"
    DENIED_HALTED = "DENIED_HALTED"
    DENIED_REDUCING = "DENIED_REDUCING"
    DENIED_SHADOW = "DENIED_SHADOW"
    DENIED_SELF_TRADE = "DENIED_SELF_TRADE"  # it would trade with another agent's open order on the same account
    # account limits (common.config.RiskLimits; a card's are the agent's share of the same)
    DENIED_GROSS_EXPOSURE = "DENIED_GROSS_EXPOSURE"  # positions + open buys over a % of equity
    DENIED_MAX_POSITIONS = "DENIED_MAX_POSITIONS"  # one code too many
    DENIED_CONCENTRATION = "DENIED_CONCENTRATION"  # one code over a % of equity
    DENIED_SECTOR = "DENIED_SECTOR"  # one sector over a % of equity
    DENIED_DRAWDOWN = "DENIED_DRAWDOWN"  # equity too far below its peak
    DENIED_CASH_RESERVE = "DENIED_CASH_RESERVE"  # the buy would use the cash kept in reserve
    # protective orders (server/protection.py)
    UNKNOWN_PROTECTION = "UNKNOWN_PROTECTION"
    BAD_PROTECTION = "BAD_PROTECTION"  # no trigger, stop above take, a sell entry, too many ...
    # market data
    SUBSCRIPTION_LIMIT = "SUBSCRIPTION_LIMIT"
    UNKNOWN_CODE = "UNKNOWN_CODE"
    QUERY_QUOTA = "QUERY_QUOTA"  # too many market queries waiting on this agent's REST quota
    # agent key-value state
    STATE_LIMIT = "STATE_LIMIT"  # a key/value/total over the limits (see server/agent_services.py)


class KtraderError(Exception):
    """An error with a code, raised on either side and carried over the wire as an Error reply."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else str(code))
        self.code = code
        self.message = message
