"""A protective market sell that expires unsold (the stock locked at its lower limit all session: no buyers)
is no failure: it is placed again for the next session, as the backtest's exit waits for the next open
(tools/backtest/protection.py), and a person is told each time. Three locked sessions used to end the
protection FAILED ('sell by hand') with the shares unsold. Refusals still count (MAX_ATTEMPTS)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.enums import AlertKind, OrderType, Side
from common.orders import OrderState
from common.protection import ProtectionState as PS
from kis.port import BrokerAck, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness
from tests.unit.test_protection import CARD, buy, exits

PID = "alpha-20261120-1"


class Locked(FakeBroker):
    """While `locked`, a market sell rests (no buyers at the lower limit)."""

    locked = True

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if self.locked and order.side is Side.SELL and order.order_type is OrderType.MARKET:
            order = msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=10**9)
        return await super().submit(order)


async def test_a_locked_exit_is_placed_again_each_session_until_it_sells(tmp_path: Path) -> None:
    broker = Locked(ref_price=70_000)
    h = Harness(tmp_path / "db", broker=broker)
    await h.start()
    try:
        assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
        await h.settle(lambda: h.protection.active[PID].state is PS.ARMED)
        broker.ref_price = 49_000
        h.print("005930", 49_000)
        for _ in range(4):  # four sessions that end with the stock still locked: the exit expires at each close
            await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
            assert h.core.recon.expire_through(h.book.day()) == 1
            p = h.protection.active[PID]  # still working: placed again
            assert p.state is PS.FIRED and p.attempts == 0, p
        expired = [t for t in h.alerted(AlertKind.PROTECTION) if "expired" in t]
        assert len(expired) == 4, expired
        assert expired[0].startswith("alpha: protective exit of 10 005930 expired unsold (locked at the lower limit?)")
        assert not any("FAILED" in t for t in h.alerted(AlertKind.PROTECTION))
        # a fifth locked session, then the lock breaks: the exit placed for the next session sells
        await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
        broker.locked = False
        broker.ref_price = 45_000
        h.core.recon.expire_through(h.book.day())
        await h.settle(lambda: PID in h.protection.ended)
        assert h.protection.ended[PID].state is PS.DONE
        assert [x.state for x in exits(h)] == [OrderState.EXPIRED] * 5 + [OrderState.FILLED]
        assert h.portfolio.position("alpha", "005930").qty == 0  # type: ignore[union-attr]
    finally:
        await h.close()
