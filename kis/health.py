"""The broker session's own health facts (token, REST budget, websocket, registrations) as one
typed `BrokerHealth`, for the gateway's status and the console; and, in words, why the session is
not READY (the notice feed every order waits for).

Every BrokerPort answers `health()` (the protocol's default carries only the session state). The order
desk puts `session_detail` into every SESSION_NOT_READY refusal (server/core.py session_view)."""

from __future__ import annotations

from common.clock import now_kst
from common.enums import SessionProblem, SessionState
from common.schema import BrokerHealth
from kis.budget import RestBudget
from kis.session_why import session_why
from kis.token import TokenManager
from kis.ws import KisWebSocket


def kis_health(ws: KisWebSocket, tokens: TokenManager, budget: RestBudget) -> BrokerHealth:
    # expires_at is on the token manager's clock (wall clock by default), in seconds
    exp = tokens.expires_at
    ready = ws.state is SessionState.READY
    return BrokerHealth(
        session_state=ws.state,
        token_expires_ns=int(exp * 1e9) if exp > 0 else 0,
        rest_limit_per_s=budget.rate_per_s,
        rest_calls=budget.granted,
        rest_calls_by=dict(budget.granted_by),
        rest_waiting=sum(1 for w in budget._waiters if not w[3].done()),
        rest_penalties=budget.penalties,
        ws_last_message_age_s=round(max(0.0, (now_kst() - ws._last_rx).total_seconds()), 2),
        ws_sessions=ws.sessions,
        ws_dropped=ws.parser.errors + sum(ws.parser.bad_records.values()),
        # the notice slot's key is the user's HTS id: not something to show on screens
        registrations={_registration_label(ws, k): n for k, n in ws.registrations.items()},
        max_registrations=ws.cfg.max_registrations,
        session_problem=SessionProblem.NONE if ready else ws.problem,
        session_detail="" if ready else session_why(ws.state, ws.problem, ws.problem_detail),
    )


def _registration_label(ws: KisWebSocket, key: tuple[str, str]) -> str:
    """'H0STCNT0:005930'; the notice slot's key is the user's HTS id: not something to show on screens;
    a key KIS refused on this session says so (wanted and tried again, but it brings no data now)."""
    tr, code = key
    label = f"{tr}:{'notices' if key == ws.notice_key else code}"
    return f"{label} (refused)" if key in ws.refused else label
