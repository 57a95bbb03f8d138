"""Freshness of the ROUTER's requests: a timestamp window and a per-session replay window.

Every request header carries the sender's process session id (`sid`, new per process start), a
message id (`mid`, a counter within that session) and the sender's wall clock (`ts`). The gateway
refuses, with a typed error, a message whose `ts` is further than `window_ns` from its own clock
(STALE_MESSAGE: a replay of an old capture, or a clock that is off) and one whose (principal, sid,
mid) it has seen (REPLAYED). Ids may arrive a little out of order (a process with two sockets):
the last `span` ids below the highest are remembered one by one, like IPsec's replay window.

State is kept per (principal, sid) and forgotten once a session has been silent for twice the time
window: a message of it older than that is refused as stale anyway. In memory only: a new gateway
starts empty, which leaves a replay of the last `window` seconds of another gateway's traffic
possible after a failover (on tcp, CURVE encrypts the traffic, so there is nothing to capture).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from common.errors import ErrorCode

SPAN = 4096


class Freshness:
    def __init__(
        self, window_ns: int, now_ns: Callable[[], int] = time.time_ns, span: int = SPAN, max_sessions: int = 100_000
    ) -> None:
        self.window_ns = window_ns
        self.now_ns = now_ns
        self.span = span
        self.max_sessions = max_sessions
        self._seen: dict[tuple[str, str], list[int]] = {}  # (principal, sid) -> [highest mid, bitmap, last seen ns]
        self._sweep_at = 0

    def check(self, principal: str, sid: str, mid: int, ts: int) -> tuple[ErrorCode, str] | None:
        """None when fresh (and now remembered); else the refusal."""
        now = self.now_ns()
        skew = ts - now
        if abs(skew) > self.window_ns:
            return ErrorCode.STALE_MESSAGE, (
                f"sent {abs(skew) / 1e9:,.1f}s {'ahead of' if skew > 0 else 'before'} the "
                f"gateway's clock (window {self.window_ns / 1e9:g}s): a replay, or a clock off"
            )
        key = (principal, sid)
        st = self._seen.get(key)
        if st is None:
            if len(self._seen) >= self.max_sessions or now >= self._sweep_at:
                self._sweep(now)
            self._seen[key] = [mid, 1, now]
            return None
        top, bits = st[0], st[1]
        if mid > top:
            shift = mid - top
            st[1] = ((bits << shift) | 1) & ((1 << self.span) - 1) if shift < self.span else 1
            st[0] = mid
        else:
            back = top - mid
            if back >= self.span or bits >> back & 1:
                return ErrorCode.REPLAYED, f"message {mid} of session {sid[:8]} was already received"
            st[1] = bits | (1 << back)
        st[2] = now
        return None

    def _sweep(self, now: int) -> None:
        """Forget sessions silent for two windows (their old messages are stale anyway)."""
        self._sweep_at = now + self.window_ns
        cutoff = now - 2 * self.window_ns
        for key in [k for k, st in self._seen.items() if st[2] < cutoff]:
            del self._seen[key]
        while len(self._seen) >= self.max_sessions:  # a flood of new sessions: the first-seen go first
            del self._seen[next(iter(self._seen))]
