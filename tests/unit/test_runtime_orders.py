"""An order a strategy just placed is one of its open orders at once, before the gateway answers
(a timer firing in between must not see "no order" and place it again)."""

from __future__ import annotations

from pathlib import Path

from agent.runtime import AgentRuntime
from common.config import AgentCard


def test_a_new_order_is_open_before_the_gateway_answers(tmp_path: Path) -> None:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    coid = rt.buy("005930", 3, 70_000)
    assert list(rt.open_orders) == [coid]
    view = rt.open_orders[coid]
    assert (view.qty, view.price, view.state.value, view.filled_qty) == (3, 70_000, "pending_submit", 0)
    assert rt.buy("005930", 1, 69_900) != coid  # numbering moves on
