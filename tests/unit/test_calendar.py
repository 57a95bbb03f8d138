"""The KRX calendar against the XKRX session list in shared/data (third-party, read in place)."""

from __future__ import annotations

import csv
import datetime as dt

from common.calendar import (
    CSAT_HOURS,
    NEW_YEAR_HOURS,
    EARLIER_HOURS,
    LONGER_SESSION_FROM,
    NORMAL_HOURS,
    add_trading_days,
    first_trading_day_of_year,
    is_trading_day,
    known_year,
    late_hours_of,
    next_trading_day,
    previous_trading_day,
    session_hours,
    trading_days,
)


def test_matches_xkrx_sessions_1986_2026(shared_data) -> None:
    rows = list(csv.reader(open(shared_data / "krx_calendar" / "xkrx.csv")))[1:]
    sessions = {dt.date.fromisoformat(r[0][:10]): r for r in rows}
    mine = set(trading_days(dt.date(1986, 1, 1), dt.date(2026, 12, 30)))
    # the file predates the law that made Constitution Day a public holiday again from 2026 (common/calendar.py)
    theirs = {d for d in sessions if d <= dt.date(2026, 12, 30)} - {dt.date(2026, 7, 17)}
    assert mine == theirs  # Saturday sessions to 1998-12-05 included
    assert is_trading_day(dt.date(1998, 12, 5)) and not is_trading_day(dt.date(1998, 12, 12))
    # late opens: the file marks first-day and CSAT opens at 01:00 UTC (10:00 KST)
    for d, r in sessions.items():
        if d.year < 2017 or d > dt.date(2026, 12, 29) or d in (dt.date(2026, 11, 19), dt.date(2026, 7, 17)):
            # 2016 and earlier had other hours; the file predates the 2026 CSAT date (11-19) and
            # marks 2026-12-30 as a late open by a rule artefact (it is a normal day).
            continue
        open_kst = (int(r[1][11:13]) + 9) % 24
        assert session_hours(d)[0].hour == open_kst, d


def test_known_days() -> None:
    assert not is_trading_day(dt.date(2026, 12, 31))  # year-end closing day
    assert not is_trading_day(dt.date(2026, 6, 3))  # local election day
    assert not is_trading_day(dt.date(2025, 6, 3))  # presidential election
    assert not is_trading_day(dt.date(2026, 7, 17))  # Constitution Day, a public holiday again from 2026
    assert next_trading_day(dt.date(2026, 7, 16)) == dt.date(2026, 7, 20)
    assert is_trading_day(dt.date(2026, 11, 20))
    assert next_trading_day(dt.date(2026, 11, 20)) == dt.date(2026, 11, 23)
    assert previous_trading_day(dt.date(2026, 1, 2)) == dt.date(2025, 12, 30)
    assert first_trading_day_of_year(2027) == dt.date(2027, 1, 4)
    assert session_hours(dt.date(2027, 1, 4)) == NEW_YEAR_HOURS
    assert session_hours(dt.date(2025, 11, 13)) == CSAT_HOURS
    assert session_hours(dt.date(2026, 11, 20)) == NORMAL_HOURS
    assert session_hours(dt.date(2026, 11, 21)) is None
    assert known_year(2027) and not known_year(2031)


def test_settlement_is_two_trading_days_later() -> None:
    # the dates the securities transaction tax changes were applied from (trade day -> settlement)
    assert add_trading_days(dt.date(2019, 5, 30), 2) == dt.date(2019, 6, 3)
    assert add_trading_days(dt.date(2020, 12, 29), 2) == dt.date(2021, 1, 4)
    assert add_trading_days(dt.date(2024, 12, 27), 2) == dt.date(2025, 1, 2)
    assert add_trading_days(dt.date(2024, 12, 26), 2) == dt.date(2024, 12, 30)


def test_late_hours_table_answers_as_session_hours_for_every_day_1986_2027() -> None:
    # the backtest's table of late sessions, over the era's usual hours (09:00-15:00 before 2016-08-01), answers as
    # session_hours does, on weekends, holidays, Saturday sessions, first sessions and CSAT days of both eras
    d = dt.date(1986, 1, 1)
    while d <= dt.date(2027, 1, 5):
        usual = NORMAL_HOURS if d >= LONGER_SESSION_FROM else EARLIER_HOURS
        assert late_hours_of(d.year).get(d.isoformat(), usual) == (session_hours(d) or usual), d
        d += dt.timedelta(days=1)


def test_what_the_calendar_lacks_is_said_not_assumed() -> None:
    """A year without holidays counts every weekday as a session (and used to, silently); the gateway
    alerts what calendar_gaps says, at start and each new day."""
    from common.calendar import calendar_gaps

    assert calendar_gaps(dt.date(2026, 6, 1)) == []  # holidays and the exam day known
    assert calendar_gaps(dt.date(2026, 11, 2)) == []  # 2027's holidays are known too
    late = calendar_gaps(dt.date(2027, 11, 2))
    assert any("no holidays for 2028" in t and "update ktrader" in t for t in late)
    assert any("entrance exam day of 2027" in t for t in calendar_gaps(dt.date(2027, 10, 4)))
    assert not any("exam" in t for t in calendar_gaps(dt.date(2027, 5, 3)))  # not announced before autumn: no noise
    (unknown,) = calendar_gaps(dt.date(2029, 3, 5))
    assert "no holidays for 2029" in unknown and "every weekday counts as a session" in unknown


def test_a_day_the_exchange_closes_is_closed_for_the_live_gateway_and_its_caches() -> None:
    """A temporary holiday the table does not have (2026-10-01, say): the broker's holiday calendar
    closes it (server/session_days.py); the phase, the next session and the year's tables follow."""
    import asyncio

    from common import calendar, krx
    from common.clock import KST
    from kis.port import Capability
    from server.session_days import check_session_days

    day = dt.date(2026, 10, 1)  # a Thursday session in the table
    at_ten = dt.datetime.combine(day, dt.time(10, 0), KST)
    assert calendar.is_trading_day(day) and krx.phase_at(at_ten) is krx.Phase.CONTINUOUS  # (cached now)

    class Broker:
        capabilities = frozenset({Capability.SESSION_DAYS})

        async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
            # KIS: closed on the 1st; open on 2026-10-05 (a holiday in the table): alerted, not traded
            return {day - dt.timedelta(days=1): True, day: False, dt.date(2026, 10, 5): True}

    class Asked(Broker):
        async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
            raise AssertionError("KIS asks for one call a day")

    alerts: list[str] = []
    meta: dict[str, str] = {}
    store = (lambda k: meta.get(k, ""), meta.__setitem__)
    yesterday = day - dt.timedelta(days=1)
    try:
        closed = asyncio.run(check_session_days(Broker(), yesterday, alerts.append, store))  # type: ignore[arg-type]
        assert closed == [day]
        assert not calendar.is_trading_day(day) and krx.phase_at(at_ten) is krx.Phase.CLOSED
        assert calendar.next_trading_day(yesterday) == dt.date(2026, 10, 2)
        assert len(alerts) == 2 and "closed on 2026-10-01" in alerts[0] and "opens on 2026-10-05" in alerts[1]
        assert not calendar.is_trading_day(dt.date(2026, 10, 5))  # the safe direction only
        # a restart the same day: the kept answer closes the day again, without asking KIS again
        calendar._reopen_all()
        assert asyncio.run(check_session_days(Asked(), yesterday, alerts.append, store)) == []  # type: ignore[arg-type]
        assert not calendar.is_trading_day(day) and len(alerts) == 2
    finally:
        calendar._reopen_all()
    assert calendar.is_trading_day(day) and krx.phase_at(at_ten) is krx.Phase.CONTINUOUS


def test_calendar_gaps_reach_a_person_once_a_market_day_however_often_the_gateway_starts() -> None:
    from common.calendar import calendar_gaps
    from server.session_days import new_gaps

    kept: dict[str, str] = {}
    meta = (lambda k: kept.get(k, ""), kept.__setitem__)
    day = dt.date(2027, 11, 2)
    gaps = calendar_gaps(day)
    assert gaps and new_gaps(day, gaps, meta)  # the first start of the day tells a person
    assert not new_gaps(day, gaps, meta)  # a restart the same day: the screen only
    assert new_gaps(day + dt.timedelta(days=1), gaps, meta)  # the next day: once again
    assert new_gaps(day + dt.timedelta(days=1), gaps[:1] + ["another gap"], meta)  # something new: at once
    assert not new_gaps(day, [], meta)  # nothing missing: nothing to tell
