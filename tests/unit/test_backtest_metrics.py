"""Metrics on small hand-checked series."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from common.enums import Side
from tools.backtest.broker import FillRecord
from tools.backtest.engine import BacktestResult
from tools.backtest.metrics import compute, drawdown, round_trips

DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"]


def result(
    equity: list[int], fills: list[FillRecord] | None = None, holdings: list[int] | None = None
) -> BacktestResult:
    return BacktestResult(
        card_id="x",
        strategy="m:C",
        params={},
        date_from=DAYS[0],
        date_to=DAYS[len(equity) - 1],
        initial_cash=100,
        dates=DAYS[: len(equity)],
        equity=equity,
        holdings=holdings or [0] * len(equity),
        fills=fills or [],
        orders=[],
        order_states={},
        fees=0,
        taxes=0,
        traded_value=0,
        positions={},
        closes={},
        bars=len(equity),
    )


def test_drawdown_depth_and_duration() -> None:
    mdd, bars, longest, series = drawdown([120, 90, 95, 130, 125], start=100)
    assert mdd == pytest.approx(0.25)  # 120 -> 90
    assert bars == 2  # under water after the 120 peak (index 0) until back above it at index 3
    assert longest == 2  # two bars under water; then 125 < 130 for the last bar (1)
    assert series[1] == pytest.approx(-0.25)


def test_returns_sharpe_and_volatility() -> None:
    m = compute(result([110, 99, 108.9]))  # type: ignore[list-item]
    r = [0.10, -0.10, 0.10]
    mean = sum(r) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    # annualised with the points per calendar year: 3 points from the close before 2024-01-02 (2023-12-28,
    # the year-end closing day 12-29 is no session) to 2024-01-04
    per_year = 3 / ((dt.date(2024, 1, 4) - dt.date(2023, 12, 28)).days / 365.25)
    assert m["total_return"] == pytest.approx(0.089)
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(per_year))
    assert m["volatility"] == pytest.approx(sd * math.sqrt(per_year))
    assert m["sortino"] == pytest.approx(mean / math.sqrt(0.01 / 3) * math.sqrt(per_year))


def fill(day: str, side: Side, qty: int, price: int, commission: int = 0, tax: int = 0) -> FillRecord:
    return FillRecord(
        day=day,
        client_order_id="x-20240102-1",
        code="005930",
        side=side,
        qty=qty,
        price=price,
        commission=commission,
        tax=tax,
        cash_after=0,
    )


def test_round_trips_win_rate_and_profit_factor() -> None:
    fills = [
        fill(DAYS[0], Side.BUY, 2, 10, 1),
        fill(DAYS[1], Side.SELL, 1, 15, 1, 1),
        fill(DAYS[2], Side.SELL, 1, 16, 1),
        fill(DAYS[3], Side.BUY, 1, 20),
        fill(DAYS[4], Side.SELL, 1, 14),
    ]
    trades = round_trips(fills, {"005930": 14}, DAYS)
    assert [(t.entry_day, t.exit_day, t.qty, t.pnl, t.days) for t in trades] == [
        (DAYS[0], DAYS[2], 2, 31 - 20 - 4, 2),
        (DAYS[3], DAYS[4], 1, -6, 1),
    ]
    m = compute(result([100, 101, 102, 103, 104], fills))
    assert (m["trades"], m["win_rate"], m["profit_factor"]) == (2, 0.5, pytest.approx(7 / 6))


def test_open_trade_is_marked_not_counted() -> None:
    trades = round_trips([fill(DAYS[0], Side.BUY, 3, 10)], {"005930": 12}, DAYS[:3])
    assert len(trades) == 1 and trades[0].open and trades[0].pnl == 6


def test_benchmark_against_itself() -> None:
    eq = [100, 110, 99, 120, 126]
    bench = [(dt.date.fromisoformat(d), float(v) * 3) for d, v in zip(DAYS, eq)]
    m = compute(result(eq), bench, "self")
    assert m["beta"] == pytest.approx(1.0)
    assert m["alpha"] == pytest.approx(0.0, abs=1e-12)
    assert m["up_capture"] == pytest.approx(1.0) and m["down_capture"] == pytest.approx(1.0)
    assert m["information_ratio"] is None  # no active return at all


def test_benchmark_aligns_on_common_dates() -> None:
    eq = [100, 110, 99, 120, 126]
    bench = [(dt.date.fromisoformat(d), v) for d, v in zip(DAYS, [50.0, 55.0, 49.5, 60.0, 63.0]) if d != DAYS[2]]
    m = compute(result(eq), bench, "b")
    assert m["benchmark_days"] == 4 and m["beta"] == pytest.approx(1.0)


def test_exposure() -> None:
    m = compute(result([100, 100, 100, 100], holdings=[0, 50, 25, 0]))
    assert m["exposure"] == 0.5 and m["avg_exposure"] == pytest.approx(0.1875)
