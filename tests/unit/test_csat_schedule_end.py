"""On the CSAT day (2026-11-19: 10:00-16:30) a card's `[schedule] end` moves with the close: the default
15:20 end runs at 16:20, ten minutes before the closing call ends, not 70 minutes before the close."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common import calendar
from common.calendar import first_trading_day_of_year
from common.clock import KST
from common.config import AgentCard, EndOfDay, Schedule
from common.krx import phase_at
from server.daycycle import DayCycle
from server.store import Store

CSAT = dt.date(2026, 11, 19)
NORMAL = dt.date(2026, 11, 20)


def card(agent: str, end: str = "15:20") -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", schedule=Schedule(end=end, end_of_day=EndOfDay.FLATTEN))


def due_ids(dc: DayCycle, when: dt.datetime, cards: list[AgentCard]) -> list[str]:
    return [c.id for c in dc.due(when, phase_at(when), True, cards).cleanup]


def test_the_end_moves_with_a_late_close(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite")
    try:
        dc = DayCycle(store)
        dc.roll("20261119")
        cards = [card("dflt"), card("early", "14:00")]
        at = lambda hhmm: dt.datetime.combine(CSAT, dt.time.fromisoformat(hhmm), KST)  # noqa: E731
        assert due_ids(dc, at("14:59"), cards) == []
        assert due_ids(dc, at("15:00"), cards) == ["early"]  # 14:00 of a normal day, an hour on
        assert due_ids(dc, at("15:20"), cards) == ["early"]  # the wall clock's 15:20 is 70 min before this close
        assert due_ids(dc, at("16:19"), cards) == ["early"]
        assert due_ids(dc, at("16:20"), cards) == ["dflt", "early"]
        # a normal day is as before
        dc.roll("20261120")
        at = lambda hhmm: dt.datetime.combine(NORMAL, dt.time.fromisoformat(hhmm), KST)  # noqa: E731
        assert due_ids(dc, at("15:19"), cards) == ["early"]
        assert due_ids(dc, at("15:20"), cards) == ["dflt", "early"]
    finally:
        store.close()


def test_the_end_moves_with_the_late_close_only_and_an_early_close_moves_the_last_stretch_only() -> None:
    end = calendar.schedule_end
    t = dt.time.fromisoformat
    assert end(CSAT, t("15:20")) == t("16:20") and end(CSAT, t("10:00")) == t("11:00")  # the session shifts
    assert end(NORMAL, t("15:20")) == t("15:20")
    assert end(first_trading_day_of_year(2027), t("15:20")) == t("15:20")  # opens late, closes as usual
    assert end(dt.date(2026, 11, 21), t("15:20")) == t("15:20")  # a Saturday
    # until 2016-07-29 the close was 15:00 and the open 09:00: the default end is ten minutes before the call
    old = dt.date(2015, 6, 15)
    assert end(old, t("15:20")) == t("14:50") and end(old, t("15:25")) == t("14:55")
    assert end(old, t("15:00")) == t("14:50") and end(old, t("10:00")) == t("10:00")  # a morning window stands
    assert end(dt.date(2015, 11, 12), t("15:20")) == t("15:50")  # that era's CSAT day: 10:00-16:00
    assert end(dt.date(2015, 11, 12), t("09:20")) == t("10:20")  # the whole session an hour later, not 30 min


def test_a_morning_window_moves_with_the_years_late_first_open() -> None:
    """(a hunt) The year's first session opens at 10:00 and closes as usual: a card's start moves with the open
    (09:30 -> 10:30: common/risk_rules.py before_start) but its end did not, so a 09:30-10:15 window was empty that
    day (its flatten ran at 10:15, every order of its own refused) and a 09:00-09:50 one flattened at the open. An end
    the moved start reaches moves as the open does; an afternoon end stands (it is "this long before the close")."""
    from server.daycycle import policy_due
    from common.krx import SessionTimes

    first = first_trading_day_of_year(2027)
    assert first == dt.date(2027, 1, 4)
    end, t = calendar.schedule_end, dt.time.fromisoformat
    assert end(first, t("10:15"), t("09:30")) == t("11:15")
    assert end(first, t("09:50"), t("09:00")) == t("10:50")  # the default start: the window from the open
    assert end(first, t("10:45"), t("09:30")) == t("10:45")  # the moved start (10:30) still before it: stands
    assert end(first, t("15:20"), t("09:30")) == t("15:20")
    assert end(NORMAL, t("10:15"), t("09:30")) == t("10:15")  # a normal day as before
    assert end(CSAT, t("10:15"), t("09:30")) == t("11:15")  # the whole session shifted: as before
    assert end(first, t("10:15")) == t("10:15")  # without the start: the close's rule alone
    # (a review) an afternoon window's end is never moved to or past the closing call: the close did not move
    for start, stop in (("14:00", "15:00"), ("14:40", "15:20"), ("13:45", "14:45")):
        assert end(first, t(stop), t(start)) == t(stop)
    assert end(first, t("14:20"), t("13:20")) == t("15:20")  # up to the closing call's start (a valid end) it moves
    assert end(dt.date(2015, 1, 2), t("15:20"), t("14:40")) == t("14:50")  # the earlier era's first session
    morning = AgentCard(
        id="m",
        name="m",
        strategy="x:Y",
        schedule=Schedule(start="09:30", end="10:15", end_of_day=EndOfDay.FLATTEN),
    )
    assert policy_due(morning, first, SessionTimes(first)) == dt.datetime.combine(first, t("11:15"), KST)
    assert policy_due(morning, dt.date(2027, 1, 5), SessionTimes(dt.date(2027, 1, 5))) == dt.datetime.combine(
        dt.date(2027, 1, 5), t("10:15"), KST
    )
