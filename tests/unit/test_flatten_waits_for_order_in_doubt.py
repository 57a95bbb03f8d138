"""(a hunt) A flatten of an agent with an order in doubt (sent, outcome unknown: no cancel reaches it) sold nothing
for up to unknown_grace_s (10 minutes), its reply saying only 'the sells go out once its open orders are closed'.
The sells still wait (a market sell could meet the agent's own order at the exchange), and the reply says which
order they wait for and until when reconciliation settles it."""

from __future__ import annotations

from pathlib import Path

from common.market_clock import ManualClock
from common.orders import OrderState
from tests.fakes.operator_desk import Desk
from tests.fakes.harness import Harness
from tests.unit.test_oms import CARD, coid, order
from tests.unit.test_reconcile_days import FRI, DayBroker, kst


async def test_the_flatten_says_which_order_in_doubt_its_sells_wait_for(tmp_path: Path) -> None:
    clock = ManualClock(kst(FRI, 10))
    b = DayBroker(clock)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock, cards={CARD.id: CARD})
    await h.start()
    try:
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills (ref 70,000)
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        b.unknown_after_placing = True
        assert h.desk.submit(CARD, order(2, qty=5, price=66_500)).accepted  # rests, its reply lost
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.UNKNOWN)
        said = Desk(h, tmp_path / "run", [CARD]).ack("flatten", CARD.id)
        assert "go out once its open orders are closed" in said, said
        assert f"they wait for {coid(2)} (sent, outcome unknown: no cancel reaches it) until reconciliation" in said
        assert "or by 10:10:00 does not" in said, said  # (unknown_grace_s 600 after it went in doubt)
    finally:
        await h.close()
