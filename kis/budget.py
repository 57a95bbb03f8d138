"""One REST budget per app key: an async token bucket under the KIS limit, with priority lanes and
per-caller quotas.

A caller that finds nobody waiting and a token in the bucket takes it at once; otherwise it parks on a
future and one dispatcher task hands out permits when the bucket has a token, then sleeps exactly
until the next token (never polls). Cancels go first, then the gateway's own exits (a stop's or a flatten's
sell), both exempt from caller quotas (they reduce risk). A call waiting in a later lane moves up a lane every
`AGE_S` it waits, as far as the new orders' lane: on a paper account (2 requests/s) agents' orders at 1.6/s kept every
account and quote call waiting 150 s (reconciliation 250 s late, agents' queries timed out unsent). `penalize()` is
called on EGW00201 to stop all traffic for a while.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from enum import IntEnum


class Lane(IntEnum):
    """Lower value = served first."""

    CANCEL = 0
    EXIT = 1  # the gateway's own sells (placed by it for an agent: common.ids.placed_by_gateway)
    ORDER = 2
    ACCOUNT = 3
    QUOTATION = 4


_UNQUOTED = frozenset({Lane.CANCEL, Lane.EXIT})  # risk-reducing: never held back by a caller's quota
AGE_S = 2.0  # a waiting call moves up a lane each time this passes (see the module docstring)


def _aged(lane: int, waited_s: float) -> int:
    """The lane a call of a later lane than the new orders' that waited `waited_s` is served in: up one each AGE_S,
    never past the new orders'."""
    return max(int(Lane.ORDER), lane - int(waited_s / AGE_S))


class _Bucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_time(self) -> float:
        # epsilon: float refills can stop a hair short of 1.0, and a sleep that small does not
        # move a large monotonic clock value at all
        return 0.0 if self.tokens >= 1.0 - 1e-9 else (1.0 - self.tokens) / self.rate


class RestBudget:
    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self._clock = clock
        self._sleep = sleep
        # burst 1 = strict spacing of 1/rate: any 1 s window sees at most floor(rate)+1 calls,
        # still under KIS's 20/s (real) and 2/s (paper) with our 18 / 1.8 defaults.
        self._bucket = _Bucket(rate_per_s, max(1.0, burst), clock())
        self._quotas: dict[str, _Bucket] = {}
        self._waiters: list[tuple[int, int, str, asyncio.Future[None], float]] = []
        self._seq = itertools.count()
        self._aged_turn = False  # an aged call and a new order take turns (see _first_eligible)
        self._paused_until = 0.0
        self._dispatcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.granted = 0
        self.granted_by: dict[str, int] = {}  # caller -> calls granted (the console shows per-agent use)
        self.penalties = 0
        self.paused_s = 0.0  # total pause asked for by penalties

    @property
    def rate_per_s(self) -> float:
        return self._bucket.rate

    def set_quota(self, caller: str, rate_per_s: float, burst: float = 1.0) -> None:
        """Cap one caller (e.g. an agent id) below the shared rate. 0 removes the cap."""
        if rate_per_s <= 0:
            self._quotas.pop(caller, None)
        else:
            self._quotas[caller] = _Bucket(rate_per_s, max(1.0, burst), self._clock())
        self._wake.set()

    def penalize(self, seconds: float) -> None:
        """KIS said EGW00201: stop everything for `seconds` and drain the bucket."""
        self.penalties += 1
        self.paused_s += seconds
        now = self._clock()
        self._paused_until = max(self._paused_until, now + seconds)
        self._bucket.tokens = 0.0
        self._bucket.stamp = max(self._bucket.stamp, now)
        self._wake.set()

    async def acquire(self, lane: Lane = Lane.QUOTATION, caller: str = "") -> None:
        if not self._waiters and self._take_now(lane, caller):
            return  # nobody waits and a token is there: no hand-off through the dispatcher
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (int(lane), next(self._seq), caller, fut, self._clock()))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch(), name="kis-rest-budget")
        self._wake.set()
        await fut  # cancelling the caller leaves a done future; the dispatcher skips it

    def _take_now(self, lane: Lane, caller: str) -> bool:
        now = self._clock()
        if now < self._paused_until:
            return False
        self._bucket.refill(now)
        if self._bucket.wait_time() > 0:
            return False
        q = None if lane in _UNQUOTED else self._quotas.get(caller)
        if q is not None:
            q.refill(now)
            if q.wait_time() > 0:
                return False
            q.tokens -= 1.0
        self._bucket.tokens -= 1.0
        self.granted += 1
        self.granted_by[caller] = self.granted_by.get(caller, 0) + 1
        return True

    async def _dispatch(self) -> None:
        while True:
            while self._waiters and self._waiters[0][3].done():
                heapq.heappop(self._waiters)
            if not self._waiters:
                return
            now = self._clock()
            if now < self._paused_until:
                await self._nap(self._paused_until - now)
                continue
            self._bucket.refill(now)
            wait = self._bucket.wait_time()
            if wait > 0:
                await self._nap(wait)
                continue
            pick, quota_wait = self._first_eligible(now)
            if pick is None:
                await self._nap(quota_wait)
                continue
            entry = self._waiters[pick]
            self._waiters[pick] = self._waiters[-1]
            self._waiters.pop()
            heapq.heapify(self._waiters)
            lane, _, caller, fut, _ = entry
            self._bucket.tokens -= 1.0
            if lane not in _UNQUOTED and caller in self._quotas:
                self._quotas[caller].tokens -= 1.0
            self.granted += 1
            self.granted_by[caller] = self.granted_by.get(caller, 0) + 1
            fut.set_result(None)

    def _first_eligible(self, now: float) -> tuple[int | None, float]:
        """Index of the best waiter whose caller has quota left, else the shortest quota wait. By lane, oldest first;
        a call aged up to the new orders' lane takes every other token while orders wait (strictly first in, a
        backlog of 30 aged quote calls at a start kept an order waiting 14 s, sent stale: a review)."""
        first: int | None = None  # the best of the cancels', exits' and new orders' lanes, by lane, oldest first
        rest: int | None = None  # the best of the later lanes, aged
        rest_key = (0, 0)
        aged: int | None = None  # the oldest call aged up to the new orders' lane
        shortest = float("inf")
        for i, (lane, seq, caller, fut, since) in enumerate(self._waiters):
            if fut.done():
                continue
            q = None if lane in _UNQUOTED else self._quotas.get(caller)
            if q is not None:
                q.refill(now)
                w = q.wait_time()
                if w > 0:
                    shortest = min(shortest, w)
                    continue
            if lane <= Lane.ORDER:
                if first is None or (lane, seq) < self._waiters[first][:2]:
                    first = i
                continue
            up = _aged(lane, now - since)
            if up == Lane.ORDER and (aged is None or seq < self._waiters[aged][1]):
                aged = i
            if rest is None or (up, seq) < rest_key:
                rest, rest_key = i, (up, seq)
        best = first if first is not None else rest
        if first is not None and aged is not None and self._waiters[first][0] == Lane.ORDER:
            self._aged_turn = not self._aged_turn
            if self._aged_turn:
                best = aged
        return best, (shortest if shortest != float("inf") else 0.0)

    async def _nap(self, seconds: float) -> None:
        """Sleep until the next token, or earlier if something changes (new waiter, quota, penalty)."""
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._sleep(max(seconds, 0.0)))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
