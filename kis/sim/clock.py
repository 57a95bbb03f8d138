"""The twin's clock: `open` (always in the continuous session), `kst` (real KST hours and the KRX
calendar) or `replay` (a given date from the opening call at N× speed).

All three are "virtual = anchor + elapsed real time × speed"; the admin API re-anchors the clock to
jump to the close or to the next trading day.
"""

from __future__ import annotations

import datetime as dt
import time
from enum import StrEnum

from common.calendar import is_trading_day, next_trading_day
from common.clock import KST, now_kst
from common.krx import Phase, SessionTimes, phase_at


class ClockMode(StrEnum):
    OPEN = "open"
    KST = "kst"
    REPLAY = "replay"


class TwinClock:
    def __init__(self, mode: ClockMode = ClockMode.OPEN, date: dt.date | None = None, speed: float = 1.0) -> None:
        self.mode = mode
        self.speed = speed if mode is ClockMode.REPLAY else 1.0
        self._closed = False  # open mode: the admin moved the day to the close
        if mode is ClockMode.REPLAY:
            day = date or now_kst().date()
            if not is_trading_day(day):
                day = next_trading_day(day)
            self._anchor(SessionTimes(day).auction_open)
        elif mode is ClockMode.KST:
            self._anchor(now_kst())
        else:
            # open mode: the session date is fixed (config date or today), the time of day is wall time
            self._day = date or now_kst().date()
            self._anchor(now_kst())

    def _anchor(self, virtual: dt.datetime) -> None:
        self._virtual0 = virtual
        self._real0 = time.monotonic()

    def now(self) -> dt.datetime:
        t = self._virtual0 + dt.timedelta(seconds=(time.monotonic() - self._real0) * self.speed)
        if self.mode is ClockMode.OPEN:
            return dt.datetime.combine(self._day, t.timetz())
        return t

    def today(self) -> dt.date:
        return self.now().date()

    def phase(self) -> Phase:
        if self.mode is ClockMode.OPEN:
            return Phase.AFTER_HOURS_END if self._closed else Phase.CONTINUOUS
        return phase_at(self.now())

    # ---------------------------------------------------------------- admin moves
    def move_to_close(self) -> None:
        if self.mode is ClockMode.OPEN:
            self._closed = True
            return
        day = self.today()
        if is_trading_day(day):
            self._anchor(SessionTimes(day).close + dt.timedelta(seconds=1))

    def move_to_next_day(self) -> dt.date:
        nxt = next_trading_day(self.today())
        if self.mode is ClockMode.OPEN:
            self._day = nxt
            self._closed = False
        else:
            self._anchor(SessionTimes(nxt).auction_open)
        return nxt

    def move_to(self, when: dt.datetime) -> None:
        """Jump to a KST time (kst/replay modes; open mode only takes the date)."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=KST)
        if self.mode is ClockMode.OPEN:
            self._day = when.date()
            self._closed = False
        else:
            self._anchor(when)
