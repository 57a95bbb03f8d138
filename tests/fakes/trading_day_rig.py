"""A TradingDay (server/trading_day.py) around the order core harness, on a clock the test moves: what
the day-cycle tests (missed end-of-day policy, unclosed days, close back-off, morning base prices) drive.
Spawned coroutines are kept (the test runs them, or they are closed at the end); alerts and the real-time
back-off clock (`TradingDay.monotonic`) are the test's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from common.clock import KST
from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import AlertKind
from common.market_clock import ManualClock, market_day
from common.portfolio import Portfolio
from server.trading_day import BasePrices, TradingDay
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness


def policy_card(agent: str, policy: EndOfDay, code: str = "005930", end: str = "15:20") -> AgentCard:
    """A card trading `code` whose day ends at `end` with `policy` (orders up to 5,000,000 KRW)."""
    return AgentCard(
        id=agent,
        name=agent,
        strategy="x:Y",
        codes=[code],
        budget=10_000_000,
        risk=RiskLimits(max_order_value=5_000_000),
        schedule=Schedule(end=end, end_of_day=policy),
    )


class ClockedBook:
    """What BasePrices reads of an order book: its portfolio, and the market day of a clock the test moves."""

    def __init__(self, now: dt.datetime) -> None:
        self.portfolio = Portfolio()
        self.clock = ManualClock(now)

    def day(self) -> str:
        return market_day(self.clock)


def on(day: dt.date, hhmm: str) -> dt.datetime:
    """`day` at `hhmm` (naive: the rig's clock reads it as KST)."""
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm))


class Rig:
    def __init__(
        self,
        db: Path,
        start: dt.datetime,
        cards: list[AgentCard],
        *,
        broker: FakeBroker | None = None,
        close_bars: Callable[[dt.date], Awaitable[object]] | None = None,
        day_close: Callable[[str, dt.date], int] = lambda code, day: 0,
    ) -> None:
        self.clock = ManualClock(start.replace(tzinfo=KST) if start.tzinfo is None else start)
        self.h = Harness(db, broker=broker, clock=self.clock, cards={c.id: c for c in cards})
        self.cards = cards
        self.db = db
        self.close_bars = close_bars
        self.day_close = day_close
        self.alerts: list[tuple[str, AlertKind | None]] = []
        self.spawned: list[Coroutine[Any, Any, None]] = []
        self.mono = [1000.0]  # the back-off clock (real time in the gateway)
        self.day = self.new_day()

    def new_day(self) -> TradingDay:
        """A TradingDay on the same store (a restarted gateway's, when called again)."""
        h = self.h
        day = TradingDay(
            self.clock,
            h.book,
            h.desk,
            h.risk,
            h.core.recon,
            BasePrices(h.book, h.broker.day_band),
            lambda: self.cards,
            lambda *a: None,
            lambda reason: None,
            self.spawned.append,
            self.db.parent,
            close_bars=self.close_bars,
            alert=lambda text, kind: self.alerts.append((text, kind)),
            day_close=self.day_close,
        )
        day.monotonic = lambda: self.mono[0]
        return day

    async def start(self) -> None:
        await self.h.start(read_account=False)

    def at(self, when: dt.datetime) -> None:
        self.clock.set(when.replace(tzinfo=KST) if when.tzinfo is None else when)

    async def run_spawned(self) -> int:
        """Run what the ticks spawned so far (in order); returns how many."""
        n = 0
        while self.spawned:
            await self.spawned.pop(0)
            n += 1
        return n

    def drop_spawned(self) -> None:
        """Forget what the ticks spawned, unrun (closed: a coroutine dropped unawaited is a warning)."""
        for c in self.spawned:
            c.close()
        self.spawned.clear()

    def alerted(self, kind: AlertKind | None) -> list[str]:
        return [text for text, k in self.alerts if k is kind]

    async def close(self) -> None:
        for c in self.spawned:
            c.close()
        await self.h.close()
