"""The backtest keeps live's books and limits: each case is a few hand-made daily bars where a backtest
used to diverge from what the gateway does with the same fills — a flat what-if sell tax on an ETF
(live: ETFs are never taxed), positions without their fees (live's books carry them), a day's P&L
and equity peak that started at the day's first order check instead of before its first fill (live
rolls them at the day's start: a loss realised at the open, a fall from the previous close, count),
and a protective exit filled at a level off the tick grid (live's exit fills at a print)."""

from __future__ import annotations

import datetime as dt

from agent.strategy import Strategy
from common.books import apply_fill_value
from common.config import AgentCard, RiskLimits
from common.costs import CostModel
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx_rules import Market, SecurityKind, rules_for
from common.portfolio import Portfolio
from common.schema import Bar, FillView, PositionView
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

CODE = "005930"
NXT = TimeInForce.NEXT_SESSION
Step = tuple[str, int, int, dict[str, object]]  # side, qty, price (0: market), extra arguments
Plan_ = dict[str, list[Step]]
PLAN: Plan_ = {}
SEEN: list[PositionView] = []


class Plan(Strategy):
    """Places the orders of PLAN[bar day] for the next session: (side, qty, price (0: market), extra)."""

    def on_bar(self, bar: Bar) -> None:
        for side, qty, price, extra in PLAN.get(bar.start, []):
            kind = OrderType.LIMIT if price else OrderType.MARKET
            place = self.ctx.buy if side == "buy" else self.ctx.sell
            place(bar.code, qty, price, order_type=kind, tif=NXT, **extra)  # type: ignore[arg-type]

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        SEEN.append(position)


def run(
    rows: list[tuple[str, int, int, int, int]],
    plan: Plan_,
    *,
    code: str = CODE,
    kind: SecurityKind = SecurityKind.STOCK,
    risk: RiskLimits | None = None,
    budget: int = 0,
    cash: int = 20_000_000,
    flat_tax: int | None = None,
) -> BacktestResult:
    PLAN.clear()
    PLAN.update(plan)
    SEEN.clear()
    card = AgentCard(
        id="parity", name="parity", strategy=f"{__name__}:Plan", codes=[code], risk=risk or RiskLimits(), budget=budget
    )
    bars = [
        Bar(code=code, interval="1d", start=d, open=o, high=h, low=lo, close=c, volume=100_000)
        for d, o, h, lo, c in rows
    ]
    cfg = BacktestConfig(
        date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=0 if budget else cash, sell_tax_ppm=flat_tax
    )
    return run_backtest(card, {code: Series(code, bars, kind=kind)}, cfg)


def test_a_flat_what_if_tax_leaves_etf_sales_untaxed_as_live() -> None:
    rows = [
        ("2024-01-02", 35_000, 35_500, 34_800, 35_000),
        ("2024-01-03", 35_000, 35_500, 34_800, 35_100),
        ("2024-01-04", 35_100, 35_500, 34_800, 35_200),
    ]
    plan: Plan_ = {"2024-01-02": [("buy", 100, 0, {})], "2024-01-03": [("sell", 100, 0, {})]}
    r = run(rows, plan, code="069500", kind=SecurityKind.ETF, flat_tax=1_800)
    assert CostModel(150, 1_800).tax_ppm("2024-01-04", Market.KOSPI, SecurityKind.ETF) == 0  # live's books
    (sell,) = [f for f in r.fills if f.side is Side.SELL]
    assert (sell.price, sell.tax, r.taxes) == (35_100, 0, 0)
    stock = run(rows, plan, flat_tax=1_800)  # a stock pays the flat rate: 100 x 35,100 x 0.18 %
    assert stock.taxes == 6_318


def test_positions_carry_their_fees_as_live_books_do() -> None:
    rows = [
        ("2024-01-02", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-03", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-04", 71_000, 71_500, 70_500, 71_000),
    ]
    r = run(rows, {"2024-01-02": [("buy", 100, 70_000, {})], "2024-01-03": [("sell", 50, 71_000, {})]})
    costs = CostModel()
    live = apply_fill_value(None, CODE, Side.BUY, 100, 7_000_000, fee=costs.fill_cost(7_000_000, False))
    tax = costs.tax_ppm("2024-01-04", Market.KOSPI, SecurityKind.STOCK)
    live = apply_fill_value(live, CODE, Side.SELL, 50, 3_550_000, fee=costs.fill_cost(3_550_000, True, tax))
    assert live.fees == r.fees + r.taxes == 1_050 + 532 + 6_390
    assert SEEN[-1].fees == live.fees  # what on_fill hands the strategy
    assert r.positions[CODE].fees == live.fees


def test_a_loss_realised_at_the_open_counts_against_that_day() -> None:
    rows = [
        ("2024-01-02", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-03", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-04", 60_000, 61_000, 59_500, 60_000),  # the sell fills at the open: -1,000,000 and fees
        ("2024-01-05", 60_000, 61_000, 59_500, 60_000),
    ]
    plan: Plan_ = {
        "2024-01-02": [("buy", 100, 0, {})],
        "2024-01-03": [("sell", 100, 0, {})],
        "2024-01-04": [("buy", 10, 60_000, {"reason": "after the loss"})],
    }
    r = run(rows, plan, risk=RiskLimits(max_daily_loss=500_000))
    # live: the day rolled at its start, before the fill (Portfolio.roll_day): its P&L is the loss
    p = Portfolio()
    p.set_position("parity", apply_fill_value(None, CODE, Side.BUY, 100, 7_000_000, fee=1_050))
    p.roll_day()
    p.set_position(
        "parity", apply_fill_value(p.position("parity", CODE), CODE, Side.SELL, 100, 6_000_000, fee=900 + 10_800)
    )
    assert p.day_pnl("parity") <= -500_000
    assert r.orders[-1].reason_code == ErrorCode.DENIED_DAILY_LOSS
    # the next day counts from its own start: the same buy then goes through
    r2 = run(
        rows,
        {**plan, "2024-01-04": [], "2024-01-05": [("buy", 10, 60_000, {})]},
        risk=RiskLimits(max_daily_loss=500_000),
    )
    assert r2.orders[-1].reason_code == ""


def test_a_fall_from_the_previous_close_is_a_day_drawdown() -> None:
    rows = [
        ("2024-01-02", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-03", 70_000, 70_500, 69_500, 70_000),  # 140 bought at 70,000 (9.8 M of 10 M)
        ("2024-01-04", 70_000, 70_000, 62_000, 62_000),  # equity 10.0 M -> 8.88 M: -11 %
        ("2024-01-05", 62_000, 63_000, 61_500, 62_000),
    ]
    plan: Plan_ = {
        "2024-01-02": [("buy", 140, 70_000, {})],
        "2024-01-04": [("buy", 1, 62_000, {"reason": "average down"})],
    }
    r = run(rows, plan, risk=RiskLimits(max_drawdown_pct=5.0), budget=10_000_000)
    # live's first sweep of 01-04 sees the 01-03 close's equity; at 15:30 the day is 11 % below it
    assert r.orders[-1].reason_code == ErrorCode.DENIED_DRAWDOWN
    calm = [*rows[:3], ("2024-01-04", 70_000, 70_000, 69_000, 69_500)]  # -0.7 %: within the limit
    assert run(calm, plan, risk=RiskLimits(max_drawdown_pct=5.0), budget=10_000_000).orders[-1].reason_code == ""


def test_a_protective_exit_met_inside_a_bar_fills_on_the_tick_grid() -> None:
    rows = [
        ("2024-01-02", 70_000, 70_500, 69_500, 70_000),
        ("2024-01-03", 70_000, 70_000, 69_800, 70_000),  # the buy fills at 70,000, the trail arms
        ("2024-01-04", 70_000, 70_000, 67_000, 67_500),  # 3.3 % trail: level 67,690, tick 100
        ("2024-01-05", 67_500, 68_000, 67_000, 67_500),
    ]
    r = run(rows, {"2024-01-02": [("buy", 10, 70_000, {"trail_pct": 3.3})]})
    (sell,) = [f for f in r.fills if f.side is Side.SELL]
    # the print that met it is the grid's price at or below the level (67,600); the exit sells a tick
    # under it, as live's market sell takes the bids under that print
    assert (sell.day, sell.price) == ("2024-01-04", 67_500)
    assert rules_for(sell.day).on_grid(sell.price)
    take = run(
        rows[:3] + [("2024-01-04", 70_000, 72_500, 69_900, 72_000)],
        {"2024-01-02": [("buy", 10, 70_000, {"take": 72_050})]},
    )
    (sell,) = [f for f in take.fills if f.side is Side.SELL]
    assert sell.price == 72_100  # a take-profit: the grid's price at or above its level


class ReviseHeld(Strategy):
    """Places a next-session limit buy and revises it at once (live: HELD, not revisable)."""

    def on_bar(self, bar: Bar) -> None:
        if bar.start == "2024-01-02":
            coid = self.ctx.buy(bar.code, 5, 69_000, tif=NXT)
            self.ctx.modify(coid, 69_500)


def test_an_order_held_for_the_next_session_cannot_be_revised_as_live() -> None:
    rows = [("2024-01-02", 70_000, 70_500, 69_500, 70_000), ("2024-01-03", 70_000, 70_500, 68_500, 70_000)]
    card = AgentCard(id="held", name="held", strategy=f"{__name__}:ReviseHeld", codes=[CODE])
    bars = [
        Bar(code=CODE, interval="1d", start=d, open=o, high=h, low=lo, close=c, volume=100_000)
        for d, o, h, lo, c in rows
    ]
    cfg = BacktestConfig(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=10_000_000)
    r = run_backtest(card, {CODE: Series(CODE, bars)}, cfg)
    (o,) = r.orders
    assert o.price == 69_000 and [(f.day, f.price) for f in r.fills] == [("2024-01-03", 69_000)]
