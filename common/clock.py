"""Time in KST. KRX runs on Korea Standard Time (UTC+9, no daylight saving)."""

from __future__ import annotations

import datetime as dt
import functools
import time

KST = dt.timezone(dt.timedelta(hours=9), "KST")


def now_kst() -> dt.datetime:
    return dt.datetime.now(KST)


def today_kst() -> dt.date:
    return now_kst().date()


def now_ns() -> int:
    """Wall-clock nanoseconds since the epoch (message timestamps)."""
    return time.time_ns()


def kst_from_ns(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, KST)


def when_text(ns: int, now: int) -> str:
    """A time for people beside what happened then: the time of day if it is today's (KST), else the date too (an
    action or alert of two days ago read as this morning's)."""
    at = kst_from_ns(ns)
    return f"{at:%H:%M:%S}" if at.date() == kst_from_ns(now).date() else f"{at:%m-%d %H:%M:%S}"


@functools.lru_cache(maxsize=64)  # strftime on every order and event is a measurable cost
def yyyymmdd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


@functools.lru_cache(maxsize=64)  # the inverse, per fill and per id: ValueError for what is not a date
def date_of(yyyymmdd: str) -> dt.date:
    return dt.datetime.strptime(yyyymmdd, "%Y%m%d").date()


STEP_NS = 2_000_000_000  # wall and elapsed time apart by more than this between two looks: a step
# time that passed, a machine's sleep included (Linux's CLOCK_BOOTTIME): a suspended laptop or a paused VM wakes
# to a wall clock that is right, and the exchange's time did pass meanwhile; CLOCK_MONOTONIC stops while asleep
_ELAPSED_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def elapsed_ns() -> int:
    """A clock that never steps and counts a machine's sleep where the OS tells it (ns, from an arbitrary start)."""
    return time.clock_gettime_ns(_ELAPSED_CLOCK) if _ELAPSED_CLOCK is not None else time.monotonic_ns()


class ClockSteps:
    """Forward steps of the machine's wall clock (NTP correcting a slow clock, an operator setting the date),
    so that an age measured on wall-clock stamps (an order's last change, a fill notice's time) counts the
    time that passed, not the step: a grace that looks expired only because the clock jumped ahead would
    take back a fill the broker's list has not shown yet, or reject an order whose outcome is still coming.

    `look` compares the wall clock with `elapsed_ns` (call it before the ages are used); a stamp taken before a
    step is moved forward by it. Backward steps are not undone: they make stamps look younger, which only holds
    a grace longer (and a stamp from before such a step cannot be told from one after it by its value). A
    machine's sleep is no step (the exchange's time passed; where the OS does not count sleep, as macOS's
    monotonic clock, it shows as one: graces held longer, never shortened)."""

    __slots__ = ("_last", "steps")

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None
        self.steps: list[tuple[int, int]] = []  # (cutoff, step): stamps below the cutoff predate the step

    def look(self, wall_ns: int, since_boot_ns: int) -> int:
        """Note a step since the last look (`since_boot_ns`: `elapsed_ns()` now); its size in ns (0: none)."""
        last, self._last = self._last, (wall_ns, since_boot_ns)
        if last is None:
            return 0
        elapsed = since_boot_ns - last[1]
        step = (wall_ns - last[0]) - elapsed
        if step <= STEP_NS:
            return 0
        # a stamp taken before the step is at most the last look's time plus the time that passed; one taken
        # after it at least the last look's plus the step (the two ranges apart when looks come more often
        # than steps are large; otherwise a later stamp is moved too: its grace held longer, never shorter)
        self.steps.append((last[0] + elapsed, step))
        del self.steps[:-16]  # (a grace is minutes: older steps moved only stamps long past every grace)
        return step

    def age(self, now_ns: int, ts_ns: int) -> int:
        """`now_ns - ts_ns` less the steps taken after `ts_ns`."""
        age = now_ns - ts_ns
        for cutoff, step in self.steps:
            if ts_ns < cutoff:
                age -= step
        return age
