"""Admin endpoints of history mode (kis/sim/history_market.py), mounted by kis/sim/admin.py.

- GET  /admin/history            what is driven: directory, day, now, phase, codes, halted codes, counters
- POST /admin/history/advance    {"to": "HH:MM[:SS]"} (today) or an ISO date-time (KST): move the clock
                                 forward, running every print and auction up to it
- POST /admin/clock/close        run the day through its closing auction and close
- POST /admin/clock/next-day     finish the day, then the next KRX trading day's pre-open
- POST /admin/clock/move         {"to": ...}: the same as advance (history only moves forward)
Clock replies: {"day", "phase", "now", "prints", "fills", "seconds"} (prints and fills made by this
call, seconds spent running it). They return once every websocket frame the move produced has been
handed to its socket (bounded wait), so a client that reads its socket sees them next.

A move into a new day waits (bounded) at that day's pre-open until every gateway following the clock
(`ClockFollowers`) has read the new day, before anything of the day is sent: a gateway reads the clock every
half second, and one that got Monday's prints with Friday's time fired a stop under Friday's id and date (its
exit expired by Friday's late close while the broker filled it, a hunt).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from common.calendar import next_trading_day
from common.clock import KST
from kis.sim.history_market import HistoryError, HistoryExchange, pre_open

if TYPE_CHECKING:
    from kis.sim.server import TwinServer

DRAIN_WAIT_S = 2.0  # at most this long for the websocket writers to take what a move produced
FOLLOWER_HEADER = "X-Ktrader-Clock-Follower"  # a gateway following the clock says so on its GET /admin/state
FOLLOWER_TTL_S = 3.0  # a follower not heard from for this long is gone (a stopped gateway, its standby's promotion)
FOLLOW_WAIT_S = 2.5  # at most this long for the followers to read a new day (two of their half-second reads)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(doc, ensure_ascii=False), status=status, content_type="application/json")


def parse_to(raw: str, today: dt.date) -> dt.datetime:
    """ "HH:MM[:SS]" on `today`, or an ISO date-time; naive times are KST (the caller makes them aware), one with
    another offset the same instant in KST (its date may be another market day's)."""
    raw = raw.strip()
    try:
        if "T" in raw or "-" in raw:
            when = dt.datetime.fromisoformat(raw)
            return when if when.tzinfo is None else when.astimezone(KST).replace(tzinfo=None)
        return dt.datetime.combine(today, dt.time.fromisoformat(raw))
    except ValueError:
        raise HistoryError(f"bad time {raw!r}: give HH:MM[:SS] (today) or YYYY-MM-DDTHH:MM:SS") from None


class ClockFollowers:
    """The gateways following the twin's clock (server/brokers.py RemoteTwinClock): when each last read it, the
    time it was told then, and the time it has taken in. A follower asks one reading at a time and takes in each
    answer before it asks again: the answer to its last question may still wait in its socket behind the day's
    first prints (a busy loop reads both in one turn), the one before it is its clock's."""

    def __init__(self) -> None:
        self._told: dict[str, tuple[float, dt.datetime, dt.datetime | None]] = {}

    def read(self, follower: str, told: dt.datetime) -> None:
        prev = self._told.get(follower)
        self._told[follower] = (time.monotonic(), told, prev[1] if prev is not None else None)

    def behind(self, day: dt.date) -> list[str]:
        """Followers heard from lately whose clock is of a day before `day`."""
        now = time.monotonic()
        return [
            f
            for f, (at, _, taken) in self._told.items()
            if now - at < FOLLOWER_TTL_S and (taken is None or taken.date() < day)
        ]

    async def know(self, day: dt.date) -> None:
        """Until every live follower has read `day` (bounded: a frozen gateway reads the clock again on waking)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + FOLLOW_WAIT_S
        while self.behind(day) and loop.time() < end:
            await asyncio.sleep(0.005)  # bounded, once per day moved into


class HistoryAdmin:
    def __init__(self, server: TwinServer, followers: ClockFollowers | None = None) -> None:
        self.server = server
        self.followers = followers or ClockFollowers()

    @property
    def exchange(self) -> HistoryExchange | None:
        ex = self.server.twin.exchange
        return ex if isinstance(ex, HistoryExchange) else None

    def add_routes(self, router: web.UrlDispatcher, fallback: dict[str, Handler]) -> None:
        """History routes; the clock moves are history's own in history mode, else `fallback`'s."""
        router.add_get("/admin/history", self.state)
        router.add_post("/admin/history/advance", self.advance)
        history = self.exchange is not None
        router.add_post("/admin/clock/close", self.close if history else fallback["close"])
        router.add_post("/admin/clock/next-day", self.next_day if history else fallback["next-day"])
        router.add_post("/admin/clock/move", self.advance if history else fallback["move"])

    async def state(self, request: web.Request) -> web.Response:
        ex = self.exchange
        if ex is None:
            return self._not_history()
        return _json(ex.describe())

    async def advance(self, request: web.Request) -> web.Response:
        ex = self.exchange
        if ex is None:
            return self._not_history()
        try:
            doc = json.loads((await request.read()).decode("utf-8") or "{}")
            if not isinstance(doc, dict) or "to" not in doc:
                raise HistoryError('body must be {"to": "HH:MM[:SS]" or "YYYY-MM-DDTHH:MM:SS"}')
            when = parse_to(str(doc["to"]), ex.day)
            return await self._run(ex, lambda: self._advance(ex, when))
        except (HistoryError, json.JSONDecodeError, UnicodeDecodeError) as e:
            return _json({"error": str(e)}, 400)

    async def close(self, request: web.Request) -> web.Response:
        ex = self.exchange
        assert ex is not None
        return await self._run(ex, ex.close)

    async def next_day(self, request: web.Request) -> web.Response:
        ex = self.exchange
        assert ex is not None
        return await self._run(ex, lambda: self._next_day(ex))

    async def _next_day(self, ex: HistoryExchange) -> None:
        ex.next_day()
        await self._new_day(ex)  # (the caller's next move sends the day's prints)

    async def _advance(self, ex: HistoryExchange, when: dt.datetime) -> None:
        """`ex.advance(when)` a day at a time: each new day's pre-open is read by the followers before its prints."""
        when = when.astimezone(KST) if when.tzinfo is not None else when.replace(tzinfo=KST)  # (naive: KST)
        while when.date() > ex.day:
            ex.advance(min(when, pre_open(next_trading_day(ex.day))))
            await self._new_day(ex)
        ex.advance(when)

    async def _new_day(self, ex: HistoryExchange) -> None:
        await self._drained()  # (the day before's frames first: they are of the time the followers still read)
        await self.followers.know(ex.day)

    async def _run(self, ex: HistoryExchange, move: Callable[[], object]) -> web.Response:
        """`move` the clock (a coroutine where a new day waits for the followers: _advance, _next_day)."""
        prints, fills = ex.prints, ex.fills
        t0 = time.perf_counter()
        moved = move()
        if isinstance(moved, Awaitable):
            await moved
        seconds = time.perf_counter() - t0
        await self._drained()
        return _json(
            {
                "day": ex.day.isoformat(),
                "phase": ex.clock.phase().value,
                "now": ex.clock.now().isoformat(),
                "prints": ex.prints - prints,
                "fills": ex.fills - fills,
                "seconds": round(seconds, 6),
            }
        )

    async def _drained(self) -> None:
        """Wait (bounded) until every websocket session's queue is empty: the frames are on their sockets."""
        hub = self.server.ws_hub
        if hub is None:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + DRAIN_WAIT_S
        while any(not s.closed and not s.queue.empty() for s in hub.sessions) and loop.time() < end:
            await asyncio.sleep(0.001)  # the writers run meanwhile; bounded, not a hot path
        await asyncio.sleep(0)  # the last frame taken is being written

    @staticmethod
    def _not_history() -> web.Response:
        return _json({"error": "the twin is not in history mode: start it with --history DIR --from YYYY-MM-DD"}, 409)
