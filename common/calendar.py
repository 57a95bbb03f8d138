"""KRX trading-day calendar: weekday holidays (incl. Dec 31 and election days), the Saturday
sessions of 1986–1998, and late-open days.

Holidays 1986–2026 are the weekdays without a session in the XKRX calendar of exchange_calendars
(shared/data/krx_calendar/xkrx.csv, Apache-2.0; checked by tests/unit/test_calendar.py) but 2026-07-17: Constitution
Day is a public holiday again from 2026 (공휴일에 관한 법률 amended 2026-01-29, in force from that year's 7/17), which
the file predates; 2027 is the exchange_calendars 4.13.2 rule set, with the same change (7/17 falls on a Saturday;
a substitute Monday 07-19 is UNCONFIRMED: the decree must name it; if KRX closes it, a real account's holiday inquiry
or a paper account's refusals close it: server/session_days.py). Until 1998-12-05 KRX also traded on Saturdays
(half days), except on the Saturdays listed in _SATURDAY_HOLIDAYS_MMDD. Extend HOLIDAYS each year: an unknown year falls
back to "weekdays are trading days" and `known_year()` says so, so callers can warn. Session hours
before 2000 (and Saturday half days) are not modelled: `session_hours` gives today's hours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from types import MappingProxyType

from common.clock import KST

# year -> MMDD of weekday holidays (Saturday/Sunday are never sessions since 1998-12).
_HOLIDAYS_MMDD: dict[int, str] = {
    1986: "0101 0102 0103 0310 0505 0516 0606 0717 0815 0918 0919 1001 1003 1009 1225 1229 1230 1231",
    1987: "0101 0102 0129 0310 0505 0717 1001 1007 1008 1009 1027 1216 1225 1228 1229 1230 1231",
    1988: "0101 0218 0225 0301 0310 0405 0426 0505 0523 0606 0815 0926 1003 1227 1228 1229 1230",
    1989: "0102 0103 0206 0207 0301 0310 0405 0505 0512 0606 0717 0815 0913 0914 0915 1002 1003 1009 1012 1225 1227 "
    "1228 1229",
    1990: "0101 0102 0126 0301 0405 0502 0606 0717 0815 1001 1002 1003 1004 1009 1225 1227 1228 1231",
    1991: "0101 0102 0214 0215 0301 0326 0405 0521 0606 0620 0717 0815 0923 1003 1225 1227 1230 1231",
    1992: "0101 0102 0203 0204 0205 0310 0324 0505 0717 0910 0911 1218 1225 1228 1229 1230 1231",
    1993: "0101 0122 0301 0310 0405 0505 0528 0707 0929 0930 1001 1229 1230 1231",
    1994: "0103 0209 0210 0211 0214 0301 0405 0505 0518 0520 0606 0815 0919 0920 0921 1003 1229 1230",
    1995: "0102 0130 0131 0201 0301 0405 0501 0505 0606 0717 0815 0908 1003 1225 1229",
    1996: "0101 0102 0219 0220 0301 0405 0501 0524 0606 0717 0815 0926 0927 1003 1225 1230 1231",
    1997: "0101 0102 0207 0501 0505 0514 0606 0717 0815 0915 0916 0917 1003 1218 1225 1229 1230 1231",
    1998: "0101 0102 0127 0128 0129 0501 0505 0717 1005 1006 1225 1229 1230 1231",
    1999: "0101 0215 0216 0217 0301 0405 0505 0923 0924 1229 1230 1231",
    2000: "0103 0204 0301 0405 0413 0501 0505 0511 0606 0717 0815 0911 0912 0913 1003 1225 1227 1228 1229",
    2001: "0101 0123 0124 0125 0301 0405 0501 0606 0717 0815 1001 1002 1003 1225 1231",
    2002: "0101 0211 0212 0213 0301 0405 0501 0606 0613 0701 0717 0815 0920 1003 1219 1225 1231",
    2003: "0101 0131 0501 0505 0508 0606 0717 0815 0910 0911 0912 1003 1225 1231",
    2004: "0101 0121 0122 0123 0301 0405 0415 0505 0526 0927 0928 0929 1231",
    2005: "0208 0209 0210 0301 0405 0505 0606 0815 0919 1003 1230",
    2006: "0130 0301 0501 0505 0531 0606 0717 0815 1003 1005 1006 1225 1229",
    2007: "0101 0219 0301 0501 0524 0606 0717 0815 0924 0925 0926 1003 1219 1225 1231",
    2008: "0101 0206 0207 0208 0409 0501 0505 0512 0606 0815 0915 1003 1225 1231",
    2009: "0101 0126 0127 0501 0505 1002 1225 1231",
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
    2026: "0101 0216 0217 0218 0302 0501 0505 0525 0603 0717 0817 0924 0925 1005 1009 1225 1231",
    2027: "0101 0208 0209 0301 0505 0513 0816 0914 0915 0916 1004 1011 1227 1231",
}

# year -> MMDD of Saturdays without a session, while Saturdays were trading days (to 1998-12-05).
LAST_SATURDAY_SESSION = dt.date(1998, 12, 5)
_SATURDAY_HOLIDAYS_MMDD: dict[int, str] = {
    1986: "0301 0405",
    1987: "0103 0606 0815 1003",
    1988: "0102 1001 1231",
    1989: "1230",
    1990: "0127 0310 0505",
    1991: "0216 0921",
    1992: "0606 0815 0912 1003",
    1993: "0102 0123 0717 1225",
    1994: "0101 1231",
    1995: "0909 1230",
    1996: "0928",
    1997: "0208 0301 0405",
    1998: "0606 0815 1003",
}

# Late-open days: (open, close) in KST. First trading day of the year opens an hour late; on the
# college-entrance exam (CSAT) day the whole day shifts by an hour.
NORMAL_HOURS = (dt.time(9, 0), dt.time(15, 30))
NEW_YEAR_HOURS = (dt.time(10, 0), dt.time(15, 30))
CSAT_HOURS = (dt.time(10, 0), dt.time(16, 30))
# KRX closed at 15:00 until its session was lengthened by 30 minutes on 2016-08-01 (shared/data/krx_calendar's xkrx.csv:
# closes at 06:00 UTC from 2001 through 2016-07-29, 06:30 UTC after; the 15:00 close before 2001 is UNCONFIRMED, as are
# that era's CSAT days, 10:00-16:00, listed from 2001). A backtest of intraday bars from then is driven
# by the close of its day: a 15:10 bar of 2015 is after the close, not in the continuous session
LONGER_SESSION_FROM = dt.date(2016, 8, 1)
CLOSING_CALL = dt.timedelta(minutes=10)  # the single-price call before every close (common/krx.py _edges)
EARLIER_HOURS = (dt.time(9, 0), dt.time(15, 0))
EARLIER_NEW_YEAR_HOURS = (dt.time(10, 0), dt.time(15, 0))
EARLIER_CSAT_HOURS = (dt.time(10, 0), dt.time(16, 0))
EARLIER_CSAT_DAYS = frozenset(  # xkrx.csv: opens 01:00 UTC, closes 07:00 UTC
    dt.date.fromisoformat(d)
    for d in (
        "2001-11-07",
        "2002-11-06",
        "2003-11-05",
        "2004-11-17",
        "2005-11-23",
        "2006-11-16",
        "2007-11-15",
        "2008-11-13",
        "2009-11-12",
        "2010-11-18",
        "2011-11-10",
        "2012-11-08",
        "2013-11-07",
        "2014-11-13",
        "2015-11-12",
    )
)
CSAT_DAYS = frozenset(
    dt.date.fromisoformat(d)
    for d in (
        "2016-11-17",
        "2017-11-16",
        "2017-11-23",  # CSAT postponed a week (Pohang earthquake); KRX kept both late opens
        "2018-11-15",
        "2019-11-14",
        "2020-12-03",
        "2021-11-18",
        "2022-11-17",
        "2023-11-16",
        "2024-11-14",
        "2025-11-13",
        "2026-11-19",  # announced CSAT date; not yet in the third-party calendar file
    )
)


@lru_cache(maxsize=None)
def holidays(year: int) -> frozenset[dt.date]:
    mmdd = _HOLIDAYS_MMDD.get(year, "")
    return frozenset(dt.date(year, int(s[:2]), int(s[2:])) for s in mmdd.split())


def known_year(year: int) -> bool:
    return year in _HOLIDAYS_MMDD


@lru_cache(maxsize=None)
def _saturday_holidays(year: int) -> frozenset[dt.date]:
    mmdd = _SATURDAY_HOLIDAYS_MMDD.get(year, "")
    return frozenset(dt.date(year, int(s[:2]), int(s[2:])) for s in mmdd.split())


# Days the exchange itself says are closed though the table above has them as sessions (a temporary
# public holiday declared after this file was written): set by a live gateway from the broker's holiday
# calendar (server/session_days.py), never in a backtest. Whoever caches calendar facts listens.
_CLOSED_BY_EXCHANGE: set[dt.date] = set()
_ON_CLOSE: list[Callable[[], None]] = []


def on_closures(fn: Callable[[], None]) -> None:
    """Call `fn` whenever close_days() changes the calendar (to drop what it cached)."""
    _ON_CLOSE.append(fn)


def close_days(days: Iterable[dt.date]) -> list[dt.date]:
    """Mark sessions of the table closed, as the exchange says; returns those newly closed."""
    new = sorted(d for d in set(days) if d not in _CLOSED_BY_EXCHANGE and is_trading_day(d))
    if new:
        _CLOSED_BY_EXCHANGE.update(new)
        _calendar_changed()
    return new


def closed_by_exchange() -> list[dt.date]:
    """The sessions close_days() closed, oldest first (the gateway tells its agents: their calendar is theirs)."""
    return sorted(_CLOSED_BY_EXCHANGE)


def _reopen_all() -> None:
    """Forget close_days() (tests)."""
    if _CLOSED_BY_EXCHANGE:
        _CLOSED_BY_EXCHANGE.clear()
        _calendar_changed()


def _calendar_changed() -> None:
    first_trading_day_of_year.cache_clear()
    late_hours_of.cache_clear()
    for fn in _ON_CLOSE:
        fn()


def is_trading_day(day: dt.date) -> bool:
    wd = day.weekday()
    if wd < 5:
        return day not in holidays(day.year) and day not in _CLOSED_BY_EXCHANGE
    return wd == 5 and day <= LAST_SATURDAY_SESSION and day not in _saturday_holidays(day.year)


_ONE_DAY = dt.timedelta(days=1)  # (one object: a timedelta made per step cost half a backtest's session walk)


def next_trading_day(day: dt.date) -> dt.date:
    d = day + _ONE_DAY
    while not is_trading_day(d):
        d += _ONE_DAY
    return d


def previous_trading_day(day: dt.date) -> dt.date:
    d = day - _ONE_DAY
    while not is_trading_day(d):
        d -= _ONE_DAY
    return d


def add_trading_days(day: dt.date, n: int) -> dt.date:
    """The n-th trading day after `day` (n >= 1), e.g. the T+2 settlement day of a trade on `day`."""
    for _ in range(n):
        day = next_trading_day(day)
    return day


@lru_cache(maxsize=None)
def first_trading_day_of_year(year: int) -> dt.date:
    return next_trading_day(dt.date(year, 1, 1) - dt.timedelta(days=1))


def session_hours(day: dt.date) -> tuple[dt.time, dt.time] | None:
    """(regular open, regular close) in KST, or None when the exchange is closed that day."""
    if not is_trading_day(day):
        return None
    if day < LONGER_SESSION_FROM:
        if day in EARLIER_CSAT_DAYS:
            return EARLIER_CSAT_HOURS
        return EARLIER_NEW_YEAR_HOURS if day == first_trading_day_of_year(day.year) else EARLIER_HOURS
    if day in CSAT_DAYS:
        return CSAT_HOURS
    if day == first_trading_day_of_year(day.year):
        return NEW_YEAR_HOURS
    return NORMAL_HOURS


def close_ns(day: dt.date, closed: dt.time | None = None) -> int | None:
    """The end of `day`'s regular session in ns since the epoch; on a day the exchange is closed, `closed` (a
    stand-in time) or None."""
    hours = session_hours(day)
    at = hours[1] if hours is not None else closed
    if at is None:
        return None
    return int(dt.datetime.combine(day, at, KST).timestamp()) * 1_000_000_000


def schedule_end(day: dt.date, end: dt.time, start: dt.time | None = None) -> dt.time:
    """A card's `[schedule] end` (a time of a normal day, meaning "this long before the close") on `day`. First in its
    era's hours: before LONGER_SESSION_FROM the usual session closed at 15:00 with the same open, so an end in the
    session's last stretch keeps its distance to the close but never falls inside the closing call's ten minutes
    (15:20 -> 14:50) and an earlier end stands (a morning window's 10:00 is 10:00). Then moved as far as that day's
    close moves from its era's usual one where the whole session shifts (a CSAT day: an hour, in either era).
    With the card's `start`: on a day that opens late but closes as usual (the year's first session) the start moves
    with the open (common/risk_rules.py before_start); an end it would reach is a morning window's, moved as the open
    is (a 09:30-10:15 window is 10:30-11:15 that day, not an empty one whose flatten ran at 10:15)."""
    hours = session_hours(day)
    if hours is None:
        return end
    at = dt.datetime.combine(day, end)
    usual = NORMAL_HOURS if day >= LONGER_SESSION_FROM else EARLIER_HOURS
    if usual is EARLIER_HOURS:
        delta = dt.datetime.combine(day, usual[1]) - dt.datetime.combine(day, NORMAL_HOURS[1])
        call = dt.datetime.combine(day, usual[1]) - CLOSING_CALL
        at = max(at + delta, min(at, call))
    shift = dt.datetime.combine(day, hours[1]) - dt.datetime.combine(day, usual[1])
    if shift > dt.timedelta():
        at += shift
    late = dt.datetime.combine(day, hours[0]) - dt.datetime.combine(day, usual[0])
    if start is not None and late > dt.timedelta():
        first = max(dt.datetime.combine(day, start), dt.datetime.combine(day, usual[0])) + late
        # (only into the session up to its closing call: an afternoon window's end stays 'this long before the
        # close', the close did not move; its start then passes it as before)
        if at <= first and at + late <= dt.datetime.combine(day, hours[1]) - CLOSING_CALL:
            at += late
    return at.time()


@lru_cache(maxsize=None)
def late_hours_of(year: int) -> Mapping[str, tuple[dt.time, dt.time]]:
    """The year's sessions whose hours are not their era's usual ones (NORMAL_HOURS; EARLIER_HOURS before
    LONGER_SESSION_FROM), by YYYY-MM-DD (session_hours as a table: a backtest asks per bar time it trades in): the
    year's first session, the CSAT day."""
    first = first_trading_day_of_year(year)
    out = {first.isoformat(): session_hours(first) or NEW_YEAR_HOURS}
    out.update({d.isoformat(): CSAT_HOURS for d in CSAT_DAYS if d.year == year and is_trading_day(d)})
    out.update({d.isoformat(): EARLIER_CSAT_HOURS for d in EARLIER_CSAT_DAYS if d.year == year and is_trading_day(d)})
    return MappingProxyType(out)  # cached: read-only for every caller


def calendar_gaps(day: dt.date) -> list[str]:
    """What this calendar does not know that a gateway trading on `day` needs (one line each, saying
    what goes wrong and what to do): the year's holidays (without them every weekday counts as a
    session), next year's from November, and from October a college entrance exam day of the year
    (its session opens and closes an hour late)."""
    out: list[str] = []
    y = day.year
    if not known_year(y):
        out.append(
            f"the KRX calendar has no holidays for {y}: every weekday counts as a session (next-session "
            "orders would go out on a holiday and be rejected); update ktrader (common/calendar.py)"
        )
    elif day.month >= 11 and not known_year(y + 1):
        out.append(f"the KRX calendar has no holidays for {y + 1} yet; update ktrader before the year ends")
    if day.month in (10, 11) and day <= dt.date(y, 11, 30) and not any(d.year == y for d in CSAT_DAYS):
        out.append(
            f"the college entrance exam day of {y} (a session of 10:00-16:30) is not in the KRX calendar: "
            "its orders would be expired at 15:31; add it to CSAT_DAYS (common/calendar.py) once announced"
        )
    return out


def next_session(day: str) -> str:
    """next_trading_day of "YYYY-MM-DD..." as YYYY-MM-DD (a backtest asks it for each day it orders on:
    no memo, which cost more than the answer)."""
    return next_trading_day(dt.date.fromisoformat(day[:10])).isoformat()


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Trading days in [start, end]."""
    out: list[dt.date] = []
    d = start
    while d <= end:
        if is_trading_day(d):
            out.append(d)
        d += dt.timedelta(days=1)
    return out
