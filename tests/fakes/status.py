"""A gateway's StatusReply for console and report tests: the fields a test varies, the rest quiet."""

from __future__ import annotations

from typing import Any

from common.enums import AgentMode, AgentState, SessionState, TradingState
from common.schema import AgentStatus, HeaderFactory, StatusReply


def agent_status(agent: str, **fields: Any) -> AgentStatus:
    base: dict[str, Any] = {
        "id": agent,
        "name": agent,
        "strategy": "m:C",
        "state": AgentState.ONLINE,
        "mode": AgentMode.LIVE,
        "trading_state": TradingState.ACTIVE,
        "pid": 1,
        "host": "h",
        "session": "s",
        "heartbeat_age_s": 0.1,
        "max_ack_gap_ms": 0,
        "registrations": 1,
        "codes": ["005930"],
        "open_orders": 0,
        "orders_today": 0,
        "errors": 0,
    }
    return AgentStatus(**(base | fields))


def status_reply(agents: list[AgentStatus], **fields: Any) -> StatusReply:
    base: dict[str, Any] = {
        "h": HeaderFactory("gateway")(),
        "gateway_pid": 1,
        "gateway_session": "s",
        "started_ns": 0,
        "session_state": SessionState.READY,
        "broker": "fake",
        "trading_state": TradingState.ACTIVE,
        "agents": agents,
        "orders_today": 0,
        "open_orders": 0,
        "fills_today": 0,
        "counters": {},
    }
    return StatusReply(**(base | fields))
