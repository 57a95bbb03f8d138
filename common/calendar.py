"""KRX trading-day calendar: weekday holidays (incl. Dec 31 and election days) and late-open days.

Holidays 2010–2026 are the weekdays without a session in the XKRX calendar of exchange_calendars
(checked against shared/data/krx_calendar/xkrx.csv by tests/unit/test_calendar.py); 2027 is the
exchange_calendars 4.13.2 rule set. Extend HOLIDAYS each year: an unknown year falls back to
"weekdays are trading days" and `known_year()` says so, so callers can warn.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

# year -> MMDD of weekday holidays (Saturday/Sunday are never sessions since 1998-12).
_HOLIDAYS_MMDD: dict[int, str] = {
    2010: "0101 0215 0301 0505 0521 0602 0921 0922 0923 1231",
    2011: "0202 0203 0204 0301 0505 0510 0606 0815 0912 0913 1003 1230",
    2012: "0123 0124 0301 0411 0501 0528 0606 0815 1001 1003 1219 1225 1231",
    2013: "0101 0211 0301 0501 0517 0606 0815 0918 0919 0920 1003 1009 1225 1231",
    2014: "0101 0130 0131 0501 0505 0506 0604 0606 0815 0908 0909 0910 1003 1009 1225 1231",
    2015: "0101 0218 0219 0220 0501 0505 0525 0814 0928 0929 1009 1225 1231",
    2016: "0101 0208 0209 0210 0301 0413 0505 0506 0606 0815 0914 0915 0916 1003 1230",
    2017: "0127 0130 0301 0501 0503 0505 0509 0606 0815 1002 1003 1004 1005 1006 1009 1225 1229",
    2018: "0101 0215 0216 0301 0501 0507 0522 0606 0613 0815 0924 0925 0926 1003 1009 1225 1231",
    2019: "0101 0204 0205 0206 0301 0501 0506 0606 0815 0912 0913 1003 1009 1225 1231",
    2020: "0101 0124 0127 0415 0430 0501 0505 0817 0930 1001 1002 1009 1225 1231",
    2021: "0101 0211 0212 0301 0505 0519 0816 0920 0921 0922 1004 1011 1231",
    2022: "0131 0201 0202 0301 0309 0505 0601 0606 0815 0909 0912 1003 1010 1230",
    2023: "0123 0124 0301 0501 0505 0529 0606 0815 0928 0929 1002 1003 1009 1225 1229",
    2024: "0101 0209 0212 0301 0410 0501 0506 0515 0606 0815 0916 0917 0918 1001 1003 1009 1225 1231",
    2025: "0101 0127 0128 0129 0130 0303 0501 0505 0506 0603 0606 0815 1003 1006 1007 1008 1009 1225 1231",
    2026: "0101 0216 0217 0218 0302 0501 0505 0525 0603 0817 0924 0925 1005 1009 1225 1231",
    2027: "0101 0208 0209 0301 0505 0513 0816 0914 0915 0916 1004 1011 1227 1231",
}

# Late-open days: (open, close) in KST. First trading day of the year opens an hour late; on the
# college-entrance exam (CSAT) day the whole day shifts by an hour.
NORMAL_HOURS = (dt.time(9, 0), dt.time(15, 30))
NEW_YEAR_HOURS = (dt.time(10, 0), dt.time(15, 30))
CSAT_HOURS = (dt.time(10, 0), dt.time(16, 30))
CSAT_DAYS = frozenset(
    dt.date.fromisoformat(d)
    for d in (
        "2016-11-17",
        "2017-11-16", "2017-11-23",  # CSAT postponed a week (Pohang earthquake); KRX kept both late opens
        "2018-11-15", "2019-11-14", "2020-12-03", "2021-11-18",
        "2022-11-17", "2023-11-16", "2024-11-14", "2025-11-13",
        "2026-11-19",  # announced CSAT date; not yet in the third-party calendar file
    )
)


@lru_cache(maxsize=None)
def holidays(year: int) -> frozenset[dt.date]:
    mmdd = _HOLIDAYS_MMDD.get(year, "")
    return frozenset(dt.date(year, int(s[:2]), int(s[2:])) for s in mmdd.split())


def known_year(year: int) -> bool:
    return year in _HOLIDAYS_MMDD


def is_trading_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in holidays(day.year)


def next_trading_day(day: dt.date) -> dt.date:
    d = day + dt.timedelta(days=1)
    while not is_trading_day(d):
        d += dt.timedelta(days=1)
    return d


def previous_trading_day(day: dt.date) -> dt.date:
    d = day - dt.timedelta(days=1)
    while not is_trading_day(d):
        d -= dt.timedelta(days=1)
    return d


def first_trading_day_of_year(year: int) -> dt.date:
    return next_trading_day(dt.date(year, 1, 1) - dt.timedelta(days=1))


def session_hours(day: dt.date) -> tuple[dt.time, dt.time] | None:
    """(regular open, regular close) in KST, or None when the exchange is closed that day."""
    if not is_trading_day(day):
        return None
    if day in CSAT_DAYS:
        return CSAT_HOURS
    if day == first_trading_day_of_year(day.year):
        return NEW_YEAR_HOURS
    return NORMAL_HOURS


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Trading days in [start, end]."""
    out: list[dt.date] = []
    d = start
    while d <= end:
        if is_trading_day(d):
            out.append(d)
        d += dt.timedelta(days=1)
    return out
