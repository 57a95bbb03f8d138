"""The backtest's day P&L follows live's (common/portfolio.py day_pnl): a position carried from earlier
days counts from the close before the day, not from its cost."""

from __future__ import annotations

from common.config import RiskLimits
from common.errors import ErrorCode
from tests.unit.test_backtest_live_parity import Plan_, run


def test_a_fall_from_a_carried_gain_is_a_day_loss() -> None:
    rows = [
        ("2024-01-02", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-03", 70_000, 80_500, 69_500, 80_000),  # 100 bought at the open, 70,000; closes 80,000
        ("2024-01-04", 80_000, 80_000, 73_500, 74_000),  # -600,000 today, +400,000 from cost
        ("2024-01-05", 74_000, 74_500, 73_500, 74_000),
    ]
    plan: Plan_ = {"2024-01-02": [("buy", 100, 0, {})], "2024-01-04": [("buy", 1, 74_000, {})]}
    r = run(rows, plan, risk=RiskLimits(max_daily_loss=500_000))
    assert r.orders[-1].reason_code == ErrorCode.DENIED_DAILY_LOSS


def test_a_carried_loss_on_a_flat_day_is_no_day_loss() -> None:
    rows = [
        ("2024-01-02", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-03", 70_000, 70_500, 59_500, 60_000),  # 100 bought at 70,000: -1,000,000 that day
        ("2024-01-04", 60_000, 60_500, 59_500, 60_000),  # flat
        ("2024-01-05", 60_000, 60_500, 59_500, 60_000),
    ]
    plan: Plan_ = {"2024-01-02": [("buy", 100, 0, {})], "2024-01-04": [("buy", 1, 60_000, {})]}
    r = run(rows, plan, risk=RiskLimits(max_daily_loss=500_000))
    assert r.orders[-1].reason_code == ""
