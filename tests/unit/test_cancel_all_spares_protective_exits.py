"""The operator's cancel_all leaves the sells the gateway placed for the agent working, as a halt's cancels
do: a protective exit it cancelled was placed again at once under a new id (its protection still holds),
while the reply 'N cancels sent' read as if the selling had stopped. The reply says what kept working and
how to stop it (cancel_protection)."""

from __future__ import annotations

from pathlib import Path

from common.enums import Side
from common.orders import OrderState
from common.protection import ProtectionState as PS
from common.schema import NewOrder
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tests.unit.test_locked_exit_waits_for_the_next_session import Locked
from tests.unit.test_protection import CARD, buy, exits

PID = "alpha-20261120-1"


async def test_cancel_all_spares_the_protective_exit_and_says_so(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", broker=Locked(ref_price=70_000))
    await h.start()
    d = Desk(h, tmp_path / "run", [CARD])
    try:
        assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
        await h.settle(lambda: h.protection.active[PID].state is PS.ARMED)
        h.print("005930", 68_000)  # met: its market sell rests (locked)
        await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
        [exit_] = exits(h)
        own = NewOrder(client_order_id="alpha-20261120-2", code="000660", side=Side.BUY, qty=1, price=1_000)
        assert h.desk.submit(CARD, own).accepted  # the agent's own resting buy
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].broker_order_id)
        text = d.ack("cancel_all", agent="alpha", sender="ops")
        assert text == "1 cancels sent for alpha; 1 protective exits keep working: cancel_protection stops one", text
        await h.settle(lambda: not h.book.orders["alpha-20261120-2"].is_open)
        assert h.book.orders[exit_.client_order_id].state is OrderState.ACCEPTED
        assert exits(h) == [h.book.orders[exit_.client_order_id]]  # not cancelled, not placed again
        assert h.protection.active[PID].state is PS.FIRED
    finally:
        await h.close()
