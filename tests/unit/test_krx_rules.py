"""KRX tick grid, price band and session phases (shared/kis/API.md §7)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.calendar import session_hours
from common.clock import KST
from common.krx import (
    Phase,
    PriceRuleError,
    SecurityKind,
    SessionTimes,
    check_price,
    next_tick_down,
    next_tick_up,
    on_grid,
    phase_at,
    phase_at_ns,
    price_limits,
    round_down,
    round_up,
    tick_size,
)


@pytest.mark.parametrize(
    "price,tick",
    [
        (1, 1),
        (1_999, 1),
        (2_000, 5),
        (4_995, 5),
        (5_000, 10),
        (19_990, 10),
        (20_000, 50),
        (49_950, 50),
        (50_000, 100),
        (199_900, 100),
        (200_000, 500),
        (499_500, 500),
        (500_000, 1_000),
        (1_500_000, 1_000),
    ],
)
def test_tick_table(price: int, tick: int) -> None:
    assert tick_size(price) == tick


def test_etf_grid() -> None:
    assert tick_size(35_000, SecurityKind.ETF) == 5 and tick_size(1_500, SecurityKind.ETF) == 1


def test_official_limit_example() -> None:
    # API.md §7.3: base 128,500 → upper 167,000 (167,050 floored), lower 90,000 (89,950 ceiled)
    assert price_limits(128_500) == (90_000, 167_000)


def test_limits_samsung_and_band_edges() -> None:
    assert price_limits(70_000) == (49_000, 91_000)
    lower, upper = price_limits(1_000)
    assert (lower, upper) == (700, 1_300)


@given(st.integers(1, 3_000_000))
def test_limits_on_grid_and_toward_base(base: int) -> None:
    lower, upper = price_limits(base)
    assert on_grid(lower) and on_grid(upper)
    assert lower * 100 >= base * 70 and upper * 100 <= base * 130  # rounded toward the base
    assert lower <= base <= upper or base < 1  # the base itself is inside
    # nothing between the raw limit and the rounded one is a grid price
    assert next_tick_up(upper) * 100 > base * 130
    if lower > 1:
        assert next_tick_down(lower) * 100 < base * 70


@given(st.integers(1, 3_000_000))
def test_rounding(price: int) -> None:
    d, u = round_down(price), round_up(price)
    assert on_grid(d) and on_grid(u) and d <= price <= u
    if on_grid(price):
        assert d == u == price


def test_check_price_messages() -> None:
    check_price(70_000, 70_000)
    with pytest.raises(PriceRuleError, match="off the tick grid"):
        check_price(70_050, 70_000)
    with pytest.raises(PriceRuleError, match="outside today's band"):
        check_price(91_100, 70_000)
    with pytest.raises(PriceRuleError, match="positive"):
        check_price(0, 70_000)


def kst(y, m, d, hh, mm) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, tzinfo=KST)


@pytest.mark.parametrize(
    "when,phase",
    [
        (kst(2026, 11, 20, 8, 0), Phase.PRE_OPEN),
        (kst(2026, 11, 20, 8, 30), Phase.OPENING_AUCTION),
        (kst(2026, 11, 20, 9, 0), Phase.CONTINUOUS),
        (kst(2026, 11, 20, 15, 19), Phase.CONTINUOUS),
        (kst(2026, 11, 20, 15, 20), Phase.CLOSING_AUCTION),
        (kst(2026, 11, 20, 15, 30), Phase.POST_CLOSE),
        (kst(2026, 11, 20, 15, 45), Phase.POST_OFF_HOURS),
        (kst(2026, 11, 20, 17, 0), Phase.AFTER_HOURS_SINGLE),
        (kst(2026, 11, 20, 18, 0), Phase.AFTER_HOURS_END),
        (kst(2026, 11, 21, 10, 0), Phase.CLOSED),  # Saturday
        (kst(2026, 12, 31, 10, 0), Phase.CLOSED),  # year-end holiday
        (kst(2026, 1, 2, 9, 30), Phase.OPENING_AUCTION),  # first trading day opens at 10:00
        (kst(2025, 11, 13, 16, 0), Phase.CONTINUOUS),  # CSAT day: shifted an hour, closes 16:30
    ],
)
def test_phases(when: dt.datetime, phase: Phase) -> None:
    assert phase_at(when) is phase


def test_naive_and_utc_times_are_read_as_kst_instants() -> None:
    utc = dt.datetime(2026, 11, 20, 1, 0, tzinfo=dt.timezone.utc)  # 10:00 KST
    assert phase_at(utc) is Phase.CONTINUOUS
    assert phase_at(dt.datetime(2026, 11, 20, 10, 0)) is Phase.CONTINUOUS


@settings(max_examples=400, deadline=None)
@given(
    day=st.dates(min_value=dt.date(1995, 1, 1), max_value=dt.date(2027, 12, 31)),
    us=st.one_of(
        st.integers(0, 86_400 * 10**6 - 1),
        # around every boundary of the three kinds of session hours, to the microsecond
        st.sampled_from([8, 9, 10, 15, 16, 17, 18, 19]).flatmap(
            lambda h: st.integers(h * 3600 * 10**6 - 2, h * 3600 * 10**6 + 2)
        ),
        st.sampled_from([(15, 20), (15, 40), (16, 0), (16, 20), (16, 40), (17, 0)]).map(
            lambda hm: (hm[0] * 3600 + hm[1] * 60) * 10**6
        ),
    ),
)
def test_phase_at_agrees_with_the_days_session_times(day: dt.date, us: int) -> None:
    """The fast phase_at (microseconds into the day) and SessionTimes (the day's datetimes) are one rule."""
    when = dt.datetime.combine(day, dt.time(), KST) + dt.timedelta(microseconds=us)
    if session_hours(day) is None:
        assert phase_at(when) is Phase.CLOSED
    else:
        assert phase_at(when) is SessionTimes(day).phase_at(when)
    # and the backtest's form, from ns since the epoch
    d = when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    assert phase_at_ns((d.days * 86_400 + d.seconds) * 10**9 + d.microseconds * 1000) is phase_at(when)


def test_the_price_limit_cache_stays_bounded_and_right() -> None:
    """A live gateway asks for every code's band each day on rules shared until KRX changes them: the cache of
    limit pairs is bounded (it held up to 100,000 pairs, ~27 MB), and what it gives after a clear is the same."""
    from common.krx_rules import LIMITS_CACHED, rules_for

    rules = rules_for("2026-11-20")
    first = rules.price_limits(70_000)
    for base in range(1_000, 1_000 + LIMITS_CACHED + 500):
        rules.price_limits(base)
    assert len(rules._limits) <= LIMITS_CACHED
    assert rules.price_limits(70_000) == first == (49_000, 91_000)
