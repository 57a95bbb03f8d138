"""The backtester on KRX history: each day's tick grid, band and tax; orders by the KRX calendar
(halts, days the data lacks); fills in the order orders were sent. Real data from shared/data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from agent.strategy import Strategy, session_tif
from common.clock import KST
from common.config import AgentCard
from common.enums import OrderType, Side
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import Bar, OrderView
from tools.backtest.data import Series, load_codes
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

PLAN: dict[tuple[str, str], list[tuple[Any, ...]]] = {}  # (day, code) -> orders placed at that close
VIEWS: list[OrderView] = []


class Probe(Strategy):
    def on_bar(self, bar: Bar) -> None:
        for side, qty, price in PLAN.get((bar.start, bar.code), []):
            fn = self.ctx.buy if side == "buy" else self.ctx.sell
            fn(
                bar.code,
                qty,
                price,
                order_type=OrderType.MARKET if price == 0 else OrderType.LIMIT,
                tif=session_tif(self.ctx),
            )  # decided at a daily close: for the next session

    def on_order(self, order: OrderView) -> None:
        VIEWS.append(order)


def run(
    series: dict[str, Series],
    codes: list[str],
    lo: str,
    hi: str,
    plan: dict[tuple[str, str], list[Any]],
    cash: int = 100_000_000,
    **cfg: Any,
) -> BacktestResult:
    PLAN.clear()
    PLAN.update(plan)
    VIEWS.clear()
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:Probe", codes=codes)
    return run_backtest(
        card,
        series,
        BacktestConfig(
            dt.date.fromisoformat(lo), dt.date.fromisoformat(hi), cash=cash, max_participation_bp=10_000, **cfg
        ),
    )


# ---- the tick grid of the day -------------------------------------------------------------------------


def _old_kospi_tick(price: int) -> int:
    """The KOSPI ladder of 2010-10-04..2023-01-24, written out independently of common/krx_rules.py."""
    for bound, tick in ((1_000, 1), (5_000, 5), (10_000, 10), (50_000, 50), (100_000, 100), (500_000, 500)):
        if price < bound:
            return tick
    return 1_000


class GridProbe(Strategy):
    """Every day, a limit buy a few ticks of TODAY's (2023) grid under the close: prices a strategy
    written against the current rules sends, half of them refused by the exchange before 2023."""

    def on_bar(self, bar: Bar) -> None:
        if self.ctx.open_orders:
            return
        price = bar.close - bar.close % 100 - 100 * (1 + int(bar.start[8:10]) % 5)  # 100-won steps (2023 grid)
        self.ctx.buy(bar.code, 1, price, tif=session_tif(self.ctx))


def test_2020_2022_sk_hynix_never_accepts_an_off_grid_limit(shared_data: Path) -> None:
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["000660"])
    card = AgentCard(id="grid", name="grid", strategy=f"{__name__}:GridProbe", codes=["000660"])
    r = run_backtest(card, series, BacktestConfig(dt.date(2020, 1, 2), dt.date(2022, 12, 29), cash=10**10))
    accepted = [o for o in r.orders if o.state is not OrderState.DENIED]
    denied = [o for o in r.orders if o.state is OrderState.DENIED]
    assert len(accepted) > 200 and len(denied) > 100
    assert all(o.price % _old_kospi_tick(o.price) == 0 for o in accepted)
    assert all(o.price % _old_kospi_tick(o.price) != 0 and o.reason_code == ErrorCode.DENIED_TICK for o in denied)
    assert all(f.price % _old_kospi_tick(f.price) == 0 for f in r.fills)  # SK hynix's real prices: on that grid


# ---- the band of the day: a locked day under +-15 % ------------------------------------------------------


def test_a_locked_day_under_the_15_pct_band_is_recognised(shared_data: Path) -> None:
    # SK hynix 2003-04-15: 3,045 -> 3,500 all day (+14.9 %, the upper limit of the +-15 % band, on the
    # 5-won grid); 2003-04-16 locked again at 4,025. Under a +-30 % band neither is a limit.
    series = load_codes(shared_data / "krx_daily_1990_2023", ["000660"])
    plan = {("2003-04-14", "000660"): [("buy", 10, 0)], ("2003-04-15", "000660"): [("buy", 10, 3_800)]}
    r = run(series, ["000660"], "2003-04-01", "2003-04-30", plan)
    assert (
        r.fills == []
    )  # neither the market buy on 04-15 nor the 3,800 limit on 04-16 (locked at 4,025? no: 4,025 > 3,800)
    assert [o.state for o in r.orders] == [OrderState.EXPIRED, OrderState.EXPIRED]
    # the next day with a range fills
    plan = {("2003-04-16", "000660"): [("buy", 10, 0)]}
    r = run(series, ["000660"], "2003-04-01", "2003-04-30", plan)
    assert [(f.day, f.price) for f in r.fills] == [("2003-04-17", 4_480)]


def test_adjusted_history_locked_a_won_off_the_computed_limit(shared_data: Path) -> None:
    # 2001-09-12 (the day after 9/11): SK hynix adjusted to 19,924 all day from 23,359 (-14.7 %); the
    # computed lower limit is 19,900 (adjusted prices round): still a locked day, the sell does not fill
    series = load_codes(shared_data / "krx_daily_1990_2023", ["000660"])
    plan = {("2001-09-10", "000660"): [("buy", 10, 0)], ("2001-09-11", "000660"): [("sell", 10, 0)]}
    r = run(series, ["000660"], "2001-09-03", "2001-09-28", plan)
    assert [(f.day, str(f.side)) for f in r.fills] == [("2001-09-11", "buy")]
    assert r.orders[-1].state is OrderState.EXPIRED


# ---- taxes of the day, ETF exempt ---------------------------------------------------------------------


def test_sell_tax_of_each_year_and_no_tax_on_etfs(shared_data: Path) -> None:
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["005930"])
    plan = {
        (d, "005930"): [("buy", 100, 0)] for d in ("2020-06-01", "2021-06-01", "2024-06-03", "2025-06-02", "2026-03-03")
    }
    plan.update(
        {
            (d, "005930"): [("sell", 100, 0)]
            for d in ("2020-06-02", "2021-06-02", "2024-06-04", "2025-06-04", "2026-03-04")
        }
    )
    r = run(series, ["005930"], "2020-01-02", "2026-05-29", plan)
    sells = [f for f in r.fills if f.side is Side.SELL]
    assert [
        (f.day[:4], f.tax, f.qty * f.price * ppm // 1_000_000)
        for f, ppm in zip(sells, (2_500, 2_300, 1_800, 1_500, 2_000))
    ] == [(f.day[:4], f.tax, f.tax) for f in sells]
    flat = run(series, ["005930"], "2020-01-02", "2026-05-29", plan, sell_tax_ppm=1_800)  # a what-if flat rate
    assert [f.tax for f in flat.fills if f.side is Side.SELL] == [f.qty * f.price * 1_800 // 1_000_000 for f in sells]
    etf = load_codes(shared_data / "krx_daily_1990_2023", ["122630"])  # KODEX leverage: an ETF (by its name)
    plan = {("2021-06-01", "122630"): [("buy", 100, 0)], ("2021-06-02", "122630"): [("sell", 100, 0)]}
    r = run(etf, ["122630"], "2021-01-04", "2021-12-30", plan)
    assert len(r.fills) == 2 and r.taxes == 0 and r.fees > 0


# ---- orders by the KRX calendar --------------------------------------------------------------------------

SKT_PLAN = {("2021-10-25", "017670"): [("buy", 10, 60_000)]}  # the last close before SKT's 2021 halt


def test_skt_2021_halt_expires_the_order_with_one_code_or_two(shared_data: Path) -> None:
    # SKT was halted 2021-10-26..11-26 for its 5:1 split; the data has no bars for those days. The
    # buy lives in the 10-26 session only: it must not fill on 11-29 (low 50,000), a month later.
    data = shared_data / "krx_daily_fdr_2020_2026"
    expiry = int(dt.datetime(2021, 10, 26, 15, 30, tzinfo=KST).timestamp() * 1e9)
    for codes in (["017670"], ["017670", "005930"], ["005930", "017670"]):
        r = run(load_codes(data, codes), codes, "2021-10-01", "2021-12-30", SKT_PLAN)
        (order,) = r.orders
        assert r.fills == [] and order.state is OrderState.EXPIRED, codes
        assert order.updated_ns == expiry, codes


def test_a_session_missing_from_the_data_expires_orders(shared_data: Path) -> None:
    # the 1990s data lacks whole blocks of sessions: 1997-05-02..05-17 are not in 005930_D.csv. A buy
    # decided at the 04-30 close lives in the 05-02 session and expires there; it must not fill on 05-19.
    series = load_codes(shared_data / "krx_daily_1990_2023", ["005930"])
    days = [b.start for b in series["005930"].bars if "1997-04-28" <= b.start <= "1997-05-31"]
    assert days[:4] == ["1997-04-28", "1997-04-29", "1997-04-30", "1997-05-19"]
    r = run(series, ["005930"], "1997-04-01", "1997-05-31", {("1997-04-30", "005930"): [("buy", 10, 0)]})
    assert r.fills == [] and r.orders[0].state is OrderState.EXPIRED
    # at that session's close: 15:00 until KRX lengthened its session on 2016-08-01
    assert r.orders[0].updated_ns == int(dt.datetime(1997, 5, 2, 15, 0, tzinfo=KST).timestamp() * 1e9)


def test_fills_follow_submission_order_across_codes(shared_data: Path) -> None:
    # the order sent first fills first (its cash_after is computed first), whatever the card's code order
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["005930", "000660"])
    got = []
    for codes in (["005930", "000660"], ["000660", "005930"]):
        PLAN_ORDER[:] = [("000660", 10), ("005930", 30)]  # SK hynix first, then Samsung
        card = AgentCard(id="seq", name="seq", strategy=f"{__name__}:Sequencer", codes=codes)
        r = run_backtest(
            card,
            series,
            BacktestConfig(dt.date(2021, 5, 3), dt.date(2021, 6, 30), cash=10_000_000, max_participation_bp=10_000),
        )
        got.append([(f.code, f.qty, f.price, f.cash_after) for f in r.fills])
    assert got[0] == got[1] and [c for c, *_ in got[0]] == ["000660", "005930"]
    assert got[0][0][3] == 10_000_000 - 10 * got[0][0][2] - 10 * got[0][0][2] * 150 // 1_000_000


PLAN_ORDER: list[tuple[str, int]] = []


class Sequencer(Strategy):
    """On 2021-06-01, once every code's bar is in: the market buys of PLAN_ORDER, in that order."""

    def on_bar(self, bar: Bar) -> None:
        if bar.start != "2021-06-01" or bar.code != self.ctx_codes()[-1]:
            return
        for code, qty in PLAN_ORDER:
            self.ctx.buy(code, qty, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx))

    def ctx_codes(self) -> list[str]:
        return list(self.ctx._e.card.codes)  # type: ignore[attr-defined]


def test_the_session_closed_at_1500_until_2016_08_01() -> None:
    # xkrx.csv (shared/data/krx_calendar): closes at 06:00 UTC through 2016-07-29, 06:30 UTC from 2016-08-01
    from common.calendar import session_hours
    from common.krx import Phase, phase_at

    assert session_hours(dt.date(2016, 7, 29)) == (dt.time(9, 0), dt.time(15, 0))
    assert session_hours(dt.date(2016, 8, 1)) == (dt.time(9, 0), dt.time(15, 30))
    assert session_hours(dt.date(2015, 1, 2)) == (dt.time(10, 0), dt.time(15, 0))  # the year's first, an hour late
    # a 15:10 order of 2015 came after the close (it was taken as one in the continuous session); 14:55 was the call
    assert phase_at(dt.datetime(2015, 6, 1, 15, 10, tzinfo=KST)) is not Phase.CONTINUOUS
    assert phase_at(dt.datetime(2015, 6, 1, 14, 55, tzinfo=KST)) is Phase.CLOSING_AUCTION
    assert phase_at(dt.datetime(2016, 8, 1, 15, 10, tzinfo=KST)) is Phase.CONTINUOUS


def test_that_eras_csat_days_opened_at_1000_and_closed_at_1600() -> None:
    # xkrx.csv: 2001..2015's CSAT days open 01:00 UTC and close 07:00 UTC
    from common.calendar import session_hours

    assert session_hours(dt.date(2015, 11, 12)) == (dt.time(10, 0), dt.time(16, 0))
    assert session_hours(dt.date(2001, 11, 7)) == (dt.time(10, 0), dt.time(16, 0))
    assert session_hours(dt.date(2015, 11, 13)) == (dt.time(9, 0), dt.time(15, 0))
