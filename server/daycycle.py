"""The trading day's cycle: what is due, decided from the market clock (pure; the gateway acts).

- Before the close, at each card's `schedule.end` (or as soon as the closing auction starts, for
  clocks without a meaningful time of day), the agent's end-of-day policy runs once: cancel its
  open orders, flatten (cancel, then sell at market) or hold. From then on the agent may only
  reduce risk for the rest of the day. `schedule.end` is a time of a normal day: on a day whose
  session closes late (the CSAT day closes at 16:30) it moves by as much, so the policy still runs
  the same time before the close; an end at or after the close is the close's (`policy_due`: a flatten
  as the closing call starts, a cancel or hold nothing before it). A card whose end passed while no
  gateway ran (restarted after the close), or while its agent was not registered, is reported as
  `missed` once the session is over (the
  approved cards of agents not registered that hold positions or orders too, at the close: the caller
  tells a person of those, acting for nobody not running): the caller alerts it and does what can still
  be done.
- After the close the day is closed once: the broker's final view is reconciled, orders still
  open are expired (KRX day orders do not survive the close) and the daily report is written. On a
  clock with a meaningful time of day this waits CLOSE_SETTLE past the regular close: KRX ends the
  closing auction at a random moment up to 30 s after it (random end), and its print and fills must
  be in before the broker's final view and the day's bars are taken.
- A new date starts a new day: numbering, day P&L and base prices roll; positions carry over. The
  most recent earlier trading day this gateway ran that was never closed (down over its close, or a
  close that failed until midnight) is closed then, late (`unclosed_before`), and the policies of that
  day that never ran are worked out against that day's own stored set (`cleaned_on`, `policy_time`).

Progress is kept in the store's meta table so a gateway restarted in the afternoon neither
repeats a flatten nor forgets to close the day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Protocol

import msgspec

from common.calendar import previous_trading_day, schedule_end
from common.clock import KST, date_of, yyyymmdd
from common.config import AgentCard, EndOfDay
from common.krx import Phase, SessionTimes

CLOSE_SETTLE = dt.timedelta(minutes=1)  # past the closing auction's random end (<= 30 s)
# how far back a start (or a new day) looks for a trading day it ran but never closed (a gateway down
# over a long weekend plus a holiday is a handful of days; older ones are left: their reports are stale)
UNCLOSED_LOOKBACK = 10

# Phases in trading-day order; CLOSED (holidays) is outside the cycle.
_ORDER = [
    Phase.PRE_OPEN,
    Phase.OPENING_AUCTION,
    Phase.CONTINUOUS,
    Phase.CLOSING_AUCTION,
    Phase.POST_CLOSE,
    Phase.POST_OFF_HOURS,
    Phase.AFTER_HOURS_SINGLE,
    Phase.AFTER_HOURS_END,
]
RANK = {p: i for i, p in enumerate(_ORDER)}


@dataclass
class DueActions:
    cleanup: list[AgentCard] = field(default_factory=list)  # run their end-of-day policy now
    # the session is over and their policy never ran today (no gateway at their end): alert, do what still can be
    missed: list[AgentCard] = field(default_factory=list)
    close_day: bool = False


class MetaStore(Protocol):  # the slice of server.store.Store used here
    def get_meta(self, key: str, default: str = "") -> str: ...
    def set_meta(self, key: str, value: str) -> None: ...


class DayCycle:
    def __init__(self, store: MetaStore) -> None:
        self.store = store
        self.day = ""
        self.cleaned: set[str] = set()  # agents whose end-of-day policy ran today
        self.closed = False
        self._past: dict[str, set[str]] = {}  # earlier days' stored sets (a late day's, read every tick)
        # day -> agents whose policy that ran was a flatten (as stored; read again after a roll)
        self._flattened: dict[str, set[str]] = {}

    def roll(self, day: str) -> bool:
        """Switch to `day` (YYYYMMDD); True if it is a new day for this process."""
        if day == self.day:
            return False
        self.day = day
        self._past.clear()
        self._flattened.clear()
        self.cleaned = self._read_set(f"eod:{day}")
        self.closed = self.store.get_meta(f"closed:{day}") == "1"
        return True

    def due(
        self,
        now: dt.datetime,
        phase: Phase,
        timed: bool,
        cards: list[AgentCard],
        absent: Callable[[], list[AgentCard]] = list,
    ) -> DueActions:
        """`cards`: the registered agents'. `absent`: the approved cards of agents not registered whose policy
        has something to do (asked only once the session is over: their policy runs only as missed, the card
        promised it whether the agent runs or not)."""
        out = DueActions()
        if phase is Phase.CLOSED:
            return out
        rank = RANK[phase]
        if not self.closed and rank >= RANK[Phase.POST_CLOSE] and (not timed or _settled(now)):
            out.close_day = True
        if rank > RANK[Phase.CLOSING_AUCTION]:
            # too late for the policy itself (the close expires the day orders): a card whose policy never
            # ran today was not seen at its end (no gateway then), which a person must hear of, and a
            # flatten's sells still go out at the next session. An agent not registered is seen to now too:
            # registering after midnight, its day's missed policy would be nobody's business any more
            out.missed = [card for card in (*cards, *absent()) if card.id not in self.cleaned]
            return out
        for card in cards:
            if card.id in self.cleaned:
                continue
            # (untimed: the time of day means nothing, the closing call is the signal)
            if end_due(card, now, phase) if timed else rank == RANK[Phase.CLOSING_AUCTION]:
                out.cleanup.append(card)
        return out

    def _read_set(self, key: str) -> set[str]:
        raw = self.store.get_meta(key)
        return set(msgspec.json.decode(raw)) if raw else set()

    def _add(self, key: str, done: set[str], agent: str) -> None:
        """`agent` into `done`, the set stored under `key`, and the store."""
        done.add(agent)
        self.store.set_meta(key, msgspec.json.encode(sorted(done)).decode())

    def mark_cleaned(self, agent: str) -> None:
        self._add(f"eod:{self.day}", self.cleaned, agent)

    def cleaned_on(self, day: str) -> set[str]:
        """The agents whose end-of-day policy of `day` ran (or was worked out as missed), as stored."""
        if day == self.day:
            return self.cleaned
        if day not in self._past:
            self._past[day] = self._read_set(f"eod:{day}")
        return self._past[day]

    def mark_flattened(self, agent: str, day: str = "") -> None:
        """The end-of-day policy that ran for `agent` on `day` (today's by default) was a flatten, at its time or worked
        out as missed (what it left unsold is seen to at the close: a card reloaded to 'flatten' after its 'hold' ran
        has had no flatten)."""
        day = day or self.day
        self._add(f"eodflat:{day}", self.flattened_on(day), agent)

    def flattened_on(self, day: str) -> set[str]:
        """The agents whose end-of-day flatten of `day` ran, as stored."""
        if day not in self._flattened:
            self._flattened[day] = self._read_set(f"eodflat:{day}")
        return self._flattened[day]

    def mark_cleaned_on(self, day: str, agent: str) -> None:
        """`agent`'s policy of `day` is done (an earlier day's, closed late): today's set is not touched
        (the agent trades today as usual; the gate reads today's set)."""
        if day == self.day:
            self.mark_cleaned(agent)
            return
        self._add(f"eod:{day}", self.cleaned_on(day), agent)

    def is_closed(self, day: str) -> bool:
        return self.closed if day == self.day else self.store.get_meta(f"closed:{day}") == "1"

    def unclosed_before(self, day: str, ran: Callable[[str], bool]) -> str:
        """The most recent trading day before `day` that this gateway ran (`ran`: its books hold the
        day's start) and never closed, or "" (the nearest day it ran was closed, or none within
        UNCLOSED_LOOKBACK trading days). A fresh run folder has no such day: nothing to close."""
        try:
            d = date_of(day)
        except ValueError:
            return ""
        for _ in range(UNCLOSED_LOOKBACK):
            d = previous_trading_day(d)
            key = yyyymmdd(d)
            if ran(key):
                return "" if self.is_closed(key) else key
        return ""

    def mark_closed(self, day: str) -> None:
        """`day` is closed (a close that ran past midnight closes its own day, not the new one)."""
        if day == self.day:
            self.closed = True
        self.store.set_meta(f"closed:{day}", "1")


def card_end(card: AgentCard, day: dt.date) -> dt.datetime:
    """`card`'s `schedule.end` on `day` (KST), a time of a normal day moved as the day's close is (CSAT day), or as its
    open is where its start would pass it (the year's first session: calendar.schedule_end)."""
    sched = card.schedule
    return dt.datetime.combine(
        day, schedule_end(day, dt.time.fromisoformat(sched.end), dt.time.fromisoformat(sched.start)), KST
    )


def policy_due(card: AgentCard, day: dt.date, times: SessionTimes) -> dt.datetime | None:
    """(a timed clock) When `card`'s end-of-day policy runs on `day` (KST): its `schedule.end`, a time of a normal
    day that a session closing late moves as much (CSAT day). An end at or after the close is the close's own: a
    flatten runs as the closing call starts, so its market sells meet the closing price (a backtest sells at the
    close); a cancel or hold has nothing to run before it (None): the close ends the day's orders, and a cancel
    sent in the closing call would pull what the agent placed for it (a hunt: such a card was reported missed,
    its flatten sold at the next open, its cancels raced the uncross)."""
    end = card_end(card, day)
    if end < times.close:
        return end
    return times.closing_call if card.schedule.end_of_day is EndOfDay.FLATTEN else None


def ends_at_close(card: AgentCard, day: dt.date) -> bool:
    """(a timed clock) Whether `card`'s policy of `day` is the close's expiry alone (`policy_due` None)."""
    try:
        return policy_due(card, day, SessionTimes(day)) is None
    except ValueError:  # not a trading day by the calendar
        return False


def end_due(card: AgentCard, now: dt.datetime, phase: Phase) -> bool:
    """(a timed clock, in the day's session) Whether `card`'s end of day is due at `now`: from the continuous session
    on, at or past `policy_due`."""
    if RANK[phase] < RANK[Phase.CONTINUOUS]:
        return False
    try:
        due = policy_due(card, now.date(), SessionTimes(now.date()))
    except ValueError:  # not a trading day by the calendar
        return False
    return due is not None and now >= due


def policy_time(card: AgentCard, day: dt.date, timed: bool) -> dt.datetime:
    """When `card`'s end-of-day policy was due on `day` (KST): `policy_due`, the close for one the close's expiry
    is; on a clock without a meaningful time of day, the closing call. What an agent decided after it (a
    next-session order placed in the evening) is not the day's business: a missed policy leaves it alone."""
    try:
        times = SessionTimes(day)
    except ValueError:  # not a trading day by the calendar: nothing of it was due before its end
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), KST)
    if not timed:
        return times.closing_call
    return policy_due(card, day, times) or times.close


def _settled(now: dt.datetime) -> bool:
    """The day's closing auction is over, whenever its random end fell."""
    try:
        return now >= SessionTimes(now.date()).close + CLOSE_SETTLE
    except ValueError:  # not a trading day by the calendar: nothing to wait for
        return True
