"""The one market clock: what day it is, which session phase, when bars close and the day cycle runs.

Every part of the system that asks "what time is it at the exchange?" asks an injected `MarketClock`,
never the system clock on its own (latency measurement may use a monotonic clock):
- live on KIS: `WallClock` (KST wall time, KRX calendar);
- on the KIS twin: the twin's own clock (it can stay open, follow KST, or replay a day fast, and the
  admin API moves it to the close or the next day), supplied by the broker;
- in a backtest, a rehearsal or a test: `ManualClock`, moved by the driver.

`timed` says whether the time of day means anything: the twin's `open` clock is in the continuous
session whatever the hour, so only its phase changes (an admin close) count there.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol, runtime_checkable

from common.clock import KST, now_kst, yyyymmdd
from common.krx import Phase, phase_at


@runtime_checkable
class MarketClock(Protocol):
    timed: bool

    def now(self) -> dt.datetime:
        """The exchange's time (KST, aware)."""
        ...

    def phase(self) -> Phase: ...


def market_ns(clock: MarketClock) -> int:
    """The clock's time in ns since the epoch (event time stamps in market time), exact."""
    d = clock.now() - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def market_day(clock: MarketClock) -> str:
    """YYYYMMDD of the clock's date (order ids, reports and day keys)."""
    return yyyymmdd(clock.now().date())


class WallClock:
    """KST wall time and the KRX calendar: the clock of a live KIS gateway."""

    timed = True
    machine_wall = True  # its steps are the machine's clock's (common.clock.ClockSteps), not the market's time

    def now(self) -> dt.datetime:
        return now_kst()

    def phase(self) -> Phase:
        return phase_at(now_kst())  # CLOSED on days KRX does not trade


class ManualClock:
    """A clock moved by its driver (tests, backtests, rehearsals). The phase follows the KRX calendar
    unless one is forced (`set_phase`), e.g. for a clock whose time of day means nothing."""

    def __init__(self, start: dt.datetime, *, timed: bool = True) -> None:
        self._now = _aware(start)
        self.timed = timed
        self._phase: Phase | None = None

    def now(self) -> dt.datetime:
        return self._now

    def phase(self) -> Phase:
        return self._phase if self._phase is not None else phase_at(self._now)

    def set(self, when: dt.datetime) -> None:
        self._now = _aware(when)

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)

    def set_phase(self, phase: Phase | None) -> None:
        self._phase = phase


def _aware(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=KST) if when.tzinfo is None else when.astimezone(KST)


class RunningClock:
    """Market time that runs from `start` at `speed` × real time (tests and rehearsals that need time
    to pass on its own, e.g. for timeouts), phase from the KRX calendar unless forced."""

    def __init__(self, start: dt.datetime, *, speed: float = 1.0, timed: bool = True) -> None:
        self.timed = timed
        self.speed = speed
        self._phase: Phase | None = None
        self.set(start)

    def set(self, when: dt.datetime) -> None:
        self._start = _aware(when)
        self._real0 = time.monotonic()

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=(time.monotonic() - self._real0) * self.speed)

    def phase(self) -> Phase:
        return self._phase if self._phase is not None else phase_at(self.now())

    def set_phase(self, phase: Phase | None) -> None:
        self._phase = phase


class OpenClock:
    """A market that is always in its continuous session, on KST wall time (in-process test brokers;
    the twin's `open` clock is the same idea). The time of day means nothing here."""

    timed = False

    def now(self) -> dt.datetime:
        return now_kst()

    def phase(self) -> Phase:
        return Phase.CONTINUOUS
