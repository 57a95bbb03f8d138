"""A flatten of an agent that is still running: its new orders are refused until it is flat, so the
flatten's sells go out (a re-quoted bid kept them waiting for good, and the operator was told it sold)."""

from __future__ import annotations

from pathlib import Path

from common.enums import Side
from common.errors import ErrorCode
from common.orders import OrderState
from tests.unit.test_oms import CARD, Harness, coid, order


async def test_an_agent_being_flattened_cannot_order_and_its_shares_are_sold(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930", "000660"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        assert h.desk.submit(CARD, order(2, qty=5, price=60_000)).accepted  # rests
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.ACCEPTED)

        h.desk.flatten(CARD, "operator flatten")
        again = h.desk.submit(CARD, order(3, qty=5, price=60_000))  # the strategy re-quotes its bid
        assert not again.accepted and again.code is ErrorCode.DENIED_REDUCING and "flattened" in again.message

        def sold() -> bool:
            return any(o.side is Side.SELL and o.state is OrderState.FILLED for o in h.book.orders.values())

        await h.settle(sold)
        assert h.portfolio.positions["alpha"]["005930"].qty == 0
        assert h.book.orders[coid(2)].state is OrderState.CANCELLED
        assert "alpha" not in h.desk._flattening
        # flat again: the agent orders as before
        assert h.desk.submit(CARD, order(4, qty=1, price=60_000)).accepted
    finally:
        await h.close()
