from __future__ import annotations
from pathlib import Path
from common.config import AgentCard, RiskLimits
from common.enums import AlertKind, Side
from common.orders import OrderState
from common.schema import NewOrder
from server.trading_day import BasePrices
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

A = AgentCard(
    id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=2_000_000, risk=RiskLimits(halt_drawdown_pct=10)
)


async def test_pause_then_drawdown(tmp_path: Path) -> None:
    h = Harness(tmp_path / "g.sqlite", clock=trading_clock(), cards={"alpha": A})
    await h.start()
    await BasePrices(h.book, h.broker.base_price).ensure(["005930"])
    assert h.desk.submit(
        A, NewOrder(client_order_id="alpha-20261120-1", code="005930", side=Side.BUY, qty=10, price=70_000)
    ).accepted
    assert h.desk.submit(
        A, NewOrder(client_order_id="alpha-20261120-2", code="005930", side=Side.BUY, qty=5, price=60_000)
    ).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
    h.print("005930", 70_000)
    h.risk.sweep([A])
    d = Desk(h, tmp_path / "run", [A])
    d.ack("pause", "alpha")
    h.print("005930", 50_000)
    h.risk.sweep([A])
    # paused, then past its halt drawdown: the halt's cancels and its page are due all the same
    assert h.alerted(AlertKind.DRAWDOWN)
    await h.settle(lambda: not h.book.orders["alpha-20261120-2"].is_open)
    await h.close()
