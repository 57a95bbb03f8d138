"""Conditions that raise an alert by lasting or by appearing, checked about once a second by the
operator (server/operator.py) from facts the gateway already has: the broker session down too
long, stale real-time data in the continuous session, differences found by a reconciliation,
orders whose outcome at the broker is unknown. Each episode is raised once (the notifier also
suppresses repeats). Events that are alerts the moment they happen (kill switch, halt, daily loss,
an agent going offline with positions) are raised where they happen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.config import NotifyConfig
from common.enums import AlertKind, SessionState
from common.krx import Phase

# the phases in which prints are expected every few seconds on a registered code
LIVE_PHASES = frozenset({Phase.CONTINUOUS})


@dataclass(frozen=True)
class Raised:
    kind: AlertKind
    text: str
    agent: str = ""
    subject: str = ""


@dataclass(frozen=True)
class Facts:
    now: float  # monotonic seconds
    session: SessionState
    phase: Phase
    subscribed: bool  # any market-data registration is active
    ws_age_s: float  # seconds since the last websocket message (-1: the broker does not say)
    reconcile: tuple[int, str, int] | None  # (ts_ns, reason, differences) of the last pass
    reconcile_texts: list[str]  # that pass's differences
    unknown: dict[str, str]  # client order id -> agent, orders in UNKNOWN now


class AlertWatch:
    def __init__(self, cfg: NotifyConfig) -> None:
        self.cfg = cfg
        self._down_since: float | None = None
        self._down_raised = False
        self._stale_raised = False
        self._reconcile_seen: tuple[int, str, int] | None = None
        self._unknown_seen: set[str] = set()

    def check(self, f: Facts) -> list[Raised]:
        return [*self._session(f), *self._stale(f), *self._reconcile(f), *self._unknown(f)]

    def _session(self, f: Facts) -> Iterable[Raised]:
        if f.session is SessionState.READY:
            self._down_since, self._down_raised = None, False
            return
        if self._down_since is None:
            self._down_since = f.now
        down = f.now - self._down_since
        if not self._down_raised and down >= self.cfg.session_down_s:
            self._down_raised = True
            yield Raised(
                AlertKind.SESSION_DOWN,
                f"the broker session has been {f.session.value} for {down:.0f}s: "
                "new orders are denied until it is ready",
            )

    def _stale(self, f: Facts) -> Iterable[Raised]:
        stale = (
            f.session is SessionState.READY
            and f.phase in LIVE_PHASES
            and f.subscribed
            and f.ws_age_s >= self.cfg.stale_data_s
        )
        if not stale:
            self._stale_raised = False
            return
        if not self._stale_raised:
            self._stale_raised = True
            yield Raised(
                AlertKind.STALE_MARKET_DATA,
                f"no real-time message for {f.ws_age_s:.0f}s in the continuous "
                "session: prices and strategies are working on old data",
            )

    def _reconcile(self, f: Facts) -> Iterable[Raised]:
        if f.reconcile is None or f.reconcile == self._reconcile_seen:
            return
        self._reconcile_seen = f.reconcile
        _, reason, n = f.reconcile
        if n:
            shown = "; ".join(f.reconcile_texts[:5]) + (f" (+{n - 5} more)" if n > 5 else "")
            yield Raised(
                AlertKind.RECONCILE_DIFF, f"{n} differences with the broker ({reason}): {shown}", subject=shown
            )

    def _unknown(self, f: Facts) -> Iterable[Raised]:
        for coid in sorted(set(f.unknown) - self._unknown_seen):
            yield Raised(
                AlertKind.UNKNOWN_ORDER,
                f"{coid}: sent, outcome unknown; it is never resent and counts "
                "against risk until reconciliation finds it",
                agent=f.unknown[coid],
                subject=coid,
            )
        self._unknown_seen = set(f.unknown)
