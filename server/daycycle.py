"""The trading day's cycle: what is due, decided from the market clock (pure; the gateway acts).

- Before the close, at each card's `schedule.end` (or as soon as the closing auction starts, for
  clocks without a meaningful time of day), the agent's end-of-day policy runs once: cancel its
  open orders, flatten (cancel, then sell at market) or hold. From then on the agent may only
  reduce risk for the rest of the day.
- After the close the day is closed once: the broker's final view is reconciled, orders still
  open are expired (KRX day orders do not survive the close) and the daily report is written. On a
  clock with a meaningful time of day this waits CLOSE_SETTLE past the regular close: KRX ends the
  closing auction at a random moment up to 30 s after it (random end), and its print and fills must
  be in before the broker's final view and the day's bars are taken.
- A new date starts a new day: numbering, day P&L and base prices roll; positions carry over.

Progress is kept in the store's meta table so a gateway restarted in the afternoon neither
repeats a flatten nor forgets to close the day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from common.config import AgentCard
from common.krx import Phase, SessionTimes

CLOSE_SETTLE = dt.timedelta(minutes=1)  # past the closing auction's random end (<= 30 s)

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

    def roll(self, day: str) -> bool:
        """Switch to `day` (YYYYMMDD); True if it is a new day for this process."""
        if day == self.day:
            return False
        self.day = day
        raw = self.store.get_meta(f"eod:{day}")
        self.cleaned = set(msgspec.json.decode(raw)) if raw else set()
        self.closed = self.store.get_meta(f"closed:{day}") == "1"
        return True

    def due(self, now: dt.datetime, phase: Phase, timed: bool, cards: list[AgentCard]) -> DueActions:
        out = DueActions()
        if phase is Phase.CLOSED:
            return out
        rank = RANK[phase]
        if not self.closed and rank >= RANK[Phase.POST_CLOSE] and (not timed or _settled(now)):
            out.close_day = True
        if rank > RANK[Phase.CLOSING_AUCTION]:
            return out  # too late to clean up: the close takes care of what is left
        for card in cards:
            if card.id in self.cleaned:
                continue
            if timed:
                due = rank >= RANK[Phase.CONTINUOUS] and now.time() >= dt.time.fromisoformat(card.schedule.end)
            else:  # the time of day means nothing: the closing call is the signal
                due = rank == RANK[Phase.CLOSING_AUCTION]
            if due:
                out.cleanup.append(card)
        return out

    def mark_cleaned(self, agent: str) -> None:
        self.cleaned.add(agent)
        self.store.set_meta(f"eod:{self.day}", msgspec.json.encode(sorted(self.cleaned)).decode())

    def mark_closed(self, day: str) -> None:
        """`day` is closed (a close that ran past midnight closes its own day, not the new one)."""
        if day == self.day:
            self.closed = True
        self.store.set_meta(f"closed:{day}", "1")


def _settled(now: dt.datetime) -> bool:
    """The day's closing auction is over, whenever its random end fell."""
    try:
        return now >= SessionTimes(now.date()).close + CLOSE_SETTLE
    except ValueError:  # not a trading day by the calendar: nothing to wait for
        return True
