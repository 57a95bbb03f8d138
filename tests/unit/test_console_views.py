"""Positions as the console shows them: average price, unrealised P&L at the last trade, and the
account as the sum of every agent's book."""

from __future__ import annotations

from types import SimpleNamespace

from common.schema import PositionView
from server.console_views import account_positions, agent_positions, mark_position


def test_average_price_and_unrealised_pnl() -> None:
    p = PositionView(code="005930", qty=3, cost=210_001, realized_pnl=500, fees=30)
    m = mark_position(p, {"005930": 71_000})
    assert (m.avg_price, m.mark, m.unrealized_pnl, m.realized_pnl, m.fees) == (70_000, 71_000, 2_999, 500, 30)
    # no trade seen yet: no mark, no invented P&L
    assert mark_position(p, {}).unrealized_pnl == 0
    flat = mark_position(PositionView(code="005930", qty=0, cost=0, realized_pnl=-100), {"005930": 70_000})
    assert (flat.avg_price, flat.unrealized_pnl, flat.realized_pnl) == (0, 0, -100)


def test_account_sums_agents_per_code() -> None:
    oms = SimpleNamespace(marks={"005930": 70_500}, positions={
        "a": {"005930": PositionView(code="005930", qty=10, cost=700_000, realized_pnl=0)},
        "b": {"005930": PositionView(code="005930", qty=5, cost=355_000, realized_pnl=1_000),
              "000660": PositionView(code="000660", qty=0, cost=0, realized_pnl=0)},
    })
    acc = account_positions(oms)  # type: ignore[arg-type]
    assert [(p.code, p.qty, p.cost, p.avg_price, p.unrealized_pnl, p.realized_pnl) for p in acc] == [
        ("005930", 15, 1_055_000, 70_333, 15 * 70_500 - 1_055_000, 1_000)]
    assert [p.code for p in agent_positions(oms, "b")] == ["005930"]  # type: ignore[arg-type]
