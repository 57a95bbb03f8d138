"""The twin's clock: `open` (always in the continuous session), `kst` (real KST hours and the KRX
calendar), `replay` (a given date from the opening call at N× speed) or `history` (stands still:
kis/sim/history_market.py moves it).

All three are "virtual = anchor + elapsed real time × speed"; the admin API re-anchors the clock to
jump to the close or to the next trading day.

`open` is a synthetic session day: its date is the configured one (or today), and its time of day
starts at that day's opening (09:00) when the twin starts or moves to a day, then runs with the wall
clock, so order, fill and print times read like KRX session times whatever the hour outside. A twin
left open longer than the session (6 h 20 min) keeps trading with later times, up to 23:59:59; past
it the next trading day opens, as the admin's next-day move does (the exchange closes the day and
rolls its books on its next tick). A clock that stood still there instead froze every window measured
on market time in a gateway left running (order rates, kill-switch and grace windows, retries, bars).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from common.calendar import is_trading_day, next_trading_day, session_hours
from common.clock import KST, elapsed_ns, now_kst
from common.krx import Phase, SessionTimes, phase_at

OPEN_MODE_START = dt.time(9, 0)
OPEN_MODE_LAST = dt.time(23, 59, 59)


class ClockMode(StrEnum):
    OPEN = "open"
    KST = "kst"
    REPLAY = "replay"
    HISTORY = "history"  # speed 0: only the history driver moves it (kis/sim/history_market.py)


class TwinClock:
    def __init__(self, mode: ClockMode = ClockMode.OPEN, date: dt.date | None = None, speed: float = 1.0) -> None:
        self.mode = mode
        self.speed = speed if mode is ClockMode.REPLAY else 0.0 if mode is ClockMode.HISTORY else 1.0
        self._closed = False  # open mode: the admin moved the day to the close
        if mode in (ClockMode.REPLAY, ClockMode.HISTORY):
            day = date or now_kst().date()
            if not is_trading_day(day):
                day = next_trading_day(day)
            self._anchor(SessionTimes(day).auction_open)
        elif mode is ClockMode.KST:
            self._anchor(now_kst())
        else:
            self._open_day(date or now_kst().date())

    def _anchor(self, virtual: dt.datetime) -> None:
        self._virtual0 = virtual
        # a clock that counts a machine's sleep (a laptop's suspend): time.monotonic left a `kst` twin 9 h behind
        # KST after a night's sleep (a hunt)
        self._real0 = elapsed_ns() / 1e9

    def _open_day(self, day: dt.date) -> None:
        """Open mode: `day` from its opening time (09:00 on days KRX does not trade)."""
        self._day = day
        self._closed = False
        hours = session_hours(day)
        self._anchor(dt.datetime.combine(day, hours[0] if hours else OPEN_MODE_START, tzinfo=KST))

    def now(self) -> dt.datetime:
        t = self._virtual0 + dt.timedelta(seconds=(elapsed_ns() / 1e9 - self._real0) * self.speed)
        if self.mode is ClockMode.OPEN and t > dt.datetime.combine(self._day, OPEN_MODE_LAST, tzinfo=KST):
            self._open_day(next_trading_day(self._day))  # the synthetic day is over: the next one opens
            return self._virtual0
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
            self._open_day(nxt)
        else:
            self._anchor(SessionTimes(nxt).auction_open)
        return nxt

    def go_on_from(self, when: dt.datetime, closed: bool = False) -> None:
        """Open mode: run on from `when` (a restart on a state file: the time it had reached, never back to a time of
        the same day already traded), `closed` if the admin had closed that day. Other modes: unchanged."""
        if self.mode is ClockMode.OPEN and when > self.now():
            self._day, self._closed = when.date(), closed
            self._anchor(when)

    def move_to(self, when: dt.datetime) -> None:
        """Jump to a KST time (kst/replay modes; open mode takes the date and starts it at its opening)."""
        # naive: KST; another offset is the same instant in KST (kept, its date was another market day's)
        when = when.replace(tzinfo=KST) if when.tzinfo is None else when.astimezone(KST)
        if self.mode is ClockMode.OPEN:
            self._open_day(when.date())
        else:
            self._anchor(when)
