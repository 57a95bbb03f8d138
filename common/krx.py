"""KRX market rules of today: tick grid, daily price band, session phases.

Facts from shared/kis/API.md §7 (tick table in force since 2023-01-25, ±30 % band since 2015-06-15,
limits rounded to the grid toward the base price). All prices are integer KRW. The rules of other
days (older grids and bands, taxes by year) are in common/krx_rules.py; these functions are its
newest row.
"""

from __future__ import annotations

import bisect
import datetime as dt
from enum import StrEnum
from functools import lru_cache

from common import calendar
from common.calendar import session_hours
from common.clock import KST
from common.krx_rules import CURRENT, Market as Market, PriceRuleError as PriceRuleError, SecurityKind as SecurityKind


PRICE_LIMIT_PCT = 30
AFTER_HOURS_BAND_PCT = 10  # 시간외 단일가: within ±10 % of the close (and the daily band)

# Today's row of the rules by date (common/krx_rules.py): one ladder for every market since 2023-01-25.


def tick_size(price: int, kind: SecurityKind = SecurityKind.STOCK) -> int:
    """The tick at `price`. ETF/ETN trade on a 5-won grid (1 won below 2,000: UNCONFIRMED, our choice)."""
    return CURRENT.tick_size(price, kind)


def on_grid(price: int, kind: SecurityKind = SecurityKind.STOCK) -> bool:
    return CURRENT.on_grid(price, kind)


def round_down(price: int, kind: SecurityKind = SecurityKind.STOCK) -> int:
    """Largest grid price <= price (for price >= 1)."""
    return CURRENT.round_down(price, kind)


def round_up(price: int, kind: SecurityKind = SecurityKind.STOCK) -> int:
    """Smallest grid price >= price. The tick can grow across a band edge; band edges are on both grids."""
    return CURRENT.round_up(price, kind)


def next_tick_up(price: int, kind: SecurityKind = SecurityKind.STOCK) -> int:
    """The grid price one tick above a grid price."""
    return CURRENT.next_tick_up(price, kind)


def next_tick_down(price: int, kind: SecurityKind = SecurityKind.STOCK) -> int:
    """The grid price one tick below a grid price (the tick of the lower price, across band edges)."""
    return CURRENT.next_tick_down(price, kind)


def ticks_away(price: int, ticks: int, limit: int = 0) -> int:
    """`ticks` steps up (or down, when negative) the tick grid, not past the day's price `limit`."""
    return CURRENT.ticks_away(price, ticks, limit)


def price_limits(base: int, kind: SecurityKind = SecurityKind.STOCK, pct: int = PRICE_LIMIT_PCT) -> tuple[int, int]:
    """(lower, upper) limit for the day from the base price (usually yesterday's close).

    Raw limits are base ± base*pct/100, rounded to the grid toward the base: the upper limit down,
    the lower limit up (official example: base 128,500 → 90,000 / 167,000).
    """
    if pct == PRICE_LIMIT_PCT:
        return CURRENT.price_limits(base, kind)
    if base <= 0:
        raise PriceRuleError(f"base price must be positive, got {base}")
    upper_raw = base * (100 + pct) // 100  # floor is toward the base already
    lower_raw = -(-base * (100 - pct) // 100)  # ceil
    return max(round_up(max(lower_raw, 1), kind), 1), round_down(upper_raw, kind)


def check_price(price: int, base: int, kind: SecurityKind = SecurityKind.STOCK) -> None:
    """Raise PriceRuleError unless `price` is on the grid and inside the daily band of `base`."""
    if price <= 0:
        raise PriceRuleError(f"price must be positive, got {price}")
    if not on_grid(price, kind):
        raise PriceRuleError(
            f"price {price} is off the tick grid (tick {tick_size(price, kind)}: "
            f"nearest {round_down(price, kind)} or {round_up(price, kind)})"
        )
    lower, upper = price_limits(base, kind)
    if not lower <= price <= upper:
        raise PriceRuleError(f"price {price} is outside today's band {lower}..{upper} (base {base})")


# ---------------------------------------------------------------------------------------------
# Session phases (KST). Normal day: 08:30 pre-market / opening call, 09:00 open, 15:20 closing call,
# 15:30 close, 15:40–16:00 post-market close-price, 16:00–18:00 after-hours single price.
# Late-open days (first trading day of the year, the college-entrance exam day) shift the opening
# schedule by an hour; calendar.session_hours() says which.


class Phase(StrEnum):
    CLOSED = "closed"  # not a trading day, or outside every phase below
    PRE_OPEN = "pre_open"  # before the opening call on a trading day
    OPENING_AUCTION = "opening_auction"  # 장 시작 동시호가 (orders collected, single price at the open)
    CONTINUOUS = "continuous"  # 정규장
    CLOSING_AUCTION = "closing_auction"  # 장 마감 동시호가
    POST_CLOSE = "post_close"  # 15:30–15:40 gap
    POST_OFF_HOURS = "post_off_hours"  # 장후 시간외 종가
    AFTER_HOURS_SINGLE = "after_hours_single"  # 시간외 단일가
    AFTER_HOURS_END = "after_hours_end"  # trading day over


# Phases in which a regular (day) order can be accepted by the exchange.
REGULAR_ORDER_PHASES = frozenset({Phase.OPENING_AUCTION, Phase.CONTINUOUS, Phase.CLOSING_AUCTION})


def next_session_day(now: dt.datetime, phase: Phase) -> dt.date:
    """The trading day whose session an order placed now "for the next session" (TimeInForce.NEXT_SESSION)
    is for: today's if its opening auction has not ended yet, else the next trading day's. One rule for
    the gateway (which holds such an order until then) and the backtester."""
    d = now.date()
    if phase in (Phase.PRE_OPEN, Phase.OPENING_AUCTION) and calendar.is_trading_day(d):
        return d
    return calendar.next_trading_day(d)


# the phase from each boundary of a session on (before the first: PRE_OPEN)
_PHASES_FROM = (
    Phase.OPENING_AUCTION,
    Phase.CONTINUOUS,
    Phase.CLOSING_AUCTION,
    Phase.POST_CLOSE,
    Phase.POST_OFF_HOURS,
    Phase.AFTER_HOURS_SINGLE,
    Phase.AFTER_HOURS_END,
)


def _edges(hours: tuple[dt.time, dt.time]) -> tuple[dt.timedelta, ...]:
    """The session's seven phase boundaries as offsets from midnight KST (KST has no DST): opening
    auction 30 min before the open, the open, closing call 10 min before the close, the close, the
    post-close gap 10 min, after-hours closing price 20 min, after-hours single price 2 h."""
    o = dt.timedelta(hours=hours[0].hour, minutes=hours[0].minute)
    c = dt.timedelta(hours=hours[1].hour, minutes=hours[1].minute)
    m = dt.timedelta(minutes=1)
    return (o - 30 * m, o, c - 10 * m, c, c + 10 * m, c + 30 * m, c + 150 * m)


@lru_cache(maxsize=8)
def _edges_us(hours: tuple[dt.time, dt.time]) -> tuple[int, ...]:
    return tuple(e // dt.timedelta(microseconds=1) for e in _edges(hours))


class SessionTimes:
    """The phase boundaries of one trading day in KST."""

    __slots__ = ("day", "auction_open", "open", "closing_call", "close", "post_off", "single_start", "end")

    def __init__(self, day: dt.date) -> None:
        hours = session_hours(day)
        if hours is None:
            raise ValueError(f"{day} is not a KRX trading day")
        self.day = day
        midnight = dt.datetime.combine(day, dt.time(), KST)
        edges = tuple(midnight + e for e in _edges(hours))
        (self.auction_open, self.open, self.closing_call, self.close) = edges[:4]
        (self.post_off, self.single_start, self.end) = edges[4:]

    def phase_at(self, when: dt.datetime) -> Phase:
        edges = (
            self.auction_open,
            self.open,
            self.closing_call,
            self.close,
            self.post_off,
            self.single_start,
            self.end,
        )
        i = bisect.bisect_right(edges, when)
        return _PHASES_FROM[i - 1] if i else Phase.PRE_OPEN


_NORMAL_EDGES_US = _edges_us(calendar.NORMAL_HOURS)
_KST_US = 9 * 3_600_000_000
_DAY_US = 86_400_000_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_UNSEEN: tuple[int, ...] = ()
_DAY_EDGES: dict[int, tuple[int, ...] | None] = {}  # KST day number -> its boundaries (None: no session)


def _forget_days() -> None:
    _DAY_EDGES.clear()
    phase_at_ns.cache_clear()


def _phase_in_day(day: int, us: int) -> Phase:
    """The phase `us` microseconds into KST day number `day` (days since 1970-01-01): SessionTimes'
    boundaries as microseconds, looked up once per day (the calendar is static), no datetimes."""
    edges = _DAY_EDGES.get(day, _UNSEEN)
    if edges is _UNSEEN:
        hours = session_hours(dt.date.fromordinal(day + _EPOCH_ORDINAL))
        # (most days keep the normal hours: their boundaries without hashing the hours)
        edges = _DAY_EDGES[day] = (
            None if hours is None else _NORMAL_EDGES_US if hours is calendar.NORMAL_HOURS else _edges_us(hours)
        )
    if edges is None:
        return Phase.CLOSED
    i = bisect.bisect_right(edges, us)
    return _PHASES_FROM[i - 1] if i else Phase.PRE_OPEN


@lru_cache(maxsize=64)
def phase_at_ns(ns: int) -> Phase:
    """phase_at for a time in ns since the epoch (a backtest asks per order and per strategy check,
    all at a handful of bar times: memoised)."""
    day, us = divmod(ns // 1000 + _KST_US, _DAY_US)
    return _phase_in_day(day, us)


def phase_at(when: dt.datetime) -> Phase:
    """The KRX phase at an aware datetime (naive datetimes are taken as KST)."""
    if when.tzinfo is not KST:
        when = when.replace(tzinfo=KST) if when.tzinfo is None else when.astimezone(KST)
    us = ((when.hour * 60 + when.minute) * 60 + when.second) * 1_000_000 + when.microsecond
    return _phase_in_day(when.toordinal() - _EPOCH_ORDINAL, us)


calendar.on_closures(_forget_days)  # a day the exchange closed: its boundaries are gone
