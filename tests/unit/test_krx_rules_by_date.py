"""KRX rules by date (common/krx_rules.py), one test per rule row, on real dates and prices from
shared/data (read in place)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common import krx
import msgspec

from common.config import RiskLimits
from common.enums import OrderType, Side
from common.risk_rules import notional_price
from tools.backtest.engine import BacktestConfig, run_backtest
from tools.backtest.reference import flip_card
from common.krx_rules import BAND_ROWS, CURRENT, TAX_ROWS, TICK_ROWS, Market, PriceRuleError, SecurityKind, rules_for
from tools.backtest.data import load_codes

K, Q, X = Market.KOSPI, Market.KOSDAQ, Market.KONEX
ETF = SecurityKind.ETF


def bars(shared: Path, folder: str, code: str) -> list:
    return load_codes(shared / folder, [code])[code].bars


def off_grid(
    bs: list, lo: str, hi: str, market: Market = K, kind: SecurityKind = SecurityKind.STOCK, day: str = ""
) -> list[str]:
    """Days in [lo, hi] with an O/H/L/C off the grid of `day` (default: each bar's own day)."""
    return [
        b.start
        for b in bs
        if lo <= b.start <= hi
        and not all(rules_for(day or b.start).on_grid(p, kind, market) for p in (b.open, b.high, b.low, b.close))
    ]


# ---- tick grid: every row against the prices KRX actually printed ---------------------------------


def test_kospi_grid_before_2010(shared_data: Path) -> None:
    hynix = bars(shared_data, "krx_daily_1990_2023", "000660")
    hyundai = bars(shared_data, "krx_daily_1990_2023", "005380")
    assert off_grid(hynix, "2003-05-01", "2010-10-01") == [] and off_grid(hyundai, "2000-01-01", "2010-10-01") == []
    r = rules_for("2008-10-24")
    assert [r.tick_size(p) for p in (900, 4_995, 9_990, 49_950, 99_900, 499_500, 600_000)] == [
        5,
        5,
        10,
        50,
        100,
        500,
        1_000,
    ]
    assert rules_for("2003-04-15").on_grid(3_500) and not rules_for("2003-04-15").on_grid(3_501)


def test_kospi_grid_2010_to_2023(shared_data: Path) -> None:
    hynix = bars(shared_data, "krx_daily_fdr_2020_2026", "000660")
    assert off_grid(hynix, "2020-01-02", "2023-01-24") == []
    assert off_grid(bars(shared_data, "krx_daily_1990_2023", "005380"), "2010-10-04", "2023-01-24") == []
    r = rules_for("2021-06-01")
    assert [r.tick_size(p) for p in (999, 1_000, 9_990, 10_000, 99_900, 100_000, 500_000)] == [
        1,
        5,
        10,
        50,
        100,
        500,
        1_000,
    ]
    # the 2023 grid would have allowed 120,100 for SK hynix in 2021; the exchange did not
    assert not r.on_grid(120_100) and CURRENT.on_grid(120_100)
    # and after 2023-01-25 SK hynix printed prices the old grid did not have
    assert off_grid(hynix, "2023-01-25", "2025-03-03", day="2021-06-01")
    # (from 2025-03-04 the data holds a few half-tick highs/lows: Nextrade's mid-price trades, not KRX's grid)
    assert off_grid(hynix, "2023-01-25", "2025-03-03") == []


def test_kosdaq_grid_before_2023_differed_above_50000() -> None:
    for day in ("2004-03-02", "2012-08-01", "2022-06-02"):  # trading days of the 2003 and 2010 rows
        r = rules_for(day)
        assert r.tick_size(150_100, market=Q) == 100 and r.tick_size(150_100, market=K) == 500
        assert r.tick_size(600_000, market=Q) == 100 and r.tick_size(600_000, market=X) == 100
        assert r.tick_size(7_000, market=Q) == 10 and r.tick_size(30_000, market=Q) == 50
    assert rules_for("2004-03-02").tick_size(900, market=Q) == 5
    assert rules_for("2012-08-01").tick_size(900, market=Q) == 1


def test_one_grid_for_every_market_since_2023_01_25(shared_data: Path) -> None:
    for code in ("247540", "196170", "035900"):  # KOSDAQ names, pykrx 2023-12.. (before Nextrade)
        assert off_grid(bars(shared_data, "krx_daily_pykrx_2023_2025", code), "2023-12-05", "2025-03-03", Q) == []
    r = rules_for("2023-01-25")
    assert all(
        r.tick_size(p, market=m) == CURRENT.tick_size(p) for m in Market for p in (1_500, 15_000, 150_000, 700_000)
    )
    assert rules_for("2023-01-20").tick_size(150_000) == 500 and r.tick_size(150_000) == 100


def test_etf_grid(shared_data: Path) -> None:
    for code in ("122630", "252670"):  # KODEX leverage / inverse 2x: raw prices on the 5-won grid
        assert off_grid(bars(shared_data, "krx_daily_1990_2023", code), "2009-01-01", "2023-12-22", kind=ETF) == []
    assert rules_for("2015-03-02").tick_size(35_000, ETF) == 5 == CURRENT.tick_size(35_000, ETF)


def test_tick_rows_are_documented() -> None:
    assert all(r.source for r in TICK_ROWS) and [r.since for r in TICK_ROWS] == sorted(r.since for r in TICK_ROWS)
    assert any("tick grid KOSPI" in n for n in rules_for("2005-06-01").unconfirmed)  # before 2010: UNCONFIRMED
    assert not any("KOSPI" in n for n in rules_for("2021-06-01").unconfirmed)


# ---- price band ------------------------------------------------------------------------------------


def _moves_pct(bs: list, lo: str, hi: str) -> list[tuple[str, float]]:
    """Close-to-close moves in % between consecutive KRX sessions (gaps in the data are skipped)."""
    from common.calendar import previous_trading_day

    out, prev = [], None
    for b in bs:
        if (
            prev is not None
            and lo <= b.start <= hi
            and previous_trading_day(dt.date.fromisoformat(b.start)).isoformat() == prev.start
        ):
            out.append((b.start, abs(b.close / prev.close - 1) * 100))
        prev = b
    return out


@pytest.mark.parametrize(
    "lo, hi, pct, below",
    [
        ("1995-04-03", "1996-11-23", 6, 5.5),  # +-6 % (the adjusted history rounds: a little slack above)
        ("1996-11-25", "1998-02-28", 8, 6.5),
        ("1998-03-02", "1998-12-05", 12, 8.5),
        ("1998-12-07", "2015-06-12", 15, 12.5),
    ],
)
def test_band_periods_match_the_largest_moves(shared_data: Path, lo: str, hi: str, pct: int, below: float) -> None:
    assert rules_for(lo).band_pct() == pct == rules_for(hi).band_pct()
    near = 0
    for code in ("005930", "005380", "000660"):
        moves = _moves_pct(bars(shared_data, "krx_daily_1990_2023", code), lo, hi)
        beyond = [d for d, m in moves if m > pct + 0.3]
        # only ex-rights/ex-dividend days go beyond (their base price is not the previous close)
        assert len(beyond) <= 2, (code, beyond)
        near += sum(1 for _, m in moves if below < m <= pct + 0.3)
    assert near >= 5  # moves the previous period's band would not have allowed: the period is not mislabelled


def test_band_30_pct_since_2015_with_the_day_grid(shared_data: Path) -> None:
    lg = {b.start: b for b in bars(shared_data, "krx_daily_fdr_2020_2026", "066570")}
    # 2020-12-23: LG Electronics closed at its upper limit: 92,200 x 1.3 = 119,860 on the 2020 grid (500) -> 119,500
    r = rules_for("2020-12-23")
    assert r.band_pct() == 30 and r.price_limits(92_200) == (64_600, 119_500)
    assert lg["2020-12-23"].high == lg["2020-12-23"].close == 119_500
    assert CURRENT.price_limits(92_200)[1] == 119_800  # today's grid would have put the limit elsewhere
    assert rules_for("2015-06-12").band_pct() == 15 and rules_for("2015-06-15").band_pct() == 30


def test_band_before_1995_is_not_modelled() -> None:
    r = rules_for("1994-06-01")
    assert (
        r.band_pct() is None
        and r.price_limits(10_000) == (1, r.price_limits(10_000)[1])
        and r.price_limits(10_000)[1] > 10**12
    )
    assert any("price band" in n for n in r.unconfirmed)


def test_a_market_buy_before_1995_is_valued_at_the_widest_fixed_step(shared_data: Path) -> None:
    """(a hunt) With no band modelled before 1995-04 a market buy was valued at the unmodelled upper limit,
    sys.maxsize a share: every one was denied ("order value 92,233,720,368,547,758,070 > agent limit"), and a
    1990-2023 backtest bought nothing until April 1995. It is valued at base + 7 % (the fixed amounts then: 2.2-6.7 %),
    a sell at base - 7 %."""
    r = rules_for("1994-06-01")
    assert notional_price(Side.BUY, 0, 10_000, rules=r, order_type=OrderType.MARKET) == 10_700
    assert notional_price(Side.SELL, 0, 10_000, rules=r, order_type=OrderType.MARKET) == 9_300
    assert notional_price(Side.BUY, 0, 10_000, rules=rules_for("1995-04-03"), order_type=OrderType.MARKET) == 10_600
    kosdaq = rules_for("1996-10-01")  # (KOSDAQ's band before 1996-11 is not known: its first modelled one, 8 %)
    assert notional_price(Side.BUY, 0, 10_000, rules=kosdaq, board=Q, order_type=OrderType.MARKET) == 10_800
    card = flip_card("005930", 10, 100_000_000)
    card = msgspec.structs.replace(card, risk=RiskLimits(max_order_value=5_000_000))
    series = load_codes(shared_data / "krx_daily_1990_2023", ["005930"], dt.date(1995, 4, 12))
    cfg = BacktestConfig(date_from=dt.date(1995, 3, 20), date_to=dt.date(1995, 4, 12), cash=100_000_000)
    result = run_backtest(card, series, cfg)
    assert "denied" not in result.order_states, [(o.client_order_id, o.reason) for o in result.orders][:3]
    assert sum(1 for f in result.fills if f.day < "1995-04-01") >= 8  # every session, a buy or a sell


def test_kosdaq_band_history() -> None:
    assert rules_for("2000-06-01").band_pct(Q) == 12 and rules_for("2000-06-01").band_pct(K) == 15
    assert rules_for("2010-06-01").band_pct(Q) == 15
    assert all(r.source for r in BAND_ROWS)


def test_check_price_uses_the_day_rules() -> None:
    rules_for("2021-06-01").check_price(120_000, 118_000)
    with pytest.raises(PriceRuleError, match="off the day's tick grid"):
        rules_for("2021-06-01").check_price(120_100, 118_000)
    CURRENT.check_price(120_100, 118_000)
    with pytest.raises(PriceRuleError, match="outside the day's band"):
        rules_for("2014-06-02").check_price(140_000, 118_000)  # +18.6 % > 15 %
    rules_for("2016-06-01").check_price(140_000, 118_000)


# ---- sell taxes, by settlement day (T+2) -------------------------------------------------------------


@pytest.mark.parametrize(
    "trade_day, kospi, kosdaq",
    [
        ("2019-05-29", 3_000, 3_000),  # settles 05-31: old rates
        ("2019-05-30", 2_500, 2_500),  # settles 06-03: the cut
        ("2020-12-28", 2_500, 2_500),
        ("2020-12-29", 2_300, 2_300),  # settles 2021-01-04
        ("2022-06-02", 2_300, 2_300),
        ("2022-12-28", 2_000, 2_000),  # settles 2023-01-02
        ("2023-12-26", 2_000, 2_000),
        ("2023-12-27", 1_800, 1_800),  # settles 2024-01-02
        ("2024-12-26", 1_800, 1_800),
        ("2024-12-27", 1_500, 1_500),  # settles 2025-01-02 (the brokers' notices say so)
        ("2025-12-26", 1_500, 1_500),
        ("2025-12-29", 2_000, 2_000),  # settles 2026-01-02: back to the 2023 rates
        ("2026-05-29", 2_000, 2_000),
    ],
)
def test_sell_tax_rows(trade_day: str, kospi: int, kosdaq: int) -> None:
    r = rules_for(trade_day)
    assert (r.sell_tax_ppm(K), r.sell_tax_ppm(Q)) == (kospi, kosdaq)
    assert r.sell_tax_ppm(K, ETF) == r.sell_tax_ppm(Q, ETF) == 0  # ETF/ETN: no transaction tax


def test_konex_and_older_taxes() -> None:
    assert rules_for("2018-06-01").sell_tax_ppm(X) == 3_000 and rules_for("2020-06-01").sell_tax_ppm(X) == 1_000
    assert rules_for("2005-06-01").sell_tax_ppm(K) == 3_000  # 0.15 % + 0.15 % rural, 1996..2019
    assert all(r.source for r in TAX_ROWS)
    assert any("sell tax" in n for n in rules_for("1993-06-01").unconfirmed)


# ---- today's functions stay today's row; rules_for is cheap ----------------------------------------


def test_common_krx_is_todays_row() -> None:
    assert krx.tick_size(150_000) == CURRENT.tick_size(150_000) == 100
    assert krx.price_limits(128_500) == CURRENT.price_limits(128_500) == (90_000, 167_000)
    assert rules_for(dt.date(2024, 3, 4)) is rules_for("2024-03-04") is rules_for("2024-03-04T10:15")
    assert rules_for("2024-03-04") is rules_for("2024-06-03")  # same rows: one shared object
