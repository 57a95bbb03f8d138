"""Live performance per agent from its daily equity snapshots (store table `equity`): the equity
curve, drawdown, Sharpe, win rate and turnover. Pure functions over integers (KRW); ratios are
floats because they are not money.

P&L is the agent's cumulative net P&L (realised - fees + unrealised at the marks): an agent has a
budget, not a cash account of its own, so its "equity" is budget + this curve.

A closing trade (a sell order of the day that ended having filled) is a win or a loss by its net P&L
(`closing_result`, the one rule the operator's counts, the equity rows, the console and the daily
report read): what it brought in, less the cost of the shares it took out of the position, its own
commission and tax, and the commission paid buying those shares. A sale 1,000 KRW above cost that
paid 2,302 KRW of commission and tax lost money: it is a loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from common.costs import CostModel
from common.orders import Order
from common.schema import AgentPerformance
from server.store import EquityRow

CURVE_DAYS = 250
TRADING_DAYS_PER_YEAR = 252


class TradeCosts(Protocol):  # what closing_net reads of server.order_book.OrderBook
    costs: CostModel

    def fill_fees(self, o: Order, value: int) -> int: ...


def closing_net(o: Order, book: TradeCosts) -> int:
    """The net P&L a sell order realised: its live fills' value (after any repricing) less the cost
    they took out of the position (recorded per fill), its commission and tax (as the daily report
    counts an order's costs), and the buy commission of the shares it sold (the position's cost has
    no fees in it: they are kept apart). 0 for an order stored without its fills."""
    if not o.fills:
        return 0
    cost_out = sum(r.cost_out * r.live_qty // r.qty for r in o.fills if r.qty)
    return o.filled_value - cost_out - book.fill_fees(o, o.filled_value) - book.costs.commission(cost_out)


def closing_result(o: Order, book: TradeCosts) -> int:
    """Was this closing trade a win (1), a loss (-1), or neither (0: break-even after costs, or an
    order stored without its fills)?"""
    net = closing_net(o, book)
    return (net > 0) - (net < 0)


def max_drawdown(curve: Sequence[int]) -> tuple[int, int]:
    """(largest fall from a running peak, fall below the peak at the end) of a cumulative P&L
    series that starts from 0 (a new agent has made and lost nothing)."""
    peak, worst, last = 0, 0, 0
    for v in curve:
        peak = max(peak, v)
        last = peak - v
        worst = max(worst, last)
    return worst, last


def sharpe(daily: Sequence[int]) -> float:
    """Annualised Sharpe ratio of daily P&L (no risk-free rate: the cash is not the agent's).
    Dividing each day by a constant budget leaves the ratio unchanged, so KRW are used as they are."""
    if len(daily) < 2:
        return 0.0
    mean = sum(daily) / len(daily)
    var = sum((d - mean) ** 2 for d in daily) / (len(daily) - 1)
    if var <= 0:
        return 0.0
    return mean / math.sqrt(var) * math.sqrt(TRADING_DAYS_PER_YEAR)


def performance(rows: Sequence[EquityRow], live: EquityRow | None = None) -> AgentPerformance:
    """From the stored days (oldest first) and, when given, today's live row (it replaces a
    stored row of the same day)."""
    days = [r for r in rows if live is None or r.day != live.day] + ([live] if live is not None else [])
    if not days:
        return AgentPerformance()
    nets = [r.net for r in days]
    daily = [b - a for a, b in zip([0, *nets[:-1]], nets)]
    worst, now = max_drawdown(nets)
    wins, losses = sum(r.wins for r in days), sum(r.losses for r in days)
    traded = sum(r.traded_value for r in days)
    budget = days[-1].budget
    return AgentPerformance(
        days=len(days),
        net_pnl=nets[-1],
        today_pnl=daily[-1],
        max_drawdown=worst,
        drawdown=now,
        sharpe=round(sharpe(daily), 3),
        wins=wins,
        losses=losses,
        win_rate=round(wins / (wins + losses), 4) if wins + losses else 0.0,
        traded_value=traded,
        turnover=round(traded / budget, 3) if budget else 0.0,
        curve=[(r.day, r.net) for r in days[-CURVE_DAYS:]],
    )
