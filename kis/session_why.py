"""Why the KIS real-time session is not READY, in one line with what to check (the websocket's
`SessionProblem` plus its detail). Shown in logs, in `ktrader status` and in the SESSION_NOT_READY
refusal an agent gets for an order."""

from __future__ import annotations

from common.enums import SessionProblem, SessionState
from kis.codes import lookup

_WHY: dict[SessionProblem, str] = {
    SessionProblem.STARTING: "connecting to the KIS websocket",
    SessionProblem.WS_UNREACHABLE: "the KIS websocket cannot be reached ({detail}): check that outbound port is open "
    "(firewall, proxy) and broker.ws_url",
    SessionProblem.APPROVAL_FAILED: "no websocket approval key ({detail})",
    SessionProblem.APPROVAL_INVALID: "KIS refused the websocket approval key (OPSP0011); a new one is requested",
    SessionProblem.KEY_IN_USE: "KIS says this app key's websocket is in use elsewhere (OPSP8996): "
    + lookup("OPSP8996").hint,
    SessionProblem.HTS_ID_REFUSED: "KIS refused the order/fill notice feed for the HTS id (OPSP0017): "
    + lookup("OPSP0017").hint,
    SessionProblem.NOTICE_REFUSED: "KIS refused the order/fill notice feed ({detail})",
    SessionProblem.DROPPED: "the KIS websocket dropped ({detail}); reconnecting",
}


def session_why(state: SessionState, problem: SessionProblem, detail: str) -> str:
    """One line: why the session is `state`, what to check."""
    if problem is SessionProblem.NONE:
        return f"session {state.value}"
    return _WHY[problem].format(detail=detail or "no detail")
