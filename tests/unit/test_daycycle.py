"""The day cycle's decisions from the market clock: who cleans up when, when the day closes, and
that progress survives a restart (it lives in the store's meta table)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.config import AgentCard, EndOfDay, Schedule
from common.krx import Phase
from server.daycycle import DayCycle
from server.store import Store

DAY = dt.date(2026, 11, 20)


def card(agent: str, end: str = "15:20", policy: EndOfDay = EndOfDay.CANCEL) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", schedule=Schedule(end=end, end_of_day=policy))


def at(hhmm: str) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time.fromisoformat(hhmm), KST)


def test_cleanup_at_each_cards_end_then_close(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite")
    dc = DayCycle(store)
    assert dc.roll("20261120")
    cards = [card("early", "14:00", EndOfDay.FLATTEN), card("late", "15:20")]
    assert dc.due(at("13:59"), Phase.CONTINUOUS, True, cards).cleanup == []
    due = dc.due(at("14:00"), Phase.CONTINUOUS, True, cards)
    assert [c.id for c in due.cleanup] == ["early"] and not due.close_day
    dc.mark_cleaned("early")
    assert dc.due(at("15:00"), Phase.CONTINUOUS, True, cards).cleanup == []  # once a day
    assert [c.id for c in dc.due(at("15:21"), Phase.CLOSING_AUCTION, True, cards).cleanup] == ["late"]
    dc.mark_cleaned("late")
    # the closing auction ends at a random moment up to 30 s after 15:30: the day closes a minute after
    assert not dc.due(at("15:30"), Phase.POST_CLOSE, True, cards).close_day
    due = dc.due(at("15:31"), Phase.POST_CLOSE, True, cards)
    assert due.close_day and due.cleanup == []
    dc.mark_closed("20261120")
    assert not dc.due(at("16:00"), Phase.POST_OFF_HOURS, True, cards).close_day
    # a restarted gateway knows what was done today
    again = DayCycle(store)
    again.roll("20261120")
    assert again.cleaned == {"early", "late"} and again.closed
    # the next day starts clean
    assert again.roll("20261123") and again.cleaned == set() and not again.closed
    store.close()


def test_untimed_clock_uses_the_phase_and_holidays_do_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite")
    dc = DayCycle(store)
    dc.roll("20261120")
    cards = [card("a", "09:05")]
    # the twin's 'open' clock: wall time means nothing, only the closing call does
    assert dc.due(at("23:00"), Phase.CONTINUOUS, False, cards).cleanup == []
    assert [c.id for c in dc.due(at("23:00"), Phase.CLOSING_AUCTION, False, cards).cleanup] == ["a"]
    # after the close it is too late to clean up: the close expires what is left
    due = dc.due(at("23:00"), Phase.AFTER_HOURS_END, False, cards)
    assert due.cleanup == [] and due.close_day
    assert dc.due(at("12:00"), Phase.CLOSED, True, cards).cleanup == []
    assert not dc.due(at("12:00"), Phase.CLOSED, True, cards).close_day
    store.close()
